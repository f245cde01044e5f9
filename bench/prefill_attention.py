"""A prompt's attention under bf16 autocast: SDPA's CPU kernel against tunesmith's (tunesmith/models/attention.py).

Shapes of SmolLM2-135M (9 query heads, 3 KV heads, head dim 64) as the DBLP-QuAD eval meets them: prefill groups of
2 left-padded rows of ~450 tokens (few-shot and RAG prompts), 18 rows of ~56 (zero-shot prompts), and reference
answers scored after their prompts' caches (10 rows × 100 tokens over 550 positions, 4 × 200 over 650).

    TUNESMITH_THREADS=2 .venv/bin/python bench/prefill_attention.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from tunesmith.models.attention import decode_kernel
from tunesmith.threads import use_threads

SHAPES = [(2, 450, 450), (18, 56, 56), (10, 100, 550), (4, 200, 650)]  # (rows, queries, positions)


def best_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def kernel_or_exit():
    """The compiled kernel, with the threads set and the seed fixed (bench/decode_attention.py shares it)."""
    use_threads(None)
    kernel = decode_kernel()
    if kernel is None:
        raise SystemExit("tunesmith's CPU attention kernel is not built here (no AVX-512 or no compiler)")
    torch.manual_seed(0)
    return kernel


def main() -> None:
    kernel = kernel_or_exit()
    print(f"{'rows':>4} {'queries':>7} {'positions':>9} {'SDPA ms':>8} {'kernel ms':>9} {'ratio':>6} {'max diff':>9}")
    for rows, length, positions in SHAPES:
        query = torch.randn(rows, length, 9, 64).transpose(1, 2)  # as transformers hands it over
        key, value = torch.randn(rows, 3, positions, 64), torch.randn(rows, 3, positions, 64).bfloat16()
        mask = torch.ones(rows, 1, length, positions, dtype=torch.bool).tril(positions - length)
        for r in range(rows):
            mask[r, ..., : 10 * r] = False  # left padding
        mask |= (~mask).all(-1, keepdim=True)
        keep = mask[:, 0].contiguous()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            sdpa = best_ms(lambda: F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True))
            ours = best_ms(lambda: kernel.prefill(query.float(), key, value, keep, 0.125))
            got = kernel.prefill(query.float(), key, value, keep, 0.125)
        exact = F.scaled_dot_product_attention(*(t.bfloat16().float() for t in (query, key, value)), attn_mask=mask,
                                               enable_gqa=True, scale=0.125).transpose(1, 2)
        print(f"{rows:>4} {length:>7} {positions:>9} {sdpa:>8.2f} {ours:>9.2f} {sdpa / ours:>5.2f}x "
              f"{(got - exact).abs().max().item():>9.1e}")


if __name__ == "__main__":
    main()
