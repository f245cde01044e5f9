"""Task metrics: one score per item (0-100, higher is better) and one score for the whole set.

`REGISTRY` is the one table of metrics (name, display name, description, scale, direction, scorer): the eval
config, the report, the training probe and the demo all read it.

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
from tunesmith.records import TunesmithError

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


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def _words(text: str) -> str:
    """Lower case, punctuation as word breaks ("/orbit/v2" → "orbit v2", "12,400" → "12 400"), no articles."""
    return " ".join(_ARTICLES.sub(" ", _PUNCTUATION.sub(" ", text.lower())).split())


def contains(pred: str, ref: str) -> float:
    """The reference occurs in the answer as whole words (case, punctuation and articles ignored).

    The score for knowledge questions, where "It was founded in 1988." is as right as "1988".
    """
    r = _words(ref)
    return 100.0 * bool(r) * (f" {r} " in f" {_words(pred)} ")


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


@dataclass(frozen=True)
class MetricSpec:
    """One entry of the metric registry: everything any part of tunesmith knows about a metric."""

    name: str
    display: str  # how reports, plots and tables name it
    description: str
    scorer: Callable[[Normalizer], ItemScore]  # the configured normaliser → a per-item score
    corpus: Callable[[list[str], list[str]], float] | None = None  # corpus-level score where that is the standard
    scale: tuple[float, float] = (0.0, 100.0)
    higher_is_better: bool = True
    companion: str | None = None  # a metric that always comes with this one (reported next to it)


def _plain(score: ItemScore) -> Callable[[Normalizer], ItemScore]:
    return lambda _normalize: score


REGISTRY: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("exact_match", "exact match", "exact string match after the configured normalisation", exact_match),
    MetricSpec("token_f1", "token F1", "SQuAD-style token-overlap F1", _plain(token_f1)),
    MetricSpec("contains", "contains", "the reference occurs in the answer as whole words (case, punctuation and "
               "articles ignored)", _plain(contains)),
    MetricSpec("bleu", "BLEU", "sacrebleu corpus BLEU", _plain(sentence_bleu), corpus_bleu),
    MetricSpec("chrf", "chrF", "sacrebleu corpus chrF", _plain(sentence_chrf), corpus_chrf),
    MetricSpec("rouge_l", "ROUGE-L", "ROUGE-L F-measure (rouge-score)", _plain(rouge_l)),
    MetricSpec("label_accuracy", "label acc.", "the answer is the reference label", label_accuracy),
    MetricSpec("json_valid", "valid JSON", "the answer parses as JSON", _plain(json_valid)),
    MetricSpec("sparql_match", "SPARQL match", "same SPARQL query modulo variable names, whitespace and triple order "
               "(rdflib)", _plain(sparql_match), companion="sparql_valid"),
    MetricSpec("sparql_valid", "parsable SPARQL", "the answer parses as SPARQL", _plain(sparql_valid)),
)}


def display_name(name: str) -> str:
    """The registry's display name; a custom metric is shown by its own name."""
    return REGISTRY[name].display if name in REGISTRY else name


def scale_of(name: str) -> tuple[float, float]:
    return REGISTRY[name].scale if name in REGISTRY else (0.0, 100.0)


@dataclass(frozen=True)
class Metric:
    """A metric ready to score: per-item scores and, where the standard definition is corpus-level (BLEU, chrF),
    the corpus score."""

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


def build_metrics(names: list[str], normalize: Normalizer, custom: dict[str, str] | None = None) -> list[Metric]:
    """Metrics in the order asked for, each followed by its companion (sparql_match brings sparql_valid)."""
    wanted: list[str] = []
    for name in names:
        if name not in REGISTRY:
            raise TunesmithError(f"unknown metric {name!r}; built-in: {', '.join(REGISTRY)}")
        wanted.append(name)
        companion = REGISTRY[name].companion
        if companion and companion not in names:
            wanted.append(companion)
    metrics = [Metric(n, REGISTRY[n].scorer(normalize), REGISTRY[n].corpus, REGISTRY[n].description)
               for n in dict.fromkeys(wanted)]
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
