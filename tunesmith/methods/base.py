"""Fine-tuning methods are plug-ins behind one small interface and one registry.

A method turns a loaded base model into a trainable one, saves what it trained in the format the wider
ecosystem reads, loads it back onto a base model, and merges it into a plain transformers model. The shared
test battery in tests/unit/test_methods.py runs every registered method through the same checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol

import torch.nn as nn


class Method(Protocol):
    name: ClassVar[str]
    # Optional (read with getattr, default True): False for methods whose trained layers stay separate (e.g.
    # bottleneck adapters); `tunesmith export --to hf|gguf|ollama` then refuses and points to --to peft.
    mergeable: ClassVar[bool]

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        """Return the model to train: only the parameters this method trains have requires_grad."""

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained part in the ecosystem's own format (PEFT adapter, HF model folder)."""

    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        """Put what `save` wrote back onto a freshly loaded base model."""

    def merge(self, model: nn.Module) -> nn.Module:
        """A plain transformers model that computes the same function, for export and serving."""


METHODS: dict[str, Method] = {}


def register(method_cls):
    METHODS[method_cls.name] = method_cls()
    return method_cls


def registry() -> dict[str, Method]:
    """Every registered method by name (importing the plug-in modules registers them)."""
    from tunesmith.methods import full, lora  # noqa: F401

    return METHODS


def get_method(name: str) -> Method:
    methods = registry()
    if name not in methods:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(methods))}")
    return methods[name]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting tied weights once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
