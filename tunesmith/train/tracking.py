"""Experiment tracking during training: one JSONL line per log step (for programs) and TensorBoard (for people)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tunesmith.files import atomic_write_jsonl, read_jsonl

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True):
        self.path = run_dir / METRICS_FILE
        if self.path.exists():
            # On resume, lines past the checkpoint are dropped: they will be logged again, identically.
            atomic_write_jsonl(self.path, [row for row in read_metrics(run_dir) if row.get("step", 0) <= resume_step])
        self._file = self.path.open("a")
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

    def close(self) -> None:
        self._file.close()
        if self._tb:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order ([] when the run logged nothing)."""
    path = Path(run_dir) / METRICS_FILE
    return [row for _, row in read_jsonl(path)] if path.is_file() else []
