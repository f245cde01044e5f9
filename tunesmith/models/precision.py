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
