"""kill -9 at chosen and random moments of `tunesmith train`, `data anonymize` and `data split`, then run again.

Each command runs in a subprocess (tests/chaos/killer.py) that is SIGKILLed either before or after an exact file
operation (a file's fsync, the rename that commits it) or after a random delay. Then the command runs again
(`train --resume`; a data step as it was) and must end exactly where an uninterrupted run ends: the same adapter
bits, metrics, counters and summaries; the same data files and PII mapping, byte for byte. In between, nothing may
claim to be done while it is not (an output whose PII mapping is missing or damaged).

Default mode (in `make test`): a few kill points per command (one drawn at random from TUNESMITH_CHAOS_SEED).
`make chaos` (TUNESMITH_CHAOS=1): every kill point of the data steps, 25 of training, and 13 rounds of kills at random
moments, chained (kills during resumes).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunesmith.files as files
from chaos_settings import CHAOS
from conftest import DBLP_ROWS, write_config
from killer import KillingOs
from tunesmith.config import load_config
from tunesmith.train.run import train

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the kill points are found through /proc")

ROOT = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).with_name("killer.py")
KILLED = -signal.SIGKILL
SEED = int(os.environ.get("TUNESMITH_CHAOS_SEED", "7"))  # kill points drawn at random are drawn from this seed
TIMING = {"time", "tokens_per_second", "train_seconds", "trained_tokens_per_second", "peak_rss_mb", "run_dir", "output_dir"}


def tunesmith(spec: str, cwd: Path, *args, wait: float | None = None) -> subprocess.CompletedProcess:
    """`tunesmith ARGS` in `cwd`, killed as `spec` says (see killer.py), or after `wait` seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, str(KILLER), spec, str(cwd / "trace.tsv"), "--", *map(str, args)]
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        if wait is not None:
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                proc.kill()
        out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def completed(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{' '.join(proc.args[4:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def trace(cwd: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in (cwd / "trace.tsv").read_text().splitlines()]


# ---- training ----

TRAIN = {"max_steps": 8, "grad_accum": 2, "batch_size": 1, "save_every": 2, "keep_last": 2, "log_every": 3,
         "precision": "fp32"}
PROBE = {"every": 4, "n": 2, "max_new_tokens": 4, "metric": "token_f1", "metrics": ["token_f1"]}


def outcome(run: Path) -> dict:
    """Everything a finished run leaves that must not depend on whether it was interrupted."""
    without_timing = lambda row: {k: v for k, v in row.items() if k not in TIMING}  # noqa: E731
    return {
        "final": load_file(run / "final" / "adapter_model.safetensors"),
        "best": load_file(run / "best" / "adapter_model.safetensors"),
        "best.json": json.loads((run / "best.json").read_text()),
        "summary": without_timing(json.loads((run / "train_summary.json").read_text())),
        "metrics": [without_timing(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()],
        "data_report": json.loads((run / "data_report.json").read_text()),
    }


def assert_same(got: dict, expected: dict, what: str) -> None:
    for key in ("final", "best"):
        assert got[key].keys() == expected[key].keys(), what
        for name in expected[key]:
            assert torch.equal(got[key][name], expected[key][name]), f"{what}: {key}/{name} differs"
    for key in ("best.json", "summary", "metrics", "data_report"):
        assert got[key] == expected[key], f"{what}: {key} differs"


@pytest.fixture(scope="module")
def training(tmp_path_factory, tiny_model_dir):
    """An uninterrupted reference run, its file operations (the kill points) and how long it took."""
    work = tmp_path_factory.mktemp("chaos-train")
    data, valid = work / "train.jsonl", work / "valid.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DBLP_ROWS))
    valid.write_text("".join(json.dumps(r) + "\n" for r in DBLP_ROWS[::5]))

    def config(name: str) -> Path:
        folder = work / name
        path = write_config(folder, tiny_model_dir, data, method={"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
                            train=TRAIN, probe=PROBE)
        text = path.read_text().replace("data:\n", f"data:\n  valid: {valid}\n", 1)
        path.write_text(text)
        return path

    # The reference runs in this process (a subprocess costs seconds of imports), its file operations traced.
    started = time.monotonic()
    real_os = files.os
    files.os = KillingOs("none", str(work / "trace.tsv"))
    try:
        train(load_config(config("reference")))
    finally:
        files.os = real_os
    return {"config": config, "work": work, "expected": outcome(work / "reference" / "run"),
            "trace": trace(work), "seconds": time.monotonic() - started}


def kill_then_resume(training, name: str, kills: list[str | float]) -> None:
    """Run the training once per kill (the first from scratch, then with --resume), killed each time as said, then
    --resume to the end; the result must be the reference's."""
    cfg = training["config"](name)
    run = cfg.parent / "run"
    for i, kill in enumerate(kills):
        args = ["train", cfg] + (["--resume"] if i else [])
        if isinstance(kill, float):
            proc = tunesmith("none", cfg.parent, *args, wait=kill)  # killed after the delay, or done before it
        else:
            proc = tunesmith(kill, cfg.parent, *args)
            assert proc.returncode == KILLED, f"kill point {kill} was never reached:\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    completed(tunesmith("none", cfg.parent, "train", cfg, "--resume"))
    assert not list(run.glob("**/.tmp-*")), "leftovers of interrupted writes"
    assert_same(outcome(run), training["expected"], f"{name} (kills: {kills})")


def test_training_killed_mid_checkpoint_and_after_its_output_resumes_bit_identically(training):
    # First a kill at a random moment of a checkpoint's write (half of it on disk, in its temporary folder); then
    # the resume is killed right after `final/` is renamed into place, before train_summary.json is written.
    rng = random.Random(SEED)
    inside = [n for n, (op, path) in enumerate(training["trace"], 1) if ".tmp-step-" in path]
    assert inside, training["trace"]
    kill_then_resume(training, "mid-checkpoint", [f"before:any::{rng.choice(inside)}", "after:rename:/run/final:1"])


@pytest.mark.skipif(not CHAOS, reason="long mode only (make chaos)")
def test_training_killed_at_random_moments(training):
    rng = random.Random(SEED)
    for round_ in range(13):
        kills = [rng.uniform(0.5, 1.5) * training["seconds"] for _ in range(rng.randint(1, 3))]
        kill_then_resume(training, f"random-{round_}", kills)


@pytest.mark.skipif(not CHAOS, reason="long mode only (make chaos)")
def test_training_killed_at_every_kind_of_file_operation(training):
    rng = random.Random(11)
    points = [f"before:any::{n}" for n in range(1, len(training["trace"]) + 1)]
    for n, point in enumerate(sorted(rng.sample(points, min(25, len(points))), key=lambda p: int(p.rsplit(":", 1)[1]))):
        kill_then_resume(training, f"point-{n}", [point])


# ---- data steps ----

def pii_rows(n: int = 24) -> list[dict]:
    names = ["ada", "alan", "grace", "edsger", "barbara", "ken"]
    return [{"messages": [{"role": "user", "content": f"Write to {names[i % 6]}.{i % 4}@example.org or call "
                                                      f"+1 415 555 {2600 + i % 9}."},
                          {"role": "assistant", "content": f"Noted for doc {i}."}], "doc_id": f"d{i % 7}"}
            for i in range(n)]


STEPS = {
    "anonymize": (["data", "anonymize", "-i", "in.jsonl", "-o", "anon.jsonl", "--no-ner"],
                  ["anon.jsonl", "anon.audit.jsonl", "anon.mapping.private.json"], "anon.manifest.json"),
    "split": (["data", "split", "-i", "in.jsonl", "-o", "split", "--group-by", "doc_id"],
              ["split/train.jsonl", "split/valid.jsonl", "split/test.jsonl", "split/report.json"], "split/manifest.json"),
}


def step_outcome(folder: Path, files: list[str], manifest: str) -> dict:
    result = {name: (folder / name).read_bytes() for name in files}
    saved = json.loads((folder / manifest).read_text())
    saved.pop("created")
    result[manifest] = saved
    return result


def check_consistent(folder: Path, step: str) -> None:
    """What a kill may leave: never an anonymized output whose pseudonyms its mapping does not explain."""
    out, mapping = folder / "anon.jsonl", folder / "anon.mapping.private.json"
    if step == "anonymize" and out.exists():
        entities = json.loads(mapping.read_text())["entities"]  # present, complete JSON
        assert set(re.findall(r"<[A-Z_]+_\d+>", out.read_text())) <= {e["pseudonym"] for e in entities}
        assert oct(mapping.stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize("step", sorted(STEPS))
def test_data_steps_killed_at_each_write_end_as_an_uninterrupted_run(tmp_path, step):
    args, files, manifest = STEPS[step]
    rows = "".join(json.dumps(r) + "\n" for r in pii_rows())
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "in.jsonl").write_text(rows)
    completed(tunesmith("none", reference, *args))
    expected = step_outcome(reference, files, manifest)
    operations = trace(reference)
    commits = [n for n, (op, _) in enumerate(operations, 1) if op in ("replace", "rename")]
    done = min(n for n in commits if operations[n - 1][1].endswith(manifest))  # the manifest's commit: the step is done
    # default: a kill right after the first and the second commit; long mode: before and after every operation
    points = [("before", n) for n in range(1, len(operations) + 1)] + [("after", n) for n in commits] \
        if CHAOS else [("after", n) for n in commits[:2]]
    for when, n in points:
        point = f"{when}:any::{n}"
        folder = tmp_path / f"{when}-{n}"
        folder.mkdir()
        (folder / "in.jsonl").write_text(rows)
        assert tunesmith(point, folder, *args).returncode == KILLED, point
        check_consistent(folder, step)
        rerun = completed(tunesmith("none", folder, *args))
        if n < done or (n == done and when == "before"):
            assert "up to date" not in rerun.stderr, f"{point}: an interrupted step claimed to be done"
        assert step_outcome(folder, files, manifest) == expected, point
        assert "up to date" in completed(tunesmith("none", folder, *args)).stderr
