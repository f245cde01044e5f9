"""`tunesmith generate` / `tunesmith chat`: answers from a base model, a trained run, or a merged model.

Prompts go through the same `render_prompt` as training data, so the template cannot drift between the two.
Many prompts are generated together: sorted by length, left-padded, KV-cached, each stopping at end-of-turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunesmith.data.formats import parse_messages
from tunesmith.data.tokenize import render_prompt
from tunesmith.files import iter_jsonl
from tunesmith.models.loading import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model
from tunesmith.models.precision import autocast, resolve_precision
from tunesmith.records import DataError, DataIssue, Message, SourceRef, TunesmithError

console = Console(stderr=True)


@dataclass
class LoadedRun:
    run: Path  # the folder that holds the trained output (a multi-stage run's last stage)
    cfg: object  # its RunConfig
    method: object
    objective: object
    model: object
    tokenizer: object
    label_names: list[str]


def load_run(run: str | Path, device: str = "auto", merge: bool = True) -> LoadedRun:
    """A run folder → its base model with what it trained, loaded the way the method trained it (a qlora base in
    4 bit), merged in memory where the method merges (`merge`), else with its layers in place."""
    from tunesmith.config import load_config
    from tunesmith.methods.base import get_method
    from tunesmith.objectives.base import get_objective, saved_labels
    from tunesmith.train.stages import last_stage_dir

    run = last_stage_dir(Path(run))
    if not (run / "config.yaml").exists():
        raise TunesmithError(f"{run} is not a tunesmith run folder (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    final = run / "final"
    if not final.exists():
        raise TunesmithError(f"{run} has no trained output yet ({final} missing): did training finish?")
    method, objective = get_method(cfg.method.name), get_objective(cfg.objective.name)
    base_path = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(final)
    labels = saved_labels(final)
    task = objective.task(cfg, labels, base_path, tokenizer)
    trained = method.load(method.load_base(base_path, cfg.method, device, task), final, task)
    if merge and method.mergeable:
        trained = method.merge(trained)
    return LoadedRun(run, cfg, method, objective, trained.eval(), tokenizer, labels)


def load_for_inference(run: str | Path | None = None, model: str | None = None, device: str = "auto",
                       merge: bool = True):
    """(model, tokenizer) for a run folder (base + its trained output), or a model name/folder as is.

    A run's adapter is merged into the base weights in memory by default: the same function (merged == unmerged is
    tested) without the adapter's extra matmuls on every generated token. Methods that do not merge (bottleneck
    adapters, virtual tokens, a 4-bit base) are loaded with their trained layers in place.
    """
    if run is None:
        path = resolve_model(model or DEFAULT_MODEL)
        return load_model(path, device=device).eval(), load_tokenizer(path)
    loaded = load_run(run, device, merge)
    if not loaded.objective.generates:
        raise TunesmithError(f"{run} trained a {loaded.cfg.objective.name} head: it labels text instead of answering; "
                             f"use `tunesmith predict --run {run} --input FILE`")
    return loaded.model, loaded.tokenizer


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
    mode = resolve_precision(precision, device)
    pad_id = tokenizer.pad_token_id
    stops = stop_token_ids(model, tokenizer)
    outputs: list[str] = [""] * len(prompts)
    if temperature > 0:
        torch.manual_seed(seed)
    progress = Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not show_progress)
    with progress, torch.inference_mode(), autocast(mode, device):
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
    """Prompts from a file: JSONL rows with `messages` (a final assistant turn, the reference, is dropped) or
    `prompt`; any other file holds one prompt per non-blank line. Every bad row is reported at once."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError([DataIssue(SourceRef(str(path)), f"cannot read it as UTF-8 text ({e})")]) from None
        return [[{"role": "user", "content": line.strip()}] for line in lines if line.strip()]
    conversations: list[list[Message]] = []
    issues: list[DataIssue] = []
    for where, row in iter_jsonl(path):
        if isinstance(row, DataIssue):
            issues.append(row)
        elif "messages" in row or "conversations" in row:
            messages = parse_messages(row, where)
            if isinstance(messages, DataIssue):
                issues.append(messages)
            else:
                conversations.append(messages[:-1] if messages[-1]["role"] == "assistant" else messages)
        elif isinstance(row.get("prompt"), str):
            conversations.append([{"role": "user", "content": row["prompt"]}])
        else:
            issues.append(DataIssue(where, f"expected `messages` (a chat) or `prompt` (a string); fields {sorted(row)}"))
    if issues:
        raise DataError(issues, hint="Each line needs `messages` or `prompt`.")
    return conversations


def generate_command(
    run: Annotated[Optional[Path], typer.Option(help="A trained run folder (base model + its adapter)")] = None,
    model: Annotated[Optional[str], typer.Option(help="A model name or folder (default: the embedded SmolLM2)")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A user message (repeatable)")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Prompts: JSONL (messages or prompt) or one per line")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt for every prompt")] = None,
    max_new_tokens: int = 256, batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
    precision: Annotated[str, typer.Option(help="auto (bf16 where the hardware has it), bf16 or fp32")] = "auto",
):
    """Answer prompts with a base model or a trained run (batched; greedy unless --temperature > 0); JSONL on stdout."""
    conversations = [[{"role": "user", "content": p}] for p in prompt or []]
    if input:
        conversations += read_prompts(input)
    if not conversations:
        raise TunesmithError("nothing to answer: give --prompt TEXT or --input FILE")
    if system:
        conversations = [[{"role": "system", "content": system}] + c for c in conversations]
    model_obj, tokenizer = load_for_inference(run, model)
    answers = generate_chat(model_obj, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            temperature=temperature, top_p=top_p, seed=seed, precision=precision)
    for conv, answer in zip(conversations, answers):
        print(json.dumps({"prompt": conv[-1]["content"], "answer": answer}, ensure_ascii=False))


def chat_command(
    run: Annotated[Optional[Path], typer.Option(help="A trained run folder")] = None,
    model: Annotated[Optional[str], typer.Option(help="A model name or folder")] = None,
    system: Optional[str] = None, max_new_tokens: int = 256, temperature: float = 0.0,
):
    """Talk to a model in the terminal; the conversation is kept; an empty line or Ctrl-D ends it."""
    model_obj, tokenizer = load_for_inference(run, model)
    history = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append({"role": "user", "content": line})
        reply = generate_chat(model_obj, tokenizer, [history], max_new_tokens=max_new_tokens,
                              temperature=temperature, show_progress=False)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")
