"""Constrained decoding: the SPARQL grammar admits the DBLP-QuAD queries and only queries rdflib parses."""

import json
import random
import re
from pathlib import Path

import pytest

from tunesmith.data.iris import compact, expand
from tunesmith.eval.sparql import parses
from tunesmith.generate import RowRequest, encode_chat, generate_rows
from tunesmith.guardrails.config import StructuredOutput
from tunesmith.guardrails.structured import GrammarConstraint, constraint_factory, grammar_of, ll_tokenizer, validate

DATA = Path(__file__).resolve().parents[2] / "examples" / "dblp_quad" / "data"
SPARQL = StructuredOutput(grammar="sparql")
DBLP = {"dblp": "https://dblp.org/rdf/schema#", "pid": "https://dblp.org/pid/", "rec": "https://dblp.org/rec/"}


def _accepts(ll_tok, grammar, tokenizer, text) -> bool:
    c = GrammarConstraint(ll_tok, grammar)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return c.matcher.consume_tokens(ids) and c.matcher.consume_token(tokenizer.eos_token_id)


def test_grammar_admits_every_gold_query_rdflib_parses(tiny_tokenizer):
    ll_tok, grammar = ll_tokenizer(tiny_tokenizer, len(tiny_tokenizer)), grammar_of(SPARQL)
    queries = [json.loads(line)["sparql"] for f in sorted(DATA.glob("*.jsonl")) for line in f.read_text().splitlines()]
    shapes: dict[str, list[str]] = {}  # IRIs, literals, variables and numbers abstracted away
    for q in queries:
        shapes.setdefault(re.sub(r"<[^>]*>|'[^']*'|\?\w+|\d+", "x", q), []).append(q)
    # one query per shape; every one parses, the endpoint dialect of MIN(xsd:integer(?y)) AS ?y included
    sample = [group[0] for group in shapes.values()]
    assert len(sample) >= 15 and all(parses(q) for q in sample)
    rejected = [q for q in sample if not _accepts(ll_tok, grammar, tiny_tokenizer, q)]
    assert rejected == []
    # and as a run trained under the DBLP-QuAD configs' data.iri_prefixes writes them
    short = [compact(q, DBLP) for q in sample]
    assert all("dblp:" in q for q in short)
    assert [q for q in short if not _accepts(ll_tok, grammar, tiny_tokenizer, q)] == []
    # and what it must not admit
    for bad in ["SELECT", "ASK { ?x }", "SELECTDISTINCT ?a WHERE { ?a <p> ?b }", "DROP GRAPH <g>",
                "ASK { <a> <b> <c> } trailing words"]:
        assert not _accepts(ll_tok, grammar, tiny_tokenizer, bad), bad


def _random_walk(constraint, tokenizer, rng, max_steps=3000) -> str | None:
    """Sample from the grammar: uniform over allowed tokens, half the time preferring one that closes something."""
    import torch

    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    closers = {i for i in range(vocab) if (t := tokenizer.decode([i])) and t.strip() and set(t.strip()) <= set("}>)'.")}
    ids = []
    for _ in range(max_steps):
        scores = torch.zeros(vocab)
        constraint.mask(scores)
        allowed = torch.nonzero(~torch.isinf(scores)).flatten().tolist()
        assert allowed, "the grammar left no way to continue"
        if eos in allowed and (len(allowed) == 1 or rng.random() < 0.5):
            return tokenizer.decode(ids)
        preferred = [t for t in allowed if t in closers and t != eos]
        pick = rng.choice(preferred) if preferred and rng.random() < 0.5 else rng.choice([t for t in allowed if t != eos])
        constraint.advance(pick)
        ids.append(pick)
    return None


def test_random_walks_through_the_grammar_all_parse_with_rdflib(tiny_tokenizer):
    make = constraint_factory(SPARQL, tiny_tokenizer, len(tiny_tokenizer))
    rng = random.Random(0)
    walks = [_random_walk(make(), tiny_tokenizer, rng) for _ in range(100)]
    finished = [w for w in walks if w is not None]
    assert len(finished) >= 80
    assert [w for w in finished if not parses(expand(w, DBLP))][:3] == []  # prefixed names expanded, as served
    assert {w.strip()[:3] for w in finished} == {"ASK", "SEL"}  # both query forms reached


def test_constrained_generation_on_a_random_model_parses(tiny_model, tiny_tokenizer):
    make = constraint_factory(SPARQL, tiny_tokenizer, tiny_model.config.vocab_size)
    rows = [RowRequest(encode_chat(tiny_tokenizer, [{"role": "user", "content": q}]), max_new_tokens=400,
                       constraint=make(), temperature=t, seed=i)
            for i, (q, t) in enumerate([("papers by Ada?", 0.0), ("did Turing publish in ICML?", 0.0),
                                        ("fox", 1.0), ("dog", 1.0)])]
    free = generate_rows(tiny_model, tiny_tokenizer, [RowRequest(r.prompt_ids, max_new_tokens=40) for r in rows],
                         precision="fp32")
    assert not any(parses(r.text) for r in free)  # unconstrained, the random model writes no SPARQL
    results = generate_rows(tiny_model, tiny_tokenizer, rows, precision="fp32")
    # a random model may wander through prefixed names and nested groups until the limit (a cut-off answer, which
    # validate() rejects); every answer that the grammar let end is a query
    ended = [r for r in results if r.finish_reason == "stop"]
    assert len(ended) >= 2
    for r in ended:
        assert parses(expand(r.text.strip(), DBLP)), r.text
        assert validate(SPARQL, expand(r.text.strip(), DBLP)) is None


def test_json_schema_constraint_yields_valid_json(tiny_model, tiny_tokenizer):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "year": {"type": "integer", "minimum": 1900, "maximum": 2100}},
              "required": ["name", "year"], "additionalProperties": False}
    spec = StructuredOutput(json_schema=schema)
    make = constraint_factory(spec, tiny_tokenizer, tiny_model.config.vocab_size)
    rows = [RowRequest(encode_chat(tiny_tokenizer, [{"role": "user", "content": "fox"}]), max_new_tokens=120,
                       constraint=make(), temperature=1.0, seed=s) for s in range(3)]
    for r in generate_rows(tiny_model, tiny_tokenizer, rows, precision="fp32"):
        assert validate(spec, r.text) is None, r.text
        assert set(json.loads(r.text)) == {"name", "year"}
    assert validate(spec, '{"name": "x"}').startswith("JSON does not match")


def test_structured_config_needs_exactly_one_kind():
    with pytest.raises(ValueError):
        StructuredOutput()
    with pytest.raises(ValueError):
        StructuredOutput(grammar="sparql", json_schema={"type": "object"})
