"""A decoding step's attention (one query per row over a long KV cache): tunesmith's kernel over a cache held in fp32
against the same cache held in bf16 (tunesmith/models/attention.py, `generate`'s ReservedLayer). The kernel against
SDPA: bench/eval_throughput.py and docs/benchmarks.md.

Shapes of SmolLM2-135M (9 query heads, 3 KV heads, head dim 64) as the DBLP-QuAD eval meets them: batches of few-shot
and RAG prompts (100 rows × 700 positions, 60 × 500, the runaway answers' tail of 25 × 1,000) and of zero-shot prompts
(100 × 120); a third of the rows left-padded by a third of the positions. Per layer, median of 30; max diff: the
bf16 cache's output against fp32 SDPA over the same bf16 values.

    TUNESMITH_THREADS=2 .venv/bin/python bench/decode_attention.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from tunesmith.models.attention import decode_kernel, kernel_step
from tunesmith.threads import use_threads

SHAPES = [(100, 700), (60, 500), (25, 1000), (100, 120)]  # (rows, cached positions)
ROOM = 256  # the cache is a view into a longer buffer, as ReservedLayer holds it


def median_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    use_threads(None)
    kernel = decode_kernel()
    if kernel is None:
        raise SystemExit("tunesmith's CPU attention kernel is not built here (no AVX-512 or no compiler)")
    torch.manual_seed(0)
    print(f"{'rows':>4} {'positions':>9} {'fp32 cache ms':>13} {'bf16 cache ms':>13} {'ratio':>6} {'max diff':>9}")
    for rows, positions in SHAPES:
        query = torch.randn(rows, 9, 1, 64)
        wide = [torch.randn(rows, 3, positions + ROOM, 64)[..., :positions, :] for _ in range(2)]
        narrow = [t.bfloat16() for t in wide]  # the same cache held in bf16
        mask = torch.ones(rows, 1, 1, positions, dtype=torch.bool)
        mask[::3, ..., : positions // 3] = False
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            fp32 = median_ms(lambda: kernel_step(kernel, None, query, *wide, mask))
            bf16 = median_ms(lambda: kernel_step(kernel, None, query, *narrow, mask))
            got = kernel_step(kernel, None, query, *narrow, mask)
        exact = F.scaled_dot_product_attention(query, *(t.float() for t in narrow), attn_mask=mask,
                                               enable_gqa=True).transpose(1, 2)
        print(f"{rows:>4} {positions:>9} {fp32:>13.2f} {bf16:>13.2f} {fp32 / bf16:>5.2f}x "
              f"{(got - exact).abs().max().item():>9.1e}")


if __name__ == "__main__":
    main()
