"""Checkpoints hold no pickle: optimizer, scheduler and RNG state are safetensors + JSON, read back exactly, and a
run folder that carries a pickle (crafted or from an older version) is refused without ever being unpickled."""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from transformers import get_scheduler

from tunesmith.records import TunesmithError
from tunesmith.train.checkpoint import load_checkpoint, save_checkpoint


class RunsShell:
    """A pickle payload: unpickling it runs a command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tiny_setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    return model, optimizer, scheduler


def one_step(model, optimizer, scheduler):
    model(torch.randn(5, 4)).pow(2).sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_optimizer_scheduler_and_rngs_round_trip_exactly_without_pickle(tmp_path):
    model, optimizer, scheduler = tiny_setup()
    for _ in range(3):
        one_step(model, optimizer, scheduler)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    path = save_checkpoint(tmp_path, 3, model, optimizer, scheduler, {"train_seconds": 1.5}, keep_last=2)
    assert not [p for p in path.iterdir() if p.suffix in (".pt", ".bin", ".pkl", ".pickle")]
    expected = (random.random(), np.random.rand(), torch.rand(1).item())  # what the RNGs give after the save
    one_step(model, optimizer, scheduler)
    after_save = {k: v.clone() for k, v in model.state_dict().items()}

    model2, optimizer2, scheduler2 = tiny_setup(seed=1)
    state = load_checkpoint(path, model2, optimizer2, scheduler2)
    assert state["step"] == 3 and state["train_seconds"] == 1.5  # the caller's state comes back as it was
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # the RNGs are where they were
    one_step(model2, optimizer2, scheduler2)
    for name, tensor in model2.state_dict().items():
        assert torch.equal(tensor, after_save[name]), name
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert optimizer2.param_groups[0]["betas"] == (0.9, 0.95)


def test_a_crafted_pickle_in_a_checkpoint_is_never_executed(tmp_path):
    model, optimizer, scheduler = tiny_setup()
    one_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {}, keep_last=2)
    marker = tmp_path / "pwned"
    # Someone shares a run folder with a pickle planted where older versions kept the optimizer state.
    (path / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": RunsShell(marker)}))
    load_checkpoint(path, *tiny_setup())
    assert not marker.exists()
    # A folder in the old layout (only the pickle) is refused with a clear message, still without unpickling it.
    for name in os.listdir(path):
        if name.startswith("optimizer") and name != "optimizer.pt":
            os.remove(path / name)
    with pytest.raises(TunesmithError, match="pickle"):
        load_checkpoint(path, *tiny_setup())
    assert not marker.exists()


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    model, optimizer, scheduler = tiny_setup()
    path = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {}, keep_last=2)
    (path / "state.json").write_text('{"step": 1')
    with pytest.raises(TunesmithError, match=f"{path.name}.*(damaged|not valid JSON)"):
        load_checkpoint(path, *tiny_setup())
    json_files = [p for p in path.iterdir() if p.suffix == ".json" and p.name != "state.json"]
    (path / "state.json").write_text(json.dumps({"step": 1}))
    json_files[0].write_text("[]")
    with pytest.raises(TunesmithError, match="damaged"):
        load_checkpoint(path, *tiny_setup())
