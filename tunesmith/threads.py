"""How many CPU threads tunesmith's compute uses, decided in one place, and a warning when two heavy tunesmith
processes would share the cores.

The number of threads is, first to last: the `threads` setting (`model.threads` in a config, `--threads` on the
command line), the TUNESMITH_THREADS environment variable, OMP_NUM_THREADS, then the cores this process may run on
(`os.sched_getaffinity`: a container's or `taskset`'s limit, not the machine's core count). It is applied to torch
(intra-op and inter-op pools) and to every onnxruntime session tunesmith creates (`onnx_session_options`).

Two torch processes that each use every core oversubscribe them: measured on a 2-core machine, a generation run
beside a training run was 6x slower per item than alone. Each heavy command therefore registers itself in a
per-user runtime folder (a small JSON file named by its pid, removed at exit) and warns when the processes still
alive there want more threads together than the machine has. Written by hand: no library keeps such a registry;
liveness uses psutil (a dependency of accelerate) with the process start time, so a reused pid is not mistaken for
a live tunesmith.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.records import TunesmithError

ENV = "TUNESMITH_THREADS"
LAUNCHED_ENV = "TUNESMITH_LAUNCHED"  # set by `train --nproc` for its ranks: the launcher registered the whole job
# oneDNN (the CPU library under torch's bf16 matmuls) and ideep (torch's wrapper of it) each keep a cache of compiled
# kernels, 1,024 entries by default, one per matmul shape, each with its own buffers (about 0.5 MB measured). Packed
# rows of varying width, the loss's last chunk and prompts of varying length bring new shapes at every step, so the
# caches grew a process's memory until they were full: measured on full fine-tuning of SmolLM2-135M (2 threads, bf16,
# 37 steps), the heap in use grew 104 MB (3 MB a step), against 1 MB with both caches at 16 entries, at the same
# speed (140 s against 136-145 s, the spread of repeats); at 1,000 rows the run's peak RSS fell 5.3 → 4.3 GB. Both
# read their capacity from the environment once, when their first kernel is made; a user's own setting is kept.
KERNEL_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "LRU_CACHE_CAPACITY": "16"}


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _positive_int(value: str, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise TunesmithError(f"{name}={value!r} must be a whole number of threads ≥ 1; unset it to use every core "
                             f"this process may use ({available_cores()})")
    return n


def resolve_threads(setting: int | None = None) -> tuple[int, str]:
    """(threads, where the number comes from): the setting, TUNESMITH_THREADS, OMP_NUM_THREADS, or the cores."""
    if setting is not None:
        if setting < 1:
            raise TunesmithError(f"threads must be ≥ 1 (got {setting})")
        return setting, "the threads setting"
    for name in (ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            return _positive_int(value, name), name
    return available_cores(), "the cores this process may use"


def use_threads(setting: int | None = None, *, register: str | None = None) -> int:
    """Apply the thread count to torch (and to onnxruntime sessions made later); returns it.

    `register`: the verb's name, for a heavy command (training, evaluation, generation): it is recorded in the
    runtime folder, and a warning is printed if other live tunesmith processes already want the cores.
    """
    n, _ = resolve_threads(setting)
    bound_kernel_caches()
    os.environ[ENV] = str(n)  # onnxruntime sessions, llama.cpp children and tokenizers' pools read it
    if "torch" in sys.modules or register is not None:
        import torch

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # torch allows it once, before any inter-op work: a second call in-process keeps the first
            pass
    if register is not None and not os.environ.get(LAUNCHED_ENV):
        warn_if_shared(register_process(register, n), n)
    return n


def bound_kernel_caches() -> None:
    """Cap oneDNN's and ideep's kernel caches (KERNEL_CACHES) unless the environment already sets them; it takes
    effect if called before this process's first bf16 matmul on the CPU."""
    for name, value in KERNEL_CACHES.items():
        os.environ.setdefault(name, value)


def onnx_session_options(threads: int | None = None):
    """onnxruntime SessionOptions with the resolved thread count (intra-op; inter-op 1: tunesmith runs one graph)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = resolve_threads(threads)[0]
    options.inter_op_num_threads = 1
    return options


# ---- the registry of heavy tunesmith processes ----

@dataclass
class HeavyProcess:
    pid: int
    verb: str
    threads: int
    started: float  # the process's start time (psutil create_time): a reused pid has another


def runtime_dir() -> Path:
    """Per user: $XDG_RUNTIME_DIR/tunesmith, else <tmp>/tunesmith-<uid>; private (0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "tunesmith" if base else Path(tempfile.gettempdir()) / f"tunesmith-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _alive(entry: HeavyProcess) -> bool:
    started = _start_time(entry.pid)
    return started is not None and abs(started - entry.started) < 1.0


def register_process(verb: str, threads: int, folder: Path | None = None) -> list[HeavyProcess]:
    """Record this process as heavy (removed at exit); returns the other live ones, dropping stale records."""
    folder = folder or runtime_dir()
    pid = os.getpid()
    others = []
    for path in folder.glob("*.json"):
        if path.stem == str(pid):
            continue
        try:
            entry = HeavyProcess(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            entry = None
        if entry is not None and _alive(entry):
            others.append(entry)
        else:
            path.unlink(missing_ok=True)  # its process ended without cleaning up (kill -9, power loss)
    mine = folder / f"{pid}.json"
    record = HeavyProcess(pid, verb, threads, _start_time(pid) or time.time())
    tmp = folder / f".{pid}.json.tmp"
    tmp.write_text(json.dumps(record.__dict__))
    tmp.replace(mine)
    atexit.register(mine.unlink, missing_ok=True)
    return sorted(others, key=lambda e: e.pid)


def sharing_warning(others: list[HeavyProcess], threads: int, cores: int | None = None) -> str | None:
    """The warning to print when this process and the live others want more threads than there are cores."""
    cores = cores or available_cores()
    wanted = threads + sum(e.threads for e in others)
    if not others or wanted <= cores:
        return None
    listed = ", ".join(f"`{e.verb}` (pid {e.pid}, {e.threads} thread{'s' * (e.threads > 1)})" for e in others)
    fair = max(1, cores // (len(others) + 1))
    return (f"another tunesmith process is running: {listed}. With this one ({threads} thread"
            f"{'s' * (threads > 1)}) they want {wanted} threads on {cores} core(s), so each runs much slower than "
            f"alone (measured: generation 6x slower per item beside a training). Wait for it to finish, or give each "
            f"process its share: --threads {fair} (or TUNESMITH_THREADS={fair}).")


def warn_if_shared(others: list[HeavyProcess], threads: int) -> None:
    message = sharing_warning(others, threads)
    if message:
        from rich.console import Console
        from rich.text import Text

        Console(stderr=True).print(Text.assemble(("warning: ", "bold yellow"), message), soft_wrap=True)
