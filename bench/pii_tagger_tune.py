"""Choose the PII tagger's threshold on validation data, never on the evaluation sets of anonymize_quality.py.

    .venv/bin/python bench/pii_tagger_tune.py --tagger RUN_OR_SHIPPED_DIR --data runs/pii-tagger-data4 \
        [--thresholds 0.5,0.4,0.3,0.2] [--vetoes 0] [--detectors rules+tagger,rules+rampart+tagger]

Reads DATA/valid.jsonl (synthetic: training templates with new fills) and DATA/valid_real.jsonl (WikiGold training
sentences held out of that run's training by `pii_tagger_data --hold-out-real N`) and prints, per detector
combination, tagger threshold and tagger veto (on Rampart's names), left whole · word left · precision (%) on each. The tagger must be one trained
without those real sentences, or the real figures mean nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.anonymize_quality import config_for  # noqa: E402
from tunesmith.data.prep.anonymize import PiiDetector  # noqa: E402
from tunesmith.data.prep.pii_eval import LabelledText, score  # noqa: E402
from tunesmith.data.prep.pii_rules import Span  # noqa: E402
from tunesmith.files import read_jsonl  # noqa: E402


def read_labelled(path: Path) -> list[LabelledText]:
    return [LabelledText(row["text"], [Span(s["start"], s["end"], s["label"], "gold") for s in row["spans"]], -1)
            for _, row in read_jsonl(path)]


def _cell(entry) -> str:
    pct = lambda v: "–" if math.isnan(v) else f"{100 * v:.1f}"  # noqa: E731
    return f"{pct(entry.left_whole_rate)} · {pct(entry.token_left_rate)} · {pct(entry.precision)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tagger", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--thresholds", default="0.5,0.4,0.3,0.2")
    parser.add_argument("--vetoes", default="0", help="anonymize.tagger_veto values (only with the tagger and rampart or spacy)")
    parser.add_argument("--detectors", default="rules+tagger,rules+rampart+tagger")
    parser.add_argument("--judges", default="0", help="anonymize.tagger_judge values (a tagger trained with "
                        "--other-entities drops the other models' names it reads as organisations and places; 0: off)")
    parser.add_argument("--union-with", default=None, metavar="TAGGER",
                        help="a second tagger (another training run): also score the union of the spans of both "
                             "detectors, the one with --tagger and the same one with this tagger (an ensemble of two runs)")
    args = parser.parse_args()
    synthetic = read_labelled(args.data / "valid.jsonl")
    real = read_labelled(args.data / "valid_real.jsonl")
    print(f"| detectors | tagger threshold | veto | tagger judge | synthetic validation ({len(synthetic)} texts): "
          f"any type | real validation ({len(real)} WikiGold sentences): PERSON |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for combo in args.detectors.split(","):
        vetoes = [float(v) for v in args.vetoes.split(",")] if "tagger" in combo and ("rampart" in combo or "spacy" in combo) else [0.0]
        for threshold in (float(t) for t in args.thresholds.split(",")):
            for veto in vetoes:
                for judge in (float(j) for j in args.judges.split(",")):
                    detector = PiiDetector(config_for(combo, tagger_path=args.tagger, tagger_threshold=threshold,
                                                      tagger_veto=veto, tagger_judge=judge))
                    synth_found = [detector.find(e.text) for e in synthetic]
                    real_found = [detector.find(e.text) for e in real]
                    synth, wiki = score(synthetic, synth_found)["ANY"], score(real, real_found)["PERSON"]
                    print(f"| {combo} | {threshold} | {veto} | {judge} | {_cell(synth)} | {_cell(wiki)} |",
                          flush=True)
                    if args.union_with and "tagger" in combo:
                        other = PiiDetector(config_for(combo, tagger_path=args.union_with, tagger_threshold=threshold,
                                                       tagger_veto=veto, tagger_judge=judge))
                        synth = score(synthetic, [a + other.find(e.text) for a, e in zip(synth_found, synthetic)])["ANY"]
                        wiki = score(real, [a + other.find(e.text) for a, e in zip(real_found, real)])["PERSON"]
                        print(f"| {combo}, union with {args.union_with} | {threshold} | {veto} | {judge} | "
                              f"{_cell(synth)} | {_cell(wiki)} |", flush=True)


if __name__ == "__main__":
    main()
