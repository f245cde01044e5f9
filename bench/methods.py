"""Every fine-tuning method on the same DBLP-QuAD slice, the same data and budget, then `tunesmith eval` on the
same validation rows: docs/methods.md (table + plot).

    python bench/methods.py                 # everything not measured yet (resumes per method), then the docs
    python bench/methods.py --only lora,ia3 # some methods
    python bench/methods.py --docs-only     # rewrite docs/methods.md from the stored results
    python bench/methods.py --smoke         # 2 steps and 4 questions per method: does every path run?

Each method trains from its shipped config (configs/methods/NAME.yaml: the first 256 training rows, one epoch,
the method's own learning rate) with `tunesmith train` in a fresh process, so its peak RSS is its own; an
interrupted method resumes from its checkpoints. Then, in this process: `tunesmith eval`'s runner on the first
100 validation rows (greedy, the eval config of examples/dblp_quad/eval.yaml), and the perplexity of general
text (the forgetting panel's Self-Instruct seed tasks, as plain text) against the base model's. Results are stored
per method in runs/bench-methods/NAME.json (a method with a result is not run again), all of them in
docs/methods.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "runs" / "bench-methods"
DOC = ROOT / "docs" / "methods.md"
PLOT = ROOT / "docs" / "methods.png"
EVAL_ROWS = 100
# label → config (the SPARQL task)
GENERATIVE = {  # in the order they run: the most asked-about first, so a partial run is already useful
    "lora": "configs/methods/lora.yaml",
    "full": "configs/methods/full.yaml",
    "qlora": "configs/methods/qlora.yaml",
    "freeze": "configs/methods/freeze.yaml",
    "ia3": "configs/methods/ia3.yaml",
    "adapter": "configs/methods/adapter.yaml",
    "prompt_tuning": "configs/methods/prompt_tuning.yaml",
    "prefix_tuning": "configs/methods/prefix_tuning.yaml",
    "p_tuning": "configs/methods/p_tuning.yaml",
    "dora": "configs/methods/dora.yaml",
    "two-stage": "configs/methods/two-stage.yaml",
    # the same method with a larger budget: do the virtual-token methods learn the task at all, given more steps?
    "prompt_tuning x4": "configs/methods/prompt_tuning.yaml train.epochs=4",
}
# label → (config, overrides): question → query type (10 classes), a classification head
CLASSIFIERS = {
    "feature_extraction": ("configs/dblp-quad-query-type.yaml", []),
    "lora-classifier": ("configs/dblp-quad-query-type.yaml", ["method={name: lora, r: 16, alpha: 32}", "train.lr=1e-3"]),
}
TOKENIZER_FILES = ("tokenizer", "special_tokens_map", "chat_template", "vocab", "merges", "labels.json", "added_tokens")


def tunesmith(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], check=True, cwd=ROOT, env=env)


def trained_size(run: Path) -> int:
    """Bytes a user keeps beyond the base model: the trained output (and a multi-stage run's merged stages)."""
    from tunesmith.train.stages import STAGES_DIR

    folders = [run / "final"]
    if (run / STAGES_DIR).is_dir():
        stages = sorted((run / STAGES_DIR).iterdir())
        folders = [s / "merged" for s in stages[:-1]] + [stages[-1] / "final"]
    return sum(f.stat().st_size for folder in folders if folder.is_dir() for f in folder.rglob("*")
               if f.is_file() and not f.name.startswith(TOKENIZER_FILES))


def train_summary(run: Path) -> dict:
    """The run's train_summary.json; a multi-stage run's stages summed (times, tokens) or maxed (memory)."""
    from tunesmith.train.stages import STAGES_DIR

    if not (run / STAGES_DIR).is_dir():
        return json.loads((run / "train_summary.json").read_text())
    parts = [json.loads((s / "train_summary.json").read_text()) for s in sorted((run / STAGES_DIR).iterdir())]
    total = dict(parts[-1])
    for key in ("train_seconds", "trained_tokens", "tokens", "steps"):
        total[key] = sum(p[key] for p in parts)
    total["peak_rss_mb"] = max(p["peak_rss_mb"] for p in parts)
    total["trainable_parameters"] = max(p["trainable_parameters"] for p in parts)
    total["trained_tokens_per_second"] = round(total["trained_tokens"] / max(total["train_seconds"], 1e-9), 1)
    total["tokens_per_second"] = round(total["tokens"] / max(total["train_seconds"], 1e-9), 1)
    return total


def general_perplexity(model, tokenizer) -> float:
    from tunesmith.eval.forgetting import load_general_tasks
    from tunesmith.eval.scoring import reference_loss

    return reference_loss(model, tokenizer, texts=[t.as_text for t in load_general_tasks(n=40)]).perplexity


def base_result() -> dict:
    path = RESULTS / "base.json"
    if path.is_file():
        return json.loads(path.read_text())
    from tunesmith.generate import load_for_inference

    model, tokenizer = load_for_inference(model="smollm2-135m-instruct", device="cpu")
    result = {"general_perplexity": general_perplexity(model, tokenizer)}
    path.write_text(json.dumps(result, indent=1))
    return result


def measure_generative(label: str, config: str, smoke: bool) -> dict:
    from tunesmith.config import read_config
    from tunesmith.eval.config import EvalConfig
    from tunesmith.eval.runner import run_eval
    from tunesmith.generate import load_for_inference, run_data_config

    config, *extra = config.split()  # "CONFIG [KEY=VALUE ...]": the shipped config with overrides
    run = RESULTS / label.replace(" ", "-") / "run"
    # no validation loss at the end of training: the eval below measures every method the same way
    overrides = [f"output.dir={run}", "data.valid=null", *extra] + (["train.max_steps=2"] if smoke else [])
    args = ["train", config] + [x for o in overrides for x in ("--set", o)]
    done = (run / "train_summary.json").is_file() or (run / "lineage.json").is_file() and _stages_done(run, config)
    if not done:
        tunesmith(*args, *(["--resume"] if (run / "config.yaml").is_file() else []))
    summary = train_summary(run)
    n = 4 if smoke else EVAL_ROWS
    # the prompts written as the run read them in training (configs/methods keep full IRIs: no data.iri_prefixes),
    # and room for the longest reference written that way (322 tokens; eval.yaml's 224 is for compact IRIs)
    prefixes = run_data_config(run).iri_prefixes
    eval_cfg = read_config(EvalConfig, ROOT / "examples" / "dblp_quad" / "eval.yaml", [
        f"data.iri_prefixes={json.dumps(prefixes)}", *([] if prefixes else ["generation.max_new_tokens=336"]),
        f"variants=[{{kind: tuned, name: {label}, run: '{run}'}}]", "forgetting.enabled=false", "metrics.loss=false",
        f"report.dir={RESULTS / label.replace(' ', '-') / 'eval'}", f"data.n={n}", "metrics.use=[exact_match, sparql_match]",
        "metrics.breakdown_by=[query_type]"] + (["generation.max_new_tokens=16"] if smoke else []))
    report = run_eval(eval_cfg, show_progress=False)
    variant = report.variants[0]
    model, tokenizer = load_for_inference(run, device="cpu")
    return {"label": label, "config": " ".join([config, *extra]), "task": "sparql", "eval_rows": n, "weights_mb": weights_in_memory(config),
            "sparql_match": variant.scores["sparql_match"], "exact_match": variant.scores["exact_match"],
            "generation_seconds": variant.generation_seconds, "general_perplexity": general_perplexity(model, tokenizer),
            "trained_bytes": trained_size(run), **summary}


def weights_in_memory(config: str) -> float:
    """MiB of the model's tensors as training holds them (after the method's load and bf16 storage of frozen layers)."""
    import torch

    from tunesmith.config import load_config
    from tunesmith.methods.base import get_method
    from tunesmith.models.loading import resolve_model
    from tunesmith.models.precision import cpu_has_bf16, store_frozen_linear_weights_in
    from tunesmith.objectives.base import get_objective
    from tunesmith.train.stages import stage_config

    cfg = load_config(ROOT / config)
    if cfg.stages:
        cfg = stage_config(cfg, len(cfg.stages) - 1, parent=cfg.model.name)
    method, path = get_method(cfg.method.name), resolve_model(cfg.model.name)
    task = get_objective(cfg.objective.name).task(cfg, [], path, None)
    model = method.apply(method.load_base(path, cfg.method, "cpu", task), cfg.method, task)
    if cpu_has_bf16():
        store_frozen_linear_weights_in(model, torch.bfloat16)
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return round(total / 2**20, 1)


def _stages_done(run: Path, config: str) -> bool:
    from tunesmith.config import load_config

    return len(json.loads((run / "lineage.json").read_text())) == len(load_config(ROOT / config).stages or [])


def measure_classifier(label: str, config: str, overrides: list[str], smoke: bool) -> dict:
    run = RESULTS / label / "run"
    overrides = overrides + [f"output.dir={run}"] + (["train.max_steps=2"] if smoke else [])
    if not (run / "train_summary.json").is_file():
        tunesmith("train", config, *[x for o in overrides for x in ("--set", o)],
                  *(["--resume"] if (run / "config.yaml").is_file() else []))
    report = json.loads((run / "valid_report.json").read_text())
    return {"label": label, "config": config, "overrides": overrides, "task": "query_type", "eval_rows": report["n"],
            "accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "trained_bytes": trained_size(run),
            **train_summary(run)}


# ---- the docs ----

def data_tokens() -> str:
    report = RESULTS / "lora" / "run" / "data_report.json"
    if not report.is_file():
        return "the same rows for every method"
    train = json.loads(report.read_text())["train"]
    return f"{train['tokens']:,} tokens, {train['trained_tokens']:,} of them trained"


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def write_docs(results: dict[str, dict], base: dict, command: str) -> None:
    gen = [results[k] for k in GENERATIVE if k in results]
    cls = [results[k] for k in CLASSIFIERS if k in results]
    lines = [
        "# Fine-tuning methods compared",
        "",
        "Every method of tunesmith on the same task and data: DBLP-QuAD question + gold entities → SPARQL, the first",
        f"256 rows of `examples/dblp_quad/data/train.jsonl` ({data_tokens()}), one epoch, each",
        "method at its own usual learning rate (its config in `configs/methods/`). Then `tunesmith eval`'s runner on the",
        f"first {EVAL_ROWS} rows of `valid.jsonl` (greedy, up to 176 new tokens; SPARQL match = the same query up to",
        "variable names and whitespace), and the perplexity of general text (the 40 Self-Instruct seed tasks of the",
        "forgetting panel, as plain text) against the base model's "
        f"({base['general_perplexity']:.2f}).",
        "",
        "Measured on the project machine: one CPU thread per run (2-core Xeon with AMX, bf16 autocast), every",
        "training in a fresh process (peak RSS is its own). Times on this VM drift by ±15-20% within an hour: trust",
        "ratios above ~1.3x. Trained tokens/s counts the tokens the loss trains on (the answers).",
        "",
        f"Command: `{command}` (resumes per method; results in runs/bench-methods/NAME.json).",
        "",
        "| method | SPARQL match | trainable params | trained output on disk | train time | trained tok/s | peak RSS | model in memory | general-text perplexity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in gen:
        change = 100 * (r["general_perplexity"] / base["general_perplexity"] - 1)
        lines.append(f"| {r['label']} | {r['sparql_match']:.0f}% | {r['trainable_parameters']:,} | "
                     f"{fmt_bytes(r['trained_bytes'])} | {r['train_seconds'] / 60:.1f} min | "
                     f"{r['trained_tokens_per_second']:.0f} | {r['peak_rss_mb'] / 1024:.2f} GiB | "
                     f"{r['weights_mb']:.0f} MiB | {change:+.1f}% |")
    lines += ["", "![SPARQL match against trainable parameters and train time](methods.png)", ""]
    if cls:
        lines += [
            "## Feature extraction: a classification head",
            "",
            "Question → query type (all 10 DBLP-QuAD types), `configs/dblp-quad-query-type.yaml`: 1,000 training",
            "questions (100 per type), validation on 300 other ones (30 per type). feature_extraction keeps SmolLM2",
            "frozen and trains only a linear head on the mean of its last hidden states; lora-classifier trains LoRA",
            "r=16 and the head together (the same three epochs, lr 1e-3). `tunesmith predict --run RUN -i FILE` labels new rows.",
            "",
            "| method | accuracy | macro-F1 | trainable params | trained output on disk | train time | peak RSS |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in cls:
            lines.append(f"| {r['label']} | {100 * r['accuracy']:.1f}% | {100 * r['macro_f1']:.1f}% | "
                         f"{r['trainable_parameters']:,} | {fmt_bytes(r['trained_bytes'])} | "
                         f"{r['train_seconds'] / 60:.1f} min | {r['peak_rss_mb'] / 1024:.2f} GiB |")
        lines.append("")
    DOC.write_text("\n".join(lines) + "\n")
    DOC.with_suffix(".json").write_text(json.dumps({"base": base, "methods": results}, indent=1) + "\n")
    if gen:
        plot(gen)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label, log in ((axes[0], "trainable_parameters", "trainable parameters", True),
                                (axes[1], "train_seconds", "train time (s, one CPU thread)", False)):
        placed: list[tuple[float, float, int]] = []  # labels of nearby points stacked upwards, not on each other
        for r in rows:
            x, y = r[key], r["sparql_match"]
            ax.scatter(x, y, s=30)
            near = [level for px, py, level in placed if abs(py - y) < 1.5
                    and (abs(math.log10(px / x)) < 1.0 if log else abs(px - x) < 200)]
            level = max(near) + 1 if near else 0
            placed.append((x, y, level))
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 3 + 9 * level), fontsize=8)
        ax.set_xscale("log" if log else "linear")
        ax.set_xlabel(label)
        ax.set_ylabel("SPARQL match (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"SmolLM2-135M on DBLP-QuAD: 256 training rows, {EVAL_ROWS} validation questions")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated labels")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 4 questions: check that every path runs")
    parser.add_argument("--docs-only", action="store_true")
    args = parser.parse_args()
    os.chdir(ROOT)
    global RESULTS
    if args.smoke:
        RESULTS = RESULTS / "smoke"
    RESULTS.mkdir(parents=True, exist_ok=True)
    wanted = args.only.split(",") if args.only else list(GENERATIVE) + list(CLASSIFIERS)
    if not args.docs_only:
        for label in wanted:
            path = RESULTS / f"{label}.json"
            if path.is_file():
                continue
            start = time.perf_counter()
            result = (measure_generative(label, GENERATIVE[label], args.smoke) if label in GENERATIVE
                      else measure_classifier(label, *CLASSIFIERS[label], args.smoke))
            result["bench_seconds"] = round(time.perf_counter() - start, 1)
            path.write_text(json.dumps(result, indent=1))
            print(f"{label}: {json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float))})}", flush=True)
    results = {p.stem: json.loads(p.read_text()) for p in RESULTS.glob("*.json") if p.stem != "base"}
    if not args.smoke:
        write_docs(results, base_result(), "python bench/methods.py")
    else:
        print(json.dumps({k: v.get("sparql_match", v.get("accuracy")) for k, v in results.items()}))


if __name__ == "__main__":
    main()
