"""Where a training step's time goes: torch.profiler over a few tunesmith optimizer steps, grouped by kind of op.

Same settings as bench/train_throughput.py (SmolLM2-135M-Instruct, DBLP-QuAD, 2 packed rows of up to 512 tokens per
step, bf16 autocast). The first steps warm up (oneDNN primitives) and are not profiled.
On a CUDA device the ops' GPU time is grouped too, beside the wall time of a step: a step whose wall time is far
above its GPU time is bound by the host (kernel launches, synchronisations, collation), not by the GPU.

    .venv/bin/python bench/profile_step.py [--method lora|full] [--steps 3] [--warmup 2] [--rows 2] [--attn eager]
                                           [--shapes]

--shapes also splits the 2-D matmuls by role (the LM head, low-rank adapter matrices, the other projections) with the
FLOP rate each reached (2·m·k·n per call over its op time, under the profiler), to see how far they are from the peak.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# op name substrings → kind (first match wins)
KINDS = [
    ("attention (SDPA)", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    # tunesmith/models/packed_attention.py: the model's other matmuls are 2-D (mm, addmm), its batched ones attention
    ("attention (packed, per example)", ("aten::bmm", "aten::baddbmm", "softmax", "aten::index_select",
                                         "aten::index_add", "aten::scatter_add")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn")),
    ("dtype casts / copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous")),
    ("log-softmax / cross-entropy", ("log_softmax", "nll_loss", "cross_entropy", "logsumexp", "aten::exp")),
    ("optimizer", ("adam", "Optimizer.step", "_foreach")),
    ("norms / activations / elementwise", ("rsqrt", "pow", "mean", "silu", "mul", "add", "neg", "cat", "cos", "sin")),
]


def kind_of(name: str) -> str:
    for kind, keys in KINDS:
        if any(k in name for k in keys):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--rows", type=int, default=None, help="packed rows per step (default: the throughput bench's)")
    parser.add_argument("--attn", choices=["sdpa", "eager"], default=None,
                        help="attention implementation to compare (default: what tunesmith loads, SDPA)")
    parser.add_argument("--shapes", action="store_true", help="split the matmuls by role, with their GFLOP/s")
    args = parser.parse_args()

    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.train_throughput import CONFIGS, draw, overrides
    from tunesmith.config import load_config
    from tunesmith.train.run import optimizer_step, setup

    out = ROOT / "runs" / "bench-profile"
    out.mkdir(parents=True, exist_ok=True)
    data = draw(1000, args.examples, 0, out)
    import shutil

    shutil.rmtree(out / "run", ignore_errors=True)
    sets = overrides(args.method, data, out / "run") + ([f"train.batch_size={args.rows}"] if args.rows else [])
    run = setup(load_config(CONFIGS[args.method], sets), resume=False)
    if args.attn:
        from tunesmith.train.loss import causal_lm_of

        causal_lm_of(run.model).set_attn_implementation(args.attn)
    cuda = run.accelerator.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for step in range(args.warmup):
        optimizer_step(run, step)
    sync()
    started = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):  # timed without the profiler's own overhead
        optimizer_step(run, step)
    sync()
    wall = (time.perf_counter() - started) / args.steps
    first = args.warmup + args.steps
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                 record_shapes=args.shapes) as prof:
        for step in range(first, first + args.steps):
            optimizer_step(run, step)
        sync()
    # self time per op: every microsecond is counted once, in the op that spent it (on the GPU: kernel time)
    field = "self_device_time_total" if cuda else "self_cpu_time_total"
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[kind_of(event.key)] += getattr(event, field)
    whole = sum(totals.values())
    where = f"{torch.cuda.get_device_name()} GPU time" if cuda else f"{torch.get_num_threads()} thread(s), op time"
    print(f"{args.method}{', ' + args.attn + ' attention' if args.attn else ''}, {args.steps} steps after {args.warmup} warm-up, {where}: {whole / 1e6 / args.steps:.3f} s "
          f"per step; wall time {wall:.3f} s per step")
    for kind, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:36s} {100 * us / whole:5.1f}%")
    if args.shapes:
        vocab = causal_lm_vocab(run)
        roles: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # role → [µs, FLOPs]
        for event in prof.key_averages(group_by_input_shape=True):
            shapes = event.input_shapes
            if event.key != "aten::mm" or len(shapes) < 2 or len(shapes[0]) != 2 or len(shapes[1]) != 2:
                continue
            (m, k), n = shapes[0], shapes[1][1]
            role = ("LM head and loss" if vocab in (m, k, n) else
                    "low-rank (adapter A/B)" if min(m, k, n) <= 64 else "projections (q k v o, MLP)")
            roles[role][0] += getattr(event, field)
            roles[role][1] += 2 * m * k * n * event.count
        print("2-D matmuls by role (share of all op time; FLOP rate under the profiler):")
        for role, (us, flops) in sorted(roles.items(), key=lambda kv: -kv[1][0]):
            print(f"  {role:36s} {100 * us / whole:5.1f}%  {flops / us / 1e3:7.1f} GFLOP/s")
    print(prof.key_averages().table(sort_by=field, row_limit=15))


def causal_lm_vocab(run) -> int:
    from tunesmith.train.loss import causal_lm_of

    return causal_lm_of(run.model).config.vocab_size


if __name__ == "__main__":
    main()
