"""`tunesmith eval` end to end on the tiny model: base, few-shot, RAG, a tuned run and tuned+RAG in one report."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from tunesmith.cli import app

from conftest import DBLP_ROWS, write_config



def test_eval_writes_the_full_report(tmp_path, tiny_model_dir):
    from tunesmith.config import load_config
    from tunesmith.train.run import train

    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train_rows = DBLP_ROWS[:20] + DBLP_ROWS[24:30]
    test_rows = DBLP_ROWS[20:24] + DBLP_ROWS[30:32] + [DBLP_ROWS[0]]  # the last one leaks from training
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    test_file.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    run_dir = tmp_path / "run"
    train(load_config(write_config(tmp_path / "train-cfg", tiny_model_dir, train_file, output={"dir": str(run_dir)})))

    cfg = {
        "model": {"name": str(tiny_model_dir), "device": "cpu"},
        "data": {"test": str(test_file), "train": str(train_file), "format": "template", "max_seq_len": 128,
                 "template": {"prompt": "{question}\nEntities: {entities}", "completion": "{sparql}"}},
        "variants": [{"kind": "base"}, {"kind": "few_shot", "k": 2}, {"kind": "rag", "name": "rag"},
                     {"kind": "tuned", "run": str(run_dir)}, {"kind": "tuned", "run": str(run_dir), "rag": True}],
        "generation": {"max_new_tokens": 12, "batch_size": 4, "precision": "fp32"},
        "metrics": {"use": ["exact_match", "sparql_match", "token_f1", "bleu", "chrf", "rouge_l"],
                    "headline": "token_f1", "breakdown_by": ["query_type"], "bootstrap": {"samples": 200}},
        "retrieval": {"k": 2, "cache_dir": str(tmp_path / "cache"), "max_prompt_tokens": 400},
        "forgetting": {"n": 3, "max_new_tokens": 6},
        "report": {"dir": str(tmp_path / "report"), "worst": 3},
    }
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(cfg))

    result = CliRunner().invoke(app, ["eval", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)

    out = tmp_path / "report"
    report = json.loads((out / "report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["base", "few-shot", "rag", "tuned (run)", "tuned (run) + rag"]
    for v in report["variants"]:
        assert len(v["predictions"]) == 7 and set(v["scores"]) == {"exact_match", "sparql_match", "sparql_valid",
                                                                    "token_f1", "bleu", "chrf", "rouge_l"}
        low, high = v["headline_ci"]
        assert low <= v["scores"]["token_f1"] + 1e-9 and v["scores"]["token_f1"] <= high + 1e-9
        assert v["reference_perplexity"] > 1 and v["seconds_per_item"] > 0 and v["peak_rss_mb"] > 0
        assert set(v["breakdown"]["query_type"]) == {"SINGLE_FACT", "BOOLEAN"}
    by_name = {v["name"]: v for v in report["variants"]}
    # few-shot and RAG prompts are longer than zero-shot: the cost column must show it
    assert by_name["few-shot"]["prompt_tokens_mean"] > by_name["base"]["prompt_tokens_mean"]
    assert by_name["rag"]["prompt_tokens_mean"] > by_name["base"]["prompt_tokens_mean"]
    tuned = by_name["tuned (run)"]
    assert tuned["cost"]["trainable_parameters"] > 0 and tuned["cost"]["train_seconds"] > 0
    assert tuned["loss_curve"]["step"] == [1, 2, 3, 4]
    assert tuned["forgetting"]["verdict"]["kl_from_base"] > 0
    assert report["forgetting_base"]["text_perplexity"] > 1
    assert report["leakage"]["exact_prompts"][0]["test"] == 6 and not report["leakage"]["clean"]

    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert html.count("data:image/png;base64,") == 3  # headline, all metrics, loss curve; nothing external
    assert "http://" not in html.replace("http://www.w3.org", "") and "<script" not in html
    assert "1 of 7 test items overlap the training data" in md and "Leakage check" in html
    assert "| tuned (run) + rag |" in md and "## token F1 by query_type" in md
    assert "Worst failures" in md and "Forgetting" in md
    assert (out / "plots" / "loss.png").stat().st_size > 1000
    assert "Report" in result.output
    (cached,) = (tmp_path / "cache" / "forgetting").glob("base-*.json")  # the base model's panel, cached by its weights
    assert json.loads(cached.read_text())["text_perplexity"] == report["forgetting_base"]["text_perplexity"]

    # a second eval against the same base model reads its panel scores instead of measuring them: the same numbers
    result = CliRunner().invoke(app, ["eval", str(config), "-o", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "base model's scores from" in " ".join(result.output.split())
    second = json.loads((tmp_path / "again" / "report.json").read_text())
    assert second["forgetting_base"] == report["forgetting_base"]
    verdicts = lambda r: [v["forgetting"] and v["forgetting"]["verdict"] for v in r["variants"]]  # noqa: E731
    assert verdicts(second) == verdicts(report)  # the tuned model measured again against the cached base

    # --rescore: the saved predictions scored again under another headline; nothing generated, nothing else changed
    result = CliRunner().invoke(app, ["eval", str(config), "--rescore", "--set", "metrics.headline=exact_match"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    again = json.loads((out / "report.json").read_text())
    assert again["headline"] == "exact_match" and "exact match" in (out / "report.md").read_text()
    for old, new in zip(report["variants"], again["variants"]):
        assert new["predictions"] == old["predictions"] and new["scores"] == old["scores"]
        assert new["generation_seconds"] == old["generation_seconds"]  # not generated again
        low, high = new["headline_ci"]
        assert low <= new["scores"]["exact_match"] + 1e-9 and new["scores"]["exact_match"] <= high + 1e-9
    assert CliRunner().invoke(app, ["eval", str(config), "--rescore", "-o", str(tmp_path / "none")]).exit_code == 2


def test_eval_config_errors_point_at_the_line(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("data:\n  test: t.jsonl\n  train: t.jsonl\nvariants:\n  - kind: tuned\n    runn: x\n")
    result = CliRunner().invoke(app, ["eval", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = result.output
    assert f"{config}:6: variants.0.runn: unknown key" in message
    assert "variants.0.run: Field required" in message
