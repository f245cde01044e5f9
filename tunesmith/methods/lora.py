"""LoRA through peft: the adapter is saved in peft's own format, loadable by plain peft + transformers."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from tunesmith.methods.base import register


@register
class Lora:
    name = "lora"

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules, task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)

    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, directory)

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()
