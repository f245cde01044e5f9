"""Training throughput: tunesmith vs the standard stack (transformers Trainer + peft), in one invocation.

Same model (embedded SmolLM2-135M-Instruct), same DBLP-QuAD rows, same LoRA config (r=16, alpha=32, dropout 0,
all linear layers), same chat template and loss mask, ~8 examples per optimizer step, bf16 autocast where the
CPU has it. Each contender runs in its own process so peak RSS is its own. Prints a table and writes it into
docs/benchmarks.md.

    .venv/bin/python bench/train_throughput.py [--examples 192]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "dblp-quad-lora.yaml"


def run_trainer(n_examples: int, out: Path) -> dict:
    """The standard recipe: tokenized examples padded per batch by a collator, Trainer + peft LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunesmith.config import load_config
    from tunesmith.data.dataset import prepare_data
    from tunesmith.models.loading import load_model, load_tokenizer, resolve_model
    from tunesmith.models.precision import bf16_available

    cfg = load_config(CONFIG, [f"data.limit={n_examples}"])
    path = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(path)
    data = prepare_data(cfg.data.train, cfg.data, tokenizer)  # identical tokens and labels to tunesmith's
    rows = [{"input_ids": t.input_ids, "attention_mask": [1] * len(t), "labels": t.labels} for t in data.tokenized]
    model = get_peft_model(load_model(path, device="cpu"), LoraConfig(
        r=cfg.method.r, lora_alpha=cfg.method.alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, num_train_epochs=1, learning_rate=cfg.train.lr,
        lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5, save_strategy="no", report_to=[],
        bf16=bf16_available(torch.device("cpu")), use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trained = sum(t.n_trained for t in data.tokenized)
    return {"seconds": seconds, "trained_tokens": trained, "tokens": sum(len(t) for t in data.tokenized),
            "final_loss": trainer.state.log_history[-2].get("loss") if len(trainer.state.log_history) > 1 else None}


def run_tunesmith(n_examples: int, out: Path, pack: bool) -> dict:
    from tunesmith.config import load_config
    from tunesmith.train.run import train

    overrides = [f"data.limit={n_examples}", f"output.dir={out}", f"train.pack={str(pack).lower()}", "train.epochs=1"]
    overrides += ["train.batch_size=2"] if pack else ["train.batch_size=8"]  # 2 packed rows of 512 ≈ 6-8 examples
    result = train(load_config(CONFIG, overrides))
    return {"seconds": result.train_seconds, "trained_tokens": result.trained_tokens, "tokens": result.tokens,
            "final_loss": result.final_loss}


def child(which: str, n_examples: int, out: Path) -> None:
    import torch

    torch.manual_seed(0)
    if which == "trainer":
        result = run_trainer(n_examples, out)
    else:
        result = run_tunesmith(n_examples, out, pack=which == "tunesmith-packed")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=192)
    parser.add_argument("--child", choices=["trainer", "tunesmith-unpacked", "tunesmith-packed"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-train")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.examples, args.out / args.child)
        return

    import shutil

    shutil.rmtree(args.out, ignore_errors=True)
    results = {}
    for which in ("trainer", "tunesmith-unpacked", "tunesmith-packed"):
        print(f"running {which} ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", which, "--examples", str(args.examples),
                               "--out", str(args.out)], capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{which} failed:\n{proc.stderr[-3000:]}")
        results[which] = json.loads(line[7:])
        r = results[which]
        print(f"  {r['trained_tokens'] / r['seconds']:.0f} trained tokens/s, {r['seconds']:.0f} s, {r['peak_rss_mb']:.0f} MB")

    base = results["trainer"]
    base_tps = base["trained_tokens"] / base["seconds"]
    lines = [
        "## Training throughput: tunesmith vs transformers Trainer + peft",
        "",
        f"`.venv/bin/python bench/train_throughput.py --examples {args.examples}` on {platform.machine()}, "
        f"{__import__('os').cpu_count()} CPU cores, torch {__import__('torch').__version__}, "
        f"transformers {__import__('transformers').__version__}, peft {__import__('peft').__version__}; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        f"SmolLM2-135M-Instruct, LoRA r=16 alpha=32 dropout 0 on all linear layers, {args.examples} DBLP-QuAD rows "
        "(question + entities → SPARQL; loss on the answer only), one epoch, bf16 autocast. Trainer: batches of 8 "
        "padded by DataCollatorForSeq2Seq. tunesmith unpacked: batches of 8, length-grouped. tunesmith packed: 2 rows "
        "of up to 512 tokens per step (about 6 examples), attention kept within each example.",
        "",
        "| stack | trained tokens/s | ratio | wall s | peak RSS MB | final loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for which, r in results.items():
        tps = r["trained_tokens"] / r["seconds"]
        loss = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "-"
        lines.append(f"| {which} | {tps:.0f} | {tps / base_tps:.2f}x | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | {loss} |")
    table = "\n".join(lines)
    print(table)
    from bench.report import update_section

    update_section("train-throughput", table)


if __name__ == "__main__":
    main()
