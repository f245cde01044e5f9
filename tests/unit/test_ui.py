"""The web UI's server without a browser: what it refuses (paths outside the project, malformed requests, missing
tokens, cross-site posts), and that its views are the CLI's own (data show's tokens, the config reader's errors,
the method registry)."""

from __future__ import annotations

import json
import os
import time

import pytest
from fastapi.testclient import TestClient

from conftest import make_ui_project
from tunesmith.ui.app import create_app
from tunesmith.ui.config import UiConfig
from tunesmith.ui.workspace import progress_of


@pytest.fixture()
def project(tmp_path, tiny_model_dir, monkeypatch):
    root = make_ui_project(tmp_path / "project", tiny_model_dir)
    monkeypatch.chdir(root)  # `tunesmith ui` runs in its project folder
    return root


@pytest.fixture()
def client(project):
    with TestClient(create_app(UiConfig(project=str(project))), base_url="http://127.0.0.1") as c:
        yield c


def fake_run(root, name="cli-run", steps=4, finished=True):
    """A run folder as `tunesmith train` leaves it (written here: no training in unit tests)."""
    import yaml

    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "models/tiny"}, "data": {"train": "data/train.jsonl"},
                                                     "method": {"name": "lora"}, "train": {"epochs": 1.0},
                                                     "output": {"dir": f"runs/{name}"}}))
    t0 = time.time() - 100
    rows = [{"step": s, "time": t0 + 2 * s, "loss": 5.0 / s, "lr": 1e-3, "tokens_per_second": 900.0, "epoch": s / steps}
            for s in range(1, steps + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (run / "final").mkdir()
        (run / "train_summary.json").write_text(json.dumps({"steps": steps, "train_seconds": 8.0, "final_loss": 1.25}))
    return run


# ---- paths: nothing outside the project and the runs folders ----

@pytest.mark.parametrize("url", [
    "/run?run=../../../../etc", "/run?run=/etc", "/run?run=runs/../../outside", "/run?run=%2e%2e/%2e%2e/etc",
    "/data?input=/etc/passwd", "/data?config=../outside.yaml", "/report?report=/tmp", "/train?config=/etc/hosts",
    "/runs/compare?a=/etc&b=/etc", "/eval?config=..%2F..%2Fetc%2Fpasswd",
])
def test_paths_outside_the_project_are_refused(client, url):
    r = client.get(url)
    assert r.status_code == 403, (url, r.text)
    assert "outside the folders this UI may use" in r.text


def test_a_symlink_out_of_the_project_is_refused(client, project, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "config.yaml").write_text("model: {name: x}\n")
    (project / "runs").mkdir()
    os.symlink(outside, project / "runs" / "link")
    assert client.get("/run?run=runs/link").status_code == 403


def test_report_folders_serve_only_report_files(client, project):
    report = project / "runs" / "rep"
    report.mkdir(parents=True)
    (report / "report.html").write_text("<h1>report</h1>")
    (report / "ui-eval.yaml").write_text("secret: 1\n")
    ok = client.get("/report/file?report=runs/rep&name=report.html")
    assert ok.status_code == 200 and "<h1>report</h1>" in ok.text
    assert "sandbox" in ok.headers["content-security-policy"]  # no script runs in a report, whatever it quotes
    for name in ("ui-eval.yaml", "../../configs/train.yaml", "/etc/passwd", "plots/../../x.png"):
        assert client.get("/report/file", params={"report": "runs/rep", "name": name}).status_code == 400, name
    assert client.get("/static/../app.py").status_code == 404


def test_configs_that_name_files_outside_are_not_run(client, project):
    yaml_text = (project / "configs" / "train.yaml").read_text().replace("data/train.jsonl", "/etc/passwd")
    r = client.post("/train/start", data={"name": "x", "yaml_text": yaml_text})
    assert r.status_code == 403 and "data.train" in r.text
    assert not (project / "runs" / "x").exists()
    eval_text = (project / "configs" / "eval.yaml").read_text() + "metrics:\n  use: [exact_match]\n  headline: mine\n  custom: {mine: 'os.path:join'}\n"
    eval_text = eval_text.replace("metrics:\n  use:\n  - exact_match\n  - token_f1\n  headline: token_f1\n  bootstrap:\n    samples: 100\n", "")
    r = client.post("/eval/start", data={"name": "e", "yaml_text": eval_text})
    assert r.status_code == 403 and "metrics.custom.mine" in r.text and "not a module of the project" in r.text


# ---- malformed requests: 4xx, never a crash ----

def test_malformed_requests_get_4xx(client, project):
    fake_run(project)
    assert client.post("/train/start", data={}).status_code == 400
    assert client.post("/train/start", data={"name": "../evil", "yaml_text": "x: 1"}).status_code == 400
    assert client.post("/train/start", content=b"\xff\xfe", headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 400
    assert client.get("/data?n=abc").status_code == 400
    assert client.get("/data?n=0").status_code == 400
    assert client.get("/run").status_code == 400
    assert client.get("/run?run=runs/missing").status_code == 404
    assert client.get("/run?run=data").status_code == 404  # a folder, but not a run
    assert client.get("/run?run=" + "a" * 5000).status_code in (400, 414)
    assert client.get("/run?run=runs/cli-run%00x").status_code == 400
    assert client.post("/chat/open", data={"source": "bogus"}).status_code == 400
    assert client.post("/chat/open", data={"source": "run:runs/missing"}).status_code == 404
    assert client.post("/run/stop", data={"run": "runs/cli-run"}).status_code == 409
    assert client.post("/run/resume", data={"run": "runs/cli-run"}).status_code == 409  # finished already
    assert client.post("/eval/start", data={"name": "e", "yaml_text": "x", "n": "many"}).status_code == 400
    assert client.get("/nowhere").status_code == 404
    big = client.post("/train/start", content=b"x" * 10, headers={"content-length": "999999999"})
    assert big.status_code == 413
    assert client.post("/chat/api/nosuchslot/v1/chat/completions", json={}).status_code == 404


def test_config_errors_are_the_command_lines(client, project):
    """The YAML box is read by the same config reader as `tunesmith train`: every problem at once, with its line."""
    from tunesmith.config import ConfigError, load_config

    bad = (project / "configs" / "train.yaml").read_text().replace("batch_size: 2", "batch_size: -1\n  bogus: 3")
    path = project / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as cli:
        load_config(path)
    r = client.post("/train/start", data={"name": "bad", "yaml_text": bad, "train.lr": "fast"})
    assert r.status_code == 422
    for line in str(cli.value).splitlines()[1:]:
        assert line.strip().replace(str(path), "your YAML") in r.text
    assert "--set train.lr=fast" in r.text  # a form field is reported as the override it is
    assert not (project / "runs" / "bad").exists()


# ---- access: loopback by default, a token anywhere else ----

def test_off_loopback_every_request_needs_the_token(project):
    app = create_app(UiConfig(project=str(project), host="0.0.0.0"), token="s3cret-token-value")
    with TestClient(app, base_url="http://192.0.2.7:7860") as c:
        assert c.get("/train").status_code == 401
        assert c.get("/static/app.js").status_code == 401
        assert c.get("/train", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/train", headers={"authorization": "Bearer s3cret-token-value"}).status_code == 200
        first = c.get("/data?token=s3cret-token-value&n=2", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/data?n=2"  # the token leaves the URL
        assert c.get("/train").status_code == 200  # now from the cookie


def test_loopback_rejects_foreign_hosts_and_cross_site_posts(client):
    assert client.get("/train", headers={"host": "evil.example:7860"}).status_code == 400  # DNS rebinding
    r = client.post("/train/start", data={"name": "x", "yaml_text": "a: 1"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    r = client.post("/train/start", data={"name": "x", "yaml_text": "a: 1"}, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403


# ---- the views are the CLI's ----

def test_data_view_shows_rows_as_the_trainer_does(client, project):
    from tunesmith.config import load_config
    from tunesmith.data.show import inspect, token_pieces

    r = client.get("/data", params={"config": "configs/train.yaml", "n": 2})
    assert r.status_code == 200
    tokenizer, data = inspect(load_config(project / "configs" / "train.yaml"))
    trained = "".join(p for p, t in token_pieces(tokenizer, data.tokenized[0]) if t)
    assert trained.strip() and trained.split()[0] in r.text
    assert r.text.count('class="tk t"') == sum(t for ex in data.tokenized[:2] for _, t in token_pieces(tokenizer, ex))
    assert "data/train.jsonl:27" in r.text  # the bad line, with its file and line
    assert f">{data.summary()['tokens']:,}<" in r.text


def test_data_view_follows_the_prep_chain(client, project):
    from tunesmith.data.prep.artifacts import write_manifest

    src, out = project / "data" / "train.jsonl", project / "data" / "train.split.jsonl"
    out.write_text(src.read_text())
    write_manifest(out, "split", {"seed": 7}, [src], [out], {"train": 26})
    r = client.get("/data", params={"config": "configs/train.yaml", "input": "data/train.split.jsonl"})
    assert r.status_code == 200 and "<b>split</b>" in r.text and "train <b>26</b>" in r.text


def test_train_form_offers_every_registered_method(client):
    from tunesmith.methods.base import registry

    page = client.get("/train").text
    for name in registry():
        assert f'<option value="{name}"' in page


def test_runs_from_the_command_line_are_listed(client, project):
    fake_run(project, "cli-run")
    fake_run(project, "half", finished=False)
    listing = client.get("/train/runs").text
    assert "cli-run" in listing and "finished" in listing and "half" in listing
    page = client.get("/run?run=runs/cli-run").text
    assert "cli-run" in page and 'id="chat-link"' in page


def test_progress_and_eta_come_from_the_metrics():
    rows = [{"step": s, "time": 1000.0 + 3 * s, "loss": 1.0, "epoch": 2.0 * s / 50} for s in range(1, 11)]
    total, pace, elapsed = progress_of(rows, epochs=2.0)
    assert total == 50 and pace == pytest.approx(3.0) and elapsed == pytest.approx(27.0)
    assert progress_of([], 1.0) == (None, None, None)


def test_metrics_tail_follows_a_growing_and_a_replaced_file(tmp_path):
    """A resumed run replaces metrics.jsonl with one that may soon be longer than the old: the tail must start over,
    not read the new file from the old offset (that lost a line mid-way in the live chart)."""
    from tunesmith.files import atomic_write_jsonl
    from tunesmith.ui.workspace import MetricsTail

    path = tmp_path / "metrics.jsonl"
    atomic_write_jsonl(path, [{"step": s} for s in range(1, 6)])
    tail = MetricsTail(path)
    assert tail.read() == ([{"step": s} for s in range(1, 6)], False)
    with path.open("a") as f:
        f.write('{"step": 6}\n{"step"')  # the trainer is writing line 7
        f.flush()
        assert tail.read() == ([{"step": 6}], False)
        f.write(': 7}\n')
    assert tail.read() == ([{"step": 7}], False)
    atomic_write_jsonl(path, [{"step": s, "resumed": True} for s in range(1, 12)])  # longer than before
    rows, restarted = tail.read()
    assert restarted and [r["step"] for r in rows] == list(range(1, 12))


def test_the_verb_reports_a_bad_setup_as_a_user_error(tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["ui", "--project", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(app, ["ui", "--project", str(tmp_path), "--port", "99999"])
    assert result.exit_code == 2 and "port" in result.output


@pytest.mark.parametrize("ui_job", [True, False])
def test_stop_reaches_a_job_of_a_ui_started_with_ctrl_c_ignored(ui_job):
    """A UI started from a background shell or nohup ignores SIGINT and its jobs inherit that: a UI job gets Ctrl-C
    back (Stop sends SIGINT), a command a user started with SIGINT ignored keeps it ignored."""
    import signal
    import subprocess
    import sys

    from tunesmith.ui.jobs import job_environment

    env = job_environment() if ui_job else {k: v for k, v in os.environ.items() if k != "TUNESMITH_UI_JOB"}
    script = ("import time; from tunesmith.cli import restore_ctrl_c; restore_ctrl_c(); print('ready', flush=True)\n"
              "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('interrupted', flush=True); raise SystemExit(130)\n")
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as a background shell does
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGINT)
        if ui_job:
            assert child.wait(20) == 130 and child.stdout.read().strip() == "interrupted"
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(1.5)
    finally:
        child.kill()
        child.wait()
