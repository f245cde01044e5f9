"""The report writer on a hand-made result: three files, self-contained HTML, tables, verdict in words."""

from __future__ import annotations

import json

from tunesmith.eval.report import verdict, write_report
from tunesmith.eval.results import EvalReport, VariantResult


def variant(name, kind, items, cost=None, forgetting=None, ci=None):
    score = sum(items) / len(items)
    v = {"name": name, "kind": kind, "scores": {"exact_match": score, "chrf": score / 2},
         "items": {"exact_match": items, "chrf": [x / 2 for x in items]}, "headline_ci": ci or [score - 10, score + 10],
         "breakdown": {"query_type": {"A": {"n": 2, "score": items[0]}, "B": {"n": 2, "score": items[2]}}},
         "predictions": [f"{name} answer {i}" for i in range(len(items))], "generation_seconds": 4.0,
         "seconds_per_item": 1.0, "peak_rss_mb": 900.0, "prompt_tokens_mean": 40.0, "reference_perplexity": 3.5}
    if cost:
        v["cost"] = cost
        v["loss_curve"] = {"step": [1, 2, 3], "loss": [2.0, 1.0, 0.5], "valid_step": [3], "valid_loss": [0.7]}
    if forgetting:
        v["forgetting"] = forgetting
    return v


def make_report(tuned_items, leak_items=()):
    forgetting = {"scores": {"text_perplexity": 12.0, "answer_perplexity": 9.0, "answer_chrf": 30.0, "kl_from_base": 0.04,
                             "answers": ["t1", "t2"], "seconds": 1.0},
                  "verdict": {"text_perplexity_change": 0.2, "answer_perplexity_change": 0.02, "chrf_change": -1.0,
                              "kl_from_base": 0.04, "flagged": True, "reasons": ["general-text perplexity up 20% (threshold 10%)"]}}
    variants = [VariantResult.model_validate(v) for v in [
                variant("base", "base", [0.0, 0.0, 0.0, 100.0]),
                variant("few-shot", "few_shot", [100.0, 0.0, 0.0, 100.0]),
                variant("tuned (demo)", "tuned", tuned_items,
                        cost={"train_seconds": 300.0, "trained_tokens": 66633, "trainable_parameters": 4884480},
                        forgetting=forgetting)]]
    from tunesmith.eval.runner import compare

    class Cfg:  # the two settings compare() reads
        class metrics:
            headline = "exact_match"

            class bootstrap:
                samples, confidence, seed = 200, 0.95, 0

    leaked = list(leak_items)
    return EvalReport.model_validate({
        "title": "Was it worth it?", "n_test": 4, "n_train": 10, "headline": "exact_match", "confidence": 0.95,
        "metrics": [{"name": "exact_match", "description": "exact"}, {"name": "chrf", "description": "chrF <b>"}],
        "leakage": {"n_test": 4, "n_train": 10, "clean": not leaked, "leaked_items": leaked, "threshold": 0.8,
                    "exact_prompts": [{"test": i, "train": 7, "text": "q"} for i in leaked],
                    "near_duplicate_prompts": [], "shared_targets": []},
        "variants": variants, "comparisons": compare(variants, Cfg),
        "items": [{"question": f"question <{i}>", "reference": f"ref {i}", "meta": {"query_type": "A"}, "source": "x"}
                  for i in range(4)],
        "forgetting_base": {"text_perplexity": 10.0, "answer_perplexity": 8.8, "answer_chrf": 31.0, "kl_from_base": None,
                            "answers": ["b1", "b2"], "seconds": 1.0},
        "general_prompts": ["Give me a fruit", "Name a colour"], "general_answers": ["apple", "red"],
        "wall_seconds": 12.3,
    })


def test_writes_md_html_json_with_tables_plots_and_failures(tmp_path):
    report = make_report([100.0, 100.0, 0.0, 100.0])
    paths = write_report(report, tmp_path, worst=3)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert json.loads(paths["json"].read_text())["comparisons"]["winner"] == "tuned (demo)"
    assert EvalReport.model_validate(json.loads(paths["json"].read_text())) == report  # report.json reads back as is
    assert "| **tuned (demo)** | 75.0 [65.0, 85.0] | 37.5 |" in md  # headline with CI, winner in bold
    assert "| 5.0 | 66,633 | 4,884,480 |" in md  # train minutes, trained tokens, trainable parameters
    assert "## exact match by query_type" in md and "| A | 2 | 0.0 | 100.0 | 100.0 |" in md
    assert html.count("data:image/png;base64,") == 3 and (tmp_path / "plots" / "loss.png").is_file()
    assert "<script" not in html and "src=\"http" not in html
    assert "question &lt;2&gt;" in html and "chrF &lt;b&gt;" in html  # data is escaped in HTML
    assert "Worst failures of tuned (demo)" in md and "#2" in md  # item 2 is the tuned model's only miss
    assert "REGRESSION" in md and "+20%" in md
    assert "Clean: no test prompt" in md


def test_verdict_says_who_wins_by_how_much_at_what_cost_and_flags_problems():
    lines = verdict(make_report([100.0, 100.0, 0.0, 100.0], leak_items=[1]))
    text = " ".join(lines)
    assert lines[0].startswith("Warning: 1 of 4 test items overlap")
    assert "**tuned (demo)** scores best on exact match: 75.0" in text
    assert "+25.0 points over few-shot" in text
    assert "5.0 min of training, 66,633 trained tokens, 4,884,480 trainable parameters" in text
    assert "Forgetting seen in tuned (demo): general-text perplexity up 20%" in text


def test_verdict_when_tuning_does_not_beat_prompting():
    text = " ".join(verdict(make_report([0.0, 0.0, 0.0, 100.0])))
    assert "**few-shot** scores best" in text
    assert "Fine-tuning was not worth it here: few-shot does as well or better" in text
