"""P-tuning through peft: virtual tokens produced by a small prompt encoder (MLP or LSTM), prepended to the input.
Trains through peft's forward (tunesmith.train.loss.final_hidden_states)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.methods.base import MethodSettings, Task, register
from tunesmith.methods.peft_common import VirtualTokenMethod


class PTuningSettings(MethodSettings):
    name: Literal["p_tuning"] = "p_tuning"
    num_virtual_tokens: int = Field(20, ge=1)
    encoder: Literal["MLP", "LSTM"] = "MLP"
    encoder_hidden_size: int = Field(128, ge=1)
    encoder_num_layers: int = Field(2, ge=1)
    encoder_dropout: float = Field(0.0, ge=0.0, lt=1.0)


@register
class PTuning(VirtualTokenMethod):
    name = "p_tuning"
    config = PTuningSettings

    def peft_config(self, cfg, task: Task, model):
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(num_virtual_tokens=cfg.num_virtual_tokens, encoder_reparameterization_type=cfg.encoder,
                                   encoder_hidden_size=cfg.encoder_hidden_size, encoder_num_layers=cfg.encoder_num_layers,
                                   encoder_dropout=cfg.encoder_dropout)
