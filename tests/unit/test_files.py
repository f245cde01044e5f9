"""tunesmith.files: atomic writes (files and folders), private modes, and JSONL reading with file:line errors."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tunesmith.files import (
    append_text, atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, iter_jsonl, read_jsonl, sha256_file,
)
from tunesmith.records import DataError


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and leftovers(target.parent) == []


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "rows.jsonl"
    atomic_write_jsonl(target, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_jsonl(target, rows())
    assert target.read_text() == '{"a": 1}\n' and leftovers(tmp_path) == []


def test_private_files_are_0600_from_the_start_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        path = atomic_write_json(tmp_path / "mapping.private.json", {"k": "v"}, private=True)
        public = atomic_write_json(tmp_path / "public.json", {"k": "v"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o666
    assert json.loads(path.read_text()) == {"k": "v"}


def test_append_text_creates_a_private_log_and_only_appends(tmp_path):
    old = os.umask(0o000)
    try:
        log = append_text(tmp_path / "logs" / "audit.jsonl", "", private=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and log.read_text() == ""
    append_text(log, "one\n", private=True)
    append_text(log, "two\nthree\n", private=True)
    assert log.read_text() == "one\ntwo\nthree\n"


def test_jsonl_rows_and_records(tmp_path):
    class Record:
        def to_json(self):
            return {"r": 1}

    assert atomic_write_jsonl(tmp_path / "x.jsonl", [{"é": "ü"}, Record()]) == 2
    assert (tmp_path / "x.jsonl").read_text(encoding="utf-8") == '{"é": "ü"}\n{"r": 1}\n'


def test_atomic_dir_commits_replaces_and_rolls_back(tmp_path):
    target = tmp_path / "final"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("first")
    with atomic_dir(target) as d:
        (d / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    with pytest.raises(ValueError):
        with atomic_dir(target) as d:
            (d / "c.txt").write_text("half")
            raise ValueError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and leftovers(tmp_path) == []


def test_atomic_dir_without_replace_keeps_what_another_process_wrote(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target, replace=False) as d:
        (d / "x").write_text("mine")
        target.mkdir()
        (target / "x").write_text("theirs")
    assert (target / "x").read_text() == "theirs" and leftovers(tmp_path) == []


def test_private_dir(tmp_path):
    with atomic_dir(tmp_path / "p", private=True) as d:
        (d / "f").write_text("x")
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o700


def test_read_jsonl_reports_every_bad_line_with_its_number(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"ok": 1}\n\nnot json\n[1, 2]\n{"caf\xe9": 1}\n{"ok": 2}\n')
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    text = str(err.value)
    assert "3 problem(s)" in text
    assert f"{path}:3: not valid JSON" in text and f"{path}:4: expected a JSON object" in text
    assert f"{path}:5: not UTF-8" in text and ":1:" not in text  # the BOM line is fine
    good = [row for _, row in iter_jsonl(path) if isinstance(row, dict)]
    assert good == [{"ok": 1}, {"ok": 2}]


def test_read_jsonl_rows_carry_their_lines_and_a_missing_file_is_one_clear_error(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert [(w.line, r) for w, r in read_jsonl(path)] == [(1, {"a": 1}), (3, {"a": 2})]
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
