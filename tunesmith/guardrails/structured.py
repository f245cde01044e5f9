"""Structured output: grammar- and JSON-schema-constrained decoding with llguidance, and validators.

llguidance computes, for a grammar and the text so far, the set of tokens that keep the text inside the
language. It ships no transformers logits processor of its own (and its torch helpers are torch.compile'd, which
costs minutes on CPU), so `GrammarConstraint` is the small piece that plugs its numpy bitmask into tunesmith's
generation path (tunesmith.generate.TokenConstraint): one matcher per row, so rows with different grammars, or
none, share a batch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tunesmith.files import read_json, read_text
from tunesmith.guardrails.config import StructuredOutput
from tunesmith.records import TunesmithError

GRAMMARS = Path(__file__).resolve().parent / "grammars"
BUILTIN = {"sparql": GRAMMARS / "sparql_dblp.lark"}

_tokenizers: dict[tuple[int, int], object] = {}
_lock = threading.Lock()


def ll_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of a Hugging Face tokenizer (about 0.3 s to build, so kept per tokenizer)."""
    import llguidance.hf

    key = (id(tokenizer), vocab_size)
    with _lock:
        if key not in _tokenizers:
            _tokenizers[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                                            eos_token=tokenizer.eos_token_id)
        return _tokenizers[key]


@lru_cache(maxsize=64)
def _grammar_from_lark(text: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_lark(text)


def grammar_of(spec: StructuredOutput) -> str:
    """llguidance's grammar for a `structured:` section."""
    import llguidance

    if spec.grammar is not None:
        return _grammar_from_lark(BUILTIN[spec.grammar].read_text())
    if spec.lark is not None:
        path = Path(spec.lark)
        if not path.is_file():
            raise TunesmithError(f"guardrails: Lark grammar file {path} not found")
        return _grammar_from_lark(read_text(path))
    schema = spec.json_schema
    if isinstance(schema, str):
        path = Path(schema)
        if not path.is_file():
            raise TunesmithError(f"guardrails: JSON schema file {path} not found")
        schema = read_json(path)
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})


class GrammarConstraint:
    """One row's grammar state: masks the next-token scores, follows the tokens chosen."""

    def __init__(self, ll_tok, grammar: str):
        import llguidance
        import llguidance.numpy as llnp

        self._llnp = llnp
        self.matcher = llguidance.LLMatcher(ll_tok, grammar, log_level=0)
        if self.matcher.is_error():
            raise TunesmithError(f"guardrails: the grammar does not compile: {self.matcher.get_error()}")
        self.vocab = ll_tok.vocab_size
        self.bitmask = llnp.allocate_token_bitmask(1, self.vocab)

    def mask(self, scores: torch.Tensor) -> None:
        if self.matcher.is_error():
            scores.fill_(-float("inf"))
            return
        self._llnp.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        allowed = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[: self.vocab].astype(bool)
        blocked = torch.from_numpy(~allowed)
        scores[: self.vocab][blocked] = -float("inf")
        scores[self.vocab :] = -float("inf")

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)


def constraint_factory(spec: StructuredOutput, tokenizer, vocab_size: int) -> Callable[[], GrammarConstraint]:
    """A function making a fresh constraint per row (the grammar is compiled and checked once, here)."""
    ll_tok = ll_tokenizer(tokenizer, vocab_size)
    grammar = grammar_of(spec)
    GrammarConstraint(ll_tok, grammar)  # fail now, at start-up, on a broken grammar
    return lambda: GrammarConstraint(ll_tok, grammar)


def validate(spec: StructuredOutput, text: str) -> str | None:
    """None when `text` is valid output for the spec, else why not (rdflib for SPARQL, jsonschema for JSON).

    Checked independently of the grammar: a constrained answer cut off by the token limit fails here.
    """
    if spec.grammar == "sparql":
        from tunesmith.eval.sparql import parses

        return None if parses(text) else "not a SPARQL query rdflib can parse"
    if spec.json_schema is not None:
        import jsonschema

        schema = spec.json_schema
        if isinstance(schema, str):
            schema = read_json(schema)
        try:
            jsonschema.validate(json.loads(text), schema)
        except json.JSONDecodeError as e:
            return f"not JSON: {e.msg}"
        except jsonschema.ValidationError as e:
            return f"JSON does not match the schema: {e.message}"
        return None
    return None  # a custom Lark grammar has no independent validator: the constraint is the check
