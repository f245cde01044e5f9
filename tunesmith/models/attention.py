"""Attention for generating on a CPU under bf16 autocast: each new token's attention in fp32.

At a decoding step (one query per row) PyTorch's CPU flash-attention kernel is 4.5x slower in bf16 than in fp32:
25 rows × 9 query heads (3 KV heads) over 700 cached positions took 11.8 ms in bf16 and 2.6 ms in fp32 (torch 2.13,
2 threads, AMX CPU). Under autocast every step ran the bf16 kernel, and over a few-shot prompt's ~700 positions the
attention was half of a SmolLM2-135M decoding step (30 layers: 0.69 s a step, against 0.18 s at 70 positions).
So a step's attention runs in fp32 (more exact, and the cached keys are fp32 already, RoPE having promoted them),
the prompt's prefill and training keep transformers' SDPA. Registered through transformers' AttentionInterface,
its documented way to plug in an attention function; nothing of transformers is replaced.

Only for models whose KV cache is made of plain layers, which `generate_rows` keeps in place (ReservedLayer): over
transformers' DynamicCache, re-concatenated at every token, the fp32 step was slower end to end than bf16 SDPA
(106 against 84 s on 25 few-shot prompts), and with the reserved cache it was neutral end to end there (the runaway
answers' tail, a few rows long, dominates; docs/benchmarks.md "Generation with long prompts").
"""

from __future__ import annotations

from functools import cache

import torch

NAME = "tunesmith_cpu_decode"


def cpu_decode_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask.float()  # an additive mask: the kernel wants the queries' dtype
    with torch.autocast("cpu", enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


@cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, cpu_decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as SDPA


def has_plain_cache_layers(config) -> bool:
    """True when the model's own KV cache would be transformers' plain DynamicLayers (no sliding window, no
    linear-attention or other special layers)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return config is not None and all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def use_cpu_decode_attention(model: torch.nn.Module) -> bool:
    """Switch a model that attends with SDPA on the CPU, with plain cache layers, to `cpu_decode_attention`; True
    if it was switched."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or \
            next(base.parameters()).device.type != "cpu" or not has_plain_cache_layers(config):
        return False
    _register()
    base.set_attn_implementation(NAME)
    return True
