"""The causal-LM objective (supervised fine-tuning, continued pretraining): next-token cross-entropy over the
trained tokens (assistant turns, or every token of raw text); the model answers by generating."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tunesmith.methods.base import Task
from tunesmith.objectives.base import Objective, ObjectiveSettings, register


class CausalLmSettings(ObjectiveSettings):
    name: Literal["causal_lm"] = "causal_lm"


@register
class CausalLm(Objective):
    name = "causal_lm"
    config = CausalLmSettings

    def prepare(self, path, run_cfg, tokenizer, label_names=None, require_labels=True):
        from tunesmith.data.dataset import prepare_data

        return prepare_data(path, run_cfg.data, tokenizer)

    def task(self, run_cfg, label_names, model_path: Path, tokenizer) -> Task:
        return Task(model_path=str(model_path))

    def loss_module(self, model, run_cfg):
        from tunesmith.train.loss import TrainedTokenLoss

        return TrainedTokenLoss(model)
