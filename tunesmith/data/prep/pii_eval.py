"""Measure PII detection: a labelled set made from sentence templates + fake identities, and per-type scores.

Templates use Presidio-style placeholders (`{{person}}`, `{{iban}}`, ...). Each placeholder is filled from
a fake identity (CSV columns as in Fake Name Generator exports) or, where the CSV has no usable value
(card numbers, IBANs, IPs, SSNs), from Faker, and the span it fills is labelled with our entity type.
Placeholders that are not personal data here (country, organization, job, ...) are filled but unlabelled,
so detections on them count as false positives.
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.prep.pii_rules import Span

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass
class LabelledText:
    text: str
    spans: list[Span]  # gold spans; detector field holds the placeholder name
    template: int


def _filler(name: str, person: dict[str, str], faker, rng: random.Random) -> tuple[str, str | None]:
    """(value, entity type or None) for one placeholder."""
    full = f"{person['GivenName']} {person['Surname']}"
    street_number, _, street = person["StreetAddress"].partition(" ")
    table: dict[str, tuple[str, str | None]] = {
        "person": (full, "PERSON"), "name": (full, "PERSON"), "name_female": (full, "PERSON"), "name_male": (full, "PERSON"),
        "first_name": (person["GivenName"], "PERSON"), "first_name_male": (person["GivenName"], "PERSON"),
        "first_name_female": (person["GivenName"], "PERSON"), "first_name_nonbinary": (person["GivenName"], "PERSON"),
        "last_name": (person["Surname"], "PERSON"), "last_name_male": (person["Surname"], "PERSON"),
        "last_name_female": (person["Surname"], "PERSON"),
        "email": (person["EmailAddress"], "EMAIL"),
        "phone_number": (f"+{person['TelephoneCountryCode']} {person['TelephoneNumber']}" if rng.random() < 0.5 else faker.phone_number(), "PHONE"),
        "credit_card_number": (faker.credit_card_number(), "CREDIT_CARD"),
        "iban": (faker.iban(), "IBAN"),
        "ip_address": (faker.ipv4() if rng.random() < 0.7 else faker.ipv6(), "IP_ADDRESS"),
        "url": (f"https://www.{person['Domain'].lower()}/" if rng.random() < 0.5 else faker.url(), "URL"),
        "date_of_birth": (person["Birthday"], "DATE"),
        "date_time": (faker.date_time().strftime(rng.choice(["%B %d, %Y", "%Y-%m-%d", "%d.%m.%Y"])), "DATE"),
        "ssn": (faker.ssn(), "ID_NUMBER"),
        "us_driver_license": (faker.bothify("?#######").upper(), "ID_NUMBER"),
        "address": (f"{person['StreetAddress']}, {person['City']}, {person['State']} {person['ZipCode']}", "ADDRESS"),
        "street_name": (street or person["StreetAddress"], "ADDRESS"),
        "building_number": (street_number, "ADDRESS"),
        "secondary_address": (faker.secondary_address(), "ADDRESS"),
        "city": (person["City"], "ADDRESS"),
        "zipcode": (person["ZipCode"], "ADDRESS"), "postcode": (person["ZipCode"], "ADDRESS"),
        "state_abbr": (person["State"], "ADDRESS"),
        "prefix": ("Mr." if person["Gender"] == "male" else "Ms.", None),
        "prefix_male": ("Mr.", None), "prefix_female": ("Ms.", None),
        "country": (person["CountryFull"], None), "nationality": (faker.country(), None),
        "nation_woman": ("French woman", None), "nation_plural": ("Germans", None),
        "organization": (person["Company"], None), "job": (person["Occupation"], None),
        "age": (str(rng.randint(18, 90)), None), "year": (str(rng.randint(1950, 2024)), None),
        "day_of_week": (faker.day_of_week(), None),
    }
    return table.get(name, (faker.word(), None))


def make_labelled_set(templates: list[str], identities: list[dict[str, str]], n: int, seed: int = 0) -> list[LabelledText]:
    from faker import Faker

    faker = Faker("en_US")
    faker.seed_instance(seed)
    rng = random.Random(seed)
    usable = [i for i, t in enumerate(templates) if PLACEHOLDER.search(t)]
    examples = []
    for k in range(n):
        index = usable[k % len(usable)] if k < len(usable) else rng.choice(usable)
        template = templates[index]
        person = rng.choice(identities)
        text, spans, last = "", [], 0
        for match in PLACEHOLDER.finditer(template):
            text += template[last : match.start()]
            value, kind = _filler(match.group(1), person, faker, rng)
            if kind:
                spans.append(Span(len(text), len(text) + len(value), kind, match.group(1)))
            text += value
            last = match.end()
        text += template[last:]
        examples.append(LabelledText(text, spans, index))
    return examples


def read_templates(path: str | Path) -> list[str]:
    """One template a line; a literal `\\n` inside is a line break (Presidio's convention)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip().replace("\\n", "\n") for line in lines if line.strip()]


def read_identities(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def read_conll_persons(path: str | Path) -> list[LabelledText]:
    """Sentences of a CoNLL file (token TAG per line, blank line between sentences), PER entities as PERSON.

    Real running text, unlike the templates: it shows how the NER handles names it was not fed in a pattern.
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
            if tag.endswith("PER"):
                if current is not None and not tag.startswith("B-"):
                    current = Span(current.start, len(text), "PERSON", "PER")
                    spans[-1] = current
                else:
                    current = Span(start, len(text), "PERSON", "PER")
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


def gold_type_counts(examples: list[LabelledText]) -> Counter[str]:
    return Counter(s.type for e in examples for s in e.spans)
