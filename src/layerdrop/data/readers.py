"""User files: CSV, TSV, JSONL, or a folder written by Hugging Face ``datasets``' ``save_to_disk``.

Every problem raises :class:`~layerdrop.data.DataError` naming the file, the line and the
problem. Label rules (names, integer ids, ``label_names``) are in ``docs/datasets.md``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdrop.errors import InputError

from .splits import DataError, Splits, TextDataset, split

__all__ = ["SUPPORTED_EXTENSIONS", "load_file"]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".jsonl")
"""File extensions :func:`layerdrop.data.load` reads (besides a ``datasets`` ``save_to_disk`` folder)."""


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
            raise DataError.at(
                path, line, f"label must be a string or an integer, got {value!r}", unit=unit
            )
        if isinstance(value, str) and not value.strip():
            raise DataError.at(path, line, "empty label", unit=unit)
    if label_names is not None:
        names = tuple(label_names)
        if not names or len(set(names)) != len(names):
            raise InputError(f"label_names must be non-empty and unique, got {list(names)}")
        index = {n: i for i, n in enumerate(names)}
        ids: list[int] = []
        for value, (path, line) in zip(raw, where, strict=True):
            if isinstance(value, str) and value.strip() in index:
                ids.append(index[value.strip()])
                continue
            as_int = _as_int_label(value)
            if as_int is None:
                raise DataError.at(
                    path,
                    line,
                    f"label {value.strip()!r} is not in the label set {list(names)} "
                    "(from label_names)",
                    unit=unit,
                )
            if not 0 <= as_int < len(names):
                raise DataError.at(
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
                raise DataError.at(
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
        raise DataError.at(str(path), line, f"not valid UTF-8 ({e.reason})") from None


def _check_text(path: str, line: int, value: Any, column: str, unit: str = "line") -> str:
    if not isinstance(value, str):
        raise DataError.at(
            path, line, f"text in column {column!r} must be a string, got {value!r}", unit=unit
        )
    if not value.strip():
        raise DataError.at(path, line, f"empty text in column {column!r}", unit=unit)
    return value


def _read_delimited(
    path: Path, delimiter: str, text_column: str, label_column: str | None
) -> _RawRows:
    name = str(path)
    content = _decode(path)
    if not content.strip():
        raise DataError.at(name, None, "file is empty")
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
                        raise DataError.at(
                            name, start, f"missing column {col!r}; columns found: {header}"
                        )
                    if header.count(col) > 1:
                        raise DataError.at(name, start, f"column {col!r} appears more than once")
                ti = header.index(text_column)
                li = header.index(label_column) if label_column is not None else -1
                continue
            if len(record) != len(header):
                raise DataError.at(
                    name,
                    start,
                    f"expected {len(header)} fields (columns {header}), found {len(record)}",
                )
            rows.texts.append(_check_text(name, start, record[ti], text_column))
            if rows.labels is not None:
                rows.labels.append(record[li])
            rows.where.append((name, start))
    except csv.Error as e:
        raise DataError.at(name, reader.line_num, f"malformed {path.suffix} row: {e}") from None
    if not rows.texts:
        raise DataError.at(name, header_line, "no data rows after the header")
    return rows


def _read_jsonl(path: Path, text_column: str, label_column: str | None) -> _RawRows:
    name = str(path)
    content = _decode(path)
    if not content.strip():
        raise DataError.at(name, None, "file is empty")
    rows = _RawRows([], [] if label_column is not None else None, [])
    # split on "\n" only: str.splitlines would also cut at U+2028 etc., legal inside JSON
    for lineno, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError.at(name, lineno, f"malformed JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(obj, dict):
            raise DataError.at(name, lineno, f"expected a JSON object, got {type(obj).__name__}")
        for col in [text_column] + ([label_column] if label_column is not None else []):
            if col not in obj:
                raise DataError.at(name, lineno, f"missing column {col!r}; keys found: {list(obj)}")
        rows.texts.append(_check_text(name, lineno, obj[text_column], text_column))
        if rows.labels is not None:
            rows.labels.append(obj[label_column])
        rows.where.append((name, lineno))
    return rows


def _dataset(name: str, rows: _RawRows, label_names: Sequence[str] | None, unit: str) -> TextDataset:
    """The rows as a dataset, their labels resolved to class ids."""
    if rows.labels is None:
        return TextDataset(name, tuple(rows.texts), None, None)
    ids, names = _resolve_labels(rows.labels, rows.where, label_names, unit=unit)
    return TextDataset(name, tuple(rows.texts), ids, names)


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
        raise DataError.at(
            name,
            None,
            "directory is not a Hugging Face `datasets` save_to_disk folder "
            "(no dataset_dict.json or state.json); files need one of the extensions "
            f"{list(SUPPORTED_EXTENSIONS)}",
        )
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError:
        raise DataError.at(
            name, None, "reading a `datasets` save_to_disk folder needs `pip install datasets`"
        ) from None
    loaded = datasets.load_from_disk(name)
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError.at(name, None, f"no 'train' split; splits found: {list(loaded)}")
        valid_key = next((k for k in ("validation", "valid", "dev") if k in loaded), None)
        # other splits (e.g. IMDB's unlabelled 'unsupervised') are not used
        parts = {k: loaded[k] for k in ("train", valid_key, "test") if k is not None and k in loaded}
    else:
        valid_key = None
        parts = {"train": loaded}
    split_rows: dict[str, _RawRows] = {}
    feature_names: Sequence[str] | None = None
    for part, ds in parts.items():
        where = f"{name} (split {part!r})" if is_dict else name
        wanted = [text_column] + ([label_column] if label_column is not None else [])
        for col in wanted:
            if col not in ds.column_names:
                raise DataError.at(where, None, f"missing column {col!r}; columns found: {ds.column_names}")
        texts = [
            _check_text(where, i, t, text_column, unit="row") for i, t in enumerate(ds[text_column])
        ]
        labels = list(ds[label_column]) if label_column is not None else None
        if label_column is not None:
            feature = ds.features[label_column]
            if isinstance(feature, datasets.ClassLabel):
                feature_names = feature.names
        split_rows[part] = _RawRows(texts, labels, [(where, i) for i in range(len(texts))])
    names = label_names if label_names is not None else feature_names
    # resolve labels jointly so every split uses the same ids
    order = list(split_rows)
    all_rows = _RawRows(
        [t for s in order for t in split_rows[s].texts],
        None if label_column is None else [x for s in order for x in split_rows[s].labels or []],
        [w for s in order for w in split_rows[s].where],
    )
    offsets: dict[str, range] = {}
    for s in order:
        start = sum(len(r) for r in offsets.values())
        offsets[s] = range(start, start + len(split_rows[s].texts))
    rows = _dataset(path.name, all_rows, names, unit="row")
    return split(rows, path.name, seed, vf, tf, valid=offsets.get(valid_key) if valid_key else None,
                 test=offsets.get("test"))


def load_file(
    path: Path,
    text_column: str,
    label_column: str | None,
    label_names: Sequence[str] | None,
    seed: int,
    vf: float,
    tf: float,
) -> Splits:
    """Read and split a user file or ``datasets`` folder (see :func:`layerdrop.data.load`)."""
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
        raise DataError.at(
            str(path),
            None,
            f"unsupported file extension {path.suffix!r}; supported: "
            f"{list(SUPPORTED_EXTENSIONS)} or a `datasets` save_to_disk folder",
        )
    if not rows.texts:
        raise DataError.at(str(path), None, "file is empty (no rows)")
    return split(_dataset(path.name, rows, label_names, "line"), path.name, seed, vf, tf)
