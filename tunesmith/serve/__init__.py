"""`tunesmith serve`: an OpenAI-compatible API over tuned runs, several adapters on one base, with guardrails.

setup (config, keys, models) → run (uvicorn until SIGINT/SIGTERM, then in-flight requests finish) → nothing to save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunesmith.cli import ConfigArg, SetOpt, ThreadsOpt
from tunesmith.records import TunesmithError
from tunesmith.threads import use_threads

console = Console(stderr=True)


def serve_command(
    config: ConfigArg = None, overrides: SetOpt = None,
    run: Annotated[Optional[list[str]], typer.Option("--run", "-r", help="A run folder to serve under its folder name "
                                                     "(repeatable; replaces the config's models)")] = None,
    model: Annotated[Optional[str], typer.Option(help="Also serve this base model as is (default without runs: the embedded SmolLM2)")] = None,
    guardrails: Annotated[Optional[Path], typer.Option(help="Guardrails YAML for every model given with --run/--model", show_default=False)] = None,
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (sets host; default 127.0.0.1)", show_default=False)] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (sets port; default 8000)", show_default=False)] = None,
    api_key_file: Annotated[Optional[Path], typer.Option(help="File of accepted API keys, one a line", show_default=False)] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No API key (sets no_auth; loopback addresses only)")] = False,
    threads: ThreadsOpt = None,
):
    """Serve runs through an OpenAI-compatible API (several adapters on one base, batched, with guardrails).

    `tunesmith serve --run runs/a --run runs/b --api-key-file keys.txt`, or `tunesmith serve serve.yaml`
    (docs/serving.md)."""
    import uvicorn

    from tunesmith.serve.app import create_app
    from tunesmith.serve.config import resolve_keys
    from tunesmith.serve.models import ModelPool

    cfg = serve_config(config, overrides or [], run or [], model, guardrails, host=host, port=port, no_auth=no_auth)
    use_threads(threads, register="serve")
    keys = resolve_keys(cfg, api_key_file)
    pool = ModelPool(cfg)
    app = create_app(cfg, pool, keys)
    console.print(f"[bold]tunesmith serve[/]: http://{cfg.host}:{cfg.port}/v1 ({len(pool.entries)} model(s): "
                  f"{', '.join(pool.entries)}); {'no API key (loopback only)' if not keys else f'{len(keys)} API key(s)'}")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info",
                timeout_graceful_shutdown=int(cfg.limits.request_timeout_s) + 5)


def serve_config(config: Path | None, overrides: list[str], runs: list[str], model: str | None,
                 guardrails: Path | None, *, host: str | None = None, port: int | None = None, no_auth: bool = False):
    """The ServeConfig of one `tunesmith serve` call: the YAML (if any), its --set overrides, then the verb's options.

    Models given with --run/--model replace the config's `models`; with neither, the config's models are served,
    or the embedded base model when the config names none.
    """
    from tunesmith.config import read_config
    from tunesmith.serve.config import ServeConfig
    from tunesmith.serve.models import served_models_from_runs

    given = [m.model_dump(exclude_none=True) for m in served_models_from_runs(runs, model)] if runs or model else None
    if guardrails and not given:
        raise TunesmithError("--guardrails applies to models given with --run or --model; in a config file, give each "
                             "served model its own `guardrails:`")
    for m in given or []:
        if guardrails:
            m["guardrails"] = str(guardrails)
    default = {"models": [m.model_dump(exclude_none=True) for m in served_models_from_runs([], None)]}
    return read_config(ServeConfig, config, overrides, base=default, options={
        "models": given, "host": host, "port": port, "no_auth": True if no_auth else None})
