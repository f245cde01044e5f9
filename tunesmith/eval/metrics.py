"""Task metrics: one score per item (0-100, higher is better) and one score for the whole set.

Library implementations wherever a well-kept one exists (sacrebleu for BLEU/chrF, rouge-score for ROUGE-L,
rdflib for SPARQL, scipy for the bootstrap). Written here: exact match and token F1 (a few lines each, with
normalisation that must be configurable) and label accuracy.
"""

from __future__ import annotations


import json
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from tunesmith.hooks import import_callable

ItemScore = Callable[[str, str], float]  # (prediction, reference) -> score in [0, 100]


@dataclass(frozen=True)
class Normalizer:
    whitespace: bool = True
    lowercase: bool = False
    strip_punctuation: bool = False
    strip_quotes: bool = False

    def __call__(self, text: str) -> str:
        if self.lowercase:
            text = text.lower()
        if self.strip_quotes:
            text = text.replace('"', "'")
        if self.strip_punctuation:
            text = text.translate(str.maketrans("", "", string.punctuation))
        if self.whitespace:
            text = " ".join(text.split())
        return text

    @classmethod
    def from_config(cls, cfg) -> Normalizer:
        return cls(**cfg.model_dump())


@dataclass(frozen=True)
class Metric:
    """A per-item score and, where the metric's standard definition is corpus-level (BLEU, chrF), that too."""

    name: str
    item: ItemScore
    corpus: Callable[[list[str], list[str]], float] | None = None
    description: str = ""

    def score_items(self, predictions: list[str], references: list[str]) -> list[float]:
        return [float(self.item(p, r)) for p, r in zip(predictions, references, strict=True)]

    def score_corpus(self, predictions: list[str], references: list[str], items: list[float] | None = None) -> float:
        if self.corpus is not None:
            return float(self.corpus(predictions, references))
        items = items if items is not None else self.score_items(predictions, references)
        return float(np.mean(items)) if items else float("nan")


def exact_match(normalize: Normalizer) -> ItemScore:
    return lambda pred, ref: 100.0 * (normalize(pred) == normalize(ref))


_SQUAD_NORMALIZE = Normalizer(whitespace=True, lowercase=True, strip_punctuation=True)


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style bag-of-tokens F1 (the official SQuAD script is not a library; this is its 10-line core)."""
    p, r = _SQUAD_NORMALIZE(pred).split(), _SQUAD_NORMALIZE(ref).split()
    if not p or not r:
        return 100.0 * (p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 100.0 * 2 * precision * recall / (precision + recall)


def sentence_bleu(pred: str, ref: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(pred, [ref]).score


def corpus_bleu(preds: list[str], refs: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(preds, [refs]).score


def sentence_chrf(pred: str, ref: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(pred, [ref]).score


def corpus_chrf(preds: list[str], refs: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf(preds, [refs]).score


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(pred: str, ref: str) -> float:
    return 100.0 * _rouge_scorer().score(ref, pred)["rougeL"].fmeasure


def label_accuracy(normalize: Normalizer) -> ItemScore:
    """A label is right if the answer is the label, or starts with it as a whole word ("positive. Because...")."""

    def score(pred: str, ref: str) -> float:
        p, r = normalize(pred).strip(" .!"), normalize(ref).strip(" .!")
        return 100.0 * (p == r or bool(r) and re.match(re.escape(r) + r"\b", p) is not None)

    return score


def json_valid(pred: str, _ref: str) -> float:
    try:
        json.loads(pred)
    except (json.JSONDecodeError, RecursionError):
        return 0.0
    return 100.0


def sparql_match(pred: str, ref: str) -> float:
    from tunesmith.eval.sparql import structurally_equal

    return 100.0 * structurally_equal(pred, ref)


def sparql_valid(pred: str, _ref: str) -> float:
    from tunesmith.eval.sparql import parses

    return 100.0 * parses(pred)


BUILTIN = {
    "exact_match": "exact string match after the configured normalisation",
    "token_f1": "SQuAD-style token-overlap F1",
    "bleu": "sacrebleu corpus BLEU",
    "chrf": "sacrebleu corpus chrF",
    "rouge_l": "ROUGE-L F-measure (rouge-score)",
    "label_accuracy": "the answer is the reference label",
    "json_valid": "the answer parses as JSON",
    "sparql_match": "same SPARQL query modulo variable names, whitespace and triple order (rdflib)",
    "sparql_valid": "the answer parses as SPARQL",
}


def build_metrics(names: list[str], normalize: Normalizer, custom: dict[str, str] | None = None) -> list[Metric]:
    """Metric objects in the order asked for; `sparql_match` brings `sparql_valid` (unparsable answers counted)."""
    factories: dict[str, Callable[[], Metric]] = {
        "exact_match": lambda: Metric("exact_match", exact_match(normalize), description=BUILTIN["exact_match"]),
        "token_f1": lambda: Metric("token_f1", token_f1, description=BUILTIN["token_f1"]),
        "bleu": lambda: Metric("bleu", sentence_bleu, corpus_bleu, BUILTIN["bleu"]),
        "chrf": lambda: Metric("chrf", sentence_chrf, corpus_chrf, BUILTIN["chrf"]),
        "rouge_l": lambda: Metric("rouge_l", rouge_l, description=BUILTIN["rouge_l"]),
        "label_accuracy": lambda: Metric("label_accuracy", label_accuracy(normalize), description=BUILTIN["label_accuracy"]),
        "json_valid": lambda: Metric("json_valid", json_valid, description=BUILTIN["json_valid"]),
        "sparql_match": lambda: Metric("sparql_match", sparql_match, description=BUILTIN["sparql_match"]),
        "sparql_valid": lambda: Metric("sparql_valid", sparql_valid, description=BUILTIN["sparql_valid"]),
    }
    wanted = list(names)
    if "sparql_match" in wanted and "sparql_valid" not in wanted:
        wanted.insert(wanted.index("sparql_match") + 1, "sparql_valid")
    metrics = [factories[name]() for name in wanted]
    for name, dotted in (custom or {}).items():
        metrics.append(Metric(name, user_metric(dotted), description=f"user metric {dotted}"))
    return metrics


def user_metric(dotted: str) -> ItemScore:
    """`package.module:function`, called as function(prediction, reference) -> score in [0, 1]; shown x100."""
    func = import_callable(dotted, "custom metric")
    return lambda pred, ref: 100.0 * float(func(pred, ref))


def bootstrap_ci(scores: list[float], samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-item scores (scipy)."""
    values = np.asarray(scores, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        # scipy warns and returns NaN on a constant sample; every resample of it has the same mean.
        value = float(values[0]) if len(values) else float("nan")
        return value, value
    from scipy.stats import bootstrap

    result = bootstrap((values,), np.mean, n_resamples=samples, confidence_level=confidence, method="percentile",
                       random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_bootstrap_diff(a: list[float], b: list[float], samples: int = 1000, confidence: float = 0.95,
                          seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over the same items, with a percentile bootstrap CI: is the difference real?"""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    low, high = bootstrap_ci(diff.tolist(), samples, confidence, seed)
    return float(diff.mean()), low, high
