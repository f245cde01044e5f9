"""`tunesmith ui`: a local web app for the whole path: data, training, evaluation, chat.

setup (config, folders, access token) → run (uvicorn until Ctrl-C; jobs it started are stopped like Ctrl-C would,
their files complete and resumable) → nothing to save: everything the UI starts writes ordinary run and report folders.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunesmith.cli import ConfigArg, SetOpt

console = Console(stderr=True)
TOKEN_ENV = "TUNESMITH_UI_TOKEN"


def ui_command(
    config: ConfigArg = None, overrides: SetOpt = None,
    project: Annotated[Optional[Path], typer.Option(help="Project folder: configs, data, models; commands run in it "
                                                    "(sets project; default: the current folder)", show_default=False)] = None,
    runs: Annotated[Optional[list[str]], typer.Option("--runs", help="Folder of run folders and reports, relative to the "
                                                      "project (repeatable; sets runs; default: runs)", show_default=False)] = None,
    allow: Annotated[Optional[list[str]], typer.Option("--allow", help="Another folder the UI may read, e.g. models "
                                                       "(repeatable; sets allow)", show_default=False)] = None,
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (sets host; default 127.0.0.1); any other "
                                                "needs the access token", show_default=False)] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (sets port; default 7860)", show_default=False)] = None,
):
    """Open the web UI: see data as the trainer does, train and watch runs live, evaluate, compare, chat.

    Listens on 127.0.0.1 by default. On any other address every request needs the access token: the address printed
    at start carries it (set TUNESMITH_UI_TOKEN to choose it)."""
    import uvicorn

    from tunesmith.config import read_config
    from tunesmith.serve.config import is_loopback
    from tunesmith.ui.app import create_app
    from tunesmith.ui.config import UiConfig

    cfg = read_config(UiConfig, config, overrides or [], options={
        "project": str(project) if project else None, "runs": runs or None, "allow": allow or None,
        "host": host, "port": port})
    token = None if is_loopback(cfg.host) else (os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24))
    app = create_app(cfg, token)
    os.chdir(app.state.workspace.project)  # relative paths in configs mean what they mean to `tunesmith train` there
    shown = "localhost" if cfg.host in ("0.0.0.0", "::") else cfg.host
    url = f"http://{shown}:{cfg.port}/" + (f"?token={token}" if token else "")
    console.print(f"[bold]tunesmith ui[/]: {url}  (project {app.state.workspace.project}; runs in "
                  f"{', '.join(str(r) for r in app.state.workspace.runs)})" + ("" if token else "; Ctrl-C to stop"))
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)
