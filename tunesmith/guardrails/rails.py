"""Input and output rails around one model call.

Input: chat control tokens neutralised, length limit, deny-list, blocked topics, a prompt-injection heuristic,
then PII redaction (tunesmith's anonymizer, used as a library) so personal data never reaches the model; the
placeholder → value mapping stays in the request's `GuardedInput`, server-side, and can be put back into the
answer. Output: PII scan, deny-list, structured-output validation. Every decision goes to the audit log with
the rail, the reason and a hash of the value concerned, never the value itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.files import append_text
from tunesmith.redact import redacting_logger
from tunesmith.guardrails.config import GuardrailsConfig, PiiRail
from tunesmith.records import Message

logger = redacting_logger("tunesmith.guardrails")

# Prompt-injection signals: (weight, pattern). A heuristic, measured in docs/guardrails.md on a labelled set.
INJECTION_SIGNALS: list[tuple[float, re.Pattern[str]]] = [(w, re.compile(p, re.I)) for w, p in [
    (1.0, r"\b(ignore|disregard|forget|override|bypass)\b.{0,30}\b(previous|prior|above|earlier|preceding|all|your|system|these)\b"
          r".{0,30}\b(instructions?|prompts?|rules|directions|guidelines|messages?|polic(y|ies))\b"),
    (1.0, r"\b(reveal|show|print|repeat|output|tell me|leak|display|dump)\b.{0,30}\b(system|hidden|initial|secret|original)\s+"
          r"(prompt|instructions?|message|rules)"),
    (1.0, r"\b(developer|god|jailbreak|jailbroken|unrestricted|DAN)\s+mode\b|\bdo anything now\b"),
    (1.0, r"\byou are (now|no longer)\b.{0,40}\b(unrestricted|unfiltered|uncensored|free|jailbroken|DAN|evil|without)\b"),
    (1.0, r"\b(pretend|act|behave|roleplay)\b.{0,30}\b(no|without|free of|not bound by)\b.{0,20}"
          r"\b(restrictions|rules|filters|guidelines|limits|censorship|policies)\b"),
    (0.5, r"\b(new|updated|real) (instructions|system prompt)\s*:"),
    (0.5, r"(^|\n)\s*(###\s*)?(system|assistant)\s*:"),
    (0.5, r"\bwithout (any )?(restrictions|filters|censorship|limitations)\b"),
]]
# Chat-template control sequences a user could type to forge turns (the tokenizer would read them as specials).
CONTROL = re.compile(r"<\|[a-z_]{2,20}\|>|\[/?INST\]|<</?SYS>>|</?s>", re.I)


def value_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class RailDecision:
    rail: str  # input.pii, input.topic, input.deny, input.injection, input.length, input.control, output.*
    action: str  # allow, redact, restore, block, strip, invalid
    reason: str
    hash: str = ""  # of the value concerned (sha256, 16 hex digits)

    def to_dict(self) -> dict:
        return {"rail": self.rail, "action": self.action, "reason": self.reason, "sha256": self.hash}


@dataclass
class GuardedInput:
    messages: list[Message]  # what the model sees
    blocked: bool = False
    mapping: dict[str, str] = field(default_factory=dict)  # placeholder → the user's value; never sent anywhere
    decisions: list[RailDecision] = field(default_factory=list)


@dataclass
class GuardedOutput:
    text: str
    blocked: bool = False
    decisions: list[RailDecision] = field(default_factory=list)


class AuditLog:
    """Append-only JSONL of rail decisions, private (0600), one line per decision, thread-safe."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path:
            append_text(self.path, "", private=True)  # created 0600 now: a path that cannot be written fails at start

    def write(self, decisions: list[RailDecision], **context) -> None:
        for d in decisions:
            logger.info("rail %s %s: %s", d.rail, d.action, d.reason, extra={"rail": d.to_dict(), **context})
        if not self.path or not decisions:
            return
        lines = "".join(json.dumps({"time": round(time.time(), 3), **context, **d.to_dict()}) + "\n" for d in decisions)
        with self._lock:
            append_text(self.path, lines, private=True)


def _term_pattern(terms: list[str]) -> re.Pattern[str] | None:
    """Whole words/phrases, case-insensitive, any whitespace between the words of a phrase."""
    alternatives = [r"\s+".join(re.escape(w) for w in t.split()) for t in terms if t.strip()]
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.I) if alternatives else None


class Guard:
    """The rails of one served model (or of one `tunesmith generate` call)."""

    def __init__(self, cfg: GuardrailsConfig, tokenizer=None, vocab_size: int | None = None):
        self.cfg = cfg
        self.audit = AuditLog(cfg.audit_log)
        self._detectors: dict[int, object] = {}
        self._detector_lock = threading.Lock()
        self.deny_in = _term_pattern(cfg.input.deny)
        self.deny_out = _term_pattern(cfg.output.deny)
        self.topics = [(t.name, _term_pattern(t.terms), [re.compile(p, re.I) for p in t.patterns])
                       for t in cfg.input.blocked_topics]
        self.constraint: Callable | None = None
        if cfg.output.structured is not None and tokenizer is not None:
            from tunesmith.guardrails.structured import constraint_factory

            self.constraint = constraint_factory(cfg.output.structured, tokenizer, vocab_size or len(tokenizer))

    @property
    def buffers_output(self) -> bool:
        """True when the answer must be complete before it can be checked (so it cannot be streamed as made)."""
        out = self.cfg.output
        return bool((out.pii and out.pii.enabled) or out.deny or (self.cfg.input.pii and self.cfg.input.pii.enabled
                                                                 and self.cfg.input.pii.restore))

    def _detector(self, rail: PiiRail):
        from tunesmith.data.prep.anonymize import PiiDetector

        with self._detector_lock:
            if id(rail) not in self._detectors:
                self._detectors[id(rail)] = PiiDetector(rail.detector)
            return self._detectors[id(rail)]

    # ---- input ----
    def check_input(self, messages: list[Message]) -> GuardedInput:
        cfg = self.cfg.input
        out = GuardedInput([dict(m) for m in messages])
        user = [m for m in out.messages if m.get("role") == "user"]
        for m in user:
            cleaned = CONTROL.sub(" ", m["content"])
            if cleaned != m["content"]:
                out.decisions.append(RailDecision("input.control", "strip", "chat control tokens in a user message",
                                                  value_hash(m["content"])))
                m["content"] = cleaned
        text = "\n".join(m["content"] for m in user)
        forged = any(d.rail == "input.control" for d in out.decisions)
        if cfg.max_chars is not None and len(text) > cfg.max_chars:
            return self._block(out, "input.length", f"{len(text)} characters > {cfg.max_chars}", text)
        if self.deny_in and (hit := self.deny_in.search(text)):
            return self._block(out, "input.deny", "a denied term", hit.group(0))
        for name, terms, patterns in self.topics:
            hit = (terms.search(text) if terms else None) or next((h for p in patterns if (h := p.search(text))), None)
            if hit:
                return self._block(out, "input.topic", f"blocked topic {name!r}", hit.group(0))
        if cfg.injection.enabled:
            score, matched = self.injection_score(text)
            if forged:  # a user who types chat control tokens is forging turns
                score, matched = score + 1.0, matched + ["control tokens"]
            if score >= cfg.injection.threshold:
                return self._block(out, "input.injection", f"prompt-injection score {score:.1f} ({', '.join(matched)})", text)
        if cfg.pii and cfg.pii.enabled:
            self._redact_input(out, user, cfg.pii)
        if not out.decisions:
            out.decisions.append(RailDecision("input", "allow", "no rail fired"))
        return out

    @staticmethod
    def injection_score(text: str) -> tuple[float, list[str]]:
        """(sum of the weights of the signals found, their numbers) for the heuristic in INJECTION_SIGNALS."""
        hits = [(i, w) for i, (w, p) in enumerate(INJECTION_SIGNALS) if p.search(text)]
        return sum(w for _, w in hits), [f"signal {i + 1}" for i, _ in hits]

    def _block(self, out: GuardedInput, rail: str, reason: str, value: str) -> GuardedInput:
        out.blocked = True
        out.decisions.append(RailDecision(rail, "block", reason, value_hash(value)))
        return out

    def _redact_input(self, out: GuardedInput, user: list[Message], rail) -> None:
        from tunesmith.data.prep.anonymize import Pseudonyms

        detector = self._detector(rail)
        pseudonyms = Pseudonyms("placeholder")
        found = []
        for m in user:
            spans = detector.find(m["content"])
            found.append([(s, pseudonyms.get(m["content"][s.start : s.end], s.type, s.detector)) for s in spans])
        pseudonyms.assign()
        for m, spans in zip(user, found):
            text = m["content"]
            for span, replacement in reversed(spans):
                value = text[span.start : span.end]
                out.mapping[replacement.pseudonym] = value
                out.decisions.append(RailDecision("input.pii", "redact", f"{span.type} ({span.detector})", value_hash(value)))
                text = text[: span.start] + replacement.pseudonym + text[span.end :]
            m["content"] = text

    # ---- output ----
    def check_output(self, text: str, guarded: GuardedInput | None = None, finish_reason: str | None = None) -> GuardedOutput:
        cfg = self.cfg.output
        out = GuardedOutput(text)
        if cfg.structured is not None:
            from tunesmith.guardrails.structured import validate

            problem = validate(cfg.structured, text)
            if problem:
                why = problem + (" (cut off by the token limit)" if finish_reason == "length" else "")
                out.decisions.append(RailDecision("output.structured", "invalid", why, value_hash(text)))
            else:
                out.decisions.append(RailDecision("output.structured", "allow", "valid", value_hash(text)))
        if self.deny_out and (hit := self.deny_out.search(text)):
            out.blocked = True
            out.text = self.cfg.refusal
            out.decisions.append(RailDecision("output.deny", "block", "a denied term", value_hash(hit.group(0))))
            return out
        if cfg.pii and cfg.pii.enabled:
            own = set(guarded.mapping) if guarded else set()
            spans = [s for s in self._detector(cfg.pii).find(text) if text[s.start : s.end] not in own]
            if spans and cfg.pii.action == "block":
                out.blocked = True
                out.text = self.cfg.refusal
                out.decisions.append(RailDecision("output.pii", "block", ", ".join(sorted({s.type for s in spans})),
                                                  value_hash(text)))
                return out
            for s in reversed(spans):
                value = out.text[s.start : s.end]
                out.decisions.append(RailDecision("output.pii", "redact", f"{s.type} ({s.detector})", value_hash(value)))
                out.text = out.text[: s.start] + f"<{s.type}>" + out.text[s.end :]
        if guarded and guarded.mapping and self.cfg.input.pii and self.cfg.input.pii.restore:
            for placeholder, value in guarded.mapping.items():
                if placeholder in out.text:
                    out.text = out.text.replace(placeholder, value)
                    out.decisions.append(RailDecision("output.restore", "restore", "the user's own value put back",
                                                      value_hash(value)))
        return out

    def refusal_output(self) -> GuardedOutput:
        return GuardedOutput(self.cfg.refusal, blocked=True)
