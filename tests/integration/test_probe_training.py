import json

from tunesmith.config import load_config
from tunesmith.train.run import train

from conftest import write_config


def test_generation_probe_keeps_best_and_stops_early(tmp_path, tiny_model_dir, dblp_file, capsys):
    cfg = load_config(write_config(
        tmp_path, tiny_model_dir, dblp_file,
        train={"max_steps": 12, "precision": "fp32", "lr": 1e-9},  # lr ~0: nothing improves, so patience runs out
    ), [f"data.valid={dblp_file}", "probe.every=2", "probe.n=3", "probe.max_new_tokens=4", "probe.patience=2", "probe.metric=token_f1"])
    result = train(cfg)
    run = tmp_path / "run"
    probes = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "probe/token_f1" in l]
    assert [p["step"] for p in probes] == [2, 4, 6]  # best at 2, then two probes without improvement: stop
    assert result.steps == 6
    best = json.loads((run / "best.json").read_text())
    assert best["step"] == 2 and best["metric"] == "token_f1"
    assert (run / "best" / "adapter_model.safetensors").exists()
    err = capsys.readouterr().err  # each probe says what it found, above the training bar
    assert "probe, step 2: token F1" in err and "(best so far)" in err and "3 answers in" in err
    assert f"probe, step 4: token F1 {probes[1]['probe/token_f1']:.1f} (best {probes[0]['probe/token_f1']:.1f} at step 2)" in err
    assert "valid loss" in err  # and the validation loss at the end shows its progress


def test_probe_needs_validation_data(tmp_path, tiny_model_dir, dblp_file):
    import pytest

    from tunesmith.config import ConfigError

    with pytest.raises(ConfigError, match="needs a validation file"):
        load_config(write_config(tmp_path, tiny_model_dir, dblp_file), ["probe.every=2"])


def test_restore_best_makes_the_best_probed_model_the_final_output(tmp_path, tiny_model_dir, dblp_file):
    cfg = load_config(write_config(
        tmp_path, tiny_model_dir, dblp_file, train={"max_steps": 6, "precision": "fp32", "lr": 1e-9},
    ), [f"data.valid={dblp_file}", "probe.every=2", "probe.n=3", "probe.max_new_tokens=4", "probe.metric=token_f1",
        "probe.restore_best=true"])
    result = train(cfg)
    run = tmp_path / "run"
    best = json.loads((run / "best.json").read_text())["step"]
    assert best == 2 < result.steps == 6  # lr ~0: the first probe stays the best
    assert result.final_step == 2 == json.loads((run / "train_summary.json").read_text())["final_step"]
    weights = "adapter_model.safetensors"
    assert (run / "final" / weights).read_bytes() == (run / "best" / weights).read_bytes()
    # and the last step's weights really differ from the first probe's, so the test could fail
    cfg_last = cfg.model_copy(deep=True)
    cfg_last.probe.restore_best = False
    cfg_last.output.dir = str(tmp_path / "run-last")
    last = train(cfg_last)
    assert last.final_step == 6
    assert (tmp_path / "run-last" / "final" / weights).read_bytes() != (run / "final" / weights).read_bytes()
