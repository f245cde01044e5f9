"""Ready-made answer validators for `task.validator` (any `pkg.module:function` works the same way).

A validator takes the answer text and returns None/True when it is valid, or False / a reason string
when not; an exception it raises rejects the pair with the exception's message.
"""

from __future__ import annotations

import json


def json_parses(answer: str) -> str | None:
    try:
        json.loads(answer)
    except json.JSONDecodeError as e:
        return f"answer is not valid JSON ({e.msg})"
    return None


def sparql_parses(answer: str) -> str | None:
    from rdflib.plugins.sparql import prepareQuery

    try:
        prepareQuery(answer)
    except Exception as e:  # rdflib raises pyparsing errors and plain Exceptions alike for bad queries
        return f"answer is not a parseable SPARQL query ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None
