"""Guardrail input rails on a labelled set: false-positive and false-negative rates, and what was missed.

Labels: `allowed` (must pass untouched), `blocked` (must be refused), `pii` (must pass, with personal data
redacted). A refusal of an allowed or pii prompt is a false positive of the blocking rails; an unrefused blocked
prompt is a false negative. For PII: a pii prompt with nothing redacted is a miss; an allowed prompt with something
redacted is a false alarm. No model is needed: the rails run before generation.

    .venv/bin/python bench/guardrails_eval.py [--config examples/guardrails/assistant.yaml]
        [--data examples/guardrails/labelled.jsonl]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "examples/guardrails/assistant.yaml"))
    parser.add_argument("--data", default=str(ROOT / "examples/guardrails/labelled.jsonl"))
    args = parser.parse_args()

    from tunesmith.files import read_jsonl
    from tunesmith.guardrails import Guard, load_guardrails

    guard = Guard(load_guardrails(args.config))
    rows = [row for _, row in read_jsonl(args.data)]
    outcome = []
    for row in rows:
        g = guard.check_input([{"role": "user", "content": row["text"]}])
        redacted = any(d.rail == "input.pii" for d in g.decisions)
        rail = next((d.rail for d in g.decisions if d.action == "block"), None)
        outcome.append((row, g.blocked, redacted, rail))

    def rate(hits: int, n: int) -> str:
        return f"{hits}/{n} = {100 * hits / n:.1f}%" if n else "n/a"

    by = {label: [o for o in outcome if o[0]["label"] == label] for label in ("allowed", "blocked", "pii")}
    not_blocked = by["allowed"] + by["pii"]
    fp_block = [o for o in not_blocked if o[1]]
    fn_block = [o for o in by["blocked"] if not o[1]]
    fn_pii = [o for o in by["pii"] if not o[2]]
    fp_pii = [o for o in by["allowed"] if o[2]]
    print(f"| rail | false positives | false negatives |\n|---|---|---|")
    print(f"| blocking (topics, deny-list, injection, length) | {rate(len(fp_block), len(not_blocked))} of allowed+pii "
          f"prompts refused | {rate(len(fn_block), len(by['blocked']))} of blocked prompts let through |")
    print(f"| PII redaction | {rate(len(fp_pii), len(by['allowed']))} of allowed prompts redacted | "
          f"{rate(len(fn_pii), len(by['pii']))} of PII prompts with nothing redacted |")
    rails = {}
    for o in by["blocked"]:
        if o[3]:
            rails[o[3]] = rails.get(o[3], 0) + 1
    print(f"\nblocked prompts caught by rail: {rails}")
    for title, items in (("refused but allowed", fp_block), ("let through but should be blocked", fn_block),
                         ("PII missed", fn_pii), ("redacted without PII", fp_pii)):
        for o in items:
            print(f"- {title}: {o[0]['text']!r}" + (f" ({o[3]})" if o[3] else ""))


if __name__ == "__main__":
    main()
