"""`tunesmith merge`: a trained run → one plain transformers model folder (safetensors + tokenizer)."""

from __future__ import annotations

from pathlib import Path

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
