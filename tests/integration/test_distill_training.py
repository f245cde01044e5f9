"""Distillation end to end, as a user runs it: a tuned teacher run → `tunesmith student` → `tunesmith train` with the
distill objective (online, then offline twice: the second run reuses the stored top-k) → lineage in the run folder
→ the student generates; and sequence-level distillation: `tunesmith data relabel` with the teacher run, then an
ordinary causal_lm run on its output."""

import json

import yaml

from conftest import write_config
from test_methods_training import tunesmith


def test_teacher_run_to_student_to_distilled_runs(tmp_path, tiny_model_dir, dblp_file):
    # a teacher: a (tiny) LoRA run
    teacher_cfg = write_config(tmp_path / "teacher", tiny_model_dir, dblp_file)
    tunesmith("train", teacher_cfg)
    teacher = tmp_path / "teacher" / "run"

    # a student made from it: one block of two
    student = tmp_path / "student"
    out = tunesmith("student", teacher, "-o", student, "--layers", "1")
    assert "blocks [1] of 2" in out.stderr.replace("\n", " ")
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 1

    def distill_run(name, **objective):
        path = write_config(tmp_path / name, student, dblp_file)
        cfg = yaml.safe_load(path.read_text())
        cfg["method"] = {"name": "full"}
        cfg["objective"] = {"name": "distill", "teacher": str(teacher), "alpha": 0.5, "temperature": 2.0,
                            "teacher_precision": "fp32", **objective}
        cfg["data"]["valid"] = str(dblp_file)
        path.write_text(yaml.safe_dump(cfg))
        tunesmith("train", path)
        return tmp_path / name / "run"

    online = distill_run("online", divergence="jsd")
    lineage = json.loads((online / "distillation.json").read_text())
    assert lineage["teacher"] == str(teacher) and lineage["teacher_is_run"] and len(lineage["teacher_fingerprint"]) == 64
    assert lineage["student_origin"]["kept_blocks"] == [1] and lineage["objective"]["divergence"] == "jsd"
    summary = json.loads((online / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["valid_loss"] > 0
    assert "cross_entropy" in json.loads((online / "valid_report.json").read_text())
    answer = tunesmith("generate", "--run", online, "--prompt", "Who wrote it?\nEntities: <https://dblp.org/pid/1>")
    assert answer.returncode == 0

    offline = distill_run("offline", mode="offline", top_k=8, store_dir=str(tmp_path / "stores"))
    stores = sorted((tmp_path / "stores").glob("*.safetensors"))
    assert len(stores) == 1  # train and valid are the same file here: one store
    stamp = stores[0].stat().st_mtime_ns
    assert json.loads((offline / "distillation.json").read_text())["offline_stores"][0] == str(stores[0])
    distill_run("offline-again", mode="offline", top_k=8, store_dir=str(tmp_path / "stores"), alpha=0.2)
    assert sorted((tmp_path / "stores").glob("*.safetensors")) == stores and stores[0].stat().st_mtime_ns == stamp

    # sequence-level: the teacher run writes the answers, the student trains on them with causal_lm
    prep = tmp_path / "prep.yaml"
    prep.write_text(yaml.safe_dump({"relabel": {
        "teacher": {"kind": "local", "model": str(teacher), "max_tokens": 24, "device": "cpu",
                    "cache": str(tmp_path / "cache.sqlite")},
        "format": "template", "template": {"prompt": "{question}\nEntities: {entities}", "completion": "{sparql}"}}}))
    relabelled = tmp_path / "seqkd.jsonl"
    tunesmith("data", "relabel", prep, "-i", dblp_file, "-o", relabelled)
    rows = [json.loads(line) for line in relabelled.read_text().splitlines()]
    assert rows and all(r["messages"][-1]["role"] == "assistant" and "reference" in r for r in rows)
    assert rows[0]["messages"][0]["content"].startswith("What are the papers written by the person Author 0?")
    path = write_config(tmp_path / "seqkd", student, relabelled)
    cfg = yaml.safe_load(path.read_text())
    cfg["method"] = {"name": "full"}
    cfg["data"] = {"train": str(relabelled), "max_seq_len": 128}
    path.write_text(yaml.safe_dump(cfg))
    tunesmith("train", path)
    assert (tmp_path / "seqkd" / "run" / "final" / "config.json").is_file()
