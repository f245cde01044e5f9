"""Training throughput: tunesmith vs the standard stack (transformers Trainer [+ peft]), in one invocation.

Same model (embedded SmolLM2-135M-Instruct), same DBLP-QuAD rows, same chat template and loss mask (both tokenize
through tunesmith.data.dataset.prepare_data), the same examples per optimizer step, bf16 autocast where the CPU has
it, for LoRA (r=16, alpha=32, dropout 0, all linear layers; Trainer + peft) and full fine-tuning (Trainer alone).

Each repeat draws its own `--examples` rows (seeded) from the first `--pool` rows of the shipped DBLP-QuAD train
file; both stacks train on that same draw, each in its own process (peak RSS is its own). Both methods read the rows
as configs/dblp-quad-lora.yaml writes them (IRIs as prefixed names), so their figures compare. Reported: the median and
the range over repeats of trained tokens/s, peak RSS, their ratios to the Trainer, and MFU: useful training FLOPs
(matmuls: 2 x parameters per token forward, as much again for the input gradients, again for full fine-tuning's
weight gradients; causal attention per example, not per packed row or padded batch) over the measured matmul peak
of this CPU (`--peak-gflops`, bf16, or `--peak-gflops-fp32` where the CPU has no native bf16 and both stacks run
in fp32).

    .venv/bin/python bench/train_throughput.py [--methods lora,full] [--repeats 3] [--examples 96] [--pool 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "examples" / "dblp_quad" / "data" / "train.jsonl"
CONFIGS = {"lora": ROOT / "configs" / "dblp-quad-lora.yaml", "full": ROOT / "configs" / "methods" / "full.yaml"}
LR = {"lora": 1e-3, "full": 1e-4}
# Both methods read the rows as the demo's LoRA config writes them (IRIs as prefixed names, \u escapes decoded), so
# their rows are the same tokens and the two methods' figures compare (configs/methods/full.yaml keeps full IRIs).
SHARED_DATA = ("iri_prefixes", "decode_unicode_escapes")
ROW_LEN, ROWS_PER_STEP = 512, 2  # tunesmith: 2 packed rows of up to 512 tokens per optimizer step


def overrides(method: str, data: Path, out: Path | None = None, padded_batch: int | None = None) -> list[str]:
    """The shared settings, on top of the method's shipped config: the draw's file, all of it, one epoch. Packed:
    ROWS_PER_STEP rows of up to ROW_LEN tokens per step; `padded_batch`: that many examples per step, unpacked,
    grouped by length and right-padded (the Trainer's examples per step)."""
    layout = ["train.pack=true", f"train.batch_size={ROWS_PER_STEP}"] if padded_batch is None else \
        ["train.pack=false", f"train.batch_size={padded_batch}"]
    lora_data = yaml.safe_load(CONFIGS["lora"].read_text())["data"]
    shared = [f"data.{key}={json.dumps(lora_data[key])}" for key in SHARED_DATA]  # JSON is YAML
    sets = [*shared, f"data.train={data}", "data.valid=null", "data.limit=null", "train.epochs=1",
            f"train.lr={LR[method]}", *layout, "train.grad_accum=1", f"data.max_seq_len={ROW_LEN}"]
    return sets + ([f"output.dir={out}"] if out else [])


def run_trainer(method: str, data: Path, out: Path, batch: int) -> dict:
    """The standard recipe: examples padded per batch by DataCollatorForSeq2Seq, Trainer (+ peft LoRA)."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunesmith.config import load_config
    from tunesmith.data.dataset import prepare_data
    from tunesmith.models.loading import load_model, load_tokenizer, pick_device, resolve_model
    from tunesmith.models.precision import bf16_available

    cfg = load_config(CONFIGS[method], overrides(method, data))
    device = pick_device(cfg.model.device)  # the device tunesmith's own run picks (auto: CUDA where there is one)
    path = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(path)
    prepared = prepare_data(cfg.data.train, cfg.data, tokenizer)  # identical tokens and labels to tunesmith's
    rows = [{"input_ids": t.input_ids, "attention_mask": [1] * len(t), "labels": t.labels} for t in prepared.tokenized]
    model = load_model(path, device=device.type)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.method.r, lora_alpha=cfg.method.alpha, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=cfg.train.lr,
        lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5, save_strategy="no", report_to=[],
        bf16=bf16_available(device), use_cpu=device.type == "cpu", seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "trained_tokens": sum(t.n_trained for t in prepared.tokenized),
            "tokens": sum(len(t) for t in prepared.tokenized), "steps": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None}


def run_tunesmith(method: str, data: Path, out: Path, padded_batch: int | None = None) -> dict:
    from tunesmith.config import load_config
    from tunesmith.train.run import train

    result = train(load_config(CONFIGS[method], overrides(method, data, out, padded_batch)))
    return {"seconds": result.train_seconds, "trained_tokens": result.trained_tokens, "tokens": result.tokens,
            "steps": result.steps, "final_loss": result.final_loss}


def child(which: str, method: str, data: Path, out: Path, batch: int) -> None:
    import torch

    torch.manual_seed(0)
    if which == "trainer":
        result = run_trainer(method, data, out, batch)
    else:
        result = run_tunesmith(method, data, out, batch if which == "tunesmith-padded" else None)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["threads"] = torch.get_num_threads()
    from tunesmith.models.loading import pick_device
    from tunesmith.models.precision import bf16_available

    result["precision"] = "bf16" if bf16_available(pick_device("auto")) else "fp32"  # what both stacks ran in
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available():
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


# ---- the parent: draws, plans, runs, reports ----

def draw(pool: int, n: int, seed: int, out: Path) -> Path:
    lines = DATA.read_text().splitlines()[:pool]
    chosen = sorted(random.Random(seed).sample(range(len(lines)), n))
    path = out / f"draw-{seed}.jsonl"
    path.write_text("".join(lines[i] + "\n" for i in chosen))
    return path


def plan(method: str, data: Path) -> dict:
    """tunesmith's optimizer steps and per-example lengths for this draw (the Trainer gets the same examples/step)."""
    from tunesmith.config import load_config
    from tunesmith.data.dataset import prepare_data
    from tunesmith.models.loading import load_tokenizer, resolve_model
    from tunesmith.train.run import micro_batch_stream

    cfg = load_config(CONFIGS[method], overrides(method, data))
    tokenized = prepare_data(cfg.data.train, cfg.data, load_tokenizer(resolve_model(cfg.model.name))).tokenized
    steps = len(micro_batch_stream(tokenized, cfg))
    return {"examples": len(tokenized), "steps": steps, "lengths": [len(t) for t in tokenized]}


def model_shape() -> dict:
    """Matmul parameters (every Linear, the tied LM head included) and the attention shape, from the model config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.models.loading import resolve_model

    config = AutoConfig.from_pretrained(resolve_model("smollm2-135m-instruct"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {"linear_params": linear, "layers": config.num_hidden_layers,
            "attn_dim": config.num_attention_heads * (config.hidden_size // config.num_attention_heads)}


def useful_flops(method: str, shape: dict, lengths: list[int]) -> float:
    """Training FLOPs a perfect implementation needs for these examples (no padding, no cross-example attention)."""
    passes = 3 if method == "full" else 2  # forward + input gradients (+ weight gradients when every weight trains)
    matmuls = passes * 2 * shape["linear_params"] * sum(lengths)
    attention = 3 * 2 * shape["attn_dim"] * shape["layers"] * sum(n * n for n in lengths)  # QK^T and AV, causal half
    return matmuls + attention


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    med = statistics.median(values)
    return fmt.format(med) if len(values) == 1 else f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def peak_gflops(result: dict, args) -> float:
    """The matmul peak a result's MFU is measured against: the GPU's where it ran on one, else the CPU's per thread
    times its threads."""
    if result.get("device", "cpu") != "cpu":
        return args.gpu_peak_tflops * 1000
    return (args.peak_gflops if result.get("precision", "bf16") == "bf16" else args.peak_gflops_fp32) * result["threads"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=96, help="Rows drawn for each repeat")
    parser.add_argument("--pool", type=int, default=1000, help="Draw from the first N rows of the shipped train file")
    parser.add_argument("--peak-gflops", type=float, default=287.5,
                        help="Measured bf16 matmul peak of this CPU per thread (550-600 GFLOP/s on 2 threads)")
    parser.add_argument("--peak-gflops-fp32", type=float, default=95.0,
                        help="Measured fp32 matmul peak per thread, for CPUs without native bf16 (where both stacks "
                        "run in fp32)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=790.0,
                        help="The GPU's measured bf16 matmul peak, for MFU where the stacks ran on a GPU (an H200 here: "
                        "about 790 TFLOP/s)")
    parser.add_argument("--note", default="", help="A sentence about the conditions, added to the docs")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-train")
    parser.add_argument("--no-docs", action="store_true", help="Print the table only")
    parser.add_argument("--layouts", default="packed",
                        help="tunesmith's row layouts to measure: packed (rows of several examples), padded (one example "
                        "per row, grouped by length, the Trainer's examples per step), or both: packed,padded")
    parser.add_argument("--child", choices=["trainer", "tunesmith", "tunesmith-padded"])
    parser.add_argument("--method", choices=list(CONFIGS))
    parser.add_argument("--data", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.method, args.data, args.out, args.batch)
        return

    import shutil

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    methods = args.methods.split(",")
    shape = model_shape()
    stacks = ["trainer"] + [{"packed": "tunesmith", "padded": "tunesmith-padded"}[x] for x in args.layouts.split(",")]
    results: dict[str, list[dict]] = {f"{m}/{w}": [] for m in methods for w in stacks}
    for repeat in range(args.repeats):
        data = draw(args.pool, args.examples, repeat, args.out)
        for method in methods:
            p = plan(method, data)
            batch = max(1, round(p["examples"] / p["steps"]))
            for which in stacks:
                print(f"repeat {repeat + 1}/{args.repeats}: {method} {which} ({p['examples']} examples, "
                      f"{p['examples'] / p['steps']:.1f} per step) ...", flush=True)
                cmd = [sys.executable, __file__, "--child", which, "--method", method, "--data", str(data),
                       "--out", str(args.out / f"{method}-{which}-{repeat}"), "--batch", str(batch)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.exit(f"{method} {which} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(line[7:])
                r.update(batch=None if which == "tunesmith" else batch, examples=p["examples"],
                         gflops=useful_flops(method, shape, p["lengths"]) / 1e9)
                results[f"{method}/{which}"].append(r)
                print(f"  {r['trained_tokens'] / r['seconds']:.0f} trained tokens/s, {r['seconds']:.0f} s, "
                      f"{r['peak_rss_mb']:.0f} MB, {r['steps']} steps", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    first = results[f"{methods[0]}/{stacks[1]}"][0]
    threads, gpu = first["threads"], first.get("device", "cpu") != "cpu"
    where = f"one {first['device']} GPU" if gpu else f"{threads} thread(s)"
    dtype = first.get("precision", "bf16")
    peak = (f"{args.gpu_peak_tflops:.0f} TFLOP/s, the GPU's measured bf16 matmul peak" if gpu else
            f"{peak_gflops(first, args):.0f} GFLOP/s, the measured {dtype} matmul peak on {threads} thread(s)")
    lines = [
        "## Training throughput: tunesmith vs transformers Trainer (+ peft)",
        "",
        f"`.venv/bin/python bench/train_throughput.py --methods {args.methods} --repeats {args.repeats} --examples "
        f"{args.examples} --pool {args.pool}" + (f" --layouts {args.layouts}" if args.layouts != "packed" else "") + (f" --note '{args.note}'" if args.note else "") + (f" --peak-gflops-fp32 {args.peak_gflops_fp32:g}" if dtype == "fp32" and not gpu else "") + (f" --peak-gflops {args.peak_gflops:g}" if dtype == "bf16" and not gpu and args.peak_gflops != parser.get_default("peak_gflops") else "") + f"` on {platform.machine()}, {where}, torch "
        f"{__import__('torch').__version__}, transformers {__import__('transformers').__version__}, peft "
        f"{__import__('peft').__version__}; {time.strftime('%Y-%m-%d')}.",
        "",
        f"SmolLM2-135M-Instruct on DBLP-QuAD (question + entities → SPARQL; loss on the answer only). Each repeat draws "
        f"{args.examples} rows (seed = repeat) from the first {args.pool} rows of examples/dblp_quad/data/train.jsonl; "
        f"both stacks train one epoch on that draw, each in its own process, "
        f"{'bf16 autocast' if dtype == 'bf16' else 'fp32 (no native bf16 here)'}. tunesmith: {ROWS_PER_STEP} "
        f"packed rows of up to {ROW_LEN} tokens per step. Trainer: the same examples per step (batch size = examples / "
        "tunesmith's steps, rounded), padded by DataCollatorForSeq2Seq. tunesmith-padded (`train.pack=false`): the "
        "Trainer's batch size, one example per row, rows grouped by length and right-padded (no attention mask: "
        "causal attention never reaches the padding after a row's last token). LoRA: r=16, alpha=32, dropout 0, all linear "
        "layers (Trainer + peft). Full: every weight (Trainer alone). Cells: median (min–max) over repeats; ratios are "
        f"of medians. MFU: useful training FLOPs per second over {peak}. {args.note}".strip(),
        "",
        "| method | stack | trained tokens/s | ratio | peak RSS MB | RSS ratio | MFU % | steps | last logged loss |"
        + (" peak GPU MB |" if gpu else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""),
    ]
    for method in methods:
        base = results[f"{method}/trainer"]
        base_tps = statistics.median(r["trained_tokens"] / r["seconds"] for r in base)
        base_rss = statistics.median(r["peak_rss_mb"] for r in base)
        for which in stacks:
            rs = results[f"{method}/{which}"]
            tps = [r["trained_tokens"] / r["seconds"] for r in rs]
            rss = [r["peak_rss_mb"] for r in rs]
            mfu = [100 * r["gflops"] / r["seconds"] / peak_gflops(r, args) for r in rs]
            known = [r["final_loss"] for r in rs if r.get("final_loss") is not None]
            loss = f"{statistics.median(known):.3f}" if known else "-"
            lines.append(f"| {method} | {which} | {spread(tps)} | {statistics.median(tps) / base_tps:.2f}x | {spread(rss)} | "
                         f"{statistics.median(rss) / base_rss:.2f}x | {spread(mfu, '{:.1f}')} | "
                         f"{statistics.median(r['steps'] for r in rs):.0f} | {loss} |"
                         + (f" {spread([r.get('peak_gpu_mb', 0) for r in rs])} |" if gpu else ""))
    table = "\n".join(lines)
    print(table)
    if not args.no_docs:
        from bench.report import update_section

        update_section("train-throughput", table)


if __name__ == "__main__":
    main()
