"""Fine-tuning methods are plug-ins behind one small interface and one registry.

A method decides what trains and how it is saved, loaded and merged: it loads the base model (a quantizing
method loads it in 4/8 bit), turns it into a trainable one, saves what it trained in the format the wider
ecosystem reads, loads it back onto a fresh base, and merges it into a plain transformers model where it can.
What the loss is (causal LM, classification, ...) is the objective's business (tunesmith/objectives), not the
method's: every method trains under every objective that it accepts.

Adding a method is one file in this package: its config section (a `MethodSettings` subclass with a literal
`name`) and a registered class. The config union of `tunesmith.config` and the shared test battery
(tests/unit/test_methods.py) are both built from this registry. Plug-in modules import torch/peft lazily, so
reading a config stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from tunesmith.plugins import Registry

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


class MethodSettings(BaseModel):
    """Base of every method's config section (strict: unknown keys are errors, like every tunesmith config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str


@dataclass(frozen=True)
class Task:
    """What the objective asks of the model, as a method needs to know it."""

    peft_task_type: str = "CAUSAL_LM"  # peft's name for the model's head: CAUSAL_LM, SEQ_CLS, TOKEN_CLS
    head_modules: tuple[str, ...] = ()  # new head layers (e.g. `score`) that train and are saved under every method
    auto_class: str = "AutoModelForCausalLM"  # the transformers class the base is loaded with
    model_kwargs: dict = field(default_factory=dict)  # extra from_pretrained arguments (num_labels, id2label, ...)
    model_path: str | None = None  # the base model's folder (e.g. for a tokenizer that initialises a prompt)


CAUSAL_LM = Task()


class Method:
    """The interface, with the defaults most methods share. Subclasses set `name` and `config`."""

    name: ClassVar[str]
    config: ClassVar[type[MethodSettings]]
    # False for methods whose trained layers stay separate (bottleneck adapters, virtual tokens): merge, export
    # --to hf|gguf|ollama refuse with a message; generation loads the trained part without merging.
    mergeable: ClassVar[bool] = True
    # True when the run's final folder is a peft adapter that plain peft + transformers load.
    peft_format: ClassVar[bool] = False

    def check(self, run_cfg) -> list[str]:
        """Problems with the rest of the run config (e.g. packing for virtual-token methods), as messages."""
        return []

    def load_base(self, path: Path, cfg, device: str = "cpu", task: Task = CAUSAL_LM) -> nn.Module:
        """The base model as this method trains on it (`cfg`: the method's settings): fp32 weights by default."""
        import torch

        from tunesmith.models.loading import load_model

        return load_model(path, device=device, dtype=torch.float32, auto_class=task.auto_class, **task.model_kwargs)

    def apply(self, model: nn.Module, cfg, task: Task = CAUSAL_LM) -> nn.Module:
        """Return the model to train: only the parameters this method trains have requires_grad."""
        raise NotImplementedError

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained part in the ecosystem's own format (PEFT adapter, HF model folder, safetensors)."""
        raise NotImplementedError

    def load(self, base: nn.Module, directory: Path, task: Task = CAUSAL_LM) -> nn.Module:
        """Put what `save` wrote back onto a freshly loaded base model."""
        raise NotImplementedError

    def merge(self, model: nn.Module) -> nn.Module:
        """A plain transformers model that computes the same function (mergeable methods only)."""
        raise NotImplementedError(f"method {self.name!r} does not merge")


PLUGINS: Registry[Method] = Registry("tunesmith.methods", "method")
register = PLUGINS.register  # class decorator of each plug-in module
registry = PLUGINS.all  # every method by name
get_method = PLUGINS.get
method_configs = PLUGINS.configs  # the config classes, in name order (the union of `method:` in a run config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting tied weights once; 4-bit packed weights count as the values they hold."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)  # two 4-bit values per stored byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name (what freeze-style methods save)."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def load_trained_state(model: nn.Module, path: Path) -> nn.Module:
    """Put the tensors a freeze-style method saved (trained_state) back into `model`, frozen for inference; a file
    naming tensors the model lacks (another base model, another method's settings) is refused."""
    from safetensors.torch import load_file

    state = load_file(path)
    unknown = sorted(set(state) - {n for n, _ in model.named_parameters()})
    if unknown:
        raise ValueError(f"{path} holds tensors the model lacks: {unknown[:3]}")
    model.load_state_dict(state, strict=False)
    model.requires_grad_(False)
    return model


def module_names(model: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    """Names of modules whose name ends with one of `suffixes` (matched on whole dotted parts)."""
    return [n for n, _ in model.named_modules() if any(n == s or n.endswith("." + s) for s in suffixes)]
