"""`tunesmith data anonymize`: find personal data in every text field and replace it consistently.

Two passes. The first detects PII in all rows (validated rules + the NER model) and gives every distinct
value one pseudonym. The second replaces *every occurrence* of every detected value in every row —
also where the detector missed it in that row — so no detected value survives anywhere in the output.
A final scan verifies that. The value → pseudonym mapping goes to its own file, kept out of the
training data; the audit log records what was replaced where, with a hash instead of the value.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional

import typer
from pydantic import Field

from tunesmith.cli import ConfigArg, ForceOpt, InputOpt, OutOpt, SetOpt, console
from tunesmith.config import Strict
from tunesmith.data.prep.artifacts import sha256_of_text, skip_if_up_to_date, write_manifest
from tunesmith.data.prep.pii_rules import ENTITY_TYPES, Span, find_rule_spans, is_card_number
from tunesmith.data.prep.progress import Progress, rich_progress
from tunesmith.files import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from tunesmith.records import DataError, SourceRef, TunesmithError

# When model spans overlap, the earlier type in this list wins (rule spans beat model spans first).
PRIORITY = ("EMAIL", "URL", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "ID_NUMBER", "DATE", "PHONE", "BANK_ACCOUNT", "PERSON", "ADDRESS")
ID_FIELDS = ("doc_id", "chunk_id", "source", "format", "role", "task", "teacher", "augmented", "reason")


class AnonymizeConfig(Strict):
    replace_with: Literal["placeholder", "fake"] = Field(
        "placeholder", description="placeholder: <PERSON_1>; fake: a made-up value of the same type (Faker)"
    )
    entity_types: list[str] = Field(list(ENTITY_TYPES), description="Types to replace; others are left as they are")
    ner: bool = Field(True, description="Use NER models (names, addresses) besides the rules")
    ner_models: list[Literal["rampart", "tagger", "spacy"]] = Field(
        ["rampart", "tagger", "spacy"], min_length=1,
        description="Which models run when ner is on: rampart (the Rampart ONNX tagger), tagger (tunesmith's own, trained on "
        "pii_synth data), spacy (en_core_web_sm's PERSON entities: names in real prose); all three by default: together "
        "they let the fewest identifiers through, at some precision on real text (docs/benchmarks.md)",
    )
    ner_threshold: float = Field(0.5, ge=0, le=1, description="Rampart: minimum label probability")
    tagger_path: str | list[str] | None = Field(
        None, description="A PII tagger run folder (`tunesmith train configs/pii-tagger.yaml`), or several: each runs as "
        "the detector's tagger on its own and what any of them keeps is replaced (two training runs miss different "
        "names); default: the ones shipped with tunesmith (two runs, `make pii-tagger`)")
    tagger_threshold: float | None = Field(None, ge=0, le=1, description="Tagger: minimum P(entity) per token; default 0.5")
    tagger_veto: float = Field(
        0.0, ge=0, le=1,
        description="When the tagger runs beside Rampart or spaCy: a name they find is dropped when the tagger gives each of "
        "its tokens P(PERSON) below this (the tagger was trained on real sentences whose bands, places and products "
        "are not people); 0: never",
    )
    tagger_judge: float = Field(
        0.99, ge=0, le=1,
        description="When the tagger was trained on organisations and places too (pii_tagger_data --other-entities): a "
        "name Rampart or spaCy finds is dropped when the tagger reads a word of it as an organisation, place or other "
        "named thing with at least this probability and none of it as a person (P(PERSON) < 0.5); 0: never. Lower "
        "values buy precision on real text at the cost of some names; 0.99 lost none on validation (docs/benchmarks.md)",
    )
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
    """The key of a value: case and spacing folded. Python's case-insensitive regex also treats the Turkish ı and İ
    as i (casefold does not), so they are folded here too: every match of the pattern finds its own key."""
    return " ".join(value.casefold().replace("i\u0307", "i").replace("ı", "i").split())


def merge_spans(spans: list[Span], text: str | None = None) -> list[Span]:
    """Non-overlapping spans. On overlap a validated (rule) span beats a model's, then the higher-priority type
    wins, then the longer span. A loser of another type keeps its parts outside the winner (with `text`: only
    parts holding a letter or digit, trimmed of spaces and commas), so merging never uncovers a word: a model's
    partial EMAIL cannot cut a validated URL short, a phone number inside an address takes only its own digits.
    Model spans of one type that overlap are first joined; a model span overlapping a validated span of its own
    type is the same entity drawn wider, and is dropped."""
    rank = {t: i for i, t in enumerate(PRIORITY)}
    ordered = sorted(_union_model_spans(spans), key=lambda s: (not s.detector.startswith("rule"), rank.get(s.type, len(rank)), -(s.end - s.start)))
    kept: list[Span] = []
    for span in ordered:
        winners = [k for k in kept if k.start < span.end and span.start < k.end]
        if any(k.type == span.type for k in winners):
            continue  # the same entity with a wider boundary: the validated or longer one stands
        pieces = [(span.start, span.end)]
        for k in winners:
            pieces = [p for a, b in pieces for p in ((a, min(b, k.start)), (max(a, k.end), b)) if p[0] < p[1]]
        for a, b in pieces:
            if text is not None:
                while a < b and (text[a].isspace() or text[a] in ",;"):
                    a += 1
                while b > a and (text[b - 1].isspace() or text[b - 1] in ",;"):
                    b -= 1
                if not any(c.isalnum() for c in text[a:b]):
                    continue
            kept.append(Span(a, b, span.type, span.detector))
    return sorted(kept, key=lambda s: s.start)


def _union_model_spans(spans: list[Span]) -> list[Span]:
    """Overlapping model spans of one type are one entity seen by two models: their union (Rampart's street and
    the tagger's street-and-city make one address)."""
    rules = [s for s in spans if s.detector.startswith("rule")]
    merged: list[Span] = []
    for span in sorted((s for s in spans if not s.detector.startswith("rule")), key=lambda s: (s.type, s.start)):
        last = merged[-1] if merged else None
        if last is not None and last.type == span.type and span.start < last.end:
            detector = last.detector if last.detector == span.detector else "+".join(sorted({*last.detector.split("+"), span.detector}))
            merged[-1] = Span(last.start, max(last.end, span.end), span.type, detector)
        else:
            merged.append(span)
    return rules + merged


class PiiDetector:
    def __init__(self, config: AnonymizeConfig):
        self.config = config
        unknown = sorted(set(config.entity_types) - set(ENTITY_TYPES))
        if unknown:
            raise TunesmithError(f"anonymize.entity_types: unknown {unknown}; known types: {', '.join(ENTITY_TYPES)}")
        self.models = []  # each has find_spans(text) -> list[Span]
        self.taggers = []  # tunesmith's own, one or more training runs: each also judges the other models' names
        if config.ner:
            for name in dict.fromkeys(config.ner_models):
                if name == "rampart":
                    from tunesmith.data.prep.pii_ner import RampartNer

                    self.models.append(RampartNer(threshold=config.ner_threshold))
                elif name == "spacy":
                    from tunesmith.data.prep.pii_ner import SpacyNer

                    self.models.append(SpacyNer())
                else:
                    from tunesmith.data.prep.pii_tagger import SHIPPED_RUNS, PiiTagger

                    paths = [config.tagger_path] if isinstance(config.tagger_path, str) else config.tagger_path or SHIPPED_RUNS
                    self.taggers = [PiiTagger(path, config.tagger_threshold) for path in paths]
                    self.models.append(self.taggers[0])  # in its place; find() puts each run there in turn

    def find(self, text: str) -> list[Span]:
        rules = find_rule_spans(text, self.config.phone_region)
        judges = [m for m in self.models if hasattr(m, "type_probability")]
        found = {id(m): [_card_or_id(text, s) for s in m.find_spans(text)] for m in self.models if m not in judges}
        # Several tagger runs: each sees the text as the only tagger would (its own spans, its own judgement of the
        # other models' names), and what any of them keeps is replaced; merging never uncovers a word (merge_spans).
        kept = []
        for run in (self.taggers if len(self.taggers) > 1 else judges[:1]) or [None]:
            spans = list(rules)
            for model in self.models:
                spans += [_card_or_id(text, s) for s in run.find_spans(text)] if model in judges else found[id(model)]
            kept.append(self._kept(text, spans, run))
        return kept[0] if len(kept) == 1 else merge_spans([s for spans in kept for s in spans], text)

    def _kept(self, text: str, spans: list[Span], judge) -> list[Span]:
        """The detections of one tagger run (`judge`, or None) and the other detectors, filtered and merged."""
        if self.config.tagger_veto and judge is not None:
            spans = [s for s in spans if not (s.detector in ("ner", "spacy") and s.type == "PERSON"
                                              and judge.type_probability(text, s) < self.config.tagger_veto)]
        if self.config.tagger_judge and judge is not None:
            spans = [s for s in spans if not (s.detector in ("ner", "spacy") and s.type == "PERSON"
                                              and _another_entity(judge, text, s, self.config.tagger_judge))]
        wanted = set(self.config.entity_types)
        allowed = {_normalized(term) for term in self.config.allow}
        kept = []
        for span in spans:
            value = text[span.start : span.end]
            if span.type not in wanted or not value.strip() or _normalized(value) in allowed:
                continue
            kept.append(span)
        kept = [s for s in kept if s.detector.startswith("rule") or not _false_alarm(text, s, kept)]
        kept = [s for s in kept if not _lone_number_address(text, s, kept) and not _lone_country(text, s, kept)
                and not _unsupported_guess(text, s, kept)]
        # merging can leave a model span's remainder ("DOB" of "DOB 10/08/2006" once the date rule took the date)
        merged = merge_spans(kept, text)
        return [s for s in merged if s.detector.startswith("rule") or not _false_alarm(text, s, merged)]


def _false_alarm(text: str, span: Span, spans: list[Span]) -> bool:
    """`_model_false_alarm`, except that a short all-caps word beside another part of an address is the address's
    state or region code ("Carvalho do Oeste / DF / 32953424" on the lines of one address), not an acronym."""
    value = text[span.start : span.end]
    if not _model_false_alarm(value, span.type, span.detector):
        return False
    if span.type != "ADDRESS" or not _short_caps(value):
        return True
    parts = [o for o in spans if o.detector.startswith("rule") or not _model_false_alarm(text[o.start : o.end], o.type, o.detector)]
    return not _beside_another_address_part(text, span, parts)


def _short_caps(value: str) -> bool:
    word = value.strip()
    return " " not in word and word.isupper() and sum(c.isalnum() for c in word) <= 3


def _another_entity(judge, text: str, span: Span, threshold: float) -> bool:
    """The tagger reads `span` as an organisation, place or other named thing (P ≥ threshold for a word of it), and
    no word of it as a person. Never with a tagger that knows only PII types."""
    other = judge.other_entity_probability(text, span)
    return other is not None and other >= threshold and judge.type_probability(text, span) < 0.5


def _card_or_id(text: str, span: Span) -> Span:
    """A model's CREDIT_CARD that is no card number (letters, too few digits, Luhn fails) is some other ID: a
    driver's licence "O5222338", a national number. Still replaced, under the type it is."""
    if span.type != "CREDIT_CARD" or span.detector.startswith("rule"):
        return span
    value = text[span.start : span.end]
    if set(value) <= set("0123456789 -") and is_card_number(re.sub(r"\D", "", value)):
        return span
    return Span(span.start, span.end, "ID_NUMBER", span.detector)


LONE_NUMBER_REACH = 40  # characters: a house number this close to another part of an address belongs to it


def _lone_number_address(text: str, span: Span, spans: list[Span]) -> bool:
    """A model's ADDRESS that is only a number ("error 429", "leaves at 6", "moved to Roswell in 1955") and stands
    apart from every other address part: a house number alone identifies no one. It stays beside a capitalised word
    or a street word the models did not tag ("1233 St.", "62 street", "Belgium 6500"), after a unit word ("Apt 6"),
    and where another address part lies within reach with nothing but spaces, punctuation and line breaks between
    them ("Kapelaniestraat, 88", a postcode on the next line). Words between them ("Roswell in 1955", "Springfield
    leaves at 6") part them: chosen on validation data, where that dropped 8 false addresses and no identifier."""
    if span.type != "ADDRESS" or span.detector.startswith("rule") or not text[span.start : span.end].strip().isdigit():
        return False
    following = _FOLLOWING_WORD.match(text, span.end)
    if following and (following.group(1)[0].isupper() or following.group(1).casefold() in _STREET_WORDS):
        return False
    preceding = _PRECEDING_WORD.search(text, 0, span.start)
    if preceding and (preceding.group(1)[0].isupper() or preceding.group(1).casefold() in _UNIT_WORDS):
        return False
    return not _beside_another_address_part(text, span, spans)


def _beside_another_address_part(text: str, span: Span, spans: list[Span]) -> bool:
    """Another ADDRESS span overlaps `span`, or lies within LONE_NUMBER_REACH with only spaces, punctuation and line
    breaks between them: the lines and commas of one address."""
    def joined(o: Span) -> bool:
        gap = text[span.end : o.start] if o.start >= span.end else text[o.end : span.start]
        return (o.start < span.end and span.start < o.end) or (len(gap) <= LONE_NUMBER_REACH and not _WORD_CHAR.search(gap))

    return any(o is not span and o.type == "ADDRESS" and joined(o) for o in spans)


def _lone_country(text: str, span: Span, spans: list[Span]) -> bool:
    """A model's ADDRESS that is only the name of a country ("We moved here from Sweden", "an Botswana bank"), apart
    from any other address part: a country identifies no one (HIPAA's Safe Harbor keeps geography down to the
    state). As the last line of an address it stays. Names in every language Faker knows; city-states are kept."""
    return (span.type == "ADDRESS" and not span.detector.startswith("rule")
            and text[span.start : span.end].strip().casefold() in _country_names()
            and not _beside_another_address_part(text, span, spans))


@functools.cache
def _country_names() -> frozenset[str]:
    """Country names (casefolded) from the address providers of every Faker locale: about 5,900 names in 60-odd
    languages. No well-kept package on our dependency list has them otherwise (Babel and pycountry are not)."""
    import importlib
    import pkgutil

    import faker.providers.address as providers

    names: set[str] = set()
    for module in pkgutil.iter_modules(providers.__path__):
        countries = getattr(importlib.import_module(f"{providers.__name__}.{module.name}").Provider, "countries", ())
        names.update(c.casefold() for c in countries if isinstance(c, str))
    return frozenset(names - _CITY_STATES)


# Countries that are also the name of their city (a city alone is an address part here, "home city Unnao")
_CITY_STATES = frozenset(["singapore", "monaco", "luxembourg", "djibouti", "kuwait", "guatemala", "panama", "san marino",
                          "vatican city", "hong kong", "macao", "macau", "gibraltar", "andorra"])


def _unsupported_guess(text: str, span: Span, spans: list[Span]) -> bool:
    """A name from Rampart or spaCy that tunesmith's tagger does not share, and that is or precedes the word for a
    place or an organisation ("Cal Anderson Park", "Hancock Brook", "Gentle Giant Orchestra"): on held-out real and
    synthetic validation text 1 of 19 such guesses touched a labelled identifier, and none was left whole for it."""
    if span.detector not in ("ner", "spacy") or span.type != "PERSON":
        return False
    if any(o.detector == "tagger" and o.type == span.type and o.start < span.end and span.start < o.end for o in spans):
        return False  # the tagger, trained on real sentences too, agrees
    following = _NEXT_WORD.match(text, span.end)
    words = text[span.start : span.end].split()[-1:] + ([following.group(1)] if following else [])
    return any(word.casefold() in _PLACE_OR_ORG for word in words)


_NEXT_WORD = re.compile(r"[ \t]+([A-Z]\w+)")
_FOLLOWING_WORD = re.compile(r"[ \t]+(\w+)")
_PRECEDING_WORD = re.compile(r"(\w+)\.?[ \t]*$")
_WORD_CHAR = re.compile(r"\w")
_UNIT_WORDS = frozenset("apt apartment flat suite unit no nr room floor box appartamento wohnung".split())
_STREET_WORDS = frozenset("street st avenue ave road rd lane ln boulevard blvd drive dr way place pl court ct square sq "
                          "terrace highway hwy".split())
# Words that end the name of a place or an organisation (English): a span ending in one, or followed by one, names no person.
_PLACE_OR_ORG = frozenset("""park railway railroad brook pond creek river lake dock school college university gym mall
market formation playfield orchestra band records recordings works trophy cathedral church station field hall hotel
museum club stadium airport hospital company corporation group foundation institute society league cup award prize
festival theatre theater center centre island islands mountain mountains valley county district province bay""".split())


def _model_false_alarm(value: str, kind: str, detector: str) -> bool:
    """Shapes a model tags that are never an identifier on their own."""
    word = value.strip()
    alnum = [c for c in word if c.isalnum()]
    if len(alnum) <= 1 and not word.isdigit():
        return True  # a lone letter: the C of "C'mon", the Y of "Y'all", a list bullet
    if kind == "ADDRESS" and _short_caps(word):
        return True  # a short all-caps word: OK, IT, QA (beside its city or ZIP a state code stays: `_false_alarm`)
    if kind == "DATE" and not any(c.isalpha() for c in word) and sum(c.isdigit() for c in word) <= 2:
        return True  # a bare small number: the hour of "[10:42]" (a lone house number can be an address part)
    if kind == "DATE" and _CLOCK.fullmatch(word.strip("[]()")):
        return True  # a time of day, "[10:42]", "5:15 PM": no date of anyone's life
    if kind == "IP_ADDRESS" and word.count(".") < 3 and word.count(":") < 2:
        return True  # no IPv4 (three dots) or IPv6 (two colons at least) shape: "[10:43]" is a time, "42" a number
    if kind == "PHONE" and sum(c.isdigit() for c in word) < 7:
        return True  # no phone number has fewer than 7 digits: "[10:43]" is a time
    if kind == "PERSON" and detector == "ner" and " " not in word and word.isupper() and len(alnum) <= 5:
        return True  # Rampart tags acronyms (JSON, HTTPS) as names; tunesmith's tagger was trained on both
    if kind == "PERSON" and " " not in word and word.isascii() and word.islower() and not _VOWEL.search(word):
        return True  # chat shorthand: "thx", "tmrw", "pls" (a name written in lower case still has a vowel)
    if kind in ("PERSON", "ADDRESS") and word in _stop_words():
        return True  # "me" of "Remember me, Ilse?", "is" of "The address of X is ..." (lower case: "Will" stays)
    if kind in ("PERSON", "ADDRESS") and word.casefold() in _FIELD_LABELS:
        return True  # a form's label, "Email:", "Tel:", read as a name
    if kind == "PERSON" and " " not in word and any(c.isdigit() for c in word):
        return True  # one word with a digit is no name: a radio station ("6PR"), a model number, a handle's tail
    return kind == "PERSON" and not any(c.isalpha() for c in word)


_VOWEL = re.compile(r"[aeiouy]")  # ASCII words only: other scripts and accented vowels are not judged


@functools.cache
def _stop_words() -> frozenset[str]:
    """spaCy's English stop words (lower case: pronouns, determiners, auxiliaries), imported when first needed:
    importing spaCy takes seconds."""
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


_CLOCK = re.compile(r"\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp]\.?[Mm]\.?)?")
# The labels of forms and signatures, never a name or an address on their own.
_FIELD_LABELS = frozenset("name email e-mail mail tel phone mobile cell fax address addr street city country zip postcode "
                          "dob ssn iban".split())


class Pseudonyms:
    """One pseudonym per (normalized) value, reused everywhere and across runs via the mapping file."""

    def __init__(self, replace_with: str, seed: int = 0):
        self.replace_with = replace_with
        self.by_value: dict[str, Replacement] = {}
        self.originals: dict[str, str] = {}  # normalized → value as first seen
        self.forms: dict[str, set[str]] = {}  # normalized → every way it was written where it was detected
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
        self.forms.setdefault(key, set()).add(value)
        existing = self.by_value.get(key)
        if existing is not None:
            return existing
        self.originals[key] = value
        replacement = Replacement(kind, "", detector)
        self.by_value[key] = replacement
        return replacement

    def of(self, value: str) -> Replacement:
        """The replacement of a registered value, however it is spaced or capitalised."""
        return self.by_value[_normalized(value)]

    def assign(self) -> None:
        """Give every new value its pseudonym (after detection, so no fake value can contain a real one)."""
        # the guard also knows the parts of full names, which become values of their own below
        parts = [part for key, r in self.by_value.items() if r.type == "PERSON" and " " in key for part in _name_parts(self.originals[key])]
        self._guard = self.pattern(parts)
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
        parts, names = value.split(), _name_parts(value)
        fake_parts = pseudonym.split() if self.replace_with == "fake" else []
        if len(parts) < 2:
            return
        for i, part in enumerate(parts):
            key = _normalized(part)
            if part not in names or self.by_value.get(key, Replacement("", "", "")).pseudonym:
                continue
            stand_in = fake_parts[min(i, len(fake_parts) - 1)] if fake_parts else pseudonym
            self.originals[key] = part
            self.by_value[key] = Replacement("PERSON", stand_in, "name part")

    def load(self, path: Path) -> None:
        try:
            data = read_json(path)
            if not isinstance(data, dict) or not isinstance(data.get("entities"), list):
                raise ValueError("no list of entities")
            entries = [(str(e["value"]), str(e["type"]), str(e["pseudonym"]), str(e.get("detector", "mapping")),
                        [str(f) for f in e.get("forms", [])]) for e in data["entities"]]
        except (DataError, ValueError, KeyError, TypeError) as e:
            detail = e.issues[0] if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
            raise TunesmithError(
                f"{path} is damaged or not a tunesmith PII mapping ({detail}). It holds the pseudonym of every value "
                "replaced so far, which cannot be reused without it: restore it from a backup, or pass another "
                "--mapping (or move this one away) to start a new mapping, knowing that outputs made with the old "
                "one will not match the new pseudonyms.") from None
        if data.get("replace_with") != self.replace_with:
            raise TunesmithError(f"{path}: was made with replace_with={data.get('replace_with')}; use the same setting or a new mapping file")
        for value, kind, pseudonym, detector, forms in entries:
            key = _normalized(value)
            self.originals[key] = value
            self.by_value[key] = Replacement(kind, pseudonym, detector)
            if forms:
                self.forms.setdefault(key, set()).update(forms)
            if pseudonym.startswith("<") and pseudonym.endswith(">"):
                number = pseudonym.rsplit("_", 1)[-1].rstrip(">")
                if number.isdigit():
                    self.counters[kind] = max(self.counters[kind], int(number))

    def save(self, path: Path) -> None:
        """Atomically and 0600 from creation. The content depends only on the entries (no per-run counts), so
        re-running a step that reuses the mapping leaves it byte for byte as it was."""
        entries = [
            {"type": r.type, "value": self.originals[key], "pseudonym": r.pseudonym, "detector": r.detector}
            | ({"forms": forms} if (forms := sorted(self.forms.get(key, set()) - {self.originals[key]})) else {})
            for key, r in sorted(self.by_value.items(), key=lambda kv: (kv[1].type, kv[1].pseudonym, kv[0]))
        ]
        payload = {
            "warning": "PRIVATE: maps pseudonyms back to real personal data. Keep it out of any training set and repository.",
            "replace_with": self.replace_with,
            "entities": entries,
        }
        atomic_write_json(path, payload, private=True, indent=1)

    def pattern(self, extra: list[str] = ()) -> re.Pattern[str] | None:
        """One regex for every known value that is replaced everywhere (see `propagates`); word boundaries only
        where the value starts/ends with a word character. Values of several words or with digits match in any
        case; a single word matches as it was written (in each way it was written where it was detected), so a
        name that is also a word ("Will", "Rose", "Reed") takes the ordinary word with it only where it is
        capitalised the same way. A single word detected in lower case ("will", "mark", "june") is replaced only
        where it was detected: everywhere, it would take the ordinary word with it in every row."""
        alternatives: dict[str, None] = {}  # ordered, without repeats
        seen: set[str] = set()
        written = {*self.originals.values(), *(form for forms in self.forms.values() for form in forms), *extra}
        for value in sorted(written, key=len, reverse=True):
            if not propagates(value):
                continue
            escaped = r"\s+".join(re.escape(part) for part in value.split())
            before = r"(?<!\w)" if value[:1].isalnum() or value[:1] == "_" else ""
            after = r"(?!\w)" if value[-1:].isalnum() or value[-1:] == "_" else ""
            single_word = " " not in value.strip() and not any(c.isdigit() for c in value) and "@" not in value
            if not single_word:  # matched in any case and spacing: one spelling of each value is enough
                if _normalized(value) in seen:
                    continue
                seen.add(_normalized(value))
            alternatives[before + (escaped if single_word else f"(?i:{escaped})") + after] = None
        return re.compile("|".join(alternatives)) if alternatives else None


_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")  # one word of letters ("will", "o'neil", "anne-marie")


def _name_parts(value: str) -> list[str]:
    """The parts of a full name that stand for the person alone ('Marie Hamanová' → Marie, Hamanová). A stop word
    is none ("The" of a band taken for a person, "Will" of "Will Smith"): alone it would take every "The" and
    every "Will you ...?" of the dataset with it. Nor is a form's label, a street word or a country, which a name
    span drawn too wide takes in ("Address Jan Nowak", "Czech Republic 739" read as a person), nor a word after
    the first line of a span that runs on past a line break ("Hassan\n\nSent from my phone")."""
    if len(value.split()) < 2:
        return []
    folded = value.casefold()
    countries = {word for name in _multiword_countries() if name in folded for word in name.split()}
    first_line = next(line for line in value.splitlines() if line.strip())
    return [part for part in first_line.split() if len(part) >= 3 and part[0].isupper()
            and not _never_a_name_part(part) and part.casefold() not in countries]


def _never_a_name_part(word: str) -> bool:
    key = word.casefold().rstrip(":,;.")
    return key in _stop_words() or key in _FIELD_LABELS or key in _STREET_WORDS or key in _country_names()


@functools.cache
def _multiword_countries() -> tuple[str, ...]:
    return tuple(sorted(name for name in _country_names() if " " in name))


def propagates(value: str) -> bool:
    """Whether a detected value is replaced everywhere, also where the detector missed it. Values with fewer
    than 3 letters or digits ("C", "OR", "IN", "LI": a building letter, a state code) are replaced only where
    they were detected: everywhere, they would take every "or" and "in" and the C of "C'mon" with them. So is a
    single word detected in lower case ("will", "mark", "str"): everywhere, it would take the ordinary word with it.
    So is the name of a country ("Denmark" read as a name, "Brazil" as the last line of an address): a country
    identifies no one, and "We moved here from Brazil" is no one's address."""
    return (sum(c.isalnum() for c in value) >= 3 and not (value.islower() and _WORD.fullmatch(value))
            and _normalized(value) not in _country_names())


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
    found: Counter[str] = field(default_factory=Counter)  # distinct values detected in the rows, per type
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
    detected: set[str] = set()  # normalized values found in these rows (the counts depend on the input alone)

    progress.phase("anonymize: detecting", len(rows))
    # Per distinct string (augmented rows repeat their answers: each is scanned once), the spans detected in it.
    # They are replaced where they were found whatever the propagation pattern matches there: a value that
    # `propagates` is also replaced everywhere else, one too short to (a state code, a building letter) only here.
    found_in: dict[str, list[Span]] = {}
    for _, row in rows:
        for _, text in _walk_strings(row, "", skip):
            if text in found_in:
                continue
            found_in[text] = detector.find(text)
            for span in found_in[text]:
                value = text[span.start : span.end]
                pseudonyms.get(value, span.type, span.detector)
                detected.add(_normalized(value))
        progress.advance()
    pseudonyms.assign()
    found = Counter(pseudonyms.by_value[key].type for key in detected)

    pattern = pseudonyms.pattern()
    audit: list[dict[str, Any]] = []
    replaced: Counter[str] = Counter()
    out_rows: list[dict[str, Any]] = []
    progress.phase("anonymize: replacing", len(rows))
    for where, row in rows:
        if pattern is None and not detected:
            out_rows.append(row)
            continue

        def substitute(value: str) -> str:
            replacement = pseudonyms.of(value)
            replacement.count += 1
            replaced[replacement.type] += 1
            audit.append(
                {
                    "row": str(where),
                    "type": replacement.type,
                    "detector": replacement.detector,
                    "value_sha256": sha256_of_text(_normalized(value))[:16],
                    "pseudonym": replacement.pseudonym,
                }
            )
            return replacement.pseudonym

        def replace(text: str) -> str:
            pieces, last = [], 0
            for a, b, value in edit_spans(text, pattern, found_in.get(text, ())):
                pieces += [text[last:a], substitute(value)]
                last = b
            return "".join(pieces) + text[last:]

        out_rows.append(_rewrite(row, replace, skip))
        progress.advance()

    leaks = find_leaks(out_rows, pseudonyms, skip, pattern)
    return AnonymizeResult(out_rows, audit, pseudonyms, found, replaced, leaks)


def edit_spans(text: str, pattern: re.Pattern[str] | None, detected: Iterable[Span] = ()) -> list[tuple[int, int, str]]:
    """Where `text` is rewritten, in order, without overlaps, as (start, end, known value): every match of the
    known-values pattern and every span detected in this very text. Overlapping ones become one edit over their
    union, named by its longest member: a known "Anna Berg" and an address "Berg Street 4" detected here replace
    "Anna Berg Street 4" as a whole, so no part of either is left."""
    candidates = [(m.start(), m.end()) for m in pattern.finditer(text)] if pattern is not None else []
    candidates += [(span.start, span.end) for span in detected]
    edits: list[list[int]] = []  # [start, end, start of the longest member, its end]
    for a, b in sorted(set(candidates)):
        if edits and a < edits[-1][1]:
            last = edits[-1]
            if b - a > last[3] - last[2]:
                last[2], last[3] = a, b
            last[1] = max(last[1], b)
        else:
            edits.append([a, b, a, b])
    return [(a, b, text[x:y]) for a, b, x, y in edits]


def find_leaks(rows: list[dict[str, Any]], pseudonyms: Pseudonyms, skip: set[str],
               pattern: re.Pattern[str] | None = None) -> list[str]:
    """Detected values still present in the output (should always be none; checked, not assumed)."""
    pattern = pattern or pseudonyms.pattern()
    if pattern is None:
        return []
    leaks = []
    for number, row in enumerate(rows):
        for path, text in _walk_strings(row, "", skip):
            for match in pattern.finditer(text):
                leaks.append(f"row {number} {path}: a detected {pseudonyms.of(match.group()).type} value survived")
    return leaks


def anonymize_command(
    input: InputOpt, out: OutOpt, config: ConfigArg = None, overrides: SetOpt = None,
    mapping: Annotated[Optional[Path], typer.Option(help="PRIVATE value→pseudonym file (default: <out>.mapping.private.json); reused if it exists")] = None,
    audit: Annotated[Optional[Path], typer.Option(help="Audit log (default: <out>.audit.jsonl); holds hashes, never values")] = None,
    replace_with: Annotated[Optional[str], typer.Option(help="placeholder (<PERSON_1>) or fake: type-preserving made-up values (anonymize.replace_with)")] = None,
    ner: Annotated[Optional[bool], typer.Option("--ner/--no-ner", help="Use the NER models (anonymize.ner_models) besides the rules (anonymize.ner)")] = None,
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
    if skip_if_up_to_date(out, "anonymize", settings, [input], force, private_outputs=[mapping]):
        return
    rows = read_jsonl(input)
    pseudonyms = Pseudonyms(cfg.replace_with, cfg.seed)
    if mapping.is_file():
        pseudonyms.load(mapping)
    with rich_progress() as progress:
        result = anonymize_rows(rows, cfg, pseudonyms=pseudonyms, progress=progress)
    if result.leaks:
        raise TunesmithError("detected PII survived anonymization (nothing written):\n  " + "\n  ".join(result.leaks[:20]))
    # The mapping lands first: a kill at any later moment leaves an output that its mapping explains (a re-run
    # reuses the mapping and writes the same output), never an output whose pseudonyms nobody can map back.
    pseudonyms.save(mapping)
    atomic_write_jsonl(out, result.rows)
    atomic_write_jsonl(audit, result.audit)
    counts = {"rows": len(rows), "found": dict(result.found), "replaced": dict(result.replaced), "leaks": 0}
    # The mapping is not among the outputs (the manifest travels with the data), but its hash is: an output whose
    # mapping is lost or damaged is never up to date.
    write_manifest(out, "anonymize", settings, [input], [out, audit], counts, private_outputs=[mapping])
    console.print(f"{out}: {sum(result.replaced.values())} replacements of {sum(result.found.values())} distinct PII values; "
                  f"mapping (keep private) in {mapping}, audit log in {audit}")
