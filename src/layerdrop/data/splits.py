"""Text datasets and how they are split: seeded, reproducible, never sharing a text across splits.

The rules are in ``docs/datasets.md``: random splits use ``random.Random(seed)`` and keep
identical texts together; a split the source ships is kept as it is; every split's rows
are in a seeded random order. The global RNG is never used.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from layerdrop.errors import InputError

__all__ = ["DataError", "Splits", "TextDataset", "check_fractions", "split", "split_contiguous"]


class DataError(InputError):
    """A dataset could not be loaded: bad file content, unknown name or missing package.

    The message names the file and, where there is one, the line (or row) and the problem.
    ``path`` and ``line`` carry the same information for programs (``None`` when unknown).
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line

    @classmethod
    def at(cls, path: str, line: int | None, problem: str, *, unit: str = "line") -> DataError:
        """``"PATH, line N: problem"`` (or ``"PATH: problem"`` without a line)."""
        where = f"{path}, {unit} {line}" if line is not None else path
        return cls(f"{where}: {problem}", path=path, line=line)


@dataclass(frozen=True)
class TextDataset:
    """An immutable list of texts with optional integer class labels.

    Sequences passed in are stored as tuples; lengths and label ids are validated.
    """

    name: str
    """Human-readable name, e.g. ``"rotten-tomatoes/train"``."""

    texts: tuple[str, ...]
    """The texts, one per example."""

    labels: tuple[int, ...] | None
    """Class id of each text (an index into :attr:`label_names`); ``None`` for
    language-modelling corpora."""

    label_names: tuple[str, ...] | None
    """Class names: ``label_names[i]`` is the name of class id ``i``. ``None`` exactly
    when :attr:`labels` is ``None``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        if (self.labels is None) != (self.label_names is None):
            raise InputError("labels and label_names must both be given or both be None")
        if self.labels is None or self.label_names is None:
            return
        labels = tuple(self.labels)
        names = tuple(self.label_names)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "label_names", names)
        if len(labels) != len(self.texts):
            raise InputError(f"{len(self.texts)} texts but {len(labels)} labels")
        if labels and (min(labels) < 0 or max(labels) >= len(names)):
            raise InputError(f"label ids must lie in 0..{len(names) - 1} (one per label name)")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int]) -> TextDataset:
        """Return a new dataset with the rows at ``indices`` (in that order, repeats allowed).

        Any integer-like index works (``int``, NumPy or 0-d torch integers); negative
        indices count from the end, as for tuples.
        """
        idx = [operator.index(i) for i in indices]
        texts = tuple(self.texts[i] for i in idx)
        labels = None if self.labels is None else tuple(self.labels[i] for i in idx)
        return TextDataset(self.name, texts, labels, self.label_names)


@dataclass(frozen=True)
class Splits:
    """Train, validation and test splits of one dataset (disjoint rows)."""

    train: TextDataset
    """Rows to train on."""

    valid: TextDataset
    """Rows for model selection / early stopping."""

    test: TextDataset
    """Held-out rows for the final numbers."""


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
    """Raise ``ValueError`` unless both fractions are in [0, 1) and sum to less than 1."""
    for label, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise InputError(f"{label} must be in [0, 1), got {f!r}")
    if valid_fraction + test_fraction >= 1.0:
        raise InputError(
            f"valid_fraction + test_fraction must be < 1, got {valid_fraction} + {test_fraction}"
        )


def _carve(texts: Sequence[str], rng: random.Random, fractions: Sequence[float]) -> list[list[int]]:
    """Cut rows into ``len(fractions) + 1`` shuffled parts; the first gets what is left.

    Rows with identical text stay together: whole groups are taken until a part has at
    least its fraction of the rows.
    """
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        by_text.setdefault(text, []).append(i)
    groups = list(by_text.values())
    rng.shuffle(groups)
    parts: list[list[int]] = []
    pos = 0
    for f in fractions:
        part: list[int] = []
        while len(part) < round(f * len(texts)) and pos < len(groups):
            part.extend(groups[pos])
            pos += 1
        parts.append(part)
    parts.insert(0, [i for g in groups[pos:] for i in g])
    for part in parts:
        rng.shuffle(part)
    return parts


def split(
    rows: TextDataset,
    name: str,
    seed: int,
    valid_fraction: float,
    test_fraction: float,
    *,
    valid: Sequence[int] | None = None,
    test: Sequence[int] | None = None,
) -> Splits:
    """Split ``rows`` into train, valid and test, named ``name/train`` ...

    ``valid`` and ``test`` are the rows of a split the source ships; each is kept as it is
    (in a seeded order) and its fraction is not used. The other rows are the training pool,
    from which the missing splits are carved at random by their fractions.
    """
    rng = random.Random(seed)
    given = {"valid": valid, "test": test}
    shipped = {i for part in given.values() if part is not None for i in part}
    pool = [i for i in range(len(rows)) if i not in shipped]
    carve = [k for k in given if given[k] is None]
    fractions = {"valid": valid_fraction, "test": test_fraction}
    parts = _carve([rows.texts[i] for i in pool], rng, [fractions[k] for k in carve])
    result = {"train": [pool[i] for i in parts[0]]}
    result.update({k: [pool[i] for i in part] for k, part in zip(carve, parts[1:], strict=True)})
    for k, part in given.items():
        if part is not None:
            result[k] = list(part)
            rng.shuffle(result[k])
    return Splits(*(_named(rows.subset(result[k]), f"{name}/{k}") for k in ("train", "valid", "test")))


def split_contiguous(rows: TextDataset, name: str, valid_fraction: float, test_fraction: float) -> Splits:
    """Split an ordered corpus into three contiguous blocks by characters, cut at row boundaries.

    The first ``1 - valid - test`` of the characters train, the next ``valid`` validate,
    the last ``test`` test; no seed, no shuffling (a language-modelling corpus).
    """
    cumulative = [0, *itertools.accumulate(len(t) for t in rows.texts)]  # chars before cut k

    def boundary(fraction: float) -> int:
        target = fraction * cumulative[-1]
        k = min(bisect.bisect_left(cumulative, target), len(rows))
        if k > 0 and target - cumulative[k - 1] <= cumulative[k] - target:
            return k - 1
        return k

    valid_start = boundary(1.0 - valid_fraction - test_fraction)
    test_start = max(valid_start, boundary(1.0 - test_fraction))
    cuts = {"train": range(valid_start), "valid": range(valid_start, test_start),
            "test": range(test_start, len(rows))}
    return Splits(*(_named(rows.subset(cuts[k]), f"{name}/{k}") for k in ("train", "valid", "test")))


def _named(rows: TextDataset, name: str) -> TextDataset:
    return dataclasses.replace(rows, name=name)
