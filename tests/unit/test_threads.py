"""tunesmith/threads.py: where the thread count comes from, that torch and onnxruntime get it, and the warning
when heavy tunesmith processes would share the cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunesmith.records import TunesmithError
from tunesmith.threads import (
    ENV, KERNEL_CACHES, HeavyProcess, _start_time, available_cores, bound_kernel_caches, onnx_session_options,
    register_process, resolve_threads,
    sharing_warning,
)


@pytest.fixture()
def no_thread_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_default_is_the_cores_this_process_may_use(no_thread_env):
    assert resolve_threads() == (len(os.sched_getaffinity(0)), "the cores this process may use")
    assert available_cores() == len(os.sched_getaffinity(0))


def test_setting_wins_over_env_and_env_over_omp(no_thread_env, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads()[0] == 3
    monkeypatch.setenv(ENV, "5")
    assert resolve_threads() == (5, ENV)
    assert resolve_threads(7) == (7, "the threads setting")


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_env_value_is_a_clear_error(no_thread_env, monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(TunesmithError, match="TUNESMITH_THREADS.*whole number"):
        resolve_threads()


def test_use_threads_sets_torch_pools_in_a_fresh_process(tmp_path):
    """Intra- and inter-op pools both follow the setting (inter-op can only be set once per process: a child)."""
    code = ("import torch; from tunesmith.threads import use_threads; n = use_threads(3); "
            "print(n, torch.get_num_threads(), torch.get_num_interop_threads())")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "TUNESMITH_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["3", "3", "3"]


def test_onnx_sessions_get_the_thread_count(no_thread_env, monkeypatch):
    monkeypatch.setenv(ENV, "2")
    options = onnx_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert onnx_session_options(1).intra_op_num_threads == 1


def test_model_threads_is_a_validated_setting(tiny_model_dir, dblp_file, tmp_path):
    from tunesmith.config import ConfigError, load_config
    from tests.conftest import write_config

    path = write_config(tmp_path, tiny_model_dir, dblp_file)
    assert load_config(path, options={"model.threads": 3}).model.threads == 3
    assert load_config(path).model.threads is None
    with pytest.raises(ConfigError, match="model.threads"):
        load_config(path, ["model.threads=0"])


def test_the_train_verb_takes_threads():
    from typer.testing import CliRunner

    from tunesmith.cli import app

    for verb in (["train"], ["eval"], ["generate"], ["predict"], ["export"], ["serve"]):
        out = CliRunner().invoke(app, [*verb, "--help"], terminal_width=200)
        assert "--threads" in out.output, verb


# ---- the registry of heavy processes ----

def _record(folder, pid, verb="train", threads=2, started=None):
    started = _start_time(pid) if started is None else started
    (folder / f"{pid}.json").write_text(json.dumps({"pid": pid, "verb": verb, "threads": threads, "started": started}))


def test_a_live_heavy_process_is_reported_and_this_one_registered(tmp_path):
    parent = os.getppid()  # alive for the whole test
    _record(tmp_path, parent, "eval", 2)
    others = register_process("train", 2, tmp_path)
    assert [(e.pid, e.verb, e.threads) for e in others] == [(parent, "eval", 2)]
    mine = json.loads((tmp_path / f"{os.getpid()}.json").read_text())
    assert (mine["verb"], mine["threads"]) == ("train", 2)


def test_dead_and_reused_pids_are_stale_records(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _record(tmp_path, dead.pid, started=1.0)
    _record(tmp_path, os.getppid(), started=123.0)  # a live pid, but another process than the one recorded
    (tmp_path / "99999999.json").write_text("not json")
    assert register_process("eval", 1, tmp_path) == []
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"{os.getpid()}.json"]


def test_warning_only_when_the_threads_wanted_exceed_the_cores():
    other = HeavyProcess(pid=42, verb="train", threads=1, started=0.0)
    assert sharing_warning([], 2, cores=2) is None
    assert sharing_warning([other], 1, cores=2) is None  # 1 + 1 threads on 2 cores: each has its own
    message = sharing_warning([other], 2, cores=2)
    assert "`train` (pid 42, 1 thread)" in message and "3 threads on 2 core(s)" in message
    assert "--threads 1" in message  # what to do


def test_the_warning_is_printed_by_a_heavy_command(tmp_path):
    """Two processes: the first registers and waits; the second, with every core, warns about it."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "TUNESMITH_THREADS": "1", "COLUMNS": "300"}
    env.pop("TUNESMITH_LAUNCHED", None)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tunesmith.threads import register_process; "
                               "register_process('train', 2); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "ready"
        code = "from tunesmith.threads import use_threads; use_threads(2, register='eval')"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert "another tunesmith process is running: `train`" in out.stderr
        assert f"pid {holder.pid}" in out.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (tmp_path / "tunesmith" / f"{holder.pid}.json").exists()  # removed at exit


KERNEL_CACHE_PROBE = """
import ctypes, sys
if sys.argv[1] == "bounded":
    from tunesmith.threads import use_threads
    use_threads(1)
import torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
in_use = lambda: libc.mallinfo2().uordblks + libc.mallinfo2().hblkhd
torch.set_num_threads(1)
w = torch.randn(2048, 256, dtype=torch.bfloat16)
torch.randn(8, 256, dtype=torch.bfloat16) @ w.T
before = in_use()
for rows in range(9, 159):  # 150 shapes, as packed rows of varying width and a loss's last chunk bring
    torch.randn(rows, 256, dtype=torch.bfloat16) @ w.T
print((in_use() - before) / 2**20)
"""


def test_kernel_caches_do_not_grow_with_every_new_matmul_shape(tmp_path):
    """oneDNN's and ideep's kernel caches keep 1,024 shapes by default, each with its own buffers: a training run's
    memory grew a few MB a step. After use_threads (every heavy command) they are capped, unless the user set them."""
    import ctypes

    try:
        has_mallinfo2 = hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:  # not glibc (macOS, musl)
        has_mallinfo2 = False
    if not has_mallinfo2:
        pytest.skip("no glibc >= 2.33 here: no mallinfo2 to count the heap")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    grown = {how: float(subprocess.run([sys.executable, "-c", KERNEL_CACHE_PROBE, how], capture_output=True, text=True,
                                       env=env, check=True).stdout) for how in ("default", "bounded")}
    if grown["default"] < 10:
        pytest.skip(f"bf16 matmuls do not go through oneDNN's cache on this CPU (+{grown['default']:.1f} MB)")
    assert grown["bounded"] < grown["default"] / 4, grown


def test_a_users_kernel_cache_setting_is_kept(no_thread_env, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    bound_kernel_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
    assert os.environ["LRU_CACHE_CAPACITY"] == KERNEL_CACHES["LRU_CACHE_CAPACITY"]
