import json
import shutil

import pytest
from safetensors.torch import load_file

from tunesmith.config import load_config
from tunesmith.records import DataError, TunesmithError
from tunesmith.train.checkpoint import latest_checkpoint, list_checkpoints
from tunesmith.train.run import train

from conftest import DBLP_ROWS, write_config

TIMING = {"time", "tokens_per_second", "train_seconds", "trained_tokens_per_second", "peak_rss_mb", "run_dir", "output_dir"}
# dropout > 0 and grad accumulation make the RNG and the mid-epoch data position matter; log_every=4 with a
# checkpoint at step 3 puts a checkpoint inside a logging window
COMMON = dict(method={"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
              train={"max_steps": 6, "grad_accum": 2, "batch_size": 1, "save_every": 3, "keep_last": 5,
                     "log_every": 4, "precision": "fp32"})


def adapter_weights(run_dir):
    return load_file(run_dir / "final" / "adapter_model.safetensors")


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def metrics_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def interrupted_after_step_3(tmp_path, tiny_model_dir, dblp_file, name="b"):
    """A run that stopped right after its step-3 checkpoint: every later file is gone."""
    cfg = load_config(write_config(tmp_path / name, tiny_model_dir, dblp_file, **COMMON))
    train(cfg)
    run = tmp_path / name / "run"
    shutil.rmtree(run / "final")
    (run / "train_summary.json").unlink()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-0000003"]
    return cfg, run


def test_resume_equals_uninterrupted(tmp_path, tiny_model_dir, dblp_file, capsys):
    straight = load_config(write_config(tmp_path / "a", tiny_model_dir, dblp_file, **COMMON))
    expected = train(straight)

    cfg, run = interrupted_after_step_3(tmp_path, tiny_model_dir, dblp_file)
    (run / "checkpoints" / ".tmp-step-0000006").mkdir()  # a checkpoint that crashed mid-write is ignored
    assert latest_checkpoint(run / "checkpoints").name == "step-0000003"
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 1.2')  # power loss while a line was written: cut off, no newline
    result = train(cfg, resume=True)
    assert result.steps == 6
    assert "cut off" in capsys.readouterr().err

    a, b = adapter_weights(tmp_path / "a" / "run"), adapter_weights(run)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    # the counters continue where the checkpoint left them: same totals as the run that was never interrupted
    assert result.trained_tokens == expected.trained_tokens > 0 and result.tokens == expected.tokens
    summary = json.loads((run / "train_summary.json").read_text())
    assert without_timing([summary]) == without_timing([json.loads((tmp_path / "a" / "run" / "train_summary.json").read_text())])
    assert without_timing(metrics_of(run)) == without_timing(metrics_of(tmp_path / "a" / "run"))
    assert [m["step"] for m in metrics_of(run) if "loss" in m] == [4, 6]
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the leftover of the crashed write is cleaned up


def test_resume_into_changed_data_is_refused(tmp_path, tiny_model_dir, dblp_file):
    cfg, run = interrupted_after_step_3(tmp_path, tiny_model_dir, dblp_file)
    rows = [dict(r, question=r["question"].replace("papers", "articles")) for r in DBLP_ROWS]
    dblp_file.write_text("".join(json.dumps(r) + "\n" for r in rows))  # same path, same config, other contents
    with pytest.raises(TunesmithError, match=r"training data changed") as err:
        train(cfg, resume=True)
    assert str(dblp_file) in str(err.value) and "step-0000003" in str(err.value)


def test_existing_run_needs_resume_and_same_config(tmp_path, tiny_model_dir, dblp_file):
    cfg = load_config(write_config(tmp_path, tiny_model_dir, dblp_file, train={"max_steps": 1, "precision": "fp32"}))
    train(cfg)
    with pytest.raises(TunesmithError, match="--resume"):
        train(cfg)
    changed = cfg.model_copy(deep=True)
    changed.train.lr = 0.5
    with pytest.raises(TunesmithError, match="same config"):
        train(changed, resume=True)


def test_resume_without_a_checkpoint_says_so_and_starts_at_step_0(tmp_path, tiny_model_dir, dblp_file, capsys):
    cfg = load_config(write_config(tmp_path, tiny_model_dir, dblp_file, train={"max_steps": 2, "precision": "fp32"}))
    leftover = tmp_path / "run" / "checkpoints" / ".tmp-step-0000001-123-abcd"
    leftover.mkdir(parents=True)  # all a run killed during its first checkpoint leaves
    result = train(cfg, resume=True)
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "step 0" in err
    assert result.steps == 2 and not leftover.exists()


def test_a_folder_with_only_a_crashed_checkpoint_is_not_a_run(tmp_path, tiny_model_dir, dblp_file):
    cfg = load_config(write_config(tmp_path, tiny_model_dir, dblp_file, train={"max_steps": 1, "precision": "fp32"}))
    (tmp_path / "run" / "checkpoints" / ".tmp-step-0000001-99-ffff").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("what the killed run had saved")
    assert train(cfg).steps == 1


def test_output_dir_that_is_a_file_and_bad_data_leave_nothing_behind(tmp_path, tiny_model_dir, dblp_file):
    cfg = load_config(write_config(tmp_path, tiny_model_dir, dblp_file, train={"max_steps": 1, "precision": "fp32"}))
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    with pytest.raises(TunesmithError, match="is a file"):
        train(cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": str(taken)})}))
    assert taken.read_text() == "not a folder"

    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"question": "caf\u00e9", "entities": [], "sparql": "ASK {}"}\n'.encode("latin-1"))
    bad = cfg.model_copy(deep=True)
    bad.data.train = str(latin1)
    with pytest.raises(DataError, match=f"{latin1}:1: not UTF-8"):
        train(bad)
    assert not (tmp_path / "run").exists()  # no output folder holding only a config.yaml
