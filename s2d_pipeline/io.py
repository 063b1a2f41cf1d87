"""Atomic, self-describing file I/O.

Every output is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written file that a later stage could take for a complete one, and a failing stage never
clobbers the previous good output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from s2d_pipeline.errors import DataError, S2DError

COMPLETE_MARKER = "_COMPLETE.json"


def is_main_process() -> bool:
    """False on the non-zero ranks of a multi-process (accelerate/torchrun) training stage."""
    return int(os.environ.get("RANK", "0")) == 0


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise S2DError(f"cannot create output directory {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK):
        raise S2DError(f"output directory {directory} is not writable")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` only if the block succeeds.
    On a non-main rank the file is private scratch and never renamed (rank 0 writes the output)."""
    path = Path(path)
    if not is_main_process():
        with tempfile.TemporaryDirectory(prefix="s2d-rank-") as scratch:
            yield Path(scratch) / path.name
        return
    _check_writable(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` (old contents removed) and is
    marked complete. On failure the temporary directory is removed and `path` is left as it was.
    On a non-main rank it is private scratch and never renamed (rank 0 writes the output)."""
    path = Path(path)
    if not is_main_process():
        with tempfile.TemporaryDirectory(prefix="s2d-rank-") as scratch:
            yield Path(scratch)
        return
    _check_writable(path.parent)
    # Temp directories left by a killed run are never complete; the `s2d-tmp-` infix keeps the
    # pattern from matching the temp directory of a sibling output named like `<name>.v2`.
    for stale in path.parent.glob(f".{path.name}.s2d-tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.s2d-tmp-", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"complete": True}))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_unit_metrics(directory: str | Path, metrics: dict, prune: bool = False) -> dict:
    """Write a per-arm stage's metrics, one file per unit (`<directory>/<unit>.json`): each unit's
    DVC stage owns its file, and units finishing at once on workers sharing the project never write
    the same one. `prune` (the whole stage ran): remove the files of units it no longer has. Returns
    `metrics`."""
    directory = Path(directory)
    for unit, entry in metrics.items():
        write_json(directory / f"{unit}.json", entry)
    if prune and is_main_process() and directory.is_dir():
        for stale in directory.glob("*.json"):
            if stale.stem not in metrics:
                stale.unlink()
    return metrics


def read_unit_metrics(directory: str | Path) -> dict:
    """A per-arm stage's metrics: its units' files merged, by unit name."""
    directory = Path(directory)
    return {p.stem: read_json(p) for p in sorted(directory.glob("*.json"))} if directory.is_dir() else {}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (has the stage that writes it run?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from exc


# What `read_data_file` reads; named in its refusals, so a user knows what to convert to.
DATA_FORMATS = "JSONL (one JSON object per line), a JSON array of objects, Parquet, Arrow (`datasets`' own files)"
_ARROW_FILE_MAGIC, _ARROW_STREAM_START = b"ARROW1", b"\xff\xff\xff\xff"  # IPC file; IPC stream (save_to_disk)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file; any defect is reported with the file and 1-based line number.

    Each returned row carries its line number under the key `_line`.
    """
    path = _readable_file(path)
    return _jsonl_rows(path, _read_bytes(path))


def read_data_file(path: str | Path) -> list[dict]:
    """The rows of a user's data file, told apart by content, not name: JSONL, a JSON array of
    objects (`json.dump(rows, f)`), Parquet or an Arrow file (what `datasets` writes: `to_parquet`,
    the shards of `save_to_disk`). Each row carries under `_line` where it is, for messages of the
    form `file:N`: the line it starts on in a text file, its 1-based row number in Parquet or Arrow.
    Anything else is refused with the formats that are read."""
    path = _readable_file(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror}") from exc
    if head.startswith(b"PAR1"):
        return _arrow_rows(path, "Parquet", head)
    if head.startswith((_ARROW_FILE_MAGIC, _ARROW_STREAM_START)):
        return _arrow_rows(path, "Arrow", head)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 byte-order mark: text, in another encoding
        raise DataError(f"{path}: rule 'utf-8 encoding' failed: the file is UTF-16 (re-save the file as UTF-8)")
    raw = _read_bytes(path)
    if b"\x00" in raw:  # no UTF-8 text holds a NUL byte
        raise DataError(
            f"{path}: rule 'a readable data file' failed: it holds binary data, and is none of the formats "
            f"s2d reads: {DATA_FORMATS}"
        )
    if raw.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"["):
        return _json_array_rows(path, raw)
    return _jsonl_rows(path, raw)


def _readable_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(
            f"{path}: rule 'a JSONL file' failed: this path is a directory, not a file "
            "(point the data key at the .jsonl file itself)"
        )
    return path


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror}") from exc


def _jsonl_rows(path: Path, raw: bytes) -> list[dict]:
    rows: list[dict] = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}:{lineno}: rule 'utf-8 encoding' failed: byte {exc.start} of the line "
                f"cannot be decoded as UTF-8 (re-save the file as UTF-8)"
            ) from exc
        try:
            row = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            raise DataError(f"{path}:{lineno}: rule 'valid JSONL' failed: {exc}") from exc
        if not isinstance(row, dict):
            raise DataError(
                f"{path}:{lineno}: rule 'valid JSONL' failed: each line must be a JSON object, "
                f"got {type(row).__name__}"
            )
        row["_line"] = lineno
        rows.append(row)
    return rows


def _json_array_rows(path: Path, raw: bytes) -> list[dict]:
    """A JSON array's objects, each with the line its `{` is on (decoded one element at a time, so a
    defect names the element's line)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: rule 'utf-8 encoding' failed: a byte cannot be decoded as UTF-8 (re-save the file as UTF-8)"
        ) from exc
    counted = {"pos": 0, "line": 1}

    def line_at(pos: int) -> int:  # counted forward from the last call: positions only grow
        counted["line"] += text.count("\n", counted["pos"], pos)
        counted["pos"] = pos
        return counted["line"]

    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    space = json.decoder.WHITESPACE.match
    rows: list[dict] = []
    pos = space(text, text.index("[") + 1).end()
    while not (text.startswith("]", pos) and not rows):  # `[]` holds no rows
        line = line_at(pos)
        try:
            element, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: rule 'valid JSON' failed: {exc}") from exc
        except ValueError as exc:  # NaN / Infinity
            raise DataError(f"{path}:{line}: rule 'valid JSON' failed: {exc}") from exc
        if not isinstance(element, dict):
            raise DataError(
                f"{path}:{line}: rule 'a JSON array of objects' failed: each element must be a JSON object, "
                f"got {type(element).__name__}"
            )
        rows.append({**element, "_line": line})
        pos = space(text, pos).end()
        if text.startswith(",", pos):
            pos = space(text, pos + 1).end()
        elif text.startswith("]", pos):
            break
        else:
            raise DataError(f"{path}:{line_at(pos)}: rule 'valid JSON' failed: expected ',' or ']' after an element")
    if text[pos + 1 :].strip():
        raise DataError(f"{path}:{line_at(pos)}: rule 'valid JSON' failed: text after the array's closing ']'")
    return rows


def _arrow_rows(path: Path, kind: str, head: bytes) -> list[dict]:
    """Rows of a Parquet or Arrow file, numbered from 1 (read with pyarrow, as `datasets` reads them)."""
    import pyarrow as pa

    try:
        if kind == "Parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(str(path))
        else:
            with pa.memory_map(str(path)) as source:
                opened = pa.ipc.open_file if head.startswith(_ARROW_FILE_MAGIC) else pa.ipc.open_stream
                table = opened(source).read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            f"{path}: rule 'readable {kind}' failed: {exc} (cut short or corrupt? write it again)"
        ) from exc
    return [{**row, "_line": i} for i, row in enumerate(table.to_pylist(), start=1)]


def _reject_constant(name: str) -> float:
    # NaN/Infinity are not JSON; a label file holding them is broken, not numeric.
    raise ValueError(f"{name} is not valid JSON")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
