"""Precision, decided in one place for training, generation and scoring.

`auto` means bf16 autocast where the hardware computes bf16 natively (CUDA with bf16 support, CPUs with AMX or
AVX512-BF16), fp32 elsewhere: emulated bf16 is slower than fp32. Asking explicitly for bf16 on hardware without it
is an error, whatever the command, never a silent fallback or a silent slowdown.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from tunesmith.records import TunesmithError

Precision = Literal["auto", "bf16", "fp32"]


@cache
def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AMX or AVX512-BF16); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def resolve_precision(precision: str, device: torch.device, setting: str = "precision") -> Literal["bf16", "fp32"]:
    """`auto` → bf16 where native, else fp32; an explicit bf16 the device cannot do natively is an error."""
    if precision == "auto":
        return "bf16" if bf16_available(device) else "fp32"
    if precision == "bf16" and not bf16_available(device):
        raise TunesmithError(f"{setting}=bf16 but this {device.type} has no native bf16; use auto or fp32")
    if precision not in ("bf16", "fp32"):
        raise TunesmithError(f"{setting}={precision!r}: use auto, bf16 or fp32")
    return precision  # type: ignore[return-value]


def autocast(precision: str, device: torch.device):
    """A fresh context manager for one forward pass: bf16 autocast, or none (`precision` as resolved above)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def store_frozen_linear_weights_in(model: torch.nn.Module, dtype: torch.dtype, untie_output: bool = False) -> int:
    """Keep frozen Linear weights in the autocast dtype, so autocast stops re-casting them on every forward.

    The matmuls see exactly the values autocast would give them (same numerics, bit for bit), and memory drops.
    Only exact `nn.Linear` weights: quantized subclasses (bitsandbytes) hold packed weights of their own; norms,
    embeddings and every trainable tensor stay fp32. An LM head tied to the input embeddings stays fp32 too (the
    embedding lookup must not change), unless `untie_output`: then the head gets its own copy in `dtype` (inference:
    +vocab x hidden in bf16, and no re-cast of the largest matrix for every generated token).
    Measured on SmolLM2, 2-core CPU with AMX: training LoRA +8% to +20% tokens/s; greedy generation 1.4-1.5x
    (docs/benchmarks.md).
    """
    embeddings = model.get_input_embeddings()
    tied = {id(p) for p in embeddings.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    n = 0
    if untie_output and head is not None and id(head.weight) in tied and not head.weight.requires_grad:
        head.weight = torch.nn.Parameter(head.weight.detach().to(dtype), requires_grad=False)
        n += 1
    for module in model.modules():
        if type(module) is torch.nn.Linear and not module.weight.requires_grad and id(module.weight) not in tied \
                and module.weight.dtype != dtype:
            module.weight.data = module.weight.data.to(dtype)
            n += 1
    return n


def prepare_for_inference(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """A model that only answers from now on: nothing trains, and where `precision` resolves to bf16 its Linear
    weights (the LM head included) are stored in bf16 once, for generation and scoring under bf16 autocast, and
    on a CPU a decoding step attends in fp32 (tunesmith.models.attention)."""
    model.eval().requires_grad_(False)
    device = next(model.parameters()).device
    if resolve_precision(precision, device) == "bf16":
        store_frozen_linear_weights_in(model, torch.bfloat16, untie_output=True)
        if device.type == "cpu":
            from tunesmith.models.attention import use_cpu_decode_attention

            use_cpu_decode_attention(model)  # each new token's attention in fp32: 4.5x faster on a CPU than bf16
    return model
