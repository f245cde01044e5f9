"""SPARQL structural match: are two queries the same query, whatever their variable names, layout and triple order?

rdflib parses each query and translates it to SPARQL algebra. The algebra tree is then written as a small RDF
graph in which every variable becomes a blank node and the triples of each basic graph pattern become an
unordered set; two queries match when rdflib.compare finds the graphs isomorphic. Graph isomorphism is exactly
"equal up to renaming blank nodes", i.e. up to renaming variables, so no renaming heuristic is needed here.
Order that changes results (projection order, ORDER BY keys, nested operators) stays ordered.
"""

from __future__ import annotations

from functools import lru_cache

from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.term import Identifier, Variable

ALGEBRA = Namespace("urn:tunesmith:sparql-algebra:")


@lru_cache(maxsize=4096)
def _algebra(query: str):
    """The query's algebra, or None when rdflib cannot parse it."""
    from rdflib.plugins.sparql.algebra import translateQuery
    from rdflib.plugins.sparql.parser import parseQuery

    try:
        return translateQuery(parseQuery(query.strip())).algebra
    except Exception:  # pyparsing, rdflib and plain Python errors all mean "not a query we can read"
        return None


def parses(query: str) -> bool:
    return _algebra(query) is not None


def _to_graph(algebra) -> Graph:
    graph = Graph()
    variables: dict[str, BNode] = {}

    def term(value) -> Identifier | None:
        from rdflib.plugins.sparql.parserutils import CompValue

        if value is None:
            return None
        if isinstance(value, Variable):
            return variables.setdefault(str(value), BNode())
        if isinstance(value, (URIRef, Literal, BNode)):
            return value
        if isinstance(value, CompValue):
            node = BNode()
            graph.add((node, ALGEBRA.op, Literal(value.name)))
            for key, child in value.items():
                if key.startswith("_"):  # rdflib's bookkeeping (_vars), not part of the query
                    continue
                if key == "triples":  # a basic graph pattern: a set, order-free
                    for s, p, o in child:
                        triple = BNode()
                        graph.add((node, ALGEBRA.triple, triple))
                        for role, part in (("s", s), ("p", p), ("o", o)):
                            graph.add((triple, ALGEBRA[role], term(part)))
                    continue
                encoded = term(child)
                if encoded is not None:
                    graph.add((node, ALGEBRA[key], encoded))
            return node
        if isinstance(value, (set, frozenset)):
            node = BNode()
            for item in value:
                if (encoded := term(item)) is not None:
                    graph.add((node, ALGEBRA.member, encoded))
            return node
        if isinstance(value, (list, tuple)):
            node = BNode()
            graph.add((node, ALGEBRA.length, Literal(len(value))))
            for i, item in enumerate(value):
                if (encoded := term(item)) is not None:
                    graph.add((node, ALGEBRA[f"item{i}"], encoded))
            return node
        return Literal(str(value))  # ints (LIMIT), strings (operators, DISTINCT flags)

    root = term(algebra)
    graph.add((ALGEBRA.query, ALGEBRA.root, root))
    return graph


def structurally_equal(predicted: str, reference: str) -> bool:
    """True when both parse and are the same query modulo variable names, whitespace and triple order."""
    from rdflib.compare import isomorphic

    a, b = _algebra(predicted), _algebra(reference)
    if a is None or b is None:
        return False
    return isomorphic(_to_graph(a), _to_graph(b))
