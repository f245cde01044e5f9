"""`tunesmith data anonymize`: find personal data in every text field and replace it consistently.

Two passes. The first detects PII in all rows (validated rules + the NER model) and gives every distinct
value one pseudonym. The second replaces *every occurrence* of every detected value in every row —
also where the detector missed it in that row — so no detected value survives anywhere in the output.
A final scan verifies that. The value → pseudonym mapping goes to its own file, kept out of the
training data; the audit log records what was replaced where, with a hash instead of the value.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import Field

from tunesmith.cli import ConfigArg, ForceOpt, InputOpt, OutOpt, SetOpt, console
from tunesmith.config import Strict
from tunesmith.data.prep.artifacts import sha256_of_text, skip_if_up_to_date, write_manifest
from tunesmith.data.prep.pii_rules import ENTITY_TYPES, Span, find_rule_spans
from tunesmith.data.prep.progress import Progress, rich_progress
from tunesmith.files import atomic_write_jsonl, read_jsonl
from tunesmith.records import SourceRef, TunesmithError

# When spans overlap, the earlier type in this list wins: validated formats beat the model's guesses.
PRIORITY = ("EMAIL", "URL", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "ID_NUMBER", "DATE", "PHONE", "BANK_ACCOUNT", "PERSON", "ADDRESS")
ID_FIELDS = ("doc_id", "chunk_id", "source", "format", "role", "task", "teacher", "augmented", "reason")


class AnonymizeConfig(Strict):
    replace_with: Literal["placeholder", "fake"] = Field(
        "placeholder", description="placeholder: <PERSON_1>; fake: a made-up value of the same type (Faker)"
    )
    entity_types: list[str] = Field(list(ENTITY_TYPES), description="Types to replace; others are left as they are")
    ner: bool = Field(True, description="Use the NER model (names, addresses) besides the rules")
    ner_threshold: float = Field(0.5, ge=0, le=1)
    phone_region: str = Field("US", description="Region for phone numbers written without a country code")
    skip_fields: list[str] = Field(list(ID_FIELDS), description="Row fields never rewritten (ids and grouping keys)")
    allow: list[str] = Field(default_factory=list, description="Terms never treated as PII (product names, acronyms the NER mistakes for names)")
    seed: int = 0


@dataclass
class Replacement:
    type: str
    pseudonym: str
    detector: str
    count: int = 0


def _normalized(value: str) -> str:
    return " ".join(value.casefold().split())


def merge_spans(spans: list[Span]) -> list[Span]:
    """Non-overlapping spans; on overlap the higher-priority type wins, then the longer span."""
    rank = {t: i for i, t in enumerate(PRIORITY)}
    ordered = sorted(spans, key=lambda s: (rank.get(s.type, len(rank)), s.detector == "ner", -(s.end - s.start)))
    kept: list[Span] = []
    for span in ordered:
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


class PiiDetector:
    def __init__(self, config: AnonymizeConfig):
        self.config = config
        unknown = sorted(set(config.entity_types) - set(ENTITY_TYPES))
        if unknown:
            raise TunesmithError(f"anonymize.entity_types: unknown {unknown}; known types: {', '.join(ENTITY_TYPES)}")
        self.ner = None
        if config.ner:
            from tunesmith.data.prep.pii_ner import RampartNer

            self.ner = RampartNer(threshold=config.ner_threshold)

    def find(self, text: str) -> list[Span]:
        spans = find_rule_spans(text, self.config.phone_region)
        if self.ner is not None:
            spans += self.ner.find_spans(text)
        wanted = set(self.config.entity_types)
        allowed = {_normalized(term) for term in self.config.allow}
        kept = []
        for span in spans:
            value = text[span.start : span.end]
            if span.type not in wanted or not value.strip() or _normalized(value) in allowed:
                continue
            # The model sometimes tags technical acronyms (JSON, HTTPS) as names; real names are not all caps.
            if span.detector == "ner" and span.type == "PERSON" and (value.isupper() or not any(c.isalpha() for c in value)):
                continue
            kept.append(span)
        return merge_spans(kept)


class Pseudonyms:
    """One pseudonym per (normalized) value, reused everywhere and across runs via the mapping file."""

    def __init__(self, replace_with: str, seed: int = 0):
        self.replace_with = replace_with
        self.by_value: dict[str, Replacement] = {}
        self.originals: dict[str, str] = {}  # normalized → value as first seen
        self.counters: Counter[str] = Counter()
        self._faker = None
        self._seed = seed
        self._guard: re.Pattern[str] | None = None  # matches any real value; no fake may contain one

    def _fake(self, kind: str, value: str) -> str:
        if self._faker is None:
            from faker import Faker

            self._faker = Faker()
            self._faker.seed_instance(self._seed)
        f = self._faker
        makers = {
            "PERSON": lambda: f.name() if " " in value.strip() else f.first_name(),
            "EMAIL": f.email,
            "PHONE": f.phone_number,
            "IBAN": f.iban,
            "CREDIT_CARD": f.credit_card_number,
            "IP_ADDRESS": f.ipv4,
            "URL": f.url,
            "DATE": lambda: f.date(),
            "ID_NUMBER": lambda: f.bothify("??#######").upper(),
            "ADDRESS": lambda: f.address().replace("\n", ", "),
            "BANK_ACCOUNT": lambda: f.bothify("##########"),
        }
        for _ in range(20):  # a fake value must never contain a real one, or the leak check would fire
            candidate = makers[kind]()
            if self._guard is None or not self._guard.search(candidate):
                return candidate
        return f"<{kind}_{self.counters[kind]}>"

    def get(self, value: str, kind: str, detector: str) -> Replacement:
        """Register a detected value; its pseudonym is chosen in `assign`, once every real value is known."""
        key = _normalized(value)
        existing = self.by_value.get(key)
        if existing is not None:
            return existing
        self.originals[key] = value
        replacement = Replacement(kind, "", detector)
        self.by_value[key] = replacement
        return replacement

    def assign(self) -> None:
        """Give every new value its pseudonym (after detection, so no fake value can contain a real one)."""
        self._guard = self.pattern()
        # Full names first: their parts then take the same person's pseudonym when they appear alone.
        entries = sorted(self.by_value.items(), key=lambda kv: not (kv[1].type == "PERSON" and " " in kv[0]))
        for key, replacement in entries:
            if replacement.pseudonym:
                continue
            kind = replacement.type
            self.counters[kind] += 1
            value = self.originals[key]
            replacement.pseudonym = f"<{kind}_{self.counters[kind]}>" if self.replace_with == "placeholder" else self._fake(kind, value)
            if kind == "PERSON":
                self._register_name_parts(value, replacement.pseudonym)

    def _register_name_parts(self, value: str, pseudonym: str) -> None:
        """'Marie Hamanová' → also 'Hamanová' alone, so a later bare surname gets the same person's pseudonym."""
        parts = value.split()
        fake_parts = pseudonym.split() if self.replace_with == "fake" else []
        if len(parts) < 2:
            return
        for i, part in enumerate(parts):
            key = _normalized(part)
            if len(part) < 3 or not part[0].isupper() or self.by_value.get(key, Replacement("", "", "")).pseudonym:
                continue
            stand_in = fake_parts[min(i, len(fake_parts) - 1)] if fake_parts else pseudonym
            self.originals[key] = part
            self.by_value[key] = Replacement("PERSON", stand_in, "name part")

    def load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = data["entities"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise TunesmithError(f"{path}: not a tunesmith PII mapping file ({e}); pass another --mapping path") from None
        if data.get("replace_with") != self.replace_with:
            raise TunesmithError(f"{path}: was made with replace_with={data.get('replace_with')}; use the same setting or a new mapping file")
        for entry in entries:
            key = _normalized(entry["value"])
            self.originals[key] = entry["value"]
            self.by_value[key] = Replacement(entry["type"], entry["pseudonym"], entry.get("detector", "mapping"))
            if entry["pseudonym"].startswith("<") and entry["pseudonym"].endswith(">"):
                number = entry["pseudonym"].rsplit("_", 1)[-1].rstrip(">")
                if number.isdigit():
                    self.counters[entry["type"]] = max(self.counters[entry["type"]], int(number))

    def save(self, path: Path) -> None:
        entries = [
            {"type": r.type, "value": self.originals[key], "pseudonym": r.pseudonym, "detector": r.detector, "replaced": r.count}
            for key, r in sorted(self.by_value.items(), key=lambda kv: (kv[1].type, kv[1].pseudonym))
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "warning": "PRIVATE: maps pseudonyms back to real personal data. Keep it out of any training set and repository.",
            "replace_with": self.replace_with,
            "entities": entries,
        }
        path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    def pattern(self) -> re.Pattern[str] | None:
        """One regex for every known value; word boundaries only where the value starts/ends with a word character."""
        alternatives = []
        for value in sorted(self.originals.values(), key=len, reverse=True):
            escaped = r"\s+".join(re.escape(part) for part in value.split())
            before = r"(?<!\w)" if value[:1].isalnum() or value[:1] == "_" else ""
            after = r"(?!\w)" if value[-1:].isalnum() or value[-1:] == "_" else ""
            alternatives.append(before + escaped + after)
        return re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None


def _walk_strings(node: Any, path: str, skip: set[str]):
    """(path, string) for every string in a row, except fields listed in `skip`."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            if key not in skip:
                yield from _walk_strings(value, f"{path}.{key}" if path else key, skip)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_strings(value, f"{path}[{i}]", skip)


def _rewrite(node: Any, replace, skip: set[str]) -> Any:
    if isinstance(node, str):
        return replace(node)
    if isinstance(node, dict):
        return {k: (v if k in skip else _rewrite(v, replace, skip)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, replace, skip) for v in node]
    return node


@dataclass
class AnonymizeResult:
    rows: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    pseudonyms: Pseudonyms
    found: Counter[str] = field(default_factory=Counter)  # distinct values per type
    replaced: Counter[str] = field(default_factory=Counter)  # occurrences replaced per type
    leaks: list[str] = field(default_factory=list)


def anonymize_rows(
    rows: list[tuple[SourceRef, dict[str, Any]]],
    config: AnonymizeConfig,
    detector: PiiDetector | None = None,
    pseudonyms: Pseudonyms | None = None,
    progress: Progress | None = None,
) -> AnonymizeResult:
    progress = progress or Progress()
    detector = detector or PiiDetector(config)
    pseudonyms = pseudonyms or Pseudonyms(config.replace_with, config.seed)
    skip = set(config.skip_fields)
    known_before = set(pseudonyms.by_value)

    progress.phase("anonymize: detecting", len(rows))
    scanned: set[str] = set()  # augmented rows repeat their answers: each distinct string is scanned once
    for _, row in rows:
        for _, text in _walk_strings(row, "", skip):
            if text in scanned:
                continue
            scanned.add(text)
            for span in detector.find(text):
                pseudonyms.get(text[span.start : span.end], span.type, span.detector)
        progress.advance()
    pseudonyms.assign()
    found = Counter(r.type for key, r in pseudonyms.by_value.items() if key not in known_before and r.detector != "name part")

    pattern = pseudonyms.pattern()
    audit: list[dict[str, Any]] = []
    replaced: Counter[str] = Counter()
    out_rows: list[dict[str, Any]] = []
    progress.phase("anonymize: replacing", len(rows))
    for where, row in rows:
        if pattern is None:
            out_rows.append(row)
            continue

        def replace(text: str) -> str:
            def substitute(match: re.Match[str]) -> str:
                replacement = pseudonyms.by_value[_normalized(match.group())]
                replacement.count += 1
                replaced[replacement.type] += 1
                audit.append(
                    {
                        "row": str(where),
                        "type": replacement.type,
                        "detector": replacement.detector,
                        "value_sha256": sha256_of_text(_normalized(match.group()))[:16],
                        "pseudonym": replacement.pseudonym,
                    }
                )
                return replacement.pseudonym

            return pattern.sub(substitute, text)

        out_rows.append(_rewrite(row, replace, skip))
        progress.advance()

    leaks = find_leaks(out_rows, pseudonyms, skip)
    return AnonymizeResult(out_rows, audit, pseudonyms, found, replaced, leaks)


def find_leaks(rows: list[dict[str, Any]], pseudonyms: Pseudonyms, skip: set[str]) -> list[str]:
    """Detected values still present in the output (should always be none; checked, not assumed)."""
    pattern = pseudonyms.pattern()
    if pattern is None:
        return []
    leaks = []
    for number, row in enumerate(rows):
        for path, text in _walk_strings(row, "", skip):
            for match in pattern.finditer(text):
                leaks.append(f"row {number} {path}: a detected {pseudonyms.by_value[_normalized(match.group())].type} value survived")
    return leaks


def anonymize_command(
    input: InputOpt, out: OutOpt, config: ConfigArg = None, overrides: SetOpt = None,
    mapping: Annotated[Optional[Path], typer.Option(help="PRIVATE value→pseudonym file (default: <out>.mapping.private.json); reused if it exists")] = None,
    audit: Annotated[Optional[Path], typer.Option(help="Audit log (default: <out>.audit.jsonl); holds hashes, never values")] = None,
    replace_with: Annotated[Optional[str], typer.Option(help="placeholder (<PERSON_1>) or fake: type-preserving made-up values (anonymize.replace_with)")] = None,
    ner: Annotated[Optional[bool], typer.Option("--ner/--no-ner", help="Use the NER model besides the rules (anonymize.ner)")] = None,
    force: ForceOpt = False,
) -> None:
    """Replace personal data consistently; the mapping goes to a separate private file."""
    from tunesmith.data.prep.config import step_settings

    cfg = step_settings("anonymize", config, overrides, {"anonymize.replace_with": replace_with, "anonymize.ner": ner})
    settings = cfg.model_dump(mode="json")
    mapping = mapping or out.with_name(out.stem + ".mapping.private.json")
    audit = audit or out.with_name(out.stem + ".audit.jsonl")
    if mapping.resolve() in (out.resolve(), audit.resolve(), input.resolve()):
        raise TunesmithError("--mapping must be a file of its own, apart from the data (it holds the real values)")
    if skip_if_up_to_date(out, "anonymize", settings, [input], force):
        return
    rows = read_jsonl(input)
    pseudonyms = Pseudonyms(cfg.replace_with, cfg.seed)
    if mapping.is_file():
        pseudonyms.load(mapping)
    with rich_progress() as progress:
        result = anonymize_rows(rows, cfg, pseudonyms=pseudonyms, progress=progress)
    if result.leaks:
        raise TunesmithError("detected PII survived anonymization (nothing written):\n  " + "\n  ".join(result.leaks[:20]))
    atomic_write_jsonl(out, result.rows)
    atomic_write_jsonl(audit, result.audit)
    pseudonyms.save(mapping)
    counts = {"rows": len(rows), "found": dict(result.found), "replaced": dict(result.replaced), "leaks": 0}
    # The mapping is deliberately not listed among the outputs: the manifest travels with the data.
    write_manifest(out, "anonymize", settings, [input], [out, audit], counts)
    console.print(f"{out}: {sum(result.replaced.values())} replacements of {sum(result.found.values())} new PII values; "
                  f"mapping (keep private) in {mapping}, audit log in {audit}")
