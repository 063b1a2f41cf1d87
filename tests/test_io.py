"""Atomic, self-describing file I/O (s2d_pipeline/io.py): a crash or a failing block never
clobbers the previous good output, and every read defect names its file (and line)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from s2d_pipeline.errors import DataError
from s2d_pipeline.io import (
    COMPLETE_MARKER,
    atomic_dir,
    atomic_path,
    is_main_process,
    is_missing,
    read_json,
    read_jsonl,
    sha256_file,
    write_json,
    write_jsonl,
)


@pytest.fixture(autouse=True)
def _main_rank(monkeypatch):
    """Every test runs as rank 0 unless it sets RANK itself."""
    monkeypatch.delenv("RANK", raising=False)


def _leftovers(directory: Path, name: str) -> list[str]:
    """Temporary or backup siblings of `name` (`.name.*`), which must never survive a write."""
    return sorted(p.name for p in directory.glob(f".{name}.*"))


# ---- atomic_path ------------------------------------------------------------------------------


def test_atomic_path_renames_into_place_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # parent created on demand
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_text("new")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == "new"
    assert _leftovers(target.parent, "out.txt") == []


def test_atomic_path_failure_keeps_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    old = b"\x00previous good output\xff\n"
    target.write_bytes(old)
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        assert target.read_bytes() == old  # not yet replaced mid-write
        raise RuntimeError("boom")
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_failure_without_previous_file_creates_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("{")
        raise ValueError
    assert list(tmp_path.iterdir()) == []


# ---- atomic_dir -------------------------------------------------------------------------------


def test_atomic_dir_replaces_old_contents_and_marks_complete(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    with atomic_dir(out) as tmp:
        assert tmp != out
        (tmp / "weights.bin").write_bytes(b"w")
        assert (out / "stale.txt").exists()  # the old output stays until the block succeeds
        assert not (out / "weights.bin").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([COMPLETE_MARKER, "weights.bin"])
    assert json.loads((out / COMPLETE_MARKER).read_text()) == {"complete": True}
    assert _leftovers(tmp_path, "model") == []  # no temp dir, no `.model.old-*` backup


def test_atomic_dir_creates_missing_output(tmp_path):
    out = tmp_path / "a" / "b"
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1" and (out / COMPLETE_MARKER).is_file()


def test_atomic_dir_failure_leaves_old_dir_intact(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights.bin").write_bytes(b"good")
    (out / COMPLETE_MARKER).write_text('{"complete": true}')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(KeyError), atomic_dir(out) as tmp:
        (tmp / "weights.bin").write_bytes(b"half")
        raise KeyError("killed mid-stage")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path, "model") == []


def test_atomic_dir_failure_without_previous_output_leaves_nothing(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_removes_stale_temp_dirs_of_a_killed_run(tmp_path):
    out = tmp_path / "model"
    stale = tmp_path / ".model.s2d-tmp-abc123.tmp"  # what a SIGKILLed run leaves behind
    stale.mkdir()
    (stale / "weights.bin").write_bytes(b"partial")
    other = tmp_path / ".other.s2d-tmp-abc123.tmp"  # another output's temp dir: not ours to delete
    other.mkdir()
    sibling = tmp_path / ".model.v2.s2d-tmp-abc123.tmp"  # output `model.v2` is being written
    sibling.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "weights.bin").write_bytes(b"complete")
    assert not stale.exists()
    assert other.is_dir() and sibling.is_dir()
    assert (out / "weights.bin").read_bytes() == b"complete"
    assert _leftovers(tmp_path, "model") == [sibling.name]


# ---- JSON -------------------------------------------------------------------------------------


def test_write_json_round_trips_and_serialises_paths(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"a": 1, "p": Path("x/y"), "nested": [1.5, None]})
    assert read_json(target) == {"a": 1, "p": "x/y", "nested": [1.5, None]}
    assert _leftovers(tmp_path, "m.json") == []


def test_write_json_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"ok": True})
    before = target.read_bytes()
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})  # not serialisable: fails mid-write
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, "m.json") == []


def test_read_json_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "ledger.json"
    with pytest.raises(DataError, match="file not found") as info:
        read_json(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("content", [b'{"a": 1', b"", b"\xff\xfe{}"])
def test_read_json_invalid_is_data_error_naming_the_path(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="not valid JSON") as info:
        read_json(bad)
    assert str(bad) in str(info.value)


# ---- JSONL ------------------------------------------------------------------------------------


def test_read_jsonl_line_numbers_count_blank_lines(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_bytes(b'{"id": "a"}\n\n   \n{"id": "b", "x": [1]}\n\n')
    assert read_jsonl(f) == [{"id": "a", "_line": 1}, {"id": "b", "x": [1], "_line": 4}]


def test_write_jsonl_round_trips_unicode(tmp_path):
    f = tmp_path / "rows.jsonl"
    rows = [{"q": "ÿ ≠ 1"}, {"q": "日本"}]
    assert write_jsonl(f, iter(rows)) == 2
    assert read_jsonl(f) == [{**rows[0], "_line": 1}, {**rows[1], "_line": 2}]


def test_read_jsonl_bad_utf8_names_file_line_and_rule(tmp_path):
    f = tmp_path / "labels.jsonl"
    f.write_bytes(b'{"id": "a"}\n\n{"id": "caf\xe9"}\n')  # latin-1 byte on line 3
    with pytest.raises(DataError, match="utf-8 encoding") as info:
        read_jsonl(f)
    assert f"{f}:3:" in str(info.value)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_read_jsonl_rejects_nan_and_infinity(tmp_path, constant):
    f = tmp_path / "rows.jsonl"
    f.write_text(f'{{"id": "a", "answer": 1}}\n{{"id": "b", "answer": {constant}}}\n')
    with pytest.raises(DataError, match=constant) as info:
        read_jsonl(f)
    assert f"{f}:2:" in str(info.value)


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', "3", "null"])
def test_read_jsonl_rejects_non_object_lines(tmp_path, line):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"id": "a"}\n' + line + "\n")
    with pytest.raises(DataError, match="must be a JSON object") as info:
        read_jsonl(f)
    assert f"{f}:2:" in str(info.value)


def test_read_jsonl_invalid_json_names_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"id": "a"}\n{"id": \n')
    with pytest.raises(DataError, match="valid JSONL") as info:
        read_jsonl(f)
    assert f"{f}:2:" in str(info.value)


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as info:
        read_jsonl(tmp_path / "none.jsonl")
    assert str(tmp_path / "none.jsonl") in str(info.value)


# ---- a user's data file in another format ------------------------------------------------------

ROWS = [
    {"id": "lab-0", "prompt": "1+2=", "answer": "3"},
    {"id": "lab-1", "prompt": "4+4=", "answer": "8"},
    {"id": "lab-2", "prompt": "9+9=", "answer": "18"},
]


def test_json_array_rows_carry_the_line_each_object_starts_on(tmp_path):
    from s2d_pipeline.io import read_data_file

    f = tmp_path / "labels.json"
    f.write_text(json.dumps(ROWS, indent=2))  # what `json.dump(rows, f, indent=2)` writes
    starts = [i for i, line in enumerate(f.read_text().splitlines(), start=1) if line.strip() == "{"]
    assert read_data_file(f) == [{**row, "_line": line} for row, line in zip(ROWS, starts, strict=True)]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[\n  {"id": "a"},\n  "just text"\n]', 3, "each element must be a JSON object, got str"),
        ('[\n  {"id": "a"},\n  {"id": "b", "answer": NaN}\n]', 3, "NaN is not valid JSON"),
        ('[\n  {"id": "a"},\n  {"id": "b",\n]', 4, "rule 'valid JSON' failed"),
    ],
)
def test_json_array_defects_name_the_line(tmp_path, text, line, message):
    from s2d_pipeline.io import read_data_file

    f = tmp_path / "labels.json"
    f.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_data_file(f)
    assert str(info.value).startswith(f"{f}:{line}: "), info.value


def test_parquet_written_by_datasets_is_read_with_row_numbers(tmp_path):
    from datasets import Dataset

    from s2d_pipeline.io import read_data_file

    f = tmp_path / "labels.parquet"
    Dataset.from_list(ROWS).to_parquet(str(f))
    assert read_data_file(f) == [{**row, "_line": i} for i, row in enumerate(ROWS, start=1)]


def test_arrow_file_saved_by_datasets_is_read_with_row_numbers(tmp_path):
    from datasets import Dataset

    from s2d_pipeline.io import read_data_file

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    (f,) = (tmp_path / "saved").glob("*.arrow")
    assert read_data_file(f) == [{**row, "_line": i} for i, row in enumerate(ROWS, start=1)]


def test_corrupt_parquet_is_refused_naming_file_and_format(tmp_path):
    from datasets import Dataset

    from s2d_pipeline.io import read_data_file

    f = tmp_path / "labels.parquet"
    Dataset.from_list(ROWS).to_parquet(str(f))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a copy cut short
    with pytest.raises(DataError, match="rule 'readable Parquet' failed") as info:
        read_data_file(f)
    assert str(info.value).startswith(f"{f}: "), info.value


def test_binary_garbage_is_refused_with_the_formats_read_not_an_encoding_hint(tmp_path):
    from s2d_pipeline.io import read_data_file

    f = tmp_path / "labels.jsonl"
    f.write_bytes(hashlib.sha256(b"seed").digest() * 64 + b"\x00\x01\x02")  # 2 kB of noise
    with pytest.raises(DataError) as info:
        read_data_file(f)
    message = str(info.value)
    assert message.startswith(f"{f}: rule 'a readable data file' failed"), message
    assert "JSONL" in message and "JSON array" in message and "Parquet" in message and "Arrow" in message
    assert "UTF-8" not in message and "re-save" not in message, message


def test_jsonl_in_another_encoding_keeps_its_encoding_hint(tmp_path):
    from s2d_pipeline.io import read_data_file

    f = tmp_path / "labels.jsonl"
    f.write_bytes('{"id": "a"}\n{"id": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"rule 'utf-8 encoding' failed.*re-save the file as UTF-8"):
        read_data_file(f)


# ---- small helpers ----------------------------------------------------------------------------


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 10_000 + b"tail"  # > 2 MiB: several 1 MiB chunks plus a partial one
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()
    f.write_bytes(data[:-1] + b"T")
    assert sha256_file(f) != hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    ("value", "missing"),
    [(None, True), (math.nan, True), (float("nan"), True), (0.0, False), (0, False), ("", False), (math.inf, False)],
)
def test_is_missing(value, missing):
    assert is_missing(value) is missing


@pytest.mark.parametrize(("rank", "main"), [(None, True), ("0", True), ("1", False), ("3", False)])
def test_is_main_process_follows_rank(monkeypatch, rank, main):
    if rank is not None:
        monkeypatch.setenv("RANK", rank)
    assert is_main_process() is main


def test_non_main_rank_never_renames_a_file_into_place(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    existing, fresh = tmp_path / "out.json", tmp_path / "new.json"
    existing.write_text("rank 0's output")
    with atomic_path(existing) as tmp:
        assert tmp.parent != tmp_path
        tmp.write_text("rank 1 scratch")
    write_json(fresh, {"rank": 1})
    write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
    assert existing.read_text() == "rank 0's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_non_main_rank_never_renames_a_dir_into_place(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights.bin").write_bytes(b"rank 0")
    stale = tmp_path / ".model.s2d-tmp-abc.tmp"  # rank 0 owns cleanup, not the other ranks
    stale.mkdir()
    with atomic_dir(out) as tmp:
        assert tmp.parent != tmp_path
        (tmp / "weights.bin").write_bytes(b"rank 2")
    with atomic_dir(tmp_path / "other") as tmp:
        (tmp / "x").write_text("1")
    assert sorted(p.name for p in out.iterdir()) == ["weights.bin"]
    assert (out / "weights.bin").read_bytes() == b"rank 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.s2d-tmp-abc.tmp", "model"]
