"""Compact IRIs: `<https://dblp.org/rdf/schema#authoredBy>` written `dblp:authoredBy` in what the model reads and
writes, and expanded back wherever its answers leave tunesmith (scores, reports, `generate --run`).

A knowledge-graph query spends most of its tokens spelling namespaces: DBLP-QuAD's SPARQL answers take 108 tokens
on average with full IRIs and 64 with these prefixes (SmolLM2's tokenizer, the first 720 training rows), so
training, generation and the KV cache all shrink by about 40%. The model then only has to copy the local part
(`152/5265`) from the prompt's entities.

Why by hand: SPARQL's own `PREFIX` declarations cannot carry these local parts (`pid:152/5265` is not a valid
prefixed name: `/` must be escaped), and rdflib's namespace manager only shortens what it can re-parse. So the
rewriting here is a plain textual one, and it is made exact by construction: a text is compacted only where
expanding the result gives back exactly that text, otherwise it is left as it was (`compact`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PREFIX_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_LOCAL = r"[A-Za-z0-9_~%+/-](?:[A-Za-z0-9_~%+/.-]*[A-Za-z0-9_~%+/-])?"  # no trailing '.': it ends a triple
_IRI = re.compile(r"<([^<>\s\"{}|^`\\]+)>")


def _expander(prefixes: Mapping[str, str]) -> re.Pattern:
    names = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
    # not inside a word, an IRI or another prefixed name: `xsd:integer`, `http://…` and `<…>` are left alone
    # (a name may follow a triple's "." directly, as in "?x dblp:authoredBy ?a .rec:x …")
    return re.compile(rf"(?<![A-Za-z0-9_:/#<-])({names}):({_LOCAL})")


def expand(text: str, prefixes: Mapping[str, str]) -> str:
    """`dblp:authoredBy` → `<https://dblp.org/rdf/schema#authoredBy>` for every configured prefix."""
    if not prefixes or ":" not in text:
        return text
    return _expander(prefixes).sub(lambda m: f"<{prefixes[m.group(1)]}{m.group(2)}>", text)


def compact(text: str, prefixes: Mapping[str, str]) -> str:
    """`<namespace + local>` → `prefix:local` (the longest matching namespace), where the local part is one a
    prefixed name can hold. The whole text is returned unchanged unless `expand` gives it back exactly (say it
    already contains a `dblp:…` of its own): the model never learns a form that does not map back."""
    if not prefixes or "<" not in text:
        return text
    spaces = sorted(prefixes.items(), key=lambda kv: len(kv[1]), reverse=True)
    local = re.compile(_LOCAL)

    def shorten(m: re.Match) -> str:
        iri = m.group(1)
        for name, space in spaces:
            if iri.startswith(space) and local.fullmatch(iri[len(space):]):
                return f"{name}:{iri[len(space):]}"
        return m.group(0)

    out = _IRI.sub(shorten, text)
    return out if out != text and expand(out, prefixes) == text else text


def compact_messages(messages: list[dict], prefixes: Mapping[str, str]) -> list[dict]:
    """Chat messages as a model trained under these prefixes reads them (new dicts; the input is left as it is)."""
    return [{**m, "content": compact(m["content"], prefixes)} for m in messages]


def check_prefixes(prefixes: Mapping[str, str]) -> list[str]:
    """Problems with a prefix table, all at once (empty: fine)."""
    problems = []
    for name, space in prefixes.items():
        if not PREFIX_NAME.fullmatch(name):
            problems.append(f"prefix {name!r}: a name is a letter followed by letters, digits, '_' or '-'")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:[^<>\s\"]+", space):
            problems.append(f"prefix {name!r}: {space!r} is not an absolute IRI (e.g. https://dblp.org/pid/)")
    return problems
