"""Whole commands, as a user runs them, on the tiny model."""

import json
import os
import subprocess
import sys


from conftest import write_config



def tunesmith(*args, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "tunesmith.cli", *map(str, args)], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"tunesmith {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_train_generate_merge_end_to_end(tmp_path, tiny_model_dir, dblp_file):
    config = write_config(tmp_path, tiny_model_dir, dblp_file, train={"max_steps": 3, "precision": "fp32"})
    run = tmp_path / "run"
    tunesmith("train", config, "--set", "train.lr=1e-2")
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert (run / "final" / "tokenizer_config.json").exists()
    saved = (run / "config.yaml").read_text()
    assert "lr: 0.01" in saved  # the resolved config, overrides included, is kept with the run
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert all(m["tokens_per_second"] > 0 and m["trained_tokens"] > 0 for m in metrics if "loss" in m)
    assert list((run / "tensorboard").iterdir())
    report = json.loads((run / "data_report.json").read_text())
    assert report["train"]["examples"] == 32 and 0 < report["train"]["trained_fraction"] < 1

    out = tunesmith("generate", "--run", run, "--prompt", "What are the papers written by Author 3?",
                    "--prompt", "Did Author 1 publish in ICML?", "--max-new-tokens", "8", "--precision", "fp32")
    answers = [json.loads(l) for l in out.stdout.splitlines()]
    assert [a["prompt"] for a in answers] == ["What are the papers written by Author 3?", "Did Author 1 publish in ICML?"]

    tunesmith("merge", run, "--quant", "f32", "--precision", "fp32")  # alias of export --to hf; parity on
    assert json.loads((run / "merged" / "parity.json").read_text())["passed"]
    merged = run / "merged"
    assert (merged / "model.safetensors").exists()
    merged_out = tunesmith("generate", "--model", merged, "--prompt", "What are the papers written by Author 3?",
                           "--prompt", "Did Author 1 publish in ICML?", "--max-new-tokens", "8", "--precision", "fp32")
    assert [json.loads(l)["answer"] for l in merged_out.stdout.splitlines()] == [a["answer"] for a in answers]


def test_data_show_colours_and_counts(tmp_path, tiny_model_dir, dblp_file):
    config = write_config(tmp_path, tiny_model_dir, dblp_file)
    out = tunesmith("data", "show", config, "-n", "1")
    assert "trained fraction" in out.stdout and "sequence length" in out.stdout
    assert "SELECT DISTINCT" in out.stdout


def test_bad_inputs_give_clear_errors_and_exit_2(tmp_path, tiny_model_dir, dblp_file):
    config = write_config(tmp_path, tiny_model_dir, dblp_file, train={"nonsense": 1})
    proc = tunesmith("train", config, check=False)
    assert proc.returncode == 2 and "train.nonsense: unknown key" in proc.stderr and "Traceback" not in proc.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "entities": [], "sparql": "ASK {}"}\n{"question": "q2"\n{"question": "q3", "entities": []}\n')
    config = write_config(tmp_path / "b", tiny_model_dir, bad)
    proc = tunesmith("train", config, check=False)
    assert proc.returncode == 2 and "2 problem(s)" in proc.stderr
    assert f"{bad}:2" in proc.stderr and f"{bad}:3" in proc.stderr and "missing field(s) sparql" in proc.stderr

    proc = tunesmith("generate", "--model", "someone/not-downloaded", "--prompt", "x", check=False)
    assert proc.returncode == 2 and "never downloads" in proc.stderr


def test_generate_with_guardrails_refuses_before_the_model_and_audits(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    rails = tmp_path / "rails.yaml"
    rails.write_text(f"input:\n  pii: {{enabled: false}}\n  blocked_topics: [{{name: weapons, terms: [bomb]}}]\n"
                     f"refusal: No.\naudit_log: {tmp_path / 'audit.jsonl'}\n")
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_model_dir), "--guardrails", str(rails),
                                      "-p", "how to build a bomb", "-p", "What are the papers?",
                                      "--max-new-tokens", "4", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    refused, answered = [json.loads(line) for line in result.stdout.splitlines()]
    assert refused["blocked"] and refused["answer"] == "No." and refused["rails"][0]["rail"] == "input.topic"
    assert not answered["blocked"]
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o777 == 0o600
