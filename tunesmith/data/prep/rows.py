"""The rows that flow between prep steps, typed: chunks (ingest → generate), chat rows (generate → augment →
anonymize → split → train) and rejects (what a teacher step turned down, with the reason).

On disk each is one JSON object per line (`to_json()`; fields that are not set are left out), so the files stay what
they were: plain JSONL that `tunesmith train` and any other tool read. Rows read from a file are validated with
`parse_rows`, which reports every bad row at once with its file and line.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tunesmith.records import DataError, DataIssue, SourceRef


class Row(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Chunk(Row):
    """A piece of a document about one topic, as `tunesmith data ingest` cuts it."""

    text: str
    chunk_id: str | None = None  # "<doc_id>#<n>"
    doc_id: str | None = None  # stable across runs: the path relative to the input root
    source: str | None = None  # file (and line or item) it came from
    format: str | None = None
    topic: str = ""  # heading path, "Billing API > Rate limits"
    n_tokens: int | None = None
    char_start: int | None = None  # offsets into the document's text
    char_end: int | None = None


class ChatRow(Row):
    """A training conversation, with the fields that group it (doc_id, topic) and say where it came from.

    Any other field of the row (e.g. a label such as `query_type`) is kept as it is."""

    model_config = ConfigDict(extra="allow")

    messages: list[dict[str, Any]] | None = None
    doc_id: str | None = None
    chunk_id: str | None = None
    topic: str | None = None
    source: str | None = None
    task: str | None = None
    teacher: str | None = None
    augmented: str | None = None  # how a variant was made ("template:0", "paraphrase:more formally")
    augmented_from: int | None = None  # the row number of its original


class Reject(Row):
    """Something a teacher step did not keep, and why (written beside the output as *.rejects.jsonl)."""

    reason: str
    chunk_id: str | None = None
    source: str | None = None
    question: str | None = None
    answer: str | None = None
    row: int | None = None  # augment: the row whose prompt was varied
    prompt: str | None = None
    paraphrase: str | None = None


R = TypeVar("R", bound=Row)


def parse_rows(model: type[R], rows: list[tuple[SourceRef, dict[str, Any]]], hint: str = "") -> list[R]:
    """Validate rows read from a JSONL file; every row that does not fit is reported at once, with its line."""
    out: list[R] = []
    issues: list[DataIssue] = []
    for where, row in rows:
        try:
            out.append(model.model_validate(row))
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'row'}: {err['msg']}" for err in e.errors())
            issues.append(DataIssue(where, f"not a {model.__name__.lower()} row ({problems})"))
    if issues:
        raise DataError(issues, hint=hint)
    return out
