"""Measure PII detection: labelled texts, their readers (templates, identities, CoNLL) and per-type scores.

The labelled sentences themselves are generated in pii_synth.py. Scores say, per entity type, how much
was found (precision, recall) and what would survive anonymization (identifiers left whole, identifiers
with a word left).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.prep.pii_rules import Span

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass
class LabelledText:
    text: str
    spans: list[Span]  # gold spans; detector field holds the placeholder name
    template: int


def read_templates(path: str | Path) -> list[str]:
    """One template a line; a literal `\\n` inside is a line break (Presidio's convention)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip().replace("\\n", "\n") for line in lines if line.strip()]


def read_identities(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def read_conll_persons(path: str | Path, others: bool = False) -> list[LabelledText]:
    """Sentences of a CoNLL file (token TAG per line, blank line between sentences), PER entities as PERSON.

    Real running text, unlike the templates: it shows how the NER handles names it was not fed in a pattern.
    With `others`, the other entities are kept too, typed by their tag (ORG, LOC, MISC): not PII, but material
    for augmentation (pii_synth.with_new_names swaps them for other mentions of their kind).
    """
    examples = []
    for number, block in enumerate(Path(path).read_text(encoding="utf-8").split("\n\n")):
        text, spans, current = "", [], None
        for line in block.strip().splitlines():
            token, _, tag = line.rpartition(" ")
            if token == "-DOCSTART-":
                continue
            if text:
                text += " "
            start = len(text)
            text += token
            kind = tag[2:] if tag[:2] in ("B-", "I-") else None
            if kind is not None and (kind == "PER" or others):
                kind = "PERSON" if kind == "PER" else kind
                if current is not None and current.type == kind and not tag.startswith("B-"):
                    current = Span(current.start, len(text), kind, tag[2:])
                    spans[-1] = current
                else:
                    current = Span(start, len(text), kind, tag[2:])
                    spans.append(current)
            else:
                current = None
        if text:
            examples.append(LabelledText(text, spans, number))
    return examples


def _overlaps(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


@dataclass
class TypeScore:
    true_positives: int = 0  # predictions that overlap a gold span of their type
    false_positives: int = 0
    gold: int = 0
    gold_found: int = 0  # gold spans overlapped by a prediction of their type
    left_whole: int = 0  # gold spans no prediction of any type touches: the identifier survives whole
    token_left: int = 0  # gold spans with at least one word not fully covered by predictions of any type

    @property
    def precision(self) -> float:
        predicted = self.true_positives + self.false_positives
        return self.true_positives / predicted if predicted else float("nan")

    @property
    def recall(self) -> float:
        return self.gold_found / self.gold if self.gold else float("nan")

    @property
    def left_whole_rate(self) -> float:
        return self.left_whole / self.gold if self.gold else float("nan")

    @property
    def token_left_rate(self) -> float:
        return self.token_left / self.gold if self.gold else float("nan")


WORD = re.compile(r"\w+")


def _leaks(text: str, gold: Span, predicted: list[Span]) -> tuple[bool, bool]:
    """(left whole, some word of it left) after replacing every predicted span, whatever its type."""
    covered = bytearray(len(text))
    for p in predicted:
        covered[p.start : p.end] = b"\x01" * (p.end - p.start)
    inside = covered[gold.start : gold.end]
    words = [(w.start(), w.end()) for w in WORD.finditer(text, gold.start, gold.end)] or [(gold.start, gold.end)]
    token_left = any(not all(covered[a:b]) for a, b in words)
    return not any(inside), token_left


def score(examples: list[LabelledText], predictions: list[list[Span]]) -> dict[str, TypeScore]:
    """Per entity type, overlap matching; key "ANY" ignores types (what matters for leaks: was it replaced?).

    Leaks (left whole, a word left) are counted per gold type against the predictions of every type: a name
    replaced as an ADDRESS is gone all the same.
    """
    scores: dict[str, TypeScore] = {}
    for example, predicted in zip(examples, predictions):
        leaks = {id(g): _leaks(example.text, g, predicted) for g in example.spans}
        for kind in {s.type for s in example.spans} | {s.type for s in predicted} | {"ANY"}:
            gold = [s for s in example.spans if kind in ("ANY", s.type)]
            pred = [s for s in predicted if kind in ("ANY", s.type)]
            entry = scores.setdefault(kind, TypeScore())
            entry.gold += len(gold)
            entry.gold_found += sum(any(_overlaps(g, p) for p in pred) for g in gold)
            entry.left_whole += sum(leaks[id(g)][0] for g in gold)
            entry.token_left += sum(leaks[id(g)][1] for g in gold)
            hits = sum(any(_overlaps(p, g) for g in gold) for p in pred)
            entry.true_positives += hits
            entry.false_positives += len(pred) - hits
    return scores
