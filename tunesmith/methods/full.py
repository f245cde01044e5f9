"""Full fine-tuning: every weight trains; the result is an ordinary transformers model folder."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from tunesmith.methods.base import register


@register
class Full:
    name = "full"

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        model.requires_grad_(True)
        return model

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)

    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(directory, dtype=base.dtype).to(base.device)

    def merge(self, model: nn.Module) -> nn.Module:
        return model
