"""Shared record types that flow between data, training, evaluation and serving.

Everything a user can get wrong points back to a place in their files: a `SourceRef`. Problems are
collected as `DataIssue`s and raised together in one `DataError`, never one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100  # label value that the loss skips; the convention of torch's cross_entropy

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class SourceRef:
    """Where a record came from: a file and a 1-based line (JSONL/CSV) or 0-based item index (JSON, Parquet)."""

    path: str
    line: int | None = None
    item: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.path}:{self.line}"
        if self.item is not None:
            return f"{self.path}[{self.item}]"
        return self.path


@dataclass(frozen=True)
class DataIssue:
    source: SourceRef
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


class TunesmithError(Exception):
    """An error whose message tells the user what went wrong and what to do; shown without a traceback."""


class DataError(TunesmithError):
    """Every problem found in the input data, reported at once."""

    def __init__(self, issues: list[DataIssue], hint: str = ""):
        self.issues = issues
        self.hint = hint
        shown = "\n".join(f"  {issue}" for issue in issues[:50])
        more = f"\n  ... and {len(issues) - 50} more" if len(issues) > 50 else ""
        tail = f"\n{hint}" if hint else ""
        super().__init__(f"{len(issues)} problem(s) in the data:\n{shown}{more}{tail}")


@dataclass
class Example:
    """One training or evaluation item as chat messages (or raw text for continued pretraining)."""

    messages: list[Message]
    source: SourceRef
    meta: dict[str, Any] = field(default_factory=dict)  # the row's other fields (e.g. query_type), for breakdowns
    text: str | None = None  # set instead of messages for raw-text (continued pretraining) rows

    @property
    def is_chat(self) -> bool:
        return self.text is None


@dataclass
class TokenizedExample:
    """Token ids and per-token labels (IGNORE_INDEX where the loss does not train)."""

    input_ids: list[int]
    labels: list[int]
    source: SourceRef
    truncated: bool = False
    token_types: list[int] | None = None  # per-token type ids an objective feeds the model (word shapes), or None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)
