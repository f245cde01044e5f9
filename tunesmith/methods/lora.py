"""LoRA through peft, with DoRA, rsLoRA, target-module presets and per-module ranks; saved in peft's own format,
loadable by plain peft + transformers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.methods.base import MethodSettings, Task, register
from tunesmith.methods.peft_common import PeftMethod

# Presets name the layers by role; they resolve to the leaf module names the model actually has (Llama-style and
# BERT-style names). "all-linear" is peft's own: every linear layer but the output head.
PRESETS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value"),
    "qv": ("q_proj", "v_proj", "query", "value"),
    "mlp": ("gate_proj", "up_proj", "down_proj", "fc1", "fc2"),
}


class LoraSettings(MethodSettings):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1)
    alpha: float = 32.0
    # peft's dropout copies every input activation; 0 is ~35% faster on CPU and fine for short runs.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear", "attention", "qv", "mlp"] = Field(
        "all-linear", description="Module names, or a preset: all-linear, attention, qv, mlp")
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="Per-module ranks: {regex or name: r}")
    alpha_pattern: dict[str, float] = Field(default_factory=dict, description="Per-module alphas: {regex or name: alpha}")
    use_dora: bool = Field(False, description="DoRA: magnitude and direction trained apart (slower; often better at low r)")
    use_rslora: bool = Field(False, description="rsLoRA: scale alpha/sqrt(r) instead of alpha/r (stable at high r)")
    top_blocks: int | None = Field(
        None, ge=1, description="Adapt only the last N transformer blocks (none: all). The backward pass then stops "
        "below them, so a step costs less (15 of SmolLM2's 30 blocks: 22% less time on a CPU, and on the demo's "
        "budget a much worse model, docs/benchmarks.md)")


def resolve_targets(model, target_modules) -> list[str] | str:
    if isinstance(target_modules, list) or target_modules == "all-linear":
        return target_modules
    import torch.nn as nn

    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    found = [name for name in PRESETS[target_modules] if name in leaves]
    if not found:
        raise ValueError(f"target_modules preset {target_modules!r} matches no layer of {type(model).__name__} "
                         f"(its linear layers: {', '.join(sorted(leaves))}); list module names instead")
    return found


def top_blocks_of(model, top_blocks: int | None) -> dict:
    """peft's layers_to_transform / layers_pattern for the last `top_blocks` transformer blocks ({} for all)."""
    if top_blocks is None:
        return {}
    from tunesmith.methods.freeze import transformer_blocks

    blocks, count = transformer_blocks(model)
    if top_blocks > count:
        raise ValueError(f"method.top_blocks is {top_blocks}, but {type(model).__name__} has {count} transformer blocks")
    return {"layers_to_transform": list(range(count - top_blocks, count)), "layers_pattern": blocks.rsplit(".", 1)[-1]}


def block_linears(model) -> list[str]:
    """Leaf names of the linear layers inside the transformer blocks: "all-linear" spelled out, which peft needs
    when it adapts only some blocks."""
    import torch.nn as nn

    from tunesmith.methods.freeze import transformer_blocks

    blocks, _ = transformer_blocks(model)
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and n.startswith(blocks + ".")})


def lora_config(cfg, model):
    from peft import LoraConfig

    targets = resolve_targets(model, cfg.target_modules)
    if cfg.top_blocks is not None and targets == "all-linear":
        targets = block_linears(model)
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, rank_pattern=dict(cfg.rank_pattern),
                      alpha_pattern=dict(cfg.alpha_pattern), use_dora=cfg.use_dora, use_rslora=cfg.use_rslora,
                      **top_blocks_of(model, cfg.top_blocks))


@register
class Lora(PeftMethod):
    name = "lora"
    config = LoraSettings

    def peft_config(self, cfg, task: Task, model):
        return lora_config(cfg, model)
