"""Full fine-tuning: every weight trains; the result is an ordinary transformers model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tunesmith.methods.base import CAUSAL_LM, Method, MethodSettings, Task, register


class FullSettings(MethodSettings):
    name: Literal["full"] = "full"


@register
class Full(Method):
    name = "full"
    config = FullSettings

    def apply(self, model, cfg, task: Task = CAUSAL_LM):
        model.requires_grad_(True)
        return model

    def save(self, model, directory: Path) -> None:
        model.save_pretrained(directory)

    def load(self, base, directory: Path, task: Task = CAUSAL_LM):
        return type(base).from_pretrained(directory, dtype=base.dtype).to(base.device)

    def merge(self, model):
        return model
