"""`tunesmith serve [RUN...]`: setup (config, keys, models) → run (uvicorn until SIGINT/SIGTERM) → nothing to save."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def serve(runs: list[str], config: Path | None = None, overrides: list[str] | None = None, host: str | None = None,
          port: int | None = None, model: str | None = None, api_key_file: Path | None = None,
          no_auth: bool = False, guardrails: Path | None = None) -> None:
    import uvicorn

    from tunesmith.serve.app import create_app
    from tunesmith.serve.config import load_serve_config, resolve_keys
    from tunesmith.serve.models import ModelPool, served_models_from_runs

    base: dict = {}
    if runs or model or not config:
        base["models"] = [m.model_dump(exclude_none=True) for m in served_models_from_runs(runs, model)]
        if guardrails:
            for m in base["models"]:
                m["guardrails"] = str(guardrails)
    for key, value in (("host", host), ("port", port)):
        if value is not None:
            base[key] = value
    if no_auth:
        base["no_auth"] = True
    cfg = load_serve_config(config, overrides, base)
    keys = resolve_keys(cfg, api_key_file)
    pool = ModelPool(cfg)
    app = create_app(cfg, pool, keys)
    console.print(f"[bold]tunesmith serve[/]: http://{cfg.host}:{cfg.port}/v1 ({len(pool.entries)} model(s): "
                  f"{', '.join(pool.entries)}); {'no API key (loopback only)' if not keys else f'{len(keys)} API key(s)'}")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info",
                timeout_graceful_shutdown=int(cfg.limits.request_timeout_s) + 5)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        runs: Annotated[Optional[list[str]], typer.Argument(help="Run folders to serve (each under its folder name)")] = None,
        config: Annotated[Optional[Path], typer.Option(help="A serve YAML: models, guardrails, limits, batching, keys")] = None,
        overrides: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a setting: section.key=value")] = None,
        host: Annotated[Optional[str], typer.Option(help="Address to listen on (default 127.0.0.1)")] = None,
        port: Annotated[Optional[int], typer.Option(help="Port (default 8000)")] = None,
        model: Annotated[Optional[str], typer.Option(help="Also serve this base model as is")] = None,
        api_key_file: Annotated[Optional[Path], typer.Option(help="File of accepted API keys, one a line")] = None,
        no_auth: Annotated[bool, typer.Option("--no-auth", help="No API key (allowed on a loopback address only)")] = False,
        guardrails: Annotated[Optional[Path], typer.Option(help="Guardrails YAML for every model given on the command line")] = None,
    ):
        """Serve runs through an OpenAI-compatible API (several adapters on one base, batched, with guardrails)."""
        serve(runs or [], config, overrides, host, port, model, api_key_file, no_auth, guardrails)
