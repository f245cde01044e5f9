"""IA3 through peft: learned per-channel scales of keys, values and the MLP (fewer parameters than LoRA);
mergeable into the base weights."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.methods.base import MethodSettings, Task, register
from tunesmith.methods.peft_common import PeftMethod


class Ia3Settings(MethodSettings):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(None, description="Layers to scale (default: peft's choice for the architecture)")
    feedforward_modules: list[str] | None = Field(None, description="Of those, the ones scaled at their input (MLP)")


@register
class Ia3(PeftMethod):
    name = "ia3"
    config = Ia3Settings

    def peft_config(self, cfg, task: Task, model):
        from peft import IA3Config

        return IA3Config(target_modules=cfg.target_modules, feedforward_modules=cfg.feedforward_modules)
