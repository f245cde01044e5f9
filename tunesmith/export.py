"""`tunesmith merge`: a trained run → one plain transformers model folder (safetensors + tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunesmith.cli import console
from tunesmith.files import atomic_dir
from tunesmith.records import TunesmithError


def merge_run(run: str | Path, out: str | Path | None = None) -> Path:
    from tunesmith.config import load_config
    from tunesmith.generate import load_for_inference
    from tunesmith.methods.base import get_method

    run = Path(run)
    out = Path(out) if out else run / "merged"
    cfg = load_config(run / "config.yaml")
    model, tokenizer = load_for_inference(run, device="cpu", merge=False)
    merged = get_method(cfg.method.name).merge(model)
    if hasattr(merged, "peft_config"):
        raise TunesmithError("merge left peft wrappers in place; cannot export")
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def merge_command(run: Annotated[Path, typer.Argument(help="A trained run folder")],
                  out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default RUN/merged)")] = None):
    """Merge a run's adapter into its base model and save a plain transformers folder (safetensors)."""
    path = merge_run(run, out)
    console.print(f"[green]Merged model written to {path}[/]; load it with AutoModelForCausalLM.from_pretrained('{path}')")
