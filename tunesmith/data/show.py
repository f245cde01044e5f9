"""`tunesmith data show`: the examples exactly as the trainer sees them, every token coloured by whether it
is trained on, and the counts that tell whether the data is what you meant (lengths, % trained, truncation)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tunesmith.cli import ConfigArg, SetOpt
from tunesmith.config import RunConfig, load_config
from tunesmith.objectives.base import get_objective
from tunesmith.models.loading import load_tokenizer, resolve_model
from tunesmith.records import IGNORE_INDEX, TokenizedExample, TunesmithError


def token_pieces(tokenizer, example: TokenizedExample) -> list[tuple[str, bool]]:
    """(text, trained) for every token of an example: what the terminal view and the web UI both colour."""
    return [(tokenizer.decode([tok]), label != IGNORE_INDEX) for tok, label in zip(example.input_ids, example.labels)]


def render_tokens(tokenizer, example: TokenizedExample) -> Text:
    text = Text()
    for piece, trained in token_pieces(tokenizer, example):
        text.append(piece, style="bold black on green" if trained else "dim")
    return text


def length_bins(lengths: list[int], bins: int = 8) -> list[tuple[int, int, int]]:
    """(first, last, count) of up to `bins` equal-width ranges of sequence length, from the shortest to the longest."""
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((n - lo) // step for n in lengths)
    return [(lo + b * step, lo + (b + 1) * step - 1, counts.get(b, 0)) for b in range(bins) if lo + b * step <= hi]


def length_histogram(lengths: list[int], bins: int = 8, width: int = 40) -> Table:
    table = Table(title="sequence length (tokens)", show_header=True, box=None)
    table.add_column("range", justify="right")
    table.add_column("count", justify="right")
    table.add_column("")
    rows = length_bins(lengths, bins)
    top = max(c for _, _, c in rows)
    for first, last, c in rows:
        table.add_row(f"{first}-{last}", str(c), "█" * round(width * c / top))
    return table


def inspect(cfg: RunConfig):
    """(tokenizer, PreparedData) of the config's training file, exactly as `tunesmith train` prepares it."""
    tokenizer = load_tokenizer(resolve_model(cfg.model.name))
    return tokenizer, get_objective(cfg.objective.name).prepare(cfg.data.train, cfg, tokenizer)


def show(cfg: RunConfig, n: int = 3, console: Console | None = None) -> dict:
    console = console or Console()
    tokenizer, data = inspect(cfg)
    for example in data.tokenized[:n]:
        title = f"{example.source} · {len(example)} tokens, {example.n_trained} trained" + (" · TRUNCATED" if example.truncated else "")
        console.print(Panel(render_tokens(tokenizer, example), title=title, title_align="left"))
    console.print(Text.assemble(("trained" + (" (labelled)" if data.label_names else ""), "bold black on green"), "  ",
                                ("not trained (prompt, template, padding)", "dim"))
                  + (Text(f"  labels: {', '.join(data.label_names)}") if data.label_names else Text()))
    summary = data.summary()
    table = Table(title="data summary", box=None)
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), f"{value:.1%}" if key == "trained_fraction" else f"{value:,}")
    console.print(table)
    console.print(length_histogram([len(t) for t in data.tokenized]))
    for issue in data.skipped[:20]:
        console.print(f"[yellow]skipped[/] {issue}")
    return summary


def show_command(config: ConfigArg = None, overrides: SetOpt = None,
                 input: Annotated[Optional[str], typer.Option("--input", "-i", help="A data file (sets data.train)")] = None,
                 n: Annotated[int, typer.Option("-n", help="Examples to render")] = 3):
    """Render examples as the trainer sees them: trained tokens highlighted, with length and masking stats."""
    if config is None and input is None:
        raise TunesmithError("give a config file, or --input FILE")
    show(load_config(config, overrides or [], options={"data.train": input}), n=n)
