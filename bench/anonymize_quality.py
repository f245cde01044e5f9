"""Precision and recall of PII detection per entity type, on a labelled set generated from templates.

    .venv/bin/python bench/anonymize_quality.py [--n 1000] [--seed 0]

Uses only the copy in bench/data/pii/ (see its ATTRIBUTION.md). Prints the table and writes it into the
"anonymize" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `bench` and `tunesmith` from this checkout

from bench.report import update_section  # noqa: E402
from tunesmith.data.prep.anonymize import AnonymizeConfig, PiiDetector  # noqa: E402
from tunesmith.data.prep.pii_eval import (  # noqa: E402
    gold_type_counts,
    make_labelled_set,
    read_conll_persons,
    read_identities,
    read_templates,
    score,
)

DATA = ROOT / "bench" / "data" / "pii"


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def evaluate(examples, config: AnonymizeConfig):
    detector = PiiDetector(config)
    started = time.perf_counter()
    predictions = [detector.find(e.text) for e in examples]
    elapsed = time.perf_counter() - started
    return score(examples, predictions), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="labelled sentences to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args()

    examples = make_labelled_set(read_templates(DATA / "templates.txt"), read_identities(DATA / "identities.csv"), args.n, args.seed)
    gold = gold_type_counts(examples)
    full, seconds = evaluate(examples, AnonymizeConfig())
    rules_only, _ = evaluate(examples, AnonymizeConfig(ner=False))

    lines = [
        "## Anonymization: PII detection quality",
        "",
        f"Command: `.venv/bin/python bench/anonymize_quality.py --n {args.n} --seed {args.seed}` · "
        f"machine: 2-core CPU ({platform.machine()}), onnxruntime on CPU · {len(examples)} sentences from the 209 "
        f"Presidio templates filled with fake identities (bench/data/pii/, see ATTRIBUTION.md) · "
        f"detection time {1000 * seconds / len(examples):.1f} ms per sentence (rules + NER).",
        "",
        "Matching: a detected span counts when it overlaps a labelled span of the same type. "
        "Rules: validated patterns (Luhn, IBAN mod-97, libphonenumber, ipaddress, SSN); NER: the Rampart ONNX model.",
        "",
        "| type | labelled | precision % | recall % | recall %, rules only |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind in sorted(k for k in full if k != "ANY"):
        entry, rule_entry = full[kind], rules_only.get(kind)
        rule_recall = _pct(rule_entry.recall) if rule_entry and gold[kind] else "–"
        lines.append(f"| {kind} | {gold.get(kind, 0)} | {_pct(entry.precision)} | {_pct(entry.recall)} | {rule_recall} |")
    anyone = full["ANY"]
    lines.append(f"| **any type** (was it replaced at all?) | {anyone.gold} | {_pct(anyone.precision)} | {_pct(anyone.recall)} | {_pct(rules_only['ANY'].recall)} |")
    lines += [
        "",
        "\"any type\" is what protects data: a span found under the wrong type is still replaced. "
        "A type with no labelled spans shows only precision: every detection there is a false positive.",
    ]
    wiki = read_conll_persons(DATA / "wikigold-500.conll")
    person_only = AnonymizeConfig(entity_types=["PERSON"])
    wiki_scores, wiki_seconds = evaluate(wiki, person_only)
    person = wiki_scores.get("PERSON")
    lines += [
        "",
        f"Names in real text: the first {len(wiki)} sentences of WikiGold (Wikipedia, hand-labelled; CC BY 4.0), "
        f"PER entities vs. detected PERSON spans ({1000 * wiki_seconds / len(wiki):.1f} ms per sentence):",
        "",
        "| type | labelled | precision % | recall % |",
        "| --- | ---: | ---: | ---: |",
        f"| PERSON | {person.gold} | {_pct(person.precision)} | {_pct(person.recall)} |",
        "",
        "WikiGold labels only people as PER; a detected name of a band, ship or product counts as a false positive here.",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        update_section("anonymize", markdown)


if __name__ == "__main__":
    main()
