"""`tunesmith eval CONFIG`: attach with `register(app)` from the top-level CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def eval_cmd(
    config: Annotated[Path, typer.Argument(help="YAML eval config (see examples/dblp_quad/eval.yaml)")],
    overrides: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a setting: section.key=value (repeatable)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Report folder (default: report.dir from the config)")] = None,
    n: Annotated[Optional[int], typer.Option("-n", help="Evaluate only the first N test items")] = None,
    no_forgetting: Annotated[bool, typer.Option("--no-forgetting", help="Skip the forgetting panel")] = False,
):
    """Compare base, few-shot, RAG and tuned variants on one held-out set; write report.md/.html/.json."""
    from rich.console import Console

    from tunesmith.eval.config import load_eval_config
    from tunesmith.eval.runner import run_eval

    settings = list(overrides or [])
    if n is not None:
        settings.append(f"data.n={n}")
    if no_forgetting:
        settings.append("forgetting.enabled=false")
    cfg = load_eval_config(config, settings)
    report = run_eval(cfg, out)
    folder = out or Path(cfg.report.dir)
    console = Console(stderr=True)
    from tunesmith.eval.report import verdict

    for line in verdict(report):
        console.print(line.replace("**", ""))
    console.print(f"[green]Report[/]: {folder / 'report.html'} (also report.md, report.json)")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
