"""The `guardrails:` config: what is checked before a prompt reaches the model and after it answers.

Same rules as every tunesmith config: unknown keys rejected, every error at once with its file and line.
Used per served model (`guardrails:` in a serve config) and by `tunesmith generate/chat --guardrails FILE`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from tunesmith.config import Strict, read_config
from tunesmith.data.prep.anonymize import AnonymizeConfig


class PiiRail(Strict):
    """Personal data found by tunesmith's anonymizer (rules + NER; `tunesmith data anonymize` uses the same)."""

    enabled: bool = True
    detector: AnonymizeConfig = Field(default_factory=AnonymizeConfig,
                                      description="The anonymizer's settings: entity_types, ner, allow, phone_region, ...")


class InputPii(PiiRail):
    restore: bool = Field(True, description="Put the user's own values back where the answer repeats a placeholder")


class OutputPii(PiiRail):
    action: Literal["redact", "block"] = Field("redact", description="Personal data in an answer: replace it, or refuse")


class TopicRule(Strict):
    name: str
    terms: list[str] = Field(default_factory=list, description="Words or phrases, matched whole and case-insensitively")
    patterns: list[str] = Field(default_factory=list, description="Regular expressions (Python syntax, case-insensitive)")

    @model_validator(mode="after")
    def _something_to_match(self) -> TopicRule:
        import re

        if not self.terms and not self.patterns:
            raise ValueError(f"topic {self.name!r} needs `terms` or `patterns`")
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"topic {self.name!r}: pattern {p!r} is not a regular expression: {e}") from None
        return self


class InjectionRail(Strict):
    enabled: bool = True
    threshold: float = Field(1.0, gt=0, description="Block at this score (each matched signal adds its weight)")


class InputRails(Strict):
    max_chars: int | None = Field(8000, ge=1, description="Longest accepted user text (all user messages together)")
    pii: InputPii | None = Field(default_factory=InputPii)
    blocked_topics: list[TopicRule] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list, description="Terms that refuse the request when a user writes them")
    injection: InjectionRail = Field(default_factory=InjectionRail)


class StructuredOutput(Strict):
    """Constrained decoding: the model can only emit text in this language (exactly one of the three)."""

    grammar: Literal["sparql"] | None = Field(None, description="A grammar shipped with tunesmith (sparql: DBLP-QuAD's subset)")
    lark: str | None = Field(None, description="A Lark grammar file (llguidance's dialect)")
    json_schema: dict[str, Any] | str | None = Field(None, description="A JSON schema, inline or a .json file")

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutput:
        given = [k for k in ("grammar", "lark", "json_schema") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"structured output needs exactly one of grammar, lark, json_schema (got {given or 'none'})")
        return self


class OutputRails(Strict):
    pii: OutputPii | None = None
    deny: list[str] = Field(default_factory=list, description="Terms that replace an answer with the refusal")
    structured: StructuredOutput | None = None


class GuardrailsConfig(Strict):
    input: InputRails = Field(default_factory=InputRails)
    output: OutputRails = Field(default_factory=OutputRails)
    refusal: str = "Sorry, I can't help with that request."
    audit_log: str | None = Field(None, description="JSONL file of every rail decision (hashes, never the values)")


def load_guardrails(path: str | Path, overrides: Iterable[str] = ()) -> GuardrailsConfig:
    """A guardrails YAML (its top level is this section: input, output, refusal, audit_log), through `read_config`."""
    return read_config(GuardrailsConfig, path, overrides)
