import shutil

import pytest
from safetensors.torch import load_file

from tunesmith.config import load_config
from tunesmith.records import TunesmithError
from tunesmith.train.checkpoint import latest_checkpoint, list_checkpoints
from tunesmith.train.run import train

from conftest import write_config


def adapter_weights(run_dir):
    return load_file(run_dir / "final" / "adapter_model.safetensors")


def test_resume_equals_uninterrupted(tmp_path, tiny_model_dir, dblp_file):
    # dropout > 0 and grad accumulation make the RNG and the mid-epoch data position matter
    common = dict(method={"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
                  train={"max_steps": 6, "grad_accum": 2, "batch_size": 1, "save_every": 3, "keep_last": 5,
                         "log_every": 1, "precision": "fp32"})
    straight_cfg = write_config(tmp_path / "a", tiny_model_dir, dblp_file, **common)
    straight = load_config(straight_cfg)
    train(straight)

    cfg_path = write_config(tmp_path / "b", tiny_model_dir, dblp_file, **common)
    cfg = load_config(cfg_path)
    train(cfg)
    run = tmp_path / "b" / "run"
    # Simulate an interruption right after the step-3 checkpoint: later state is gone.
    shutil.rmtree(run / "final")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-0000003"]
    (run / "checkpoints" / ".tmp-step-0000006").mkdir()  # a checkpoint that crashed mid-write is ignored
    assert latest_checkpoint(run / "checkpoints").name == "step-0000003"
    result = train(cfg, resume=True)
    assert result.steps == 6

    a, b = adapter_weights(tmp_path / "a" / "run"), adapter_weights(run)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert [int(__import__("json").loads(l)["step"]) for l in metrics] == [1, 2, 3, 4, 5, 6]


def test_existing_run_needs_resume_and_same_config(tmp_path, tiny_model_dir, dblp_file):
    cfg = load_config(write_config(tmp_path, tiny_model_dir, dblp_file, train={"max_steps": 1, "precision": "fp32"}))
    train(cfg)
    with pytest.raises(TunesmithError, match="--resume"):
        train(cfg)
    changed = cfg.model_copy(deep=True)
    changed.train.lr = 0.5
    with pytest.raises(TunesmithError, match="same config"):
        train(changed, resume=True)
