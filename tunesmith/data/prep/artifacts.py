"""The manifest that each prep step writes beside its output, and what steps read from rows.

A manifest records what a step read (paths + sha256), the config it ran with, what it wrote and how
many rows of each kind. A step whose manifest matches its current inputs and config, and whose outputs
are still the files it wrote, is up to date and is skipped: that is what makes the chain resumable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunesmith import __version__
from tunesmith.files import atomic_write_json, read_json, sha256_file
from tunesmith.records import DataError
from tunesmith.redact import redact


def sha256_of_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    return [{"path": str(p), "sha256": sha256_file(p)} for p in paths]


def write_manifest(
    output: str | Path,
    step: str,
    config: dict[str, Any],
    inputs: Iterable[str | Path],
    outputs: Iterable[str | Path],
    counts: dict[str, Any],
    private_outputs: Iterable[str | Path] = (),
) -> Path:
    """`private_outputs` (the PII mapping) are recorded by hash only, apart from the outputs that travel with the
    data; the step is up to date only while they are intact too. Secrets in the config or counts are redacted."""
    manifest = {
        "step": step,
        "tunesmith_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "inputs": _file_entries(inputs),
        "outputs": _file_entries(outputs),
        "private_outputs": _file_entries(private_outputs),
        "counts": counts,
    }
    return atomic_write_json(manifest_path(output), redact(manifest))


def read_manifest(output: str | Path) -> dict[str, Any] | None:
    target = manifest_path(output)
    if not target.is_file():
        return None
    try:
        manifest = read_json(target)
    except DataError:
        return None  # a damaged manifest only means the step runs again
    return manifest if isinstance(manifest, dict) else None


def is_up_to_date(output: str | Path, step: str, config: dict[str, Any], inputs: Iterable[str | Path],
                  private_outputs: Iterable[str | Path] = ()) -> bool:
    """True when the last run of `step` used the same config and inputs and its outputs (private ones included)
    are untouched."""
    manifest = read_manifest(output)
    if manifest is None or manifest.get("step") != step or manifest.get("config") != redact(config):
        return False
    try:
        if manifest.get("inputs") != _file_entries(inputs):
            return False
        private = manifest.get("private_outputs", [])
        if [entry["path"] for entry in private] != [str(p) for p in private_outputs]:
            return False
        return all(Path(o["path"]).is_file() and sha256_file(o["path"]) == o["sha256"] for o in manifest["outputs"] + private)
    except (OSError, KeyError, TypeError):
        return False


def skip_if_up_to_date(output: str | Path, step: str, config: dict[str, Any], inputs: Iterable[str | Path], force: bool,
                       private_outputs: Iterable[str | Path] = ()) -> bool:
    """For a verb: True (and says so) when its output is up to date and --force was not given."""
    if not force and is_up_to_date(output, step, config, inputs, private_outputs):
        from tunesmith.cli import console

        console.print(f"{output}: up to date with its inputs and settings (nothing to do; --force to redo)")
        return True
    return False


def rejects_path(out: str | Path) -> Path:
    """Where a step writes what it rejected, with reasons: pairs.jsonl → pairs.rejects.jsonl."""
    out = Path(out)
    return out.with_name(out.stem + ".rejects.jsonl")


def write_step_outputs(out: Path, step: str, settings: dict[str, Any], inputs: list[Path], rows: list,
                       rejects: list, counts: dict[str, Any]) -> Path:
    """A teacher step's results: the rows, the rejects beside them (with reasons), and the manifest; returns the
    rejects file."""
    from tunesmith.files import atomic_write_jsonl

    rejected = rejects_path(out)
    atomic_write_jsonl(out, rows)
    atomic_write_jsonl(rejected, (redact(r.to_json() if hasattr(r, "to_json") else r) for r in rejects))
    write_manifest(out, step, settings, inputs, [out, rejected], counts)
    return rejected
