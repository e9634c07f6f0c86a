"""Text datasets for LayerDrop experiments: bundled real corpora and user files, all offline.

>>> from layerdrop import data
>>> splits = data.load("rotten-tomatoes", seed=0)      # doctest: +SKIP
>>> len(splits.train), splits.train.label_names        # doctest: +SKIP
(10246, ('rotten', 'fresh'))
>>> data.load("reviews.csv", label_column="stars")     # doctest: +SKIP

Modules: :mod:`.splits` (datasets and the split rules), :mod:`.bundled` (the corpora
table), :mod:`.readers` (user files), :mod:`.encode` (texts to model inputs; imports
transformers), :mod:`.squad` (SQuAD-format question answering files and their windows). The rules and
sources are in ``docs/datasets.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from layerdrop.errors import InputError

from .bundled import BUNDLED, BundledDataset, bundled_dataset, load_bundled
from .encode import encode_classification, encode_lm, lm_eval_blocks
from .readers import SUPPORTED_EXTENSIONS, load_file
from .splits import DataError, Splits, TextDataset, check_fractions
from .squad import QADataset, QAEncoding, encode_qa, load_qa, read_squad

__all__ = [
    "BUNDLED",
    "SUPPORTED_EXTENSIONS",
    "BundledDataset",
    "DataError",
    "QADataset",
    "QAEncoding",
    "Splits",
    "TextDataset",
    "bundled_dataset",
    "encode_classification",
    "encode_lm",
    "encode_qa",
    "lm_eval_blocks",
    "load",
    "load_qa",
    "read_squad",
]


def load(
    name_or_path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    label_names: Sequence[str] | None = None,
) -> Splits:
    """Load a bundled dataset or a user file as train/valid/test :class:`Splits`.

    Args:
        name_or_path: A key of :data:`BUNDLED` (``"rotten-tomatoes"``, ``"20newsgroups"``,
            ``"reuters-r8"``, ``"kjv"``, ``"chinese-sentiment"``), or the path of an
            existing ``.csv`` / ``.tsv`` / ``.jsonl`` file or ``datasets`` save_to_disk
            folder. Bundled names win over a same-named file; write ``./kjv`` for the file.
        text_column: Column (or JSON key) holding the text. User files only.
        label_column: Column holding the label, or ``None`` for an unlabelled
            (language-modelling) corpus. User files only.
        seed: Seed of the ``random.Random`` that makes the splits and orders the rows.
        valid_fraction: Fraction of rows for ``valid``. Where the source has its own
            test split, the fraction of its training rows.
        test_fraction: Fraction of rows for ``test``; unused where the source has a test split.
        label_names: Class names of a user file, ``label_names[i]`` being class id ``i``.
            String labels must be among them; integer labels must be valid indices.
            Without it, string labels get ids in sorted order and integer labels are
            used as ids as they are.

    Splits:
        * rotten-tomatoes, chinese-sentiment, user files without a test split: random
          ``1 - valid - test`` / ``valid`` / ``test`` by rows; identical texts stay in one split.
        * 20newsgroups, reuters-r8: the source's test file is the test split; valid is
          carved from the source's train file.
        * kjv: chunks (source paragraphs, also cut at chapter starts) in canonical book
          order; the first ``1 - valid - test`` form train, the next ``valid`` fraction
          valid, the last ``test`` fraction test. Contiguous, so no verse is shared;
          ``seed`` has no effect.

    Raises:
        DataError: Unknown name and no such path, a bundled dataset's package is missing,
            or a file is malformed (message names file, line and problem).
        ValueError: Bad fractions or ``label_names``.
    """
    check_fractions(valid_fraction, test_fraction)
    key = os.fspath(name_or_path)
    if key in BUNDLED:
        if label_names is not None:
            raise InputError(f"label_names applies to user files only, not bundled {key!r}")
        return load_bundled(key, seed, valid_fraction, test_fraction)
    if label_column is None and label_names is not None:
        raise InputError("label_names was given but label_column is None")
    path = Path(key)
    if not path.exists():
        raise DataError(
            f"{key!r} is neither a bundled dataset (valid names: {sorted(BUNDLED)}) nor an "
            "existing path; a user file or folder must exist",
            path=key,
        )
    return load_file(
        path, text_column, label_column, label_names, seed, valid_fraction, test_fraction
    )
