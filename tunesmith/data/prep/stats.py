"""`tunesmith data stats`: what is in a prep file — counts, lengths, balance, duplicates, PII."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from tunesmith.cli import InputOpt
from tunesmith.data.prep.artifacts import field_value, iter_texts, read_manifest
from tunesmith.data.prep.chunking import count_tokens
from tunesmith.files import atomic_write_json, read_jsonl
from tunesmith.records import SourceRef

PLACEHOLDER = re.compile(r"<([A-Z_]+)_\d+>")


def _prompt_and_answer(row: dict[str, Any]) -> tuple[str, str]:
    messages = row.get("messages") if isinstance(row.get("messages"), list) else []
    prompt = " ".join(m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user")
    answer = " ".join(m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    return prompt, answer


def _histogram(lengths: list[int], bins: int = 8) -> list[dict[str, int]]:
    if not lengths:
        return []
    counts, edges = np.histogram(lengths, bins=min(bins, max(1, len(set(lengths)))))
    return [{"from": int(edges[i]), "to": int(edges[i + 1]), "rows": int(c)} for i, c in enumerate(counts)]


def _summary(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    values = np.array(lengths)
    return {"min": int(values.min()), "median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "max": int(values.max())}


def compute_stats(
    path: str | Path,
    rows: list[tuple[SourceRef, dict[str, Any]]],
    fields: list[str] | None = None,
    tokenizer: str | None = None,
    pii_detector=None,
) -> dict[str, Any]:
    texts = ["\n".join(iter_texts(row)) for _, row in rows]
    lengths = [count_tokens(t, tokenizer) for t in texts]
    chat = [row for _, row in rows if isinstance(row.get("messages"), list)]
    prompts_answers = [_prompt_and_answer(row) for row in chat]
    normalized = [" ".join(t.lower().split()) for t in texts]
    duplicate_rows = sum(n - 1 for n in Counter(normalized).values() if n > 1)
    duplicate_prompts = sum(n - 1 for n in Counter(" ".join(p.lower().split()) for p, _ in prompts_answers).values() if n > 1)
    placeholders = Counter(m.group(1) for t in texts for m in PLACEHOLDER.finditer(t))

    stats: dict[str, Any] = {
        "file": str(path),
        "rows": len(rows),
        "chat_rows": len(chat),
        "text_rows": sum(1 for _, row in rows if "messages" not in row and isinstance(row.get("text"), str)),
        "tokens": {"unit": "tokenizer" if tokenizer else "words", "total": sum(lengths), **_summary(lengths), "histogram": _histogram(lengths)},
        "prompt_tokens": _summary([count_tokens(p, tokenizer) for p, _ in prompts_answers]),
        "answer_tokens": _summary([count_tokens(a, tokenizer) for _, a in prompts_answers]),
        "duplicates": {"rows": duplicate_rows, "prompts": duplicate_prompts},
        "balance": {f: dict(Counter(str(field_value(row, f)) for _, row in rows).most_common(20)) for f in fields or []},
        "pii": {"placeholders_in_text": dict(placeholders)},
    }
    manifest = read_manifest(path)
    if manifest and manifest.get("step") == "anonymize":
        stats["pii"]["found"] = manifest["counts"].get("found", {})
        stats["pii"]["replaced"] = manifest["counts"].get("replaced", {})
    if pii_detector is not None:
        remaining: Counter[str] = Counter()
        for text in texts:
            for span in pii_detector.find(PLACEHOLDER.sub("", text)):
                remaining[span.type] += 1
        stats["pii"]["detected_now"] = dict(remaining)
    return stats


def render_stats(stats: dict[str, Any], console) -> None:
    from rich.table import Table

    console.print(f"[bold]{stats['file']}[/bold]: {stats['rows']} rows ({stats['chat_rows']} chat, {stats['text_rows']} text)")
    tokens = stats["tokens"]
    if tokens.get("histogram"):
        console.print(
            f"{tokens['unit']} per row: total {tokens['total']}, min {tokens['min']}, median {tokens['median']:g}, "
            f"p95 {tokens['p95']:g}, max {tokens['max']}"
        )
        peak = max(b["rows"] for b in tokens["histogram"]) or 1
        table = Table("length", "rows", "")
        for b in tokens["histogram"]:
            table.add_row(f"{b['from']}-{b['to']}", str(b["rows"]), "█" * round(30 * b["rows"] / peak))
        console.print(table)
    console.print(f"duplicates: {stats['duplicates']['rows']} rows, {stats['duplicates']['prompts']} prompts")
    for name, counts in stats["balance"].items():
        table = Table(name, "rows")
        for value, n in counts.items():
            table.add_row(value, str(n))
        console.print(table)
    pii = stats["pii"]
    if any(pii.values()):
        table = Table("PII type", "found", "replaced", "placeholders in text", "detected now")
        kinds = sorted(set().union(*[set(v) for v in pii.values()]))
        for kind in kinds:
            table.add_row(kind, *(str(pii.get(k, {}).get(kind, "")) for k in ("found", "replaced", "placeholders_in_text", "detected_now")))
        console.print(table)


def stats_command(
    input: InputOpt,
    field: Annotated[Optional[list[str]], typer.Option(help="Show the balance of this field (repeatable), e.g. topic")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="tokenizer.json for token counts (default: words)")] = None,
    scan_pii: Annotated[bool, typer.Option("--scan-pii", help="Also run the PII detector over the text")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the numbers as JSON")] = None,
) -> None:
    """Counts, token-length histogram, label balance, duplicates and PII of a prep file."""
    from rich.console import Console

    detector = None
    if scan_pii:
        from tunesmith.data.prep.anonymize import AnonymizeConfig, PiiDetector

        detector = PiiDetector(AnonymizeConfig())
    stats = compute_stats(input, read_jsonl(input), field or [], tokenizer, detector)
    render_stats(stats, Console())
    if json_out:
        atomic_write_json(json_out, stats)
