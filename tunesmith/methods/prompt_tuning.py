"""Prompt tuning through peft: learned continuous vectors (virtual tokens) prepended to the input embeddings,
initialised from a text or randomly. Trains through peft's forward (tunesmith.train.loss.final_hidden_states)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.methods.base import MethodSettings, Task, register
from tunesmith.methods.peft_common import VirtualTokenMethod


class PromptTuningSettings(MethodSettings):
    name: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(20, ge=1)
    init: Literal["text", "random"] = Field("text", description="Start from the embeddings of init_text, or randomly")
    init_text: str = Field("Answer the request below precisely, in the expected format.",
                           description="Its token embeddings (repeated or cut to num_virtual_tokens) start the prompt")


@register
class PromptTuning(VirtualTokenMethod):
    name = "prompt_tuning"
    config = PromptTuningSettings

    def peft_config(self, cfg, task: Task, model):
        from peft import PromptTuningConfig, PromptTuningInit

        text = cfg.init == "text"
        return PromptTuningConfig(
            num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=cfg.init_text if text else None,
            tokenizer_name_or_path=str(task.model_path or model.config.name_or_path) if text else None)
