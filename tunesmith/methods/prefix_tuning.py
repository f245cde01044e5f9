"""Prefix tuning through peft: learned key/value vectors in every transformer block (a per-layer prefix cache).
Trains through peft's forward (tunesmith.train.loss.final_hidden_states)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.methods.base import MethodSettings, Task, register
from tunesmith.methods.peft_common import VirtualTokenMethod


class PrefixTuningSettings(MethodSettings):
    name: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(20, ge=1)
    prefix_projection: bool = Field(False, description="Reparameterise the prefix through an MLP (more parameters)")
    encoder_hidden_size: int | None = Field(None, ge=1, description="Width of that MLP (default: the model's width)")


@register
class PrefixTuning(VirtualTokenMethod):
    name = "prefix_tuning"
    config = PrefixTuningSettings

    def check(self, run_cfg) -> list[str]:
        problems = super().check(run_cfg)
        if run_cfg.objective.name != "causal_lm":
            # peft looks for a `past_key_values` argument on the classifier's forward; transformers 5 calls it `cache`
            problems.append("method prefix_tuning trains causal LMs only (peft cannot pass the prefix to a "
                            "classification head's model in this transformers version): use prompt_tuning or p_tuning")
        return problems

    def peft_config(self, cfg, task: Task, model):
        from peft import PrefixTuningConfig

        extra = {"encoder_hidden_size": cfg.encoder_hidden_size} if cfg.encoder_hidden_size else {}
        return PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, prefix_projection=cfg.prefix_projection,
                                  **extra)
