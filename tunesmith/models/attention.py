"""Attention for generating on a CPU under bf16 autocast: each new token's attention in fp32, a prompt's in our kernel.

At a decoding step (one query per row) PyTorch's CPU flash-attention kernel is 4.5x slower in bf16 than in fp32:
25 rows × 9 query heads (3 KV heads) over 700 cached positions took 11.8 ms in bf16 and 2.6 ms in fp32 (torch 2.13,
2 threads, AMX CPU). Under autocast every step ran the bf16 kernel, and over a few-shot prompt's ~700 positions the
attention was half of a SmolLM2-135M decoding step (30 layers: 0.69 s a step, against 0.18 s at 70 positions).
So a step's attention runs in fp32 (more exact, and the cached keys are fp32 already, RoPE having promoted them),
the prompt's prefill and training keep transformers' SDPA. Registered through transformers' AttentionInterface,
its documented way to plug in an attention function; nothing of transformers is replaced.

Where the kernel below computes the step, `generate` holds the KV cache in bf16 (keys rounded as SDPA under autocast
rounds them; the values are v_proj's bf16 output as they are) and the kernel widens each element to fp32 as it reads
it: a step is bound by reading the cache, and half the bytes took 1.15-1.96x less time a layer; with the step's three
stages in one call a layer, the DBLP-QuAD eval went from 6 min 11-14 s to 5 min 14-31 s (docs/benchmarks.md).

The step itself is tunesmith's own kernel (decode_attention.cpp, compiled once per machine with the C++ compiler
PyTorch's extensions use; `make setup` builds it ahead of time) where it can be built, else fp32 SDPA. SDPA's CPU
kernel ran a step at about half the memory bandwidth and read left padding like any position; the kernel reads each
row's kept keys and values once for all the query heads that share them: 1.7 against 3.0 ms a layer at 60 rows ×
500 positions, 2.8 against 6.9 at 100 rows × 700 with a third of them padding (SmolLM2-135M's shapes, 2 threads,
Zen 4), and the tuned + RAG answers of the DBLP-QuAD eval came 11% faster (docs/benchmarks.md). The same numbers up
to fp32 rounding (tests/unit/test_decode_attention.py). TUNESMITH_DECODE_KERNEL=0 turns it off.

A prompt's attention under autocast (the prefill's forwards: several queries a row) goes through the same kernel's
`prefill` where it is built: SDPA's CPU kernel attended such prompts at about 50 GFLOP/s in bf16 (2 rows × 450
positions: 8-10 ms a layer on 2 Zen 4 threads, against 2.7 for the kernel; `bench/prefill_attention.py`), a seventh
of the DBLP-QuAD eval. Its inputs are rounded to bf16 as autocast rounds them for SDPA, its sums are fp32 (SDPA's too,
except that SDPA rounds the softmax weights to bf16 before weighting the values). Queries after a cache (the eval's
references, scored from their prompts' caches) take it too: 1.4-1.9x SDPA per layer there.

Only for models whose KV cache is made of plain layers, which `generate_rows` keeps in place (ReservedLayer): over
transformers' DynamicCache, re-concatenated at every token, the fp32 step was slower end to end than bf16 SDPA
(106 against 84 s on 25 few-shot prompts), and with the reserved cache it was neutral end to end there (the runaway
answers' tail, a few rows long, dominates; docs/benchmarks.md "Generation with long prompts").
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from functools import cache
from pathlib import Path

import torch

NAME = "tunesmith_cpu_decode"
KERNEL_SOURCE = Path(__file__).with_name("decode_attention.cpp")
KERNEL_SWITCH = "TUNESMITH_DECODE_KERNEL"  # "0": fp32 SDPA at every step (A/B measurements)
STALE_LOCK_SECONDS = 600  # a build lock older than this was left by a killed build

log = logging.getLogger(__name__)


def _cpu_flags() -> str:
    try:
        found = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        return ""
    return " ".join(sorted(found.group(1).split())) if found else ""


@cache
def decode_kernel():
    """The compiled decode_attention.cpp, or None: turned off, a CPU without AVX-512 (where its portable loops were
    not measured to beat SDPA), or no compiler. Built once per machine and kept in PyTorch's extension folder
    (TORCH_EXTENSIONS_DIR), under a name that carries a digest of the source, the CPU's instruction sets (it is
    built for this CPU: a home folder shared with another kind of CPU gets a build of its own) and torch's version."""
    if os.environ.get(KERNEL_SWITCH, "1") == "0":
        return None
    flags = _cpu_flags()
    if "avx512f" not in flags.split():
        return None
    try:
        from torch.utils.cpp_extension import _get_build_directory, load

        source = KERNEL_SOURCE.read_bytes()
        digest = hashlib.sha256(source + flags.encode() + torch.__version__.encode()).hexdigest()[:12]
        name = f"tunesmith_decode_attention_{digest}"
        lock = Path(_get_build_directory(name, verbose=False)) / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink(missing_ok=True)  # PyTorch's build lock, left by a build that was killed: it would wait forever
        if not (lock.parent / f"{name}.so").exists():
            log.warning("building tunesmith's CPU decoding attention for this machine (once, about 20 s)")
        return load(name, [str(KERNEL_SOURCE)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # no compiler, no ninja, a failed build: the slower SDPA step still answers the same
        log.warning("tunesmith's CPU decoding attention could not be built (%s): decoding attends with SDPA, slower. "
                    "It needs a C++ compiler and ninja (pip install ninja).",
                    (str(error).strip().splitlines() or [type(error).__name__])[-1])
        return None


def decode_implementation(precision: str, device: torch.device) -> str:
    """What computes a decoding step's attention for a model prepared for inference at `precision` on `device`: the
    kernel's build name, or "sdpa". Part of the key of cached answers: fp32 sums in another order can move a
    near-tie between two tokens."""
    from tunesmith.models.precision import resolve_precision

    if device.type != "cpu" or resolve_precision(precision, device) != "bf16":
        return "sdpa"
    kernel = decode_kernel()
    return "sdpa" if kernel is None else kernel.__name__


def kernel_step(kernel, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """(rows, 1, heads, head dim) fp32 attention output of one decoding step through `kernel`, or None where the
    step is not one it computes (an additive or odd-shaped mask, soft-capping, attention sinks, a position bias,
    dropout)."""
    rows, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if heads % kv_heads or dropout or any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "position_bias")):
        return None
    if attention_mask is None:
        keep = torch.ones((rows, length), dtype=torch.bool)
    elif attention_mask.dtype == torch.bool and attention_mask.dim() == 4 and attention_mask.shape[1:3] == (1, 1) \
            and attention_mask.shape[-1] == length and attention_mask.shape[0] in (1, rows):
        keep = attention_mask[:, 0, 0, :].expand(rows, length)
    else:
        return None
    q = query.float().reshape(rows, kv_heads, heads // kv_heads, dim)
    scale = dim ** -0.5 if scaling is None else scaling
    key, value = (t if t.dtype in (torch.float32, torch.bfloat16) else t.float() for t in (key, value))
    key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (key, value))  # a bf16 cache read as it is
    with torch.autocast("cpu", enabled=False):
        out = kernel.step(q, key, value, keep, scale)
    return out.view(rows, 1, heads, dim)


def kernel_prefill(kernel, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """(rows, length, heads, head dim) fp32 attention output of a prompt's queries (several per row) through
    `kernel`, or None where it is not one the kernel computes (as `kernel_step`). Its inputs are rounded to bf16 as
    autocast rounds them for SDPA; the sums are fp32, as SDPA's."""
    rows, heads, length, dim = query.shape
    kv_heads, positions = key.shape[1], key.shape[2]
    if heads % kv_heads or dropout or any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "position_bias")):
        return None
    if attention_mask is None:  # no padding: causal (as SDPA reads it: the call's is_causal, else the module's)
        if not (kwargs.get("is_causal") if kwargs.get("is_causal") is not None else getattr(module, "is_causal", True)):
            return None
        keep = torch.ones((1, length, positions), dtype=torch.bool).tril(positions - length)
    elif attention_mask.dtype == torch.bool and attention_mask.dim() == 4 and attention_mask.shape[1] == 1 \
            and attention_mask.shape[2:] == (length, positions) and attention_mask.shape[0] in (1, rows):
        keep = attention_mask[:, 0].contiguous()
    else:
        return None
    scale = dim ** -0.5 if scaling is None else scaling
    key, value = (t if t.dtype in (torch.float32, torch.bfloat16) else t.float() for t in (key, value))
    key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (key, value))
    with torch.autocast("cpu", enabled=False):
        return kernel.prefill(query.float() if query.stride(-1) == 1 else query.float().contiguous(), key, value,
                              keep, scale)


def cpu_decode_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kernel = decode_kernel()
    if query.shape[2] != 1:  # a prompt: the kernel's prefill, else SDPA under autocast as before
        if kernel is not None and (out := kernel_prefill(kernel, module, query, key, value, attention_mask,
                                                         **kwargs)) is not None:
            return out, None
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kernel is not None and (out := kernel_step(kernel, module, query, key, value, attention_mask, **kwargs)) \
            is not None:
        return out, None
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


def steps_read_bf16_cache(config) -> bool:
    """Whether a model with this config attends its decoding steps through the compiled kernel, which reads keys
    and values held in bf16 as they are (`generate`'s cache then holds them so)."""
    return getattr(config, "_attn_implementation", None) == NAME and decode_kernel() is not None


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


if __name__ == "__main__":  # `make setup`: the kernel built before its first use (nothing to build without AVX-512)
    import sys

    if sys.argv[1:] != ["build"]:
        raise SystemExit("usage: python -m tunesmith.models.attention build")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    built = decode_kernel()
    print(f"decoding attention on this CPU: {built.__name__ if built is not None else 'SDPA (no kernel built here)'}")
