"""The distillation measurement of docs/distillation.md, with the toolkit's own commands, top to bottom.

    python bench/distill.py            # every step whose output is missing, then the summary
    python bench/distill.py --offline  # also the offline (stored top-k) variant's costs
    python bench/distill.py --no-seqkd # without sequence-level KD (its teacher pass is the slowest step)

Steps (each the command a user would type; a step whose output exists is skipped, so an interrupted run continues):
teacher (configs/dblp-quad-lora.yaml, the demo's LoRA run) → `tunesmith student` (every other block) → the student
trained three ways on the same 720 rows with the same budget (plain SFT, online logit KD, sequence-level KD on the
teacher's answers) → one `tunesmith eval` report (examples/dblp_quad/eval-distill.yaml). The summary (SPARQL match
with CIs, paired differences, parameters, generation tokens/s, peak memory, what each step cost) is printed and
written to docs/distillation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN = "examples/dblp_quad/data/train.jsonl"
ANSWERS = "runs/seqkd/teacher-answers.jsonl"
STEPS = [  # name, output that marks it done, command
    ("teacher", "runs/dblp-quad-lora/train_summary.json",
     ["train", "configs/dblp-quad-lora.yaml"]),
    ("student", "runs/dblp-quad-student/student.json",
     ["student", "runs/dblp-quad-lora", "-o", "runs/dblp-quad-student"]),
    ("student SFT", "runs/student-sft/train_summary.json", ["train", "configs/student-sft.yaml"]),
    ("logit KD (online)", "runs/distill-logits/train_summary.json", ["train", "configs/distill-logits.yaml"]),
    ("teacher answers", ANSWERS, ["data", "relabel", "configs/prep-seqkd.yaml", "-i", TRAIN, "-o", ANSWERS]),
    ("seq-level KD", "runs/distill-seqkd/train_summary.json", ["train", "configs/distill-seqkd.yaml"]),
    ("eval", "runs/eval-distill/report.json", ["eval", "examples/dblp_quad/eval-distill.yaml"]),
]
OFFLINE = ("logit KD (offline)", "runs/distill-offline/train_summary.json", ["train", "configs/distill-offline.yaml"])


def read_yaml_variants() -> list[dict]:
    import yaml

    return yaml.safe_load((ROOT / "examples/dblp_quad/eval-distill.yaml").read_text())["variants"]


def run_steps(steps, timings: dict) -> None:
    for name, done, command in steps:
        if (ROOT / done).exists():
            print(f"== {name}: done ({done})", flush=True)
            continue
        print(f"== {name}: tunesmith {' '.join(command)}", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tunesmith.cli", *command], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        timings[name] = round(time.perf_counter() - start, 1)


def summary(timings: dict) -> dict:
    from tunesmith.eval.metrics import paired_bootstrap_diff
    from tunesmith.files import read_json
    from tunesmith.models.loading import load_tokenizer

    report = read_json(ROOT / "runs/eval-distill/report.json")
    student = read_json(ROOT / "runs/dblp-quad-student/student.json")
    tokenizer = load_tokenizer(ROOT / "runs/dblp-quad-student")
    h = report["headline"]
    by_name = {v["name"]: v for v in report["variants"]}
    teacher_name = next(n for n in by_name if n.startswith("teacher"))
    rows = {}
    for name, v in by_name.items():
        generated = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in v["predictions"])
        rows[name] = {
            "sparql_match": v["scores"][h], "ci": v["headline_ci"], "exact_match": v["scores"].get("exact_match"),
            "parameters": student["parameters"]["teacher" if name == teacher_name else "student"],
            "blocks": student["teacher_blocks"] if name == teacher_name else len(student["kept_blocks"]),
            "generated_tokens": generated, "generation_seconds": v["generation_seconds"],
            "generation_tokens_per_second": round(generated / v["generation_seconds"], 1),
            "seconds_per_item": v["seconds_per_item"], "peak_rss_mb": v["peak_rss_mb"],
            "train_seconds": (v.get("cost") or {}).get("train_seconds")}
    b = report["config"]["metrics"]["bootstrap"]

    def paired(a: str, c: str) -> dict:
        mean, low, high = paired_bootstrap_diff(by_name[a]["items"][h], by_name[c]["items"][h], b["samples"],
                                                b["confidence"], b["seed"])
        return {"a": a, "b": c, "mean": round(mean, 2), "ci": [round(low, 2), round(high, 2)]}

    teacher = rows[teacher_name]
    students = [n for n in rows if n.startswith("student") and "untrained" not in n]
    sft = next(n for n in students if n.endswith("SFT"))
    targets = {}
    for name in students:
        s = rows[name]
        targets[name] = {
            "kept_share_of_teacher_score": round(s["sparql_match"] / teacher["sparql_match"], 3) if teacher["sparql_match"] else None,
            "generation_speedup_seconds_per_item": round(teacher["seconds_per_item"] / s["seconds_per_item"], 2),
            "generation_speedup_tokens_per_second": round(s["generation_tokens_per_second"] / teacher["generation_tokens_per_second"], 2),
            "vs_sft": paired(name, sft) if name != sft else None,
            "vs_teacher": paired(name, teacher_name)}
    return {"data": f"DBLP-QuAD, first {report['n_test']} rows of examples/dblp_quad/data/valid.jsonl",
            "headline": h, "variants": rows, "targets": targets, "step_seconds": timings,
            "command": "python bench/distill.py (under 1 CPU thread)"}


def markdown(result: dict) -> str:
    """The table of docs/distillation.md."""
    lines = ["| variant | blocks | parameters | SPARQL match [95% CI] | exact match | generated tokens/s | s / item | peak MB | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        lines.append(f"| {name} | {v['blocks']} | {v['parameters'] / 1e6:.1f}M | {v['sparql_match']:.1f} "
                     f"[{v['ci'][0]:.1f}, {v['ci'][1]:.1f}] | {v['exact_match']:.1f} | {v['generation_tokens_per_second']:.1f} | "
                     f"{v['seconds_per_item']:.2f} | {v['peak_rss_mb']:,.0f} | {v['train_seconds'] or '–'} |")
    lines += ["", "| student | share of teacher score | speed-up (s/item) | speed-up (tokens/s) | − SFT student [95% paired CI] | − teacher [95% paired CI] |",
              "|---|---|---|---|---|---|"]
    for name, t in result["targets"].items():
        vs_sft = f"{t['vs_sft']['mean']:+.1f} [{t['vs_sft']['ci'][0]:+.1f}, {t['vs_sft']['ci'][1]:+.1f}]" if t["vs_sft"] else "–"
        vt = t["vs_teacher"]
        lines.append(f"| {name} | {t['kept_share_of_teacher_score']:.0%} | {t['generation_speedup_seconds_per_item']:.2f}x | "
                     f"{t['generation_speedup_tokens_per_second']:.2f}x | {vs_sft} | {vt['mean']:+.1f} [{vt['ci'][0]:+.1f}, {vt['ci'][1]:+.1f}] |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offline", action="store_true", help="also train the offline (stored top-k) variant")
    parser.add_argument("--no-seqkd", action="store_true",
                        help="leave out sequence-level KD (its teacher pass over 720 prompts is the slowest step)")
    args = parser.parse_args()
    os.chdir(ROOT)
    timings_file = ROOT / "runs" / "distill-bench-timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    steps = STEPS[:-1] + ([OFFLINE] if args.offline else []) + STEPS[-1:]
    if args.no_seqkd:
        name, done, command = steps[-1]
        variants = [v for v in read_yaml_variants() if "seq-level" not in v["name"]]
        steps = [s for s in steps if s[0] not in ("teacher answers", "seq-level KD")][:-1]
        steps.append((name, done, command + ["--set", "variants=" + json.dumps(variants)]))
    try:
        run_steps(steps, timings)
    finally:
        timings_file.parent.mkdir(exist_ok=True)
        timings_file.write_text(json.dumps(timings, indent=1))
    result = summary(timings)
    from tunesmith.files import atomic_write_json

    atomic_write_json(ROOT / "docs" / "distillation.json", result)
    print(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
