"""JSONL files and the manifest that each prep step writes beside its output.

A manifest records what a step read (paths + sha256), the config it ran with, what it wrote and how
many rows of each kind. A step whose manifest matches its current inputs and config, and whose outputs
are still the files it wrote, is up to date and is skipped: that is what makes the chain resumable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunesmith import __version__
from tunesmith.records import DataError, DataIssue, SourceRef, TunesmithError


def sha256_of_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_jsonl(path: str | Path) -> list[tuple[SourceRef, dict[str, Any]]]:
    """All rows with their file:line; every unparsable line is reported at once in one DataError."""
    path = Path(path)
    if not path.is_file():
        raise TunesmithError(f"{path}: file not found (pass the output of the previous step, e.g. chunks.jsonl)")
    rows: list[tuple[SourceRef, dict[str, Any]]] = []
    issues: list[DataIssue] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = SourceRef(str(path), line=lineno)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                issues.append(DataIssue(where, f"not valid JSON ({e.msg} at column {e.colno})"))
                continue
            if not isinstance(row, dict):
                issues.append(DataIssue(where, "expected a JSON object per line"))
                continue
            rows.append((where, row))
    if issues:
        raise DataError(issues, hint="Fix or remove these lines and run the step again.")
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write atomically (temp file + rename) so an interrupted step never leaves a half file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


def iter_texts(row: dict[str, Any]) -> Iterator[str]:
    """The natural-language content of a row: its chat messages, or its `text` field."""
    if isinstance(row.get("messages"), list):
        for message in row["messages"]:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                yield message["content"]
    elif isinstance(row.get("text"), str):
        yield row["text"]


def field_value(row: dict[str, Any], dotted: str) -> Any:
    """`meta.doc_id` → row["meta"]["doc_id"]; None where any part is missing."""
    node: Any = row
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def manifest_path(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix:
        return output.with_name(output.stem + ".manifest.json")
    return output / "manifest.json"


def _file_entries(paths: Iterable[str | Path]) -> list[dict[str, str]]:
    return [{"path": str(p), "sha256": sha256_of_file(p)} for p in paths]


def write_manifest(
    output: str | Path,
    step: str,
    config: dict[str, Any],
    inputs: Iterable[str | Path],
    outputs: Iterable[str | Path],
    counts: dict[str, Any],
) -> Path:
    manifest = {
        "step": step,
        "tunesmith_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "inputs": _file_entries(inputs),
        "outputs": _file_entries(outputs),
        "counts": counts,
    }
    target = manifest_path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def read_manifest(output: str | Path) -> dict[str, Any] | None:
    target = manifest_path(output)
    if not target.is_file():
        return None
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a damaged manifest only means the step runs again


def is_up_to_date(output: str | Path, step: str, config: dict[str, Any], inputs: Iterable[str | Path]) -> bool:
    """True when the last run of `step` used the same config and inputs and its outputs are untouched."""
    manifest = read_manifest(output)
    if manifest is None or manifest.get("step") != step or manifest.get("config") != config:
        return False
    try:
        if manifest.get("inputs") != _file_entries(inputs):
            return False
        return all(Path(o["path"]).is_file() and sha256_of_file(o["path"]) == o["sha256"] for o in manifest["outputs"])
    except (OSError, KeyError, TypeError):
        return False
