"""Several training processes (`tunesmith train --nproc/--nnodes`, torchrun + gloo on CPU) against one process.

The invariant: 2 processes x batch b is the same optimisation as 1 process with grad_accum 2 and batch b (the same
micro-batches in each step, the loss normalised by the step's trained tokens across processes). Tolerance: 1e-6
on every logged loss and grad norm, 1e-6 absolute on every trained weight (on this CPU they are bit-identical; the
tolerance allows another summation order in the all-reduce). Checkpoints written by 2 processes resume exactly in
2 processes, and two "nodes" of one process each, meeting on 127.0.0.1, train the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tunesmith.config import load_config
from tunesmith.records import TunesmithError
from tunesmith.train.checkpoint import list_checkpoints
from tunesmith.train.run import train

from conftest import write_config

TOL = 1e-6
SETTINGS = dict(method={"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
                train={"max_steps": 4, "batch_size": 2, "save_every": 2, "keep_last": 5, "log_every": 1,
                       "precision": "fp32"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tunesmith_train(*args: str) -> subprocess.Popen:
    env = {**os.environ, "TUNESMITH_THREADS": "1", "COLUMNS": "250", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def losses(run: Path) -> list[tuple[int, float, float, int]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"], r["trained_tokens"]) for r in rows if "loss" in r]


def assert_same_training(a: Path, b: Path, tol: float = TOL) -> None:
    la, lb = losses(a), losses(b)
    assert [(s, t) for s, _, _, t in la] == [(s, t) for s, _, _, t in lb]  # same steps, same trained tokens
    for (step, loss_a, norm_a, _), (_, loss_b, norm_b, _) in zip(la, lb):
        assert loss_a == pytest.approx(loss_b, rel=tol, abs=tol), step
        assert norm_a == pytest.approx(norm_b, rel=tol, abs=tol), step
    wa, wb = (load_file(r / "final" / "adapter_model.safetensors") for r in (a, b))
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() <= tol, name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """One process with grad_accum 2, and two processes (torchrun) with grad_accum 1, on the same data."""
    import tests.conftest as c

    root = tmp_path_factory.mktemp("ddp")
    data = root / "dblp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in c.DBLP_ROWS))
    one_cfg = write_config(root / "one", tiny_model_dir, data, method=SETTINGS["method"],
                           train={**SETTINGS["train"], "grad_accum": 2})
    two_cfg = write_config(root / "two", tiny_model_dir, data, method=SETTINGS["method"], train=SETTINGS["train"])
    two = tunesmith_train(str(two_cfg), "--nproc", "2", "--master-port", str(free_port()))
    train(load_config(one_cfg))  # in this process while the two ranks run
    log = finished(two)
    return {"one": root / "one" / "run", "two": root / "two" / "run", "two_cfg": two_cfg, "log": log, "root": root}


def test_two_processes_equal_one_process_with_accumulation(runs):
    assert "on each of 2 processes" in runs["log"]  # two ranks really ran (accelerate launch once ran only one)
    assert_same_training(runs["one"], runs["two"])
    summary = json.loads((runs["two"] / "train_summary.json").read_text())
    assert summary["trained_tokens"] == json.loads((runs["one"] / "train_summary.json").read_text())["trained_tokens"]
    assert [p.name for p in list_checkpoints(runs["two"] / "checkpoints")] == ["step-0000002"]
    assert not list(runs["two"].rglob(".tmp-*"))


def test_checkpoint_written_by_two_processes_resumes_exactly(runs):
    run = runs["root"] / "two-resumed" / "run"
    shutil.copytree(runs["two"], run)
    cfg_path = runs["root"] / "two-resumed" / "config.yaml"  # the same config, pointing at the copy
    for path in (cfg_path, run / "config.yaml"):
        path.write_text((run / "config.yaml" if path == cfg_path else path).read_text().replace(str(runs["two"]), str(run)))
    shutil.rmtree(run / "final")  # interrupted right after the step-2 checkpoint
    (run / "train_summary.json").unlink()
    with pytest.raises(TunesmithError, match=r"written by a run of 2 process\(es\), this one has 1"):
        train(load_config(cfg_path), resume=True)  # one process would train another share of the stream
    log = finished(tunesmith_train(str(cfg_path), "--resume", "--nproc", "2", "--master-port", str(free_port())))
    assert "Resuming" in log and "step 2/4" in log
    assert_same_training(runs["two"], run, tol=0.0)  # the same two processes: bit-exact


def test_two_nodes_meet_on_loopback(runs, tmp_path):
    cfg = write_config(tmp_path, Path(load_config(runs["two_cfg"]).model.name), Path(load_config(runs["two_cfg"]).data.train),
                       method=SETTINGS["method"], train=SETTINGS["train"])
    port = str(free_port())
    nodes = [tunesmith_train(str(cfg), "--nnodes", "2", "--node-rank", str(rank), "--nproc", "1",
                             "--master-addr", "127.0.0.1", "--master-port", port) for rank in (0, 1)]
    logs = [finished(node) for node in nodes]
    assert "node 1 of 2" in logs[1] and "on each of 2 processes" in logs[0]
    assert_same_training(runs["two"], tmp_path / "run")
