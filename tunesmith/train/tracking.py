"""Experiment tracking during training: one JSONL line per log step (for programs) and TensorBoard (for people).

metrics.jsonl is an append-only log: a crash (power loss, full disk) can cut its last line short. Readers drop such
a line and say so; a resumed run rewrites the log up to its checkpoint (atomically) and appends from there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tunesmith.files import atomic_write_jsonl, iter_jsonl
from tunesmith.records import DataError, DataIssue

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True):
        self.path = run_dir / METRICS_FILE
        if self.path.exists():
            # On resume, lines past the checkpoint are dropped: they will be logged again, identically.
            rows, cut_off = _read(self.path)
            if cut_off:
                from tunesmith.cli import console

                console.print(f"[yellow]note[/]: the last line of {self.path} was cut off (the run was killed while "
                              "writing it); dropped it")
            atomic_write_jsonl(self.path, [row for row in rows if row.get("step", 0) <= resume_step])
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, **values: float) -> None:
        # `time` (Unix seconds, in the JSONL only) lets a reader of a live run work out its pace and ETA.
        self._file.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        self._file.flush()
        if self._tb:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)

    def sync(self) -> None:
        """Make every line logged so far durable (before a checkpoint that a resume will start from)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb:
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb:
            self._tb.close()


def _read(path: Path) -> tuple[list[dict], bool]:
    """(rows, whether a cut-off last line was dropped); any other bad line is a DataError with its line."""
    entries = list(iter_jsonl(path))
    cut_off = bool(entries) and isinstance(entries[-1][1], DataIssue) and not _ends_with_newline(path)
    if cut_off:
        entries.pop()
    issues = [row for _, row in entries if isinstance(row, DataIssue)]
    if issues:
        raise DataError(issues, hint=f"{path} is damaged: remove these lines (the log is not needed to resume).")
    return [row for _, row in entries], cut_off


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order ([] when the run logged nothing)."""
    path = Path(run_dir) / METRICS_FILE
    return _read(path)[0] if path.is_file() else []
