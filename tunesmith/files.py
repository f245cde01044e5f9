"""Reading and writing files safely: the one place that does it.

Writes are atomic: the bytes go to a temporary file (or folder) beside the target, are fsynced, and are renamed
over the target, and the folder holding it is fsynced too; a crash at any moment leaves the old complete file or
the new complete one, never a mix. Private files (`private=True`) are created with mode 0600 from their first
byte, never made private afterwards. JSONL is read with every bad line reported at once, with its file and line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunesmith.records import DataError, DataIssue, SourceRef

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
TMP_PREFIX = ".tmp-"  # temporary files and folders start with this: listings of real outputs skip them


# ---- writing ----

def _temp_beside(target: Path) -> Path:
    return target.with_name(f"{TMP_PREFIX}{target.name}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(path: str | Path, private: bool):
    """A binary file object on a temp file beside `path`; renamed over `path` when the block ends without error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE if private else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, private: bool = False) -> Path:
    with _atomic_file(path, private) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, private: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_json(path: str | Path, obj: Any, *, private: bool = False, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", private=private)


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any], *, private: bool = False) -> int:
    """One JSON object per line (dicts, or records with `to_json()`); returns how many rows were written."""
    count = 0
    with _atomic_file(path, private) as f:
        for row in rows:
            if hasattr(row, "to_json"):
                row = row.to_json()
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1
    return count


def append_text(path: str | Path, text: str, *, private: bool = False) -> Path:
    """Append to a log file (created, with its folder, if missing; `append_text(path, "")` only creates it).

    Logs grow line by line, so they are appended, not rewritten atomically: the file is opened with O_APPEND and the
    text goes out in whole `write` calls, so lines of concurrent writers never interleave within a line, and a crash
    loses at most the line being written. A private log is created 0600 from its first byte.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE if private else 0o666)
    try:
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
    return target


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, private: bool = False, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; fill it in the block. On success every file is fsynced and the
    folder takes `target`'s place; on failure it is removed and `target` is untouched.

    `replace=False` is for caches that several processes may fill at once: if `target` exists by the time the
    block ends (another process finished first), the new folder is discarded and the existing one kept.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(target)
    tmp.mkdir(mode=PRIVATE_DIR_MODE if private else 0o777)
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists() and not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if target.exists():
            # A non-empty folder cannot be renamed over: move the old one aside first, then drop it.
            old = _temp_beside(target)
            os.rename(target, old)
            os.rename(tmp, target)
            fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, target)
            except OSError:
                if replace or not target.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process renamed its copy in first
                return
            fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- reading ----

BOM = b"\xef\xbb\xbf"


def _not_utf8(where: SourceRef, error: UnicodeDecodeError, offset: int = 0) -> DataIssue:
    return DataIssue(where, f"not UTF-8 text (byte {error.start - offset + 1} of the line); re-save the file as UTF-8")


def _cannot_read(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied; make the file readable (chmod +r)"
    return f"cannot be read ({error.strerror or error})"


def read_text(path: str | Path) -> str:
    """A whole text file as UTF-8 (a byte-order mark dropped); any problem is a DataError with the file and, for
    bytes that are not UTF-8, the line they are on."""
    path = Path(path)
    where = SourceRef(str(path))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError([DataIssue(where, "file not found")]) from None
    except IsADirectoryError:
        raise DataError([DataIssue(where, "is a folder, not a file")]) from None
    except OSError as e:
        raise DataError([DataIssue(where, _cannot_read(e))]) from None
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        at = SourceRef(str(path), line=raw.count(b"\n", 0, e.start) + 1)
        raise DataError([_not_utf8(at, e, line_start)]) from None


def parse_json(text: str, where: SourceRef) -> Any | DataIssue:
    """A JSON value, or a DataIssue where it stops being JSON: `where` itself for one line of a file (JSONL), the
    line within the text for a whole file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = where if where.line is not None else SourceRef(where.path, line=e.lineno)
        return DataIssue(at, f"not valid JSON ({e.msg} at column {e.colno})")
    except RecursionError:
        return DataIssue(where, "not usable JSON (nested too deeply)")


def read_json(path: str | Path) -> Any:
    """A whole JSON file; any problem is a DataError with the file and line."""
    value = parse_json(read_text(path), SourceRef(str(path)))
    if isinstance(value, DataIssue):
        raise DataError([value])
    return value


def iter_json_lines(path: str | Path) -> Iterator[tuple[SourceRef, Any | DataIssue]]:
    """(where, value) for every non-blank line holding any JSON value, or (where, issue) for a bad line.

    A UTF-8 byte-order mark at the start of the file is accepted; a line that is not UTF-8 is reported with its
    number, like a line that is not JSON.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        where = SourceRef(name)
        yield where, DataIssue(where, "is a folder, not a file" if path.is_dir() else "file not found")
        return
    try:
        f = path.open("rb")
    except OSError as e:
        yield SourceRef(name), DataIssue(SourceRef(name), _cannot_read(e))
        return
    with f:
        for lineno, raw in enumerate(f, 1):
            where = SourceRef(name, line=lineno)
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, _not_utf8(where, e)
                continue
            if line.strip():
                yield where, parse_json(line, where)


def iter_jsonl(path: str | Path) -> Iterator[tuple[SourceRef, dict[str, Any] | DataIssue]]:
    """(where, row) for every JSON object line, or (where, issue) for any other line (see `iter_json_lines`).

    For callers that decide themselves what a bad line means (skip it, or collect it with other problems);
    `read_jsonl` raises them all at once.
    """
    for where, value in iter_json_lines(path):
        if isinstance(value, DataIssue) or isinstance(value, dict):
            yield where, value
        else:
            yield where, DataIssue(where, "expected a JSON object per line")


def read_jsonl(path: str | Path, *, hint: str = "Fix or remove these lines and run again.") -> list[tuple[SourceRef, dict[str, Any]]]:
    """Every row with its file:line; all bad lines (or a missing file) raised together in one DataError."""
    rows: list[tuple[SourceRef, dict[str, Any]]] = []
    issues: list[DataIssue] = []
    for where, row in iter_jsonl(path):
        if isinstance(row, DataIssue):
            issues.append(row)
        else:
            rows.append((where, row))
    if issues:
        missing = len(issues) == 1 and issues[0].source.line is None
        raise DataError(issues, hint="" if missing else hint)
    return rows


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
