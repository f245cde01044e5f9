"""The `tunesmith` command: one table of verbs, each resolving to its function; help that imports nothing heavy;
one error handler (message, exit code 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tunesmith.cli import GROUPS, VERBS, app, load_verb


@pytest.mark.parametrize("name", list(VERBS))
def test_every_verb_resolves_to_a_documented_command(name):
    command = load_verb(name, VERBS[name])
    assert command.help and VERBS[name].help
    assert name.split()[0] in GROUPS or " " not in name


def test_help_lists_every_verb_without_importing_torch():
    code = ("import sys; from typer.testing import CliRunner; from tunesmith.cli import app; "
            "top = CliRunner().invoke(app, ['--help']).output; data = CliRunner().invoke(app, ['data', '--help']).output; "
            "print('torch' in sys.modules); print(top); print(data)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False")
    for name in VERBS:
        assert name.split()[-1] in out


def test_a_user_error_is_one_message_and_exit_code_2(tmp_path):
    result = CliRunner().invoke(app, ["data", "stats", "-i", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "missing.jsonl: file not found" in result.output
    assert "Traceback" not in result.output
