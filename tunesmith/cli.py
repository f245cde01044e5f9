"""The `tunesmith` command: one table from verb to the function that does it.

Each verb is a function in the module that does the work (setup → run → save there); `VERBS` below is the only
list of verbs. A module is imported only when its verb runs (or its --help is asked for), so `tunesmith --help`
never pays for torch. Adding a verb is one line in `VERBS`.

One convention for every verb:
- a YAML config is the first argument (required where the verb cannot work without one);
- `--set path.to.key=value` (repeatable) overrides a setting by its dotted path from the top of that YAML;
- a verb's own options are settings too: each names the dotted path it sets, and wins over --set
  (`tunesmith.config.read_config(..., options={"data.n": n})`); data files are `-i/--input`, results `-o/--out`;
- errors the user can fix (TunesmithError) print their message (secrets redacted), no traceback, and exit with code 2;
  Ctrl-C exits with 130 and says what was kept.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from tunesmith import __version__
from tunesmith.records import TunesmithError
from tunesmith.redact import redact

console = Console(stderr=True)


@dataclass(frozen=True)
class Verb:
    target: str  # "package.module:function"
    help: str  # one line for `tunesmith --help` (the function's docstring is the verb's own --help)


VERBS: dict[str, Verb] = {
    "train": Verb("tunesmith.train.run:train_command", "Fine-tune a model as the config says."),
    "generate": Verb("tunesmith.generate:generate_command", "Answer prompts with a base model or a trained run."),
    "chat": Verb("tunesmith.generate:chat_command", "Talk to a model or a trained run in the terminal."),
    "predict": Verb("tunesmith.predict:predict_command", "Label texts with a run that trained a classification head."),
    "export": Verb("tunesmith.export:export_command", "Export a run to hf, peft, gguf or ollama, checked for parity."),
    "student": Verb("tunesmith.models.student:student_command", "Make a smaller student model from a teacher by keeping some of its blocks."),
    "merge": Verb("tunesmith.export:merge_command", "Fold a run's adapter into a plain transformers model folder."),
    "serve": Verb("tunesmith.serve:serve_command", "Serve runs through an OpenAI-compatible API, with guardrails."),
    "ui": Verb("tunesmith.ui:ui_command", "Open the web UI: data, training, evaluation and chat in the browser."),
    "eval": Verb("tunesmith.eval.runner:eval_command", "Was fine-tuning worth it? Base, few-shot, RAG and tuned on one test set."),
    "data show": Verb("tunesmith.data.show:show_command", "Render examples as the trainer sees them, with counts."),
    "data ingest": Verb("tunesmith.data.prep.ingest:ingest_command", "Read documents and cut them into topic chunks."),
    "data generate": Verb("tunesmith.data.prep.synthesize:generate_command", "Q/A pairs about every chunk: from its facts (no LLM) or by a teacher LLM."),
    "data augment": Verb("tunesmith.data.prep.augment:augment_command", "Add paraphrased and template-varied prompts."),
    "data anonymize": Verb("tunesmith.data.prep.anonymize:anonymize_command", "Replace personal data consistently."),
    "data relabel": Verb("tunesmith.data.prep.relabel:relabel_command", "A teacher answers every training prompt (sequence-level distillation)."),
    "data split": Verb("tunesmith.data.prep.split:split_command", "Grouped train/valid/test split with a leakage check."),
    "data stats": Verb("tunesmith.data.prep.stats:stats_command", "Counts, lengths, balance, duplicates and PII of a file."),
}
GROUPS: dict[str, str] = {"data": "Inspect and prepare data (documents → chunks → pairs → anonymized → split)."}

# ---- the option conventions, shared by every verb ----
ConfigArg = Annotated[Optional[Path], typer.Argument(help="YAML config", show_default=False)]
RequiredConfigArg = Annotated[Path, typer.Argument(help="YAML config", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="Override a setting: path.to.key=value, from the top of the config (repeatable)")]
InputOpt = Annotated[Path, typer.Option("--input", "-i", help="File to read", show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Where to write", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run even if the output is up to date with its inputs and settings")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="CPU threads for torch and onnxruntime (sets model.threads where the verb has a config; "
                             "default: TUNESMITH_THREADS, else the cores this process may use)", show_default=False)]


def user_errors(function):
    """The one error handler: a TunesmithError is its message (exit 2, no traceback); Ctrl-C exits 130."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except TunesmithError as e:
            console.print(Text.assemble(("error: ", "bold red"), redact(str(e))), soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print(Text.assemble(("interrupted", "yellow"), ": every file already written is complete (writes are "
                                        "atomic); run the command again to continue (`train --resume` for training)"))
            raise typer.Exit(130) from None

    return run


def load_verb(name: str, verb: Verb) -> TyperCommand:
    """Import the verb's module and turn its function into a command (typer reads the signature)."""
    module_name, _, attr = verb.target.partition(":")
    function = getattr(importlib.import_module(module_name), attr)
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(name.split()[-1])(user_errors(function))
    return typer.main.get_command(single)


class VerbGroup(TyperGroup):
    """A command group whose commands come from `VERBS`; a verb's module is imported only when the verb runs or
    its own --help is shown (the group's help lists verbs with the table's one-line help, importing nothing)."""

    def __init__(self, *, prefix: str = "", **kwargs):
        super().__init__(**kwargs)
        self.prefix = prefix
        self._listing = False

    def _children(self) -> dict[str, str]:
        """name → one-line help of the verbs and groups directly under this group, in table order."""
        children: dict[str, str] = {}
        for full, verb in VERBS.items():
            if full.startswith(self.prefix):
                first = full[len(self.prefix):].split()[0]
                children.setdefault(first, GROUPS.get(self.prefix + first, verb.help))
        return children

    def list_commands(self, ctx) -> list[str]:
        return list(self._children())

    def get_command(self, ctx, name: str):
        full = self.prefix + name
        if full in GROUPS:
            return VerbGroup(prefix=full + " ", name=name, help=GROUPS[full], no_args_is_help=True)
        if full in VERBS:
            if self._listing:
                return TyperCommand(name=name, short_help=VERBS[full].help)
            return load_verb(full, VERBS[full])
        return None

    def format_help(self, ctx, formatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(cls=VerbGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt a pretrained LLM to your domain, and prove with numbers whether it was worth it.")


def _show_version(value: bool) -> None:
    if value:
        print(f"tunesmith {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Adapt a pretrained LLM to your domain, and prove with numbers whether it was worth it."""


UI_JOB_ENV = "TUNESMITH_UI_JOB"  # set by the UI (ui/jobs.py) on the commands it starts


def restore_ctrl_c() -> None:
    """In a job the UI started, make SIGINT raise KeyboardInterrupt again, as in a terminal.

    A UI started with SIGINT ignored (from a background shell, nohup, a script) passes the ignore on to its jobs, and
    Python installs no Ctrl-C handler in a process that starts so: the UI's Stop (SIGINT) would do nothing and the run
    would go on to its end. Only for UI jobs: a command a user started with SIGINT ignored keeps it ignored."""
    if os.environ.pop(UI_JOB_ENV, None) and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    restore_ctrl_c()
    app(prog_name="tunesmith")


if __name__ == "__main__":
    main()
