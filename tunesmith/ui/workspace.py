"""What the web UI may touch, and what it finds there: configs, data files, run folders, eval reports, manifests.

Every path that arrives in a request goes through `Workspace.resolve`: relative paths are taken from the project
folder, symbolic links are followed, and the real location must lie inside the project, a runs folder or an
allowed folder; anything else is refused (403), whatever `..` or `%2e%2e` it was spelled with. Paths named inside a
config that the UI is asked to run (data files, models, run folders) are checked the same way (`check_config_paths`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith.files import TMP_PREFIX
from tunesmith.records import TunesmithError

SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".cache", "tensorboard", "checkpoints", "final",
             "best", "plots", "site-packages"}
DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}
MAX_PATH_CHARS = 1024
UI_FILE_PREFIX = "ui-"  # files the UI writes into run and report folders (its launch config, the command's log)
TRAIN_LAUNCH, EVAL_LAUNCH = f"{UI_FILE_PREFIX}train.yaml", f"{UI_FILE_PREFIX}eval.yaml"


def is_run_dir(path: Path) -> bool:
    """A run folder: `tunesmith train` wrote its config.yaml, or the UI is starting one there."""
    return (path / "config.yaml").is_file() or (path / TRAIN_LAUNCH).is_file()
LIVE_SECONDS = 90  # a run without a summary whose metrics changed this recently counts as running (e.g. from a terminal)


class Refused(TunesmithError):
    """A path outside what the UI may touch (403), or one that is not what it should be (404)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


@dataclass
class Workspace:
    project: Path
    runs: list[Path]
    allow: list[Path] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg) -> Workspace:
        project = Path(cfg.project).expanduser().resolve()
        if not project.is_dir():
            raise TunesmithError(f"project folder {project} does not exist")

        def under(p: str) -> Path:
            return (project / Path(p).expanduser()).resolve()

        runs = [under(r) for r in cfg.runs] or [project / "runs"]
        return cls(project, runs, [under(a) for a in cfg.allow])

    @property
    def roots(self) -> list[Path]:
        return [self.project, *self.runs, *self.allow]

    @property
    def new_runs_dir(self) -> Path:
        return self.runs[0]

    # ---- paths ----

    def resolve(self, given: str | os.PathLike, *, must_exist: bool = True) -> Path:
        """The real path of `given` (relative to the project), if it lies inside a folder the UI may touch."""
        text = str(given)
        if not text.strip() or len(text) > MAX_PATH_CHARS or "\x00" in text:
            raise Refused("not a usable path", 400)
        path = (self.project / Path(text).expanduser()).resolve()
        if not any(path == root or path.is_relative_to(root) for root in self.roots):
            raise Refused(f"{text}: outside the folders this UI may use (the project {self.project}, the runs folders "
                          "and those given with --allow)")
        if must_exist and not path.exists():
            raise Refused(f"{text}: not found", 404)
        return path

    def show(self, path: Path) -> str:
        """How a path is written in the UI and in its URLs: relative to the project where it lies inside it."""
        try:
            return str(path.relative_to(self.project))
        except ValueError:
            return str(path)

    def run_dir(self, given: str) -> Path:
        path = self.resolve(given)
        if not is_run_dir(path):
            raise Refused(f"{given}: not a run folder (no config.yaml)", 404)
        return path

    def report_dir(self, given: str) -> Path:
        path = self.resolve(given)
        if not path.is_dir():
            raise Refused(f"{given}: not a report folder", 404)
        return path

    # ---- discovery ----

    def _walk(self, root: Path, depth: int):
        """Folders under `root` down to `depth` levels, skipping hidden, temporary and bulky ones."""
        if not root.is_dir():
            return
        todo = [(root, 0)]
        while todo:
            folder, level = todo.pop()
            yield folder
            if level >= depth:
                continue
            try:
                children = sorted((c for c in folder.iterdir() if c.is_dir()), reverse=True)
            except OSError:
                continue
            for child in children:
                if child.name.startswith((".", TMP_PREFIX)) or child.name in SKIP_DIRS:
                    continue
                if is_run_dir(child) and any(child.is_relative_to(r) for r in self.runs):
                    yield child  # a run folder: listed, not searched for configs of its own
                    continue
                todo.append((child, level + 1))

    def yaml_files(self) -> list[Path]:
        """YAML files of the project (not inside run folders)."""
        found = []
        for folder in self._walk(self.project, 4):
            if is_run_dir(folder) and any(folder.is_relative_to(r) for r in self.runs):
                continue
            found += [p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml") and p.is_file()
                      and not p.name.startswith(UI_FILE_PREFIX)]
        return sorted(found)

    def configs(self, kind: str) -> list[Path]:
        """Project YAML files that look like `kind` configs: train (data.train, no data.test), eval (data.test),
        guardrails (input/output rails). By their top-level shape only: a config with mistakes is still listed."""
        out = []
        for path in self.yaml_files():
            doc = _load_yaml_quietly(path)
            if not isinstance(doc, dict):
                continue
            data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
            if kind == "train" and "train" in data and "test" not in data:
                out.append(path)
            elif kind == "eval" and "test" in data:
                out.append(path)
            elif kind == "guardrails" and "data" not in doc and set(doc) & {"input", "output", "refusal"} \
                    and set(doc) <= {"input", "output", "refusal", "audit_log"}:
                out.append(path)
        return out

    def data_files(self) -> list[Path]:
        found = []
        for folder in self._walk(self.project, 4):
            if is_run_dir(folder) and any(folder.is_relative_to(r) for r in self.runs):
                continue
            found += [p for p in folder.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES
                      and not p.name.endswith((".manifest.json", "report.json", ".rejects.jsonl"))
                      and p.name not in ("manifest.json", "metrics.jsonl", "bad_rows.jsonl", "data_report.json",
                                         "train_summary.json", "best.json")]
        return sorted(found)

    def run_dirs(self) -> list[Path]:
        found: dict[Path, None] = {}
        for root in self.runs:
            for folder in self._walk(root, 3):
                if folder != root and is_run_dir(folder):
                    found[folder] = None
        return sorted(found, key=lambda p: max(_mtime(p / "config.yaml"), _mtime(p / TRAIN_LAUNCH)), reverse=True)

    def report_dirs(self) -> list[Path]:
        found: dict[Path, None] = {}
        for root in self.runs:
            for folder in self._walk(root, 3):
                if (folder / "report.json").is_file() or (folder / f"{UI_FILE_PREFIX}eval.log").is_file():
                    found[folder] = None
        return sorted(found, key=lambda p: max(_mtime(p / "report.json"), _mtime(p / f"{UI_FILE_PREFIX}eval.log")), reverse=True)

    # ---- configs the UI is asked to run ----

    def check_model_name(self, name: str, what: str) -> list[str]:
        from tunesmith.models.loading import EMBEDDED

        if name in EMBEDDED:
            return []
        looks_like_path = name.startswith(("/", ".", "~")) or name.endswith(".gguf") or (self.project / name).exists()
        if not looks_like_path:
            return []  # a hub id: read from the local Hugging Face cache only, never downloaded
        return self._check(name, what)

    def _check(self, value: str | None, what: str) -> list[str]:
        if not value:
            return []
        try:
            self.resolve(value, must_exist=False)
        except Refused as e:
            return [f"{what}: {e}"]
        return []

    def check_config_paths(self, cfg) -> list[str]:
        """Problems with the files a validated run or eval config names: each must lie where the UI may go."""
        from tunesmith.config import RunConfig
        from tunesmith.eval.config import EvalConfig

        problems = self.check_model_name(cfg.model.name, "model.name")
        if isinstance(cfg, RunConfig):
            problems += self._check(cfg.data.train, "data.train") + self._check(cfg.data.valid, "data.valid")
            problems += self._check(cfg.output.dir, "output.dir")
        elif isinstance(cfg, EvalConfig):
            problems += self._check(cfg.data.test, "data.test") + self._check(cfg.data.train, "data.train")
            problems += self._check(cfg.retrieval.corpus, "retrieval.corpus")
            problems += self._check(cfg.retrieval.cache_dir, "retrieval.cache_dir")
            problems += self._check(cfg.forgetting.data, "forgetting.data") + self._check(cfg.report.dir, "report.dir")
            for i, v in enumerate(cfg.variants):
                problems += self._check(getattr(v, "run", None), f"variants.{i}.run")
            for name, dotted in cfg.metrics.custom.items():
                problems += self._check_code(dotted, f"metrics.custom.{name}")
        return problems

    def _check_code(self, dotted: str, what: str) -> list[str]:
        """A `package.module:function` named in a config runs code: from the project's own files only."""
        import importlib.util

        module = dotted.partition(":")[0]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        located = spec is not None and spec.has_location and spec.origin and Path(spec.origin).is_absolute()
        origin = Path(spec.origin).resolve() if located else None  # built-in and frozen modules have no file
        if origin is None or not any(origin.is_relative_to(root) for root in self.roots):
            return [f"{what}: {module!r} is not a module of the project; the UI runs code from the project's own files "
                    "only (run other code from a terminal: tunesmith eval)"]
        return []


# ---- run folders: what they hold, how far they got ----

@dataclass
class RunState:
    path: Path
    status: str  # running, finished, stopped, failed, running elsewhere, not started
    step: int = 0
    total: int | None = None
    loss: float | None = None
    valid_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float | None = None
    method: str = ""
    model: str = ""
    checkpoints: list[str] = field(default_factory=list)
    has_final: bool = False
    summary: dict[str, Any] | None = None
    probe: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    error: str | None = None

    @property
    def resumable(self) -> bool:
        return bool(self.checkpoints) and not self.has_final and self.status not in ("running", "running elsewhere")

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "step": self.step, "total": self.total, "loss": self.loss,
                "valid_loss": self.valid_loss, "tokens_per_second": self.tokens_per_second,
                "eta_seconds": self.eta_seconds, "elapsed_seconds": self.elapsed_seconds, "probe": self.probe,
                "checkpoints": self.checkpoints, "has_final": self.has_final, "resumable": self.resumable,
                "summary": self.summary, "best": self.best, "error": self.error}


class MetricsTail:
    """Reads a run's metrics.jsonl as it grows: each `read()` returns the complete lines added since the last one.

    A line still being written (no newline yet) waits for the next read. A resumed run replaces the file (atomically,
    without the lines past its checkpoint): a new file is read from its top and `read()` says so, so a reader drops
    what it had. Replacement is told by the file's identity (device, inode), not its size: the new file may already
    be longer than the old one was."""

    def __init__(self, path: Path):
        self.path, self.offset, self.identity = path, 0, None

    def read(self) -> tuple[list[dict], bool]:
        try:
            with self.path.open("rb") as f:
                st = os.fstat(f.fileno())
                identity = (st.st_dev, st.st_ino)
                restarted = self.identity is not None and (identity != self.identity or st.st_size < self.offset)
                if restarted or self.identity is None:
                    self.offset = 0
                self.identity = identity
                f.seek(self.offset)
                chunk = f.read(st.st_size - self.offset)
        except OSError:
            return [], False
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        rows = []
        for line in chunk[:end].splitlines():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows, restarted


def read_metrics_rows(path: Path) -> list[dict]:
    """Every complete line of a metrics file (of a live run too)."""
    return MetricsTail(path).read()[0]


def progress_of(rows: list[dict], epochs: float | None) -> tuple[int | None, float | None, float | None]:
    """(total steps, seconds per step, elapsed seconds) from logged metrics.

    The trainer logs `epoch` = steps done / steps in the run x epochs, so the run's length follows from any line;
    `time` stamps give the pace (from the lines after the first, which include start-up)."""
    steps = [r for r in rows if "loss" in r and isinstance(r.get("step"), int)]
    if not steps:
        return None, None, None
    last = steps[-1]
    total = None
    if epochs and last.get("epoch"):
        total = max(last["step"], round(last["step"] * epochs / last["epoch"]))
    timed = [r for r in steps if isinstance(r.get("time"), (int, float))]
    pace = elapsed = None
    if len(timed) >= 2 and timed[-1]["step"] > timed[0]["step"]:
        pace = (timed[-1]["time"] - timed[0]["time"]) / (timed[-1]["step"] - timed[0]["step"])
        elapsed = timed[-1]["time"] - timed[0]["time"]
    return total, pace, elapsed


def run_state(path: Path, job=None) -> RunState:
    """What a run folder says about its run, plus the UI's own subprocess for it (`job`) when there is one."""
    from tunesmith.train.checkpoint import list_checkpoints

    doc = _load_yaml_quietly(path / "config.yaml") or _load_yaml_quietly(path / TRAIN_LAUNCH) or {}
    method = (doc.get("method") or {}).get("name", "lora") if isinstance(doc, dict) else ""
    model = (doc.get("model") or {}).get("name", "") if isinstance(doc, dict) else ""
    epochs = ((doc.get("train") or {}).get("epochs", 1.0) if isinstance(doc, dict) else 1.0) or 1.0
    rows = read_metrics_rows(path / "metrics.jsonl")
    total, pace, elapsed = progress_of(rows, float(epochs))
    losses = [r for r in rows if "loss" in r]
    state = RunState(path, "not started", method=str(method), model=str(model), total=total,
                     checkpoints=[p.name for p in list_checkpoints(path / "checkpoints")],
                     has_final=(path / "final").is_dir(), elapsed_seconds=elapsed)
    if losses:
        state.step, state.loss = losses[-1]["step"], losses[-1]["loss"]
        state.tokens_per_second = losses[-1].get("tokens_per_second")
    valid = [r["valid_loss"] for r in rows if "valid_loss" in r]
    state.valid_loss = valid[-1] if valid else None
    for r in rows:
        state.probe.update({k: v for k, v in r.items() if k.startswith("probe/")})
    state.summary = _load_json_quietly(path / "train_summary.json")
    state.best = _load_json_quietly(path / "best.json")
    if job is not None and job.running:
        state.status = "running"
    elif state.summary is not None:
        state.status = "finished"
        state.total = state.summary.get("steps", state.total)
        state.step = state.total or state.step
    elif job is not None:
        state.status = "stopped" if job.returncode in (130, -2) else "failed"
        state.error = job.last_error() if state.status == "failed" else None
    elif time.time() - _mtime(path / "metrics.jsonl") < LIVE_SECONDS:
        state.status = "running elsewhere"
    elif rows or state.checkpoints:
        state.status = "stopped"
    if state.status == "running" and pace and total:
        state.eta_seconds = max(0.0, (total - state.step) * pace)
    return state


def manifest_chain(workspace: Workspace, data_file: Path, limit: int = 12) -> list[dict[str, Any]]:
    """The prep steps that led to a data file (`tunesmith data ...` manifests), earliest first."""
    from tunesmith.data.prep.artifacts import manifest_path

    chain: list[dict[str, Any]] = []
    seen: set[Path] = set()
    todo = [data_file]
    while todo and len(chain) < limit:
        target = todo.pop()
        for candidate in (manifest_path(target), target.parent / "manifest.json"):
            try:
                candidate = workspace.resolve(candidate)
            except Refused:
                continue
            if candidate in seen:
                continue
            seen.add(candidate)
            manifest = _load_json_quietly(candidate)
            outputs = [o.get("path") for o in (manifest or {}).get("outputs", []) if isinstance(o, dict)]
            if not isinstance(manifest, dict) or not any(_same_file(workspace, o, target) for o in outputs):
                continue
            chain.append({"file": workspace.show(candidate), **manifest})
            todo += [workspace.project / i["path"] for i in manifest.get("inputs", []) if isinstance(i, dict) and i.get("path")]
            break
    return list(reversed(chain))


def _same_file(workspace: Workspace, written: str | None, target: Path) -> bool:
    if not written:
        return False
    for base in (workspace.project, Path.cwd()):
        if (base / written).resolve() == target.resolve():
            return True
    return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _load_yaml_quietly(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _load_json_quietly(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
