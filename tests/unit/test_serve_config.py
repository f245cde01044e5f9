"""`tunesmith serve`'s settings come through the one config reader: file, --set from the YAML root, then options."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import ConfigError
from tunesmith.models.loading import DEFAULT_MODEL
from tunesmith.records import TunesmithError
from tunesmith.serve import serve_config


def _write(tmp_path, text: str):
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


def test_file_then_set_then_options(tmp_path):
    path = _write(tmp_path, "port: 9000\nmodels:\n  - {run: runs/a, name: a}\nlimits: {max_tokens: 64}\n")
    cfg = serve_config(path, ["limits.max_tokens=128", "port=9001"], [], None, None, port=9002)
    assert cfg.port == 9002 and cfg.limits.max_tokens == 128 and [m.id for m in cfg.models] == ["a"]
    # --run replaces the file's models; --guardrails goes to each of them
    cfg = serve_config(path, [], ["runs/b"], "base-model", tmp_path / "rails.yaml")
    assert [(m.run, m.model) for m in cfg.models] == [("runs/b", None), (None, "base-model")]
    assert all(m.guardrails == str(tmp_path / "rails.yaml") for m in cfg.models)


def test_without_models_the_embedded_base_is_served(tmp_path):
    assert [m.model for m in serve_config(None, [], [], None, None).models] == [DEFAULT_MODEL]
    assert [m.model for m in serve_config(_write(tmp_path, "port: 9000\n"), [], [], None, None).models] == [DEFAULT_MODEL]


def test_errors_name_the_file_line_or_the_setting(tmp_path):
    path = _write(tmp_path, "port: 9000\nmodels:\n  - {run: runs/a, model: m}\nbatching: {max_batch_size: 0}\ncolour: red\n")
    with pytest.raises(ConfigError) as e:
        serve_config(path, ["limits.max_tokens=-1"], [], None, None)
    message = str(e.value)
    assert "4 problem(s)" in message
    assert f"{path}:3" in message and f"{path}:4" in message and f"{path}:5" in message
    assert "--set limits.max_tokens=-1" in message
    with pytest.raises(TunesmithError, match="--guardrails applies to models given with --run"):
        serve_config(path, [], [], None, tmp_path / "rails.yaml")


def test_a_bad_serve_config_is_a_user_error(tmp_path):
    result = CliRunner().invoke(app, ["serve", str(_write(tmp_path, "colour: red\n"))])
    assert result.exit_code == 2 and "colour" in result.output and "Traceback" not in result.output
