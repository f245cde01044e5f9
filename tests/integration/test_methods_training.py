"""Every method through the whole loop: exact resume, multi-stage runs with lineage and resume at the right stage,
a classification head trained and used by `tunesmith predict`, and non-mergeable runs that generate but refuse to
merge."""

import json
import shutil

import pytest
import yaml

from tunesmith.config import load_config
from tunesmith.methods.base import registry
from tunesmith.train.run import train

from conftest import write_config


class Result:
    def __init__(self, result):
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def tunesmith(*args, check=True):
    """The command in this process (the imports are paid once): exit code, stdout and stderr as a user sees them."""
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = Result(CliRunner().invoke(app, [str(a) for a in args]))
    if check and result.returncode != 0:
        raise AssertionError(f"tunesmith {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result

METHOD_SETTINGS = {"lora": {"r": 4, "alpha": 8}, "qlora": {"r": 4, "alpha": 8}, "freeze": {"top_blocks": 1},
                   "adapter": {"reduction_factor": 4}, "prompt_tuning": {"num_virtual_tokens": 4},
                   "prefix_tuning": {"num_virtual_tokens": 4}, "p_tuning": {"num_virtual_tokens": 4}}
CLASSIFIER = {"name": "classification", "text": "{question}", "label": "query_type"}


def run_config(tmp_path, model_dir, data, method: str, **train):
    path = write_config(tmp_path, model_dir, data)
    cfg = yaml.safe_load(path.read_text())
    cfg["method"] = {"name": method, **METHOD_SETTINGS.get(method, {})}
    cfg["train"].update(train)
    if method in ("prompt_tuning", "prefix_tuning", "p_tuning"):
        cfg["train"]["pack"] = False
    if method == "feature_extraction":
        cfg["objective"] = CLASSIFIER
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def weights(final):
    return {p.name: p.read_bytes() for p in sorted(final.glob("*.safetensors"))}


@pytest.mark.parametrize("method", sorted(registry()))
def test_resume_equals_uninterrupted_for_every_method(method, tmp_path, tiny_model_dir, dblp_file):
    cfg = run_config(tmp_path, tiny_model_dir, dblp_file, method, max_steps=4, save_every=2, keep_last=5, batch_size=2)
    train(cfg)
    run = tmp_path / "run"
    straight = weights(run / "final")
    assert straight
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step-0000004", ignore_errors=True)
    train(cfg, resume=True)
    assert weights(run / "final") == straight


def test_two_stages_hand_on_the_model_record_lineage_and_resume_at_the_right_stage(tmp_path, tiny_model_dir, dblp_file):
    path = write_config(tmp_path, tiny_model_dir, dblp_file, train={"max_steps": 2, "save_every": 1, "keep_last": 3})
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"SELECT ?x WHERE {{ ?x <p> {i} }}"}) + "\n" for i in range(8)))
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"] = [{"name": "domain", "data": {"train": str(text), "format": "text", "max_seq_len": 64}},
                     {"name": "sft"}]
    path.write_text(yaml.safe_dump(cfg))
    result = train(load_config(path))
    run = tmp_path / "run"
    lineage = json.loads((run / "lineage.json").read_text())
    assert [e["name"] for e in lineage] == ["domain", "sft"]
    assert lineage[0]["data"]["train"]["sha256"] and lineage[0]["parent"] == str(tiny_model_dir)
    assert lineage[1]["parent"] == lineage[0]["hands_on"] == str(run / "stages" / "01-domain" / "merged")
    assert (run / "stages" / "01-domain" / "merged" / "model.safetensors").is_file()
    assert result.output_dir == str(run / "stages" / "02-sft" / "final")

    # interrupted in stage 2: stage 1 is not trained again, stage 2 resumes from its checkpoint
    first = (run / "stages" / "01-domain" / "train_summary.json").stat().st_mtime_ns
    stage2 = run / "stages" / "02-sft"
    done = weights(stage2 / "final")
    for name in ("final", "train_summary.json"):
        shutil.rmtree(stage2 / name) if (stage2 / name).is_dir() else (stage2 / name).unlink()
    shutil.rmtree(stage2 / "checkpoints" / "step-0000002", ignore_errors=True)
    with pytest.raises(Exception, match="--resume"):
        train(load_config(path))
    train(load_config(path), resume=True)
    assert (run / "stages" / "01-domain" / "train_summary.json").stat().st_mtime_ns == first
    assert weights(stage2 / "final") == done
    out = tunesmith("generate", "--run", run, "--prompt", "Did Author 1 publish in ICML?", "--max-new-tokens", "4",
                    "--precision", "fp32")
    assert json.loads(out.stdout)["prompt"] == "Did Author 1 publish in ICML?"


def test_classifier_trains_reports_and_predicts(tmp_path, tiny_model_dir, dblp_file):
    path = write_config(tmp_path, tiny_model_dir, dblp_file, train={"max_steps": 3, "lr": 1e-2})
    cfg = yaml.safe_load(path.read_text())
    cfg.update(objective=CLASSIFIER, method={"name": "feature_extraction"},
               data={"train": str(dblp_file), "valid": str(dblp_file), "max_seq_len": 64})
    path.write_text(yaml.safe_dump(cfg))
    tunesmith("train", path)
    run = tmp_path / "run"
    report = json.loads((run / "valid_report.json").read_text())
    assert report["n"] == 32 and 0 <= report["accuracy"] <= 1
    assert report["confusion_matrix"]["labels"] == ["BOOLEAN", "SINGLE_FACT"]
    assert json.loads((run / "final" / "labels.json").read_text())["labels"] == ["BOOLEAN", "SINGLE_FACT"]

    out = tunesmith("predict", "--run", run, "-i", dblp_file)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 32 and {r["label"] for r in rows} <= {"BOOLEAN", "SINGLE_FACT"}
    assert "accuracy" in out.stderr
    one = tunesmith("predict", "--run", run, "--text", "Did Author 3 publish in ICML?")
    assert set(json.loads(one.stdout)["probabilities"]) == {"BOOLEAN", "SINGLE_FACT"}
    refused = tunesmith("generate", "--run", run, "--prompt", "x", check=False)
    assert refused.returncode == 2 and "tunesmith predict" in refused.stderr


def test_a_non_mergeable_run_generates_but_refuses_to_merge(tmp_path, tiny_model_dir, dblp_file):
    cfg = run_config(tmp_path, tiny_model_dir, dblp_file, "adapter", max_steps=2)
    train(cfg)
    run = tmp_path / "run"
    out = tunesmith("generate", "--run", run, "--prompt", "Did Author 1 publish in ICML?", "--max-new-tokens", "4",
                    "--precision", "fp32")
    assert "answer" in json.loads(out.stdout)
    refused = tunesmith("merge", run, check=False)
    assert refused.returncode == 2 and "does not merge" in refused.stderr and "Traceback" not in refused.stderr
    peft = tunesmith("export", run, "--to", "peft", check=False)
    assert peft.returncode == 2 and "not a peft format" in peft.stderr
