"""Freeze: only chosen parts train (the top N transformer blocks, parameters matching a regex, the embeddings);
everything else stays frozen, and the optimizer holds state only for what trains.

Saved as `trained.safetensors`, the trained tensors alone by parameter name (a few MB where the whole model is
hundreds), loaded onto a fresh base; the result is a plain transformers model, so merging is the identity.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunesmith.methods.base import CAUSAL_LM, Method, MethodSettings, Task, load_trained_state, register, trained_state

TRAINED_FILE = "trained.safetensors"


class FreezeSettings(MethodSettings):
    name: Literal["freeze"] = "freeze"
    top_blocks: int = Field(2, ge=0, description="Train the last N transformer blocks")
    pattern: str | None = Field(None, description="Also train every parameter whose name matches this regex")
    embeddings: bool = Field(False, description="Also train the input embeddings (tied to the LM head in SmolLM2)")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return value

    @model_validator(mode="after")
    def _something_trains(self):
        if self.top_blocks == 0 and not self.pattern and not self.embeddings and self.name == "freeze":
            raise ValueError("freeze trains nothing: set top_blocks > 0, a pattern, or embeddings: true")
        return self


def transformer_blocks(model) -> tuple[str, int]:
    """(name of the list of transformer blocks, how many): the longest ModuleList of the model."""
    import torch.nn as nn

    lists = [(name, len(m)) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of transformer blocks")
    return max(lists, key=lambda item: item[1])


def trainable_names(model, top_blocks: int, pattern: str | None, embeddings: bool, heads: tuple[str, ...]) -> set[str]:
    names = {n for n, _ in model.named_parameters()}
    chosen = set()
    if top_blocks:
        blocks, count = transformer_blocks(model)
        prefixes = tuple(f"{blocks}.{i}." for i in range(max(0, count - top_blocks), count))
        chosen |= {n for n in names if n.startswith(prefixes)}
    if pattern:
        chosen |= {n for n in names if re.search(pattern, n)}
    if embeddings:
        chosen |= {f"{n}.{p}" if n else p for n, m in model.named_modules() if m is model.get_input_embeddings()
                   for p, _ in m.named_parameters()}
    chosen |= {n for n in names if any(n.startswith(h + ".") for h in heads)}
    return chosen


@register
class Freeze(Method):
    name = "freeze"
    config = FreezeSettings

    def chosen(self, model, cfg, task: Task) -> set[str]:
        return trainable_names(model, cfg.top_blocks, cfg.pattern, cfg.embeddings, task.head_modules)

    def apply(self, model, cfg, task: Task = CAUSAL_LM):
        chosen = self.chosen(model, cfg, task)
        if not chosen:
            raise ValueError(f"method {self.name}: no parameter of {type(model).__name__} matches what should train")
        for n, p in model.named_parameters():
            p.requires_grad_(n in chosen)
        return model

    def save(self, model, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = trained_state(model)
        save_file(state, directory / TRAINED_FILE)
        (directory / "trained.json").write_text(json.dumps({"method": self.name, "tensors": sorted(state)}, indent=1))

    def load(self, base, directory: Path, task: Task = CAUSAL_LM):
        return load_trained_state(base, directory / TRAINED_FILE)

    def merge(self, model):
        return model  # the trained tensors are the model's own: nothing to fold
