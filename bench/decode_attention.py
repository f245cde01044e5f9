"""A decoding step's attention (one query per row over a long KV cache): tunesmith's kernel over a cache held in fp32
against the same cache held in bf16 (tunesmith/models/attention.py, `generate`'s ReservedLayer). The kernel against
SDPA: bench/eval_throughput.py and docs/benchmarks.md.

Shapes of SmolLM2-135M (9 query heads, 3 KV heads, head dim 64) as the DBLP-QuAD eval meets them: batches of few-shot
and RAG prompts (100 rows × 700 positions, 60 × 500, the runaway answers' tail of 25 × 1,000) and of zero-shot prompts
(100 × 120); a third of the rows left-padded by a third of the positions. Per layer, median of 20; max diff: the
bf16 cache's output against fp32 SDPA over the same bf16 values.

    TUNESMITH_THREADS=2 .venv/bin/python bench/decode_attention.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `bench` and `tunesmith` from here

from bench.prefill_attention import best_ms, kernel_or_exit  # noqa: E402
from tunesmith.models.attention import kernel_step  # noqa: E402

SHAPES = [(100, 700), (60, 500), (25, 1000), (100, 120)]  # (rows, cached positions)
ROOM = 256  # the cache is a view into a longer buffer, as ReservedLayer holds it


def main() -> None:
    kernel = kernel_or_exit()
    print(f"{'rows':>4} {'positions':>9} {'fp32 cache ms':>13} {'bf16 cache ms':>13} {'ratio':>6} {'max diff':>9}")
    for rows, positions in SHAPES:
        query = torch.randn(rows, 9, 1, 64)
        buffers = [torch.randn(rows, 3, positions + ROOM, 64) for _ in range(2)]
        wide = [b[..., :positions, :] for b in buffers]
        narrow = [b.bfloat16()[..., :positions, :] for b in buffers]  # the same cache held in bf16
        mask = torch.ones(rows, 1, 1, positions, dtype=torch.bool)
        mask[::3, ..., : positions // 3] = False
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            fp32 = best_ms(lambda: kernel_step(kernel, None, query, *wide, mask))
            bf16 = best_ms(lambda: kernel_step(kernel, None, query, *narrow, mask))
            got = kernel_step(kernel, None, query, *narrow, mask)
        exact = F.scaled_dot_product_attention(query, *(t.float() for t in narrow), attn_mask=mask,
                                               enable_gqa=True).transpose(1, 2)
        print(f"{rows:>4} {positions:>9} {fp32:>13.2f} {bf16:>13.2f} {fp32 / bf16:>5.2f}x "
              f"{(got - exact).abs().max().item():>9.1e}")


if __name__ == "__main__":
    main()
