"""Atomic writes: a failure inside a write leaves the previous file or folder intact and no partial target."""

from __future__ import annotations

import json
import os

import pytest

from layerdrop import files
from layerdrop.files import atomic_dir, write_bytes, write_json, write_text


class Boom(RuntimeError):
    pass


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_replaces_an_existing_file_whole(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old contents, longer than the new ones")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_failed_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.8})

    def fail_fsync(fd):
        raise Boom("disk full")

    monkeypatch.setattr(files.os, "fsync", fail_fsync)  # fails after the bytes went to the temporary file
    with pytest.raises(Boom):
        write_json(target, {"accuracy": 0.9})
    assert json.loads(target.read_text()) == {"accuracy": 0.8}
    assert _leftovers(tmp_path) == []


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "w.bin"
    write_bytes(target, b"\x00old")

    def fail_replace(src, dst):
        raise Boom("rename failed")

    monkeypatch.setattr(files.os, "replace", fail_replace)
    with pytest.raises(Boom):
        write_bytes(target, b"\x01new")
    assert target.read_bytes() == b"\x00old"
    assert _leftovers(tmp_path) == []


def test_failed_first_write_creates_no_target(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("io")))
    with pytest.raises(Boom):
        write_text(tmp_path / "new.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_an_existing_folder_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    (target / "config.json").write_text("{}")
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        (tmp / "config.json").write_text('{"new": true}')
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]  # nothing of the old folder survives
    assert json.loads((target / "config.json").read_text()) == {"new": True}
    assert _leftovers(tmp_path) == []


def test_failure_inside_atomic_dir_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"good")
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            raise Boom("killed mid-export")
    assert (target / "weights.bin").read_bytes() == b"good"
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert _leftovers(tmp_path) == []


def test_failure_inside_atomic_dir_creates_no_target(tmp_path):
    with pytest.raises(Boom):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "part").write_text("x")
            raise Boom()
    assert list(tmp_path.iterdir()) == []


def test_failed_swap_keeps_the_previous_folder_reachable(tmp_path, monkeypatch):
    """If the final rename fails after the old folder was moved aside, the old folder is put back."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"good")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((os.fspath(src), os.fspath(dst)))
        if len(calls) == 2:  # the first moves the old folder aside, the second puts the new one in place
            raise Boom("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_bytes(b"new")
    assert (target / "weights.bin").read_bytes() == b"good"
    assert _leftovers(tmp_path) == []
