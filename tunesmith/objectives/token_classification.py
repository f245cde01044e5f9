"""Token classification (named entities, PII): a text with labelled character spans → a BIO tag per token,
through a new per-token head (an encoder such as MiniLM, or a decoder). Validation reports entity-level
precision, recall and F1 (an entity counts when its tokens and type match exactly); `tunesmith predict`
returns character spans.

Rows hold `text` and `spans` ([{start, end, label}], character offsets, end exclusive; `type` is accepted for
`label`), or CoNLL-style `tokens` and `tags` (words and their BIO tags), by the column names configured.

`word_shapes: true` feeds each token its word's shape (lower, Capitalized, UPPER, digits, other; at a line start or
not) as its token type: the encoder's token-type embedding becomes a trained table of shapes. For lower-cased
vocabularies (MiniLM), where "Reed" and "reed" are the same token, capitalisation and line starts are among the
strongest name and address cues. The table starts as copies of the pretrained type 0 (methods.base.fit_to_task),
so training starts from the pretrained model unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tunesmith.methods.base import Task
from tunesmith.objectives.base import ObjectiveSettings, labelled_logits, register
from tunesmith.objectives.classification import HeadObjective, fit_length, finish, head_task, read_head_rows
from tunesmith.records import IGNORE_INDEX, DataIssue, Example, TokenizedExample


class TokenClassificationSettings(ObjectiveSettings):
    name: Literal["token_classification"] = "token_classification"
    text: str = Field("text", description="The column with the text")
    spans: str = Field("spans", description="The column with the labelled spans [{start, end, label}]")
    tokens: str | None = Field(None, description="CoNLL style instead: the column with the words ...")
    tags: str | None = Field(None, description="... and the column with their BIO tags")
    labels: list[str] | None = Field(None, description="Entity types, in order (default: those in the training data, sorted)")
    word_shapes: bool = Field(False, description="Feed each token's word shape as its token type (BERT-style encoders; "
                                                 "for lower-cased vocabularies)")


SHAPES = ("special", "lower", "Capitalized", "UPPER", "digit", "other")  # × (mid-line, line start)
N_SHAPES = 2 * len(SHAPES)


def word_shape(text: str, start: int, end: int) -> int:
    """Shape id of the word around text[start:end] (subword pieces share their word's shape); 0 for special tokens
    (empty offsets), so they keep the pretrained type 0."""
    while start < end and text[start].isspace():
        start += 1
    if start >= end:
        return 0
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    word = text[start:end]
    letters = [c for c in word if c.isalpha()]
    if any(c.isdigit() for c in word):
        shape = 4
    elif not letters:
        shape = 5
    elif len(letters) >= 2 and all(c.isupper() for c in letters):
        shape = 3
    elif letters[0].isupper():
        shape = 2
    else:
        shape = 1
    line = text[text.rfind("\n", 0, start) + 1 : start]
    at_line_start = "\n" in text[:start] and not line.strip()
    return shape + (len(SHAPES) if at_line_start else 0)


def row_spans(row: dict[str, Any], cfg) -> tuple[str, list[tuple[int, int, str]]] | str:
    """(text, [(start, end, type)]) of a row, or what is wrong with it."""
    if cfg.tokens:
        words, tags = row.get(cfg.tokens), row.get(cfg.tags or "tags")
        if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags):
            return f"{cfg.tokens!r} and {cfg.tags!r} must be lists of the same length"
        text, spans, at = "", [], 0
        for word, tag in zip(words, tags):
            start = len(text) + (1 if text else 0)
            text = f"{text} {word}" if text else str(word)
            tag = str(tag)
            if tag.startswith("B-") or (tag.startswith("I-") and (not spans or spans[-1][2] != tag[2:] or spans[-1][1] != at)):
                spans.append((start, len(text), tag[2:]))
            elif tag.startswith("I-"):
                spans[-1] = (spans[-1][0], len(text), tag[2:])
            at = len(text)
        return text, spans
    text, raw = row.get(cfg.text), row.get(cfg.spans, [])
    if not isinstance(text, str) or not text.strip():
        return f"field {cfg.text!r} must be a non-empty string"
    if not isinstance(raw, list):
        return f"field {cfg.spans!r} must be a list of {{start, end, label}}"
    spans = []
    for s in raw:
        kind = s.get("label", s.get("type")) if isinstance(s, dict) else None
        if not (isinstance(kind, str) and isinstance(s.get("start"), int) and isinstance(s.get("end"), int)
                and 0 <= s["start"] < s["end"] <= len(text)):
            return f"bad span {s!r}: needs integer start < end within the text and a label"
        spans.append((s["start"], s["end"], kind))
    return text, sorted(spans)


def bio_names(types: list[str]) -> list[str]:
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """BIO tags of consecutive tokens → entities (first token, last token, type); a stray I- starts one."""
    found, current = set(), None
    for i, tag in enumerate(tags + ["O"]):
        kind = tag[2:] if tag != "O" else None
        if current and (tag == "O" or tag.startswith("B-") or kind != current[2]):
            found.add((current[0], i - 1, current[2]))
            current = None
        if kind and current is None:
            current = (i, i, kind)
    return found


@register
class TokenClassification(HeadObjective):
    name = "token_classification"
    config = TokenClassificationSettings

    def prepare(self, path, run_cfg, tokenizer, label_names=None, require_labels=True):
        cfg = run_cfg.objective
        rows, issues = read_head_rows(path, run_cfg)
        parsed = []
        for where, row in rows:
            got = row_spans(row, cfg)
            if isinstance(got, str):
                issues.append(DataIssue(where, got))
            else:
                parsed.append((where, row, *got))
        if label_names is None:
            types = list(cfg.labels) if cfg.labels else sorted({k for *_, spans in parsed for *_, k in spans})
            label_names = bio_names(types)
        index = {name: i for i, name in enumerate(label_names)}
        examples, tokenized, report = [], [], {"truncated": 0, "dropped": 0}
        for where, row, text, spans in parsed:
            unknown = sorted({k for *_, k in spans if f"B-{k}" not in index})
            if unknown and require_labels:
                issues.append(DataIssue(where, f"entity type(s) {unknown} not among {label_names}"))
                continue
            enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
            ids, labels, previous = enc["input_ids"], [], None
            for a, b in enc["offset_mapping"]:
                while a < b and text[a].isspace():  # byte-level BPE pieces carry their leading space
                    a += 1
                if a >= b:
                    labels.append(IGNORE_INDEX)  # special tokens ([CLS], [SEP]) and bare whitespace
                    continue
                span = next((s for s in spans if s[0] <= a < s[1] and f"B-{s[2]}" in index), None)
                labels.append(index["O"] if span is None else index[("I-" if span is previous else "B-") + span[2]])
                previous = span
            if all(label == IGNORE_INDEX for label in labels):
                issues.append(DataIssue(where, "no token to label"))
                continue
            fitted = fit_length(ids, labels, where, run_cfg, report, issues)
            if fitted is None:
                continue
            ids, labels, truncated = fitted
            offsets = [tuple(o) for o in enc["offset_mapping"][:len(ids)]]
            shapes = [word_shape(text, a, b) for a, b in offsets] if cfg.word_shapes else None
            examples.append(Example(messages=[], source=where, text=text, meta={"offsets": offsets}))
            tokenized.append(TokenizedExample(ids, labels, where, truncated, shapes))
        return finish(path, run_cfg, examples, tokenized, issues, report, label_names)

    def task(self, run_cfg, label_names, model_path: Path, tokenizer) -> Task:
        return head_task("TOKEN_CLS", "AutoModelForTokenClassification", label_names, model_path, tokenizer,
                         token_types=N_SHAPES if run_cfg.objective.word_shapes else 0)

    def loss_module(self, model, run_cfg):
        from tunesmith.train.loss import HeadLoss

        return HeadLoss(model, pooling="token")

    def _tags(self, model, data, run_cfg, tokenizer, precision, batch_size):
        logits = labelled_logits(self.loss_module(model, run_cfg), data.tokenized, pad_id=tokenizer.pad_token_id,
                                 batch_size=batch_size, precision=precision)
        return [[data.label_names[int(k)] for k in row.argmax(-1)] for row in logits]

    def evaluate(self, model, data, run_cfg, tokenizer, precision):
        predicted = self._tags(model, data, run_cfg, tokenizer, precision, run_cfg.train.batch_size)
        tp = n_pred = n_gold = 0
        for tags, example in zip(predicted, data.tokenized):
            gold = entities([data.label_names[label] for label in example.labels if label != IGNORE_INDEX])
            found = entities(tags)
            tp, n_pred, n_gold = tp + len(gold & found), n_pred + len(found), n_gold + len(gold)
        precision_, recall = tp / max(n_pred, 1), tp / max(n_gold, 1)
        f1 = 2 * precision_ * recall / (precision_ + recall) if precision_ + recall else 0.0
        return {"n": len(data.tokenized), "entities": n_gold, "predicted": n_pred, "entity_precision": round(precision_, 4),
                "entity_recall": round(recall, 4), "entity_f1": round(f1, 4)}

    def predict(self, model, data, run_cfg, tokenizer, precision, batch_size: int = 16) -> list[dict]:
        out = []
        for tags, example, tok in zip(self._tags(model, data, run_cfg, tokenizer, precision, batch_size), data.examples,
                                      data.tokenized):
            positions = [i for i, label in enumerate(tok.labels) if label != IGNORE_INDEX]
            offsets = example.meta["offsets"]
            spans = []
            for first, last, kind in sorted(entities(tags)):
                start, end = offsets[positions[first]][0], offsets[positions[last]][1]
                while start < end and example.text[start].isspace():
                    start += 1
                spans.append({"start": start, "end": end, "label": kind, "text": example.text[start:end]})
            out.append({"text": example.text, "spans": spans})
        return out
