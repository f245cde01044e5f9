"""Every eval metric on hand-made pairs whose right answer is known."""

from __future__ import annotations

import sys
import types

import pytest

from tunesmith.eval.metrics import (
    Normalizer, bootstrap_ci, build_metrics, exact_match, json_valid, label_accuracy, paired_bootstrap_diff, rouge_l,
    token_f1, user_metric,
)
from tunesmith.eval.sparql import parses, structurally_equal
from tunesmith.records import TunesmithError

DBLP = "https://dblp.org/rdf/schema#"


def metric(name, normalize=Normalizer()):
    return next(m for m in build_metrics([name], normalize) if m.name == name)


def test_exact_match_normalisation_is_configurable():
    assert exact_match(Normalizer())("a  b\n", "a b") == 100.0
    assert exact_match(Normalizer())("A b", "a b") == 0.0
    assert exact_match(Normalizer(lowercase=True))("A b", "a b") == 100.0
    assert exact_match(Normalizer(strip_punctuation=True))("a, b.", "a b") == 100.0
    assert exact_match(Normalizer(strip_quotes=True))('x "ICML"', "x 'ICML'") == 100.0
    assert exact_match(Normalizer(whitespace=False))("a  b", "a b") == 0.0


def test_token_f1_partial_overlap():
    assert token_f1("the cat sat", "the cat sat") == 100.0
    assert token_f1("cat", "dog") == 0.0
    # 2 common of 3 predicted and 4 reference tokens: P=2/3, R=1/2, F1=4/7
    assert token_f1("red big cat", "a red small cat") == pytest.approx(100 * 4 / 7)


def test_bleu_and_chrf_are_sacrebleu_corpus_scores():
    import sacrebleu

    preds, refs = ["the cat sat on the mat", "a dog ran"], ["the cat sat on a mat", "the dog ran away"]
    assert metric("bleu").score_corpus(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert metric("chrf").score_corpus(preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert metric("bleu").score_corpus(refs, refs) == pytest.approx(100.0)
    assert 0 < metric("chrf").score_items(preds, refs)[1] < 100


def test_rouge_l_uses_longest_common_subsequence():
    assert rouge_l("a b c d", "a b c d") == pytest.approx(100.0)
    # LCS of "a x b y" and "a b" is "a b": P=2/4, R=2/2 → F=2/3
    assert rouge_l("a x b y", "a b") == pytest.approx(100 * 2 / 3)


def test_label_accuracy_accepts_label_followed_by_explanation_only():
    score = label_accuracy(Normalizer(lowercase=True))
    assert score("Positive", "positive") == 100.0
    assert score("positive. The review praises it", "positive") == 100.0
    assert score("positively not", "positive") == 0.0
    assert score("negative", "positive") == 0.0


def test_json_validity():
    assert json_valid('{"a": [1, 2]}', "") == 100.0
    assert json_valid("{'a': 1}", "") == 0.0
    assert json_valid("", "") == 0.0


def test_user_metric_by_dotted_path(monkeypatch):
    module = types.ModuleType("my_eval_metrics")
    module.length_ratio = lambda pred, ref: min(len(pred), len(ref)) / max(len(pred), len(ref))
    monkeypatch.setitem(sys.modules, "my_eval_metrics", module)
    metrics = build_metrics([], Normalizer(), {"length": "my_eval_metrics:length_ratio"})
    assert metrics[0].name == "length"
    assert metrics[0].score_items(["ab"], ["abcd"]) == [50.0]
    with pytest.raises(TunesmithError, match="no function"):
        user_metric("my_eval_metrics:missing")
    with pytest.raises(TunesmithError, match="package.module:function"):
        user_metric("my_eval_metrics.length_ratio")


SPARQL_EQUIVALENT = [
    # variable renamed, whitespace and quotes changed, triple order swapped
    (f"SELECT DISTINCT ?answer WHERE {{ <https://dblp.org/rec/x> <{DBLP}authoredBy> ?answer . "
     f"<https://dblp.org/rec/x> <{DBLP}yearOfPublication> '2010' }}",
     f"SELECT  DISTINCT ?who WHERE {{\n  <https://dblp.org/rec/x> <{DBLP}yearOfPublication> \"2010\" .\n"
     f"  <https://dblp.org/rec/x> <{DBLP}authoredBy> ?who\n}}"),
    # prefixed names vs full IRIs
    (f"PREFIX dblp: <{DBLP}> ASK {{ ?p dblp:authoredBy <https://dblp.org/pid/1> }}",
     f"ASK {{ ?paper <{DBLP}authoredBy> <https://dblp.org/pid/1> }}"),
    # aggregates with every variable renamed consistently
    (f"SELECT (COUNT(DISTINCT ?x) AS ?c) WHERE {{ ?x <{DBLP}authoredBy> ?y . ?y <{DBLP}orcid> ?x }}",
     f"SELECT (COUNT(DISTINCT ?q) AS ?n) WHERE {{ ?r <{DBLP}orcid> ?q . ?q <{DBLP}authoredBy> ?r }}"),
]
SPARQL_DIFFERENT = [
    # different literal
    (f"ASK {{ <https://dblp.org/rec/x> <{DBLP}yearOfPublication> '2010' }}",
     f"ASK {{ <https://dblp.org/rec/x> <{DBLP}yearOfPublication> '2011' }}"),
    # DISTINCT dropped
    (f"SELECT DISTINCT ?a WHERE {{ ?a <{DBLP}authoredBy> <https://dblp.org/pid/1> }}",
     f"SELECT ?a WHERE {{ ?a <{DBLP}authoredBy> <https://dblp.org/pid/1> }}"),
    # same triples, but the counted variable plays the other role (renaming cannot fix that)
    (f"SELECT (COUNT(DISTINCT ?x) AS ?c) WHERE {{ ?x <{DBLP}authoredBy> ?y . ?y <{DBLP}orcid> ?x }}",
     f"SELECT (COUNT(DISTINCT ?q) AS ?n) WHERE {{ ?q <{DBLP}orcid> ?r . ?r <{DBLP}authoredBy> ?q }}"),
    # a triple missing
    (f"SELECT ?a WHERE {{ ?a <{DBLP}authoredBy> ?b . ?a <{DBLP}publishedIn> 'ICML' }}",
     f"SELECT ?a WHERE {{ ?a <{DBLP}authoredBy> ?b }}"),
    # ASK vs SELECT on the same pattern
    (f"ASK {{ ?a <{DBLP}authoredBy> ?b }}", f"SELECT * WHERE {{ ?a <{DBLP}authoredBy> ?b }}"),
]


@pytest.mark.parametrize("a,b", SPARQL_EQUIVALENT)
def test_sparql_structural_match_equivalent(a, b):
    assert structurally_equal(a, b) and structurally_equal(b, a)
    assert exact_match(Normalizer())(a, b) == 0.0  # plain exact match misses these


@pytest.mark.parametrize("a,b", SPARQL_DIFFERENT)
def test_sparql_structural_match_different(a, b):
    assert not structurally_equal(a, b)


def test_sparql_match_by_cached_digest_is_rdflib_isomorphism():
    """structurally_equal compares cached graph digests; it must say what rdflib.compare.isomorphic says."""
    from rdflib.compare import isomorphic

    from tunesmith.eval.sparql import _algebra, _to_graph

    for a, b in SPARQL_EQUIVALENT + SPARQL_DIFFERENT:
        for x, y in ((a, b), (b, a), (a, a)):
            assert structurally_equal(x, y) == isomorphic(_to_graph(_algebra(x)), _to_graph(_algebra(y)))


# DBLP-QuAD's references in the dialect of its endpoint: aggregates projected without parentheses, xsd: undeclared
DIALECT_MAX = (f"SELECT DISTINCT MAX(xsd:integer(?answer)) AS ?answer WHERE {{ ?x <{DBLP}authoredBy> "
               f"<https://dblp.org/pid/16/782> . ?x <{DBLP}yearOfPublication> ?answer }}")
DIALECT_MIN = (f"SELECT DISTINCT ?answer MIN(xsd:integer(?y)) AS ?y WHERE {{ <https://dblp.org/rec/conf/x/Y15> "
               f"<{DBLP}authoredBy> ?answer . ?x <{DBLP}authoredBy> ?answer . ?x <{DBLP}yearOfPublication> ?y }}")


def test_endpoint_dialect_references_parse_and_match_themselves_and_their_standard_form():
    from tunesmith.eval.sparql import _translate, endpoint_dialect

    for query in (DIALECT_MAX, DIALECT_MIN):
        assert _translate(query) is None  # rdflib alone cannot read them: without the repair they never match
        assert parses(query) and structurally_equal(query, query)
    standard = ("PREFIX xsd: <http://www.w3.org/2001/XMLSchema#>\n" + DIALECT_MIN
                .replace("MIN(xsd:integer(?y)) AS ?y", "(MIN(xsd:integer(?year)) AS ?year)")
                .replace("yearOfPublication> ?y", "yearOfPublication> ?year"))
    assert structurally_equal(DIALECT_MIN, standard) and structurally_equal(standard, DIALECT_MIN)
    assert not structurally_equal(DIALECT_MAX, DIALECT_MAX.replace("MAX(", "MIN("))  # the aggregate still counts
    assert not structurally_equal(DIALECT_MIN, DIALECT_MIN.replace("?answer MIN", "MIN"))
    # a query that is already standard is left as it is; a declared prefix is not declared twice
    already = "PREFIX xsd: <http://www.w3.org/2001/XMLSchema#>\nSELECT (MAX(xsd:integer(?a)) AS ?m) ?b WHERE { ?a ?b ?c }"
    assert endpoint_dialect(already) == already


def test_unparsable_sparql_is_counted_and_never_matches():
    good = f"ASK {{ ?a <{DBLP}authoredBy> ?b }}"
    bad = "SELECT ?a WHERE { ?a <unclosed"
    assert parses(good) and not parses(bad)
    assert not structurally_equal(bad, bad)
    metrics = build_metrics(["sparql_match"], Normalizer())
    assert [m.name for m in metrics] == ["sparql_match", "sparql_valid"]  # parse rate comes with the match
    assert metrics[1].score_items([good, bad, "hello"], [good] * 3) == [100.0, 0.0, 0.0]


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_items():
    small = [100.0, 0.0] * 10
    large = [100.0, 0.0] * 200
    lo_s, hi_s = bootstrap_ci(small, samples=500)
    lo_l, hi_l = bootstrap_ci(large, samples=500)
    assert lo_s < 50 < hi_s and lo_l < 50 < hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert bootstrap_ci([100.0] * 5) == (100.0, 100.0)


def test_paired_difference_detects_a_real_gain():
    a = [100.0] * 40 + [0.0] * 10
    b = [0.0] * 40 + [0.0] * 10
    mean, low, high = paired_bootstrap_diff(a, b, samples=500)
    assert mean == pytest.approx(80.0) and low > 0
    mean, low, high = paired_bootstrap_diff([100.0, 0.0] * 10, [0.0, 100.0] * 10, samples=500)
    assert low < 0 < high


def test_contains_looks_for_the_value_as_whole_words():
    from tunesmith.eval.metrics import contains

    assert contains("Kraelzend Group was founded in 1988.", "1988") == 100.0
    assert contains("19880", "1988") == 0.0  # whole words only
    assert contains("It lies in larthax valley", "the Larthax Valley") == 100.0  # case and articles ignored
    assert contains("Send it to /orbit/v2/invoices", "/orbit/v2") == 100.0  # punctuation breaks words
    assert contains("anything", "") == 0.0
    assert build_metrics(["contains"], Normalizer())[0].score_corpus(["in 1988", "1987"], ["1988", "1988"]) == 50.0
