"""Secrets never reach a file or a log: one redaction function, applied wherever text leaves the process."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "prep"))
from fake_teacher import FakeTeacher, Scripted  # noqa: E402

from tunesmith.redact import REDACTED, redact, register_secret  # noqa: E402


@pytest.mark.parametrize("text,secret", [
    ("Authorization: Bearer abc.def-123456789", "abc.def-123456789"),
    ('{"authorization": "Basic dXNlcjpwYXNzd29yZA=="}', "dXNlcjpwYXNzd29yZA=="),
    ("key sk-proj-AbCdEf0123456789xyzXYZ in the log", "sk-proj-AbCdEf0123456789xyzXYZ"),
    ("https://api.example.com/v1?api_key=9f8e7d6c5b4a3921&x=1", "9f8e7d6c5b4a3921"),
    ('{"api-key": "live_12345678abcdef"}', "live_12345678abcdef"),
    ("access_token=ya29.a0AfH6SMB-long-token", "ya29.a0AfH6SMB-long-token"),
    ("https://alice:hunter2hunter2@proxy.example.com/v1", "hunter2hunter2"),
    ("hf_abcdefghijklmnopqrstuvwxyz0123456789 and ghp_abcdefghijklmnopqrstuvwxyz0123456789", "hf_abcdefghij"),
    ("X-Api-Key: 0123456789abcdef0123", "0123456789abcdef0123"),
])
def test_secrets_in_text_are_redacted(text, secret):
    out = redact(text)
    assert secret not in out and REDACTED in out
    assert redact(out) == out  # idempotent


def test_ordinary_text_is_left_alone():
    for text in ("max_tokens: 512", "The token expires after 24 hours.", "Pass the key in the X-Orbit-Token header.",
                 "SELECT ?x WHERE { ?x <https://dblp.org/rdf/schema#authoredBy> ?y }", "tokens_per_second=812.5"):
        assert redact(text) == text


def test_values_of_secret_environment_variables_and_registered_secrets(monkeypatch):
    monkeypatch.setenv("ACME_API_KEY", "plain-looking-value-42")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert redact("got plain-looking-value-42 back; false") == f"got {REDACTED} back; false"
    register_secret("zz-custom-credential-zz")
    assert "zz-custom-credential-zz" not in redact("echo: zz-custom-credential-zz")
    assert redact({"a": ["Bearer abcdefgh12345678"], "n": 3}) == {"a": [f"Bearer {REDACTED}"], "n": 3}


def test_a_teacher_that_echoes_the_key_never_puts_it_in_a_file_or_a_log(tmp_path, caplog):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    key = "sk-live-0123456789abcdefSECRET"
    chunks = tmp_path / "chunks.jsonl"
    chunks.write_text(json.dumps({"text": "Lumen Queue keeps messages for seven days.", "chunk_id": "a#0"}) + "\n")
    with FakeTeacher() as server, caplog.at_level(logging.DEBUG):
        server.always = Scripted(status=400, echo=True)
        result = CliRunner().invoke(app, [
            "data", "generate", "-i", str(chunks), "-o", str(tmp_path / "pairs.jsonl"), "-n", "1",
            "-s", f"generate.teacher.cache={tmp_path / 'cache.sqlite'}", "-s", f"generate.teacher.base_url={server.base_url}"],
            env={"OPENAI_API_KEY": key})
    assert result.exit_code == 0, result.output
    written = "".join(p.read_text() for p in tmp_path.iterdir() if p.suffix in (".jsonl", ".json"))
    assert "request rejected (HTTP 400)" in written and REDACTED in written
    assert key not in written and key not in caplog.text and key not in result.output


def test_error_messages_are_redacted(capsys):
    import typer

    from tunesmith.cli import user_errors
    from tunesmith.records import TunesmithError

    @user_errors
    def verb():
        raise TunesmithError("endpoint https://bob:s3cr3t-pass-word@llm.example.com/v1 refused Bearer abcdefgh12345678")

    with pytest.raises(typer.Exit):
        verb()
    err = capsys.readouterr().err
    assert "s3cr3t-pass-word" not in err and "abcdefgh12345678" not in err and "llm.example.com" in err


def test_log_records_are_redacted(caplog):
    from tunesmith.data.prep.teacher import log

    with caplog.at_level(logging.WARNING, logger=log.name):
        log.warning("teacher: %s", "upstream said: Authorization: Bearer abcdefgh12345678")
    assert "abcdefgh12345678" not in caplog.text and REDACTED in caplog.text
