"""`tunesmith predict`: label rows with a run that trained a classification head (sequence or token
classification): JSONL out, one line per input row. When the rows carry their gold labels, the same report as
training's validation (accuracy, macro-F1 and confusion matrix; or entity precision/recall/F1) is printed and
written beside the output."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunesmith.files import atomic_write_json, atomic_write_jsonl
from tunesmith.cli import ThreadsOpt
from tunesmith.records import TunesmithError
from tunesmith.threads import use_threads

console = Console(stderr=True)


def predict(run: str | Path, input: str | Path, batch_size: int = 16, precision: str = "auto",
            device: str = "auto") -> tuple[list[dict], dict | None]:
    """(one prediction per row, the report against the rows' gold labels or None when they have none)."""
    from tunesmith.generate import load_run

    loaded = load_run(run, device=device)
    if loaded.objective.generates:
        raise TunesmithError(f"{run} trained a {loaded.cfg.objective.name} model, which answers by generating text: "
                             f"use `tunesmith generate --run {run} --input FILE`")
    cfg = loaded.cfg.model_copy(update={"data": loaded.cfg.data.model_copy(update={"truncation": "right", "limit": None})})
    data = loaded.objective.prepare(str(input), cfg, loaded.tokenizer, loaded.label_names, require_labels=False)
    predictions = loaded.objective.predict(loaded.model, data, cfg, loaded.tokenizer, precision, batch_size)
    report = None
    try:
        gold = loaded.objective.prepare(str(input), cfg, loaded.tokenizer, loaded.label_names, require_labels=True)
        if len(gold.tokenized) == len(data.tokenized) and _has_gold(loaded.cfg.objective, input):
            report = loaded.objective.evaluate(loaded.model, gold, cfg, loaded.tokenizer, precision)
    except TunesmithError:
        report = None  # rows without gold labels: predictions only
    return predictions, report


def _has_gold(objective_cfg, path) -> bool:
    from tunesmith.data.formats import read_rows

    column = getattr(objective_cfg, "label", None) or getattr(objective_cfg, "tags", None) or objective_cfg.spans
    return all(isinstance(row, dict) and column in row for _, row in read_rows(path))


def predict_command(
    run: Annotated[Path, typer.Option(help="A run folder that trained a classification head")],
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Rows to label (the training data's format)")] = None,
    text: Annotated[Optional[list[str]], typer.Option("--text", "-t", help="A text to label (repeatable)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the predictions here (JSONL) instead of stdout")] = None,
    batch_size: int = 16,
    precision: Annotated[str, typer.Option(help="auto (bf16 where the hardware has it), bf16 or fp32")] = "auto",
    threads: ThreadsOpt = None,
):
    """Label texts with a classification run: one JSON line per row (label and probabilities, or entity spans)."""
    if (input is None) == (not text):
        raise TunesmithError("give --input FILE or --text TEXT (one of the two)")
    use_threads(threads, register="predict")
    with tempfile.TemporaryDirectory(prefix="tunesmith-predict-") as tmp:
        if text:
            from tunesmith.config import load_config
            from tunesmith.data.formats import template_fields
            from tunesmith.train.stages import last_stage_dir

            objective = load_config(last_stage_dir(run) / "config.yaml").objective
            fields = sorted(template_fields(objective.text)) if "{" in objective.text else [objective.text]
            if len(fields) != 1:
                raise TunesmithError(f"the run's input is built from several columns ({', '.join(fields)}): use --input FILE")
            input = Path(tmp) / "texts.jsonl"
            input.write_text("".join(json.dumps({fields[0]: t}) + "\n" for t in text))
        predictions, report = predict(run, input, batch_size, precision)
    if out:
        atomic_write_jsonl(out, predictions)
        console.print(f"[green]Wrote[/] {len(predictions)} predictions to {out}")
    else:
        for p in predictions:
            print(json.dumps(p, ensure_ascii=False))
    if report:
        console.print("Against the rows' gold labels: " + ", ".join(f"{k} {v}" for k, v in report.items()
                                                                      if isinstance(v, (int, float))))
        if out:
            atomic_write_json(out.with_suffix(".report.json"), report)
