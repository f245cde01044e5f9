"""`tunesmith generate` / `tunesmith chat`: answers from a base model, a trained run, or a merged model.

Prompts go through the same `render_prompt` as training data, so the template cannot drift between the two.
Many prompts are generated together: sorted by length, left-padded, KV-cached, each stopping at end-of-turn.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunesmith.data.tokenize import render_prompt
from tunesmith.models.loading import DEFAULT_MODEL, bf16_available, load_model, load_tokenizer, resolve_model
from tunesmith.records import Message, TunesmithError

console = Console(stderr=True)


def load_for_inference(run: str | Path | None = None, model: str | None = None, device: str = "auto",
                       merge: bool = True):
    """(model, tokenizer) for a run folder (base + its trained output), or a model name/folder as is.

    A run's adapter is merged into the base weights in memory by default: the same function (merged == unmerged is
    tested) without the adapter's extra matmuls on every generated token.
    """
    if run is None:
        path = resolve_model(model or DEFAULT_MODEL)
        return load_model(path, device=device).eval(), load_tokenizer(path)
    from tunesmith.config import load_config
    from tunesmith.methods.base import get_method

    run = Path(run)
    if not (run / "config.yaml").exists():
        raise TunesmithError(f"{run} is not a tunesmith run folder (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    final = run / "final"
    if not final.exists():
        raise TunesmithError(f"{run} has no trained output yet ({final} missing): did training finish?")
    base = load_model(resolve_model(cfg.model.name), device=device)
    method = get_method(cfg.method.name)
    trained = method.load(base, final)
    if merge:
        trained = method.merge(trained)
    return trained.eval(), load_tokenizer(final)


def stop_token_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def generate_chat(model, tokenizer, conversations: list[list[Message]], max_new_tokens: int = 256,
                  batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                  precision: str = "auto", show_progress: bool = True) -> list[str]:
    """Generate one assistant reply per conversation, in input order."""
    prompts = [render_prompt(tokenizer, c) for c in conversations]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # similar lengths → little padding
    device = next(model.parameters()).device
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_available(device))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    pad_id = tokenizer.pad_token_id
    stops = stop_token_ids(model, tokenizer)
    outputs: list[str] = [""] * len(prompts)
    if temperature > 0:
        torch.manual_seed(seed)
    progress = Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not show_progress)
    with progress, torch.inference_mode(), autocast:
        task = progress.add_task("generate", total=len(prompts))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                input_ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                attention[r, width - len(encoded[i]):] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new_tokens,
                do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None, top_k=None,
                eos_token_id=stops, pad_token_id=pad_id)
            for r, i in enumerate(idx):
                new = out[r, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stops), len(new))
                outputs[i] = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
            progress.advance(task, len(idx))
    return outputs


def read_prompts(path: str | Path) -> list[list[Message]]:
    """Prompts from a file: JSONL rows with `messages`, `prompt`, or plain text lines."""
    conversations = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = line
        if isinstance(row, dict) and "messages" in row:
            msgs = [m for m in row["messages"] if m["role"] != "assistant" or m is not row["messages"][-1]]
            conversations.append(msgs)
        elif isinstance(row, dict) and "prompt" in row:
            conversations.append([{"role": "user", "content": row["prompt"]}])
        else:
            conversations.append([{"role": "user", "content": str(row)}])
    return conversations
