"""The main job (`make demo`): LoRA-tune the embedded SmolLM2 on DBLP-QuAD and show it beats the base model.

Training: the first 720 rows of examples/dblp_quad/data/train.jsonl (72 of each of the ten query types); evaluation:
the first 100 rows of valid.jsonl (10 of each type, 20 of them from templates never seen in training). Both files are
interleaved by query type, so their first N rows are balanced slices of all ten types.

Built from the toolkit's own pieces, top to bottom: `tunesmith train` with configs/dblp-quad-lora.yaml, then
`tunesmith eval` with examples/dblp_quad/eval.yaml restricted to the base and the tuned model (no few-shot, RAG or
forgetting panel, to stay within minutes). So the figures printed here are exactly those `tunesmith eval` reports
for the same models (same prompts, decoding, metrics, scale 0-100), and runs/demo/eval holds the same report files.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tunesmith.config import load_config, read_config  # noqa: E402
from tunesmith.eval.config import EvalConfig  # noqa: E402
from tunesmith.eval.metrics import display_name  # noqa: E402
from tunesmith.eval.report import verdict  # noqa: E402
from tunesmith.eval.runner import run_eval  # noqa: E402
from tunesmith.train.run import train  # noqa: E402

RUN_DIR = ROOT / "runs" / "demo"
REPORT_DIR = RUN_DIR / "eval"
console = Console()


def main() -> None:
    wall_start = time.perf_counter()
    os.chdir(ROOT)  # the configs name their data files relative to the repository root
    # ---- setup ----
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    train_cfg = load_config(ROOT / "configs" / "dblp-quad-lora.yaml", [f"output.dir={RUN_DIR}"])
    eval_cfg = read_config(EvalConfig, ROOT / "examples" / "dblp_quad" / "eval.yaml", [
        f"variants=[{{kind: base, name: base}}, {{kind: tuned, name: LoRA, run: '{RUN_DIR}'}}]",
        "forgetting.enabled=false", "metrics.loss=false", f"report.dir={REPORT_DIR}"])

    # ---- run: train, then both models through `tunesmith eval` ----
    console.rule("[bold]1. LoRA fine-tuning SmolLM2-135M-Instruct on DBLP-QuAD")
    result = train(train_cfg)
    console.rule(f"[bold]2. Base and tuned model on {eval_cfg.data.n} held-out questions, as `tunesmith eval` measures them")
    report = run_eval(eval_cfg)

    # ---- report ----
    metrics = [m.name for m in report.metrics]
    table = Table(title=f"DBLP-QuAD, the first {report.n_test} questions of the validation split, all ten query types "
                        f"(scores 0-100)")
    for column in ["model", *map(display_name, metrics), "generation s"]:
        table.add_column(column)
    for v in report.variants:
        style = "[bold green]" if v.kind == "tuned" else ""
        table.add_row(v.name, *(f"{style}{v.scores[m]:.1f}" for m in metrics), f"{v.generation_seconds:.0f}")
    base, tuned = report.variants
    for i in range(3):
        item = report.items[i]
        console.print(f"\n[bold]Q:[/] {item.question}\n[bold]gold:[/]  {item.reference}\n"
                      f"[bold]base:[/]  {base.predictions[i][:300]}\n[bold]tuned:[/] {tuned.predictions[i]}")
    console.print(table)
    headline = display_name(report.headline)
    for field, groups in base.breakdown.items():  # examples/dblp_quad/eval.yaml: by query_type and held_out
        by = Table(title=f"{headline} by {field}")
        for column in (field, "n", base.name, tuned.name):
            by.add_column(column)
        for value, cell in groups.items():
            by.add_row(value, str(cell.n), f"{cell.score:.1f}", f"[bold green]{tuned.breakdown[field][value].score:.1f}")
        console.print(by)
    for line in verdict(report):
        console.print(line.replace("**", ""))
    console.print(f"Trained {result.trained_tokens:,} tokens in {result.train_seconds:.0f} s; whole demo "
                  f"{time.perf_counter() - wall_start:.0f} s. Report: {REPORT_DIR / 'report.html'} (also report.md, "
                  f"report.json). Try it: tunesmith chat --run {RUN_DIR}")


if __name__ == "__main__":
    main()
