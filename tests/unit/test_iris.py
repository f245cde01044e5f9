"""Compact IRIs (data.iri_prefixes): what the model reads and writes maps back to the original text exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.config import DataConfig
from tunesmith.data.formats import load_examples
from tunesmith.data.iris import compact, expand

ROOT = Path(__file__).resolve().parents[2]
DBLP = {"dblp": "https://dblp.org/rdf/schema#", "pid": "https://dblp.org/pid/", "rec": "https://dblp.org/rec/"}


def test_every_shipped_dblp_quad_query_and_entity_list_round_trips_and_shrinks():
    shrunk = rows = 0
    for name in ("train.jsonl", "valid.jsonl"):
        for line in (ROOT / "examples" / "dblp_quad" / "data" / name).read_text().splitlines():
            row, rows = json.loads(line), rows + 1
            for text in (row["sparql"], json.dumps(row["entities"]), row["question"]):
                short = compact(text, DBLP)
                assert expand(short, DBLP) == text
                shrunk += short != text
                assert "<https://dblp.org/" not in short or short == text
    assert shrunk == 2 * rows  # every query and entity list (all their IRIs are DBLP's), and no question


def test_compact_and_expand_by_example():
    text = ("SELECT (COUNT(?x) AS ?answer) { ?x <https://dblp.org/rdf/schema#authoredBy> <https://dblp.org/pid/152/5265>"
            " . FILTER(xsd:integer(?y) > 2) }")
    short = compact(text, DBLP)
    assert short == "SELECT (COUNT(?x) AS ?answer) { ?x dblp:authoredBy pid:152/5265 . FILTER(xsd:integer(?y) > 2) }"
    assert expand(short, DBLP) == text
    # the longest namespace wins; IRIs of other namespaces stay whole
    nested = {"d": "https://dblp.org/", **DBLP}
    assert compact("<https://dblp.org/pid/1> <http://purl.org/dc/terms/bibtexType>", nested) == \
        "pid:1 <http://purl.org/dc/terms/bibtexType>"


def test_a_text_that_would_not_map_back_is_left_as_it_was():
    # a prefixed name of its own would be expanded on the way back: the whole text stays long
    own = "ASK { <https://dblp.org/pid/1> ?p 'pid:7' }"
    assert compact(own, DBLP) == own
    # a local part a prefixed name cannot end with ('.') or hold ('#') keeps its IRI; the others are compacted
    odd = "<https://dblp.org/rec/x.> <https://dblp.org/rec/a#b> <https://dblp.org/pid/2>"
    assert compact(odd, DBLP) == "<https://dblp.org/rec/x.> <https://dblp.org/rec/a#b> pid:2"
    # expansion never reaches inside a word, an IRI or another prefixed name
    for untouched in ("mypid:3", "<http://x.org/pid:3>", "https://pid:3", "ns:pid:3"):
        assert expand(untouched, DBLP) == untouched
    assert expand("pid:3.", DBLP) == "<https://dblp.org/pid/3>."  # a triple's final dot is not part of the name
    assert expand("{pid:3 ?p ?o .rec:x ?p ?o}", DBLP) == \
        "{<https://dblp.org/pid/3> ?p ?o .<https://dblp.org/rec/x> ?p ?o}"


def test_bad_prefix_tables_are_rejected_with_every_problem():
    with pytest.raises(ValueError) as e:
        DataConfig(train="x.jsonl", iri_prefixes={"1x": "https://a/", "ok": "not an iri"})
    assert "'1x'" in str(e.value) and "not an absolute IRI" in str(e.value)


def test_loaded_examples_are_compacted_and_their_fields_kept(tmp_path):
    row = {"question": "Who wrote it?", "entities": ["<https://dblp.org/rec/conf/x/A20>"],
           "sparql": "SELECT ?a { <https://dblp.org/rec/conf/x/A20> <https://dblp.org/rdf/schema#authoredBy> ?a }"}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    template = {"prompt": "{question}\nEntities: {entities}", "completion": "{sparql}"}
    [plain], _ = load_examples(path, DataConfig(train=str(path), format="template", template=template))
    [short], issues = load_examples(path, DataConfig(train=str(path), format="template", template=template,
                                                     iri_prefixes=DBLP))
    assert not issues
    assert short.messages[-1]["content"] == "SELECT ?a { rec:conf/x/A20 dblp:authoredBy ?a }"
    assert "rec:conf/x/A20" in short.messages[0]["content"]
    assert [expand(m["content"], DBLP) for m in short.messages] == [m["content"] for m in plain.messages]
    assert short.meta["sparql"] == row["sparql"]


def _perfect_answers(conversations, references):
    """What a model that learned the compact form answers: the reference as the model was trained to write it."""
    by_prompt = dict(references)
    return [by_prompt[c[-1]["content"]] for c in conversations]


def test_eval_and_probe_score_and_report_the_expanded_answers(tmp_path, tiny_model_dir, monkeypatch):
    import yaml

    import tunesmith.eval.probe as probe_module
    import tunesmith.eval.runner as runner
    from conftest import DBLP_ROWS
    from tunesmith.config import ProbeConfig
    from tunesmith.eval.config import EvalConfig
    from tunesmith.eval.prompts import prompt_of, reference_of

    rows = DBLP_ROWS[:4] + DBLP_ROWS[24:26]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = {"prompt": "{question}\nEntities: {entities}", "completion": "{sparql}"}
    data = DataConfig(train=str(path), format="template", template=template, iri_prefixes=DBLP)
    examples, _ = load_examples(path, data)
    compact_refs = [(prompt_of(ex)[-1]["content"], reference_of(ex)) for ex in examples]
    assert all("dblp:authoredBy" in ref for _, ref in compact_refs)  # the model is asked to write the short form
    fake = lambda model, tokenizer, conversations, **kw: _perfect_answers(conversations, compact_refs)  # noqa: E731

    monkeypatch.setattr(probe_module, "generate_chat", fake)
    probe = probe_module.GenerationProbe(ProbeConfig(n=6, metric="sparql_match", metrics=["exact_match"]), examples,
                                         iri_prefixes=DBLP)
    assert probe(torch_free_model(), None) == {"probe/exact_match": 100.0, "probe/sparql_match": 100.0,
                                               "probe/sparql_valid": 100.0}
    # left compact, the same answers are not SPARQL (`pid:0/1` is no prefixed name, `dblp:` is undeclared)
    unexpanded = probe_module.GenerationProbe(ProbeConfig(n=6, metric="sparql_match"), examples)
    assert unexpanded(torch_free_model(), None)["probe/sparql_valid"] == 0.0
    cfg = {"model": {"name": str(tiny_model_dir), "device": "cpu"},
           "data": {"test": str(path), "train": str(path), "format": "template", "max_seq_len": 128, "template": template,
                    "iri_prefixes": DBLP},
           "variants": [{"kind": "base"}], "generation": {"max_new_tokens": 8, "precision": "fp32"},
           "metrics": {"use": ["exact_match", "sparql_match"], "headline": "sparql_match", "loss": False,
                       "bootstrap": {"samples": 100}},
           "forgetting": {"enabled": False},
           "report": {"dir": str(tmp_path / "report")}}
    from tunesmith.eval.scoring import Answers

    monkeypatch.setattr(runner, "answers_and_reference_loss", lambda model, tokenizer, conversations, references, **kw:
                        Answers(fake(model, tokenizer, conversations), None, ["stop"] * len(conversations)))
    report = runner.run_eval(EvalConfig(**yaml.safe_load(yaml.safe_dump(cfg))), show_progress=False)
    [base] = report.variants
    assert [item.reference for item in report.items] == [r["sparql"] for r in rows]  # reported as in the data
    assert base.predictions == [r["sparql"] for r in rows]
    assert base.scores["exact_match"] == 100.0 and base.scores["sparql_match"] == 100.0


class torch_free_model:
    """Enough of a model for the probe's bookkeeping when generation is faked."""

    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self
