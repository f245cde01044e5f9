"""`tunesmith merge`: a trained run → one plain transformers model folder (safetensors + tokenizer)."""

from __future__ import annotations

import shutil
from pathlib import Path

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
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
