"""Attention for packed training rows on a CPU: each example attends within itself, at its own length.

A packed row holds several examples; transformers hands SDPA the row's block-diagonal causal mask, and PyTorch's
CPU flash-attention kernel computes every block of it, the masked ones included, forward and backward: on
SmolLM2-135M's shapes (2 rows of 512 tokens, 8 examples of 110-140 tokens, 9 query heads sharing 3 KV heads)
9-11 ms forward and 21-27 ms backward a layer under bf16 autocast on 2 Zen 4 threads, a quarter of a LoRA step
(docs/benchmarks.md, "Training throughput"). Its causal kernel on the examples cut out and padded to one length
was no faster backward (26 ms), and one SDPA call per example was slower end to end (many small calls, copies).
Here the examples are cut out of the rows, grouped by length (each group padded to its longest, so a short example
does not pay for a long one), and attended with plain batched matmuls and a causal mask over the group's length:
the query heads that share a KV head in one matmul each, scores and softmax in fp32. Autograd differentiates those ops, so the gradients are
torch's own; no gradient is written by hand here. The same shapes: 6 ms forward and 12-13 ms backward a layer; a
LoRA run on 192 DBLP-QuAD rows 78.6 → 62.5-65.2 s, the same loss and peak RSS. Written by hand because nothing
maintained does this on a CPU: FlashAttention's varlen kernels are CUDA-only, and flex attention needs
torch.compile (minutes to compile here, and slower).

Registered through transformers' AttentionInterface (its documented way to plug in an attention function; nothing
of transformers is replaced) with SDPA's masks, and used only where the loss passes the batch's `PackedLayout`
(tunesmith/train/loss.py: packed rows of a causal decoder); every other call (padded rows, generation with a cache,
a probe, dropout, soft-capping, a sliding window, attention sinks) goes to transformers' SDPA with the mask it
built, unchanged. Real tokens see exactly what they saw under the block-diagonal mask (tests/unit/
test_packed_attention.py); the padding at a row's end is a segment of its own whose outputs are never trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import torch

NAME = "tunesmith_packed"
SWITCH = "TUNESMITH_PACKED_ATTENTION"  # "0": SDPA under the block-diagonal mask, as before (A/B measurements)
GROWTH = 1.25  # a new length group starts where an example is this much longer than the group's shortest


@dataclass(frozen=True)
class Group:
    """`n` examples of similar length, cut out of the flattened (rows * width) tokens: `index` (n * length) picks
    each one's tokens, its last token repeated after its end (those positions come after every real one, so a causal
    query never sees them); `kept` (indices into n * length) the real positions."""

    n: int
    length: int
    index: torch.Tensor
    kept: torch.Tensor


@dataclass(frozen=True)
class PackedLayout:
    """Where each example of a batch of packed rows lies: its groups, and `order`, the permutation that puts the
    groups' real positions (concatenated) back in the rows' order."""

    groups: tuple[Group, ...]
    order: torch.Tensor


def packed_layout(position_ids: torch.Tensor) -> PackedLayout | None:
    """The layout of packed rows whose positions restart at 0 at every example (the pad tail included: its positions
    restart too), or None where no row holds more than one segment (nothing to gain: SDPA's causal path)."""
    rows, width = position_ids.shape
    starts = position_ids == 0
    starts[:, 0] = True  # a row always starts a segment
    if int(starts.sum()) == rows:
        return None
    flat_starts = torch.nonzero(starts.reshape(-1)).squeeze(1).tolist()
    bounds = flat_starts + [rows * width]
    segments = []  # (flat start, length): a segment never crosses a row's end, since every row starts one
    for start, end in zip(bounds[:-1], bounds[1:]):
        segments.append((start, end - start))
    segments.sort(key=lambda s: s[1])
    groups, placed, i = [], [], 0
    device = position_ids.device
    while i < len(segments):
        j = i
        while j < len(segments) and segments[j][1] <= GROWTH * segments[i][1]:
            j += 1
        members = segments[i:j]
        length = members[-1][1]
        steps = torch.arange(length)
        index = torch.cat([start + steps.clamp(max=n - 1) for start, n in members])
        kept = torch.nonzero(torch.cat([steps < n for _, n in members])).squeeze(1)
        groups.append(Group(len(members), length, index.to(device), kept.to(device)))
        placed.append(index[kept])
        i = j
    order = torch.argsort(torch.cat(placed)).to(device)
    return PackedLayout(tuple(groups), order)


def _group_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: Group, scale: float) -> torch.Tensor:
    """(kept positions, heads, dim): causal attention within each example of `group`. q (tokens, heads, dim), k and
    v (tokens, kv heads, dim), all fp32."""
    n, length = group.n, group.length
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
    shared = heads // kv_heads  # query heads per KV head (GQA): head h reads KV head h // shared
    # The query heads of one KV head as one matrix (shared * length rows), so that each KV head's keys serve them
    # in one matmul without being repeated. index_select, not fancy indexing: its backward is index_add, which
    # autograd runs without sorting the indices.
    qg = q.index_select(0, group.index).view(n, length, kv_heads, shared, dim).permute(0, 2, 3, 1, 4).reshape(
        n * kv_heads, shared * length, dim)
    kg = k.index_select(0, group.index).view(n, length, kv_heads, dim).permute(0, 2, 3, 1).reshape(
        n * kv_heads, dim, length)
    vg = v.index_select(0, group.index).view(n, length, kv_heads, dim).transpose(1, 2).reshape(
        n * kv_heads, length, dim)
    future = torch.full((length, length), float("-inf"), device=q.device).triu_(1).repeat(shared, 1)
    # scale * q k^T + the causal mask in one call (its backward needs no masking: the mask is a constant)
    weights = torch.baddbmm(future.expand(n * kv_heads, -1, -1), qg, kg, alpha=scale).softmax(-1)
    out = torch.bmm(weights, vg).view(n, kv_heads, shared, length, dim)
    return out.permute(0, 3, 1, 2, 4).reshape(n * length, heads, dim).index_select(0, group.kept)


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, packed_layout=None,
                     **kwargs):
    """transformers' attention-function signature: query (rows, heads, width, dim), key and value (rows, kv heads,
    width, dim); returns ((rows, width, heads, dim), None). SDPA where the call is not one of packed training rows."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = packed_layout is None or dropout or query.shape[2] != key.shape[2] or query.shape[1] % key.shape[1] \
        or not getattr(module, "is_causal", True) \
        or any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sliding_window", "position_bias"))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, width, dim = query.shape
    scale = dim ** -0.5 if scaling is None else scaling
    with torch.autocast(query.device.type, enabled=False):
        q, k, v = (t.float().transpose(1, 2).reshape(rows * width, t.shape[1], dim) for t in (query, key, value))
        parts = [_group_attention(q, k, v, group, scale) for group in packed_layout.groups]
        out = torch.cat(parts).index_select(0, packed_layout.order)
    return out.view(rows, width, heads, dim).to(query.dtype), None


@cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # SDPA's masks, for every call that falls back to SDPA


def use_packed_attention(model: torch.nn.Module) -> bool:
    """Switch a causal model that attends with SDPA on the CPU to `packed_attention` for training on packed rows;
    True if it was switched. (On a GPU SDPA stays: not measured there.)"""
    if os.environ.get(SWITCH, "1") == "0":
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or \
            next(base.parameters()).device.type != "cpu" or \
            any(getattr(m, "is_causal", None) is False for m in base.modules()):
        return False
    _register()
    base.set_attn_implementation(NAME)
    return True


def uses_packed_attention(model: torch.nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME
