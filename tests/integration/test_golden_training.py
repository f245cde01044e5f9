"""Golden numerics of a whole (short) training run: data order, schedule, optimizer, clipping, validation loss.

The tiny model and data of tests/conftest.py, four optimizer steps of two micro-batches each; the logged losses,
gradient norms and the validation loss must stay exactly these. If a change is *meant* to alter them, say why in
the commit and update the constants.
"""

from __future__ import annotations

import json

import pytest

from tunesmith.config import load_config
from tunesmith.train.run import train

from conftest import write_config

GOLDEN_LOSS = [7.410511236081178, 7.149795883003322, 6.937575600363991, 6.824826134575738]
GOLDEN_GRAD_NORM = [1.5629756450653076, 1.7015817165374756, 1.6455652713775635, 2.5647153854370117]
GOLDEN_VALID_LOSS = 6.799981950693093


def test_short_run_logs_the_golden_numbers(tmp_path, tiny_model_dir, dblp_file):
    cfg = load_config(write_config(
        tmp_path, tiny_model_dir, dblp_file,
        train={"max_steps": 4, "grad_accum": 2, "batch_size": 2, "log_every": 1, "precision": "fp32", "lr": 5e-3},
    ), [f"data.valid={dblp_file}"])
    result = train(cfg)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in logged if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert [m["loss"] for m in steps] == pytest.approx(GOLDEN_LOSS, rel=1e-4)
    assert [m["grad_norm"] for m in steps] == pytest.approx(GOLDEN_GRAD_NORM, rel=1e-4)
    assert result.valid_loss == pytest.approx(GOLDEN_VALID_LOSS, rel=1e-4)
