"""Write a benchmark's results into its own section of docs/benchmarks.md, leaving other sections alone."""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.files import atomic_write_text

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEvery figure here was produced by the command shown with it, on the machine named with it.\n"


def update_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the block between `<!-- name:start -->` and `<!-- name:end -->` (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, text)
