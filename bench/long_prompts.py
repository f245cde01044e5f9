"""Generation with long prompts (the eval's few-shot, RAG and tuned + RAG variants): tunesmith's row-group prefill,
reserved KV cache and fp32 decoding attention, each against transformers' own way, in one process.

The prompts are the eval's few-shot prompts (k similar solved training examples as earlier turns, as
examples/dblp_quad/eval.yaml builds them) for the first N DBLP-QuAD validation questions; the model is the base
SmolLM2-135M-Instruct with its Linear weights in bf16 (what `tunesmith eval` runs). Each configuration generates
the same prompts, greedy, batch 25, back to back; then every speed-up is switched off in turn. Prints a table and
writes it into docs/benchmarks.md.

    .venv/bin/python bench/long_prompts.py [--n 50] [--max-new-tokens 336] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=336)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all configurations (median reported)")
    args = parser.parse_args()

    import torch

    import tunesmith.generate as generate
    from tunesmith.config import read_config
    from tunesmith.eval.config import EvalConfig
    from tunesmith.eval.runner import EvalContext, FewShot
    from tunesmith.generate import encode_chat, generate_chat
    from tunesmith.threads import use_threads

    threads = use_threads(None)
    cfg = read_config(EvalConfig, ROOT / "examples/dblp_quad/eval.yaml", [f"data.n={args.n}"])
    ctx = EvalContext.prepare(cfg)
    few_shot = next(v for v in cfg.variants if v.kind == "few_shot")
    conversations = [b.conversation for b in FewShot(few_shot).prompts(ctx)]
    model, tokenizer = ctx.base_model, ctx.tokenizer
    prompt_tokens = sum(len(encode_chat(tokenizer, c)) for c in conversations) / len(conversations)

    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ a
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    gflops = 10 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9

    def attention(name: str) -> None:
        model.set_attn_implementation(name)

    prefill_tokens, new_cache = generate.PREFILL_TOKENS, generate._new_cache
    configurations = [  # (label, set up)
        ("tunesmith: row-group prefill, reserved cache, fp32 decoding attention", lambda: None),
        ("transformers' prefill (one forward over the padded batch)",
         lambda: setattr(generate, "PREFILL_TOKENS", 10**9)),
        ("transformers' prefill and DynamicCache (concatenated at every token)",
         lambda: setattr(generate, "_new_cache", lambda model: None)),
        ("transformers' SDPA at every step (bf16 under autocast)", lambda: attention("sdpa")),
        ("all three of transformers' (before this change)", lambda: (
            setattr(generate, "PREFILL_TOKENS", 10**9), setattr(generate, "_new_cache", lambda model: None),
            attention("sdpa"))),
    ]
    fast_attention = model.config._attn_implementation
    generate_chat(model, tokenizer, conversations[:2], max_new_tokens=8, batch_size=2, show_progress=False)  # warm-up
    times: dict[str, list[float]] = {label: [] for label, _ in configurations}
    outputs: dict[str, list[str]] = {}
    for round_ in range(args.repeats):  # interleaved rounds: a slow spell of the host hits every configuration
        order = configurations if round_ % 2 == 0 else configurations[::-1]
        for label, set_up in order:
            generate.PREFILL_TOKENS, generate._new_cache = prefill_tokens, new_cache
            attention(fast_attention)
            set_up()
            start = time.perf_counter()
            outputs[label] = generate_chat(model, tokenizer, conversations, max_new_tokens=args.max_new_tokens,
                                           batch_size=args.batch_size, show_progress=False)
            times[label].append(time.perf_counter() - start)
            print(f"{label}: {times[label][-1]:.1f} s", flush=True)
    generate.PREFILL_TOKENS, generate._new_cache = prefill_tokens, new_cache
    attention(fast_attention)
    reference = outputs[configurations[0][0]]
    rows = []
    for label, _ in configurations:
        answers = outputs[label]
        tokens = sum(len(tokenizer(x, add_special_tokens=False).input_ids) + 1 for x in answers)
        rows.append((label, statistics.median(times[label]), min(times[label]), max(times[label]), tokens,
                     sum(x == y for x, y in zip(answers, reference))))

    base_s = rows[0][1]
    table = (
        "## Generation with long prompts: prefill, KV cache and decoding attention\n\n"
        f"Command: `.venv/bin/python bench/long_prompts.py --n {args.n} --max-new-tokens {args.max_new_tokens}` · "
        f"machine: {os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__}, {threads} threads, "
        f"bf16 matmul measured at {gflops:.0f} GFLOP/s just before · model: base SmolLM2-135M-Instruct, Linear "
        f"weights in bf16 · prompts: the eval's few-shot prompts (3 similar solved examples) for the first {args.n} "
        f"DBLP-QuAD validation questions, {prompt_tokens:.0f} tokens on average · greedy, batch {args.batch_size}, "
        f"up to {args.max_new_tokens} new tokens · {args.repeats} interleaved rounds (the second in reverse order), "
        "median seconds with the range.\n\n"
        "| how | seconds (range) | generated tokens/s | slower than tunesmith | same answers as tunesmith |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        + "".join(f"| {label} | {s:.1f} ({lo:.1f}-{hi:.1f}) | {tokens / s:.1f} | {s / base_s:.2f}x | {same} of {args.n} |\n"
                  for label, s, lo, hi, tokens, same in rows)
        + "\nAnswers can differ where fp32 and bf16 attention, or grouped and whole-batch matmuls, round a near-tie "
          "between two tokens differently.\n"
    )
    print(table)
    from bench.report import update_section

    update_section("long-prompts", table)


if __name__ == "__main__":
    main()
