"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): small down-project → non-linearity → up-project
layers added to a transformer block's sublayer outputs, the rest frozen.

Written here because the `adapters` library (AdapterHub) pins an older transformers; this is the same module in
peft's spirit: a config (`bottleneck_adapter.json`) and the trained tensors (`bottleneck_adapter.safetensors`),
loadable onto a fresh base (the layer: tunesmith/models/bottleneck.py). Houlsby places an adapter after the attention output and after the MLP output of
every block, Pfeiffer after the MLP only; each adds `up(act(down(y)))` to the sublayer output y before the
residual sum, with `up` zero-initialised, so training starts from the unchanged model. The non-linearity makes
it unmergeable: merge and export --to hf refuse; generation runs with the adapters in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from tunesmith.files import read_json
from tunesmith.methods.base import CAUSAL_LM, Method, MethodSettings, Task, load_trained_state, register, trained_state

CONFIG_FILE = "bottleneck_adapter.json"
WEIGHTS_FILE = "bottleneck_adapter.safetensors"
# Sublayer outputs by architecture family: Llama-style, GPT-2-style and BERT-style names (suffixes of module names).
ATTENTION_OUTPUTS = ("self_attn.o_proj", "attn.c_proj", "attention.output.dense")
MLP_OUTPUTS = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2")
BERT_MLP_OUTPUT = "output.dense"  # BERT's MLP output is `layer.N.output.dense` (not `attention.output.dense`)


class AdapterSettings(MethodSettings):
    name: Literal["adapter"] = "adapter"
    kind: Literal["houlsby", "pfeiffer"] = Field("houlsby", description="houlsby: after attention and MLP; pfeiffer: after the MLP")
    reduction_factor: int = Field(16, ge=1, description="Bottleneck width = hidden size / reduction_factor")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    modules: list[str] | None = Field(None, description="Sublayer outputs to adapt, by module-name suffix (default: by kind)")


def sublayer_outputs(model, cfg: AdapterSettings) -> list[str]:
    import torch.nn as nn

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if cfg.modules:
        suffixes = tuple(cfg.modules)
        return [n for n in names if any(n == s or n.endswith("." + s) for s in suffixes)]
    found = [n for n in names if n.endswith(MLP_OUTPUTS)
             or (n.endswith("." + BERT_MLP_OUTPUT) and not n.endswith("attention." + BERT_MLP_OUTPUT))]
    if cfg.kind == "houlsby":
        found += [n for n in names if n.endswith(ATTENTION_OUTPUTS)]
    return sorted(found)


def add_adapters(model, cfg: AdapterSettings, heads: tuple[str, ...] = ()):
    from tunesmith.models.bottleneck import AdaptedLinear

    targets = sublayer_outputs(model, cfg)
    if not targets:
        raise ValueError(f"adapter: no sublayer output of {type(model).__name__} to adapt; name them in method.modules")
    model.requires_grad_(False)
    for name in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, leaf)
        setattr(parent, leaf, AdaptedLinear(base, max(1, base.out_features // cfg.reduction_factor), cfg.non_linearity))
    for name, p in model.named_parameters():
        if ".adapter." in name or any(name.startswith(h + ".") for h in heads):
            p.requires_grad_(True)
    return model


@register
class Adapter(Method):
    name = "adapter"
    config = AdapterSettings
    mergeable = False

    def apply(self, model, cfg, task: Task = CAUSAL_LM):
        model = add_adapters(model, cfg, task.head_modules)
        model.tunesmith_adapter = {"settings": cfg.model_dump(), "heads": list(task.head_modules)}
        return model

    def save(self, model, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(trained_state(model), directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps({"type": "bottleneck_adapter", **model.tunesmith_adapter}, indent=1))

    def load(self, base, directory: Path, task: Task = CAUSAL_LM):
        saved = read_json(directory / CONFIG_FILE)
        model = self.apply(base, AdapterSettings(**saved["settings"]), Task(head_modules=tuple(saved["heads"])))
        return load_trained_state(model, directory / WEIGHTS_FILE)
