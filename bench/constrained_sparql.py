"""Constrained decoding on DBLP-QuAD: how often the tuned model's SPARQL parses, with and without the grammar.

Same run, same validation prompts (the run's own template), greedy, same token budget; the only difference is the
SPARQL grammar (tunesmith/guardrails/grammars/sparql_dblp.lark) masking the next-token scores. Scored with eval's
metrics: `sparql_valid` (rdflib parses it) and `sparql_match` (same query as the reference, modulo variable names,
whitespace and triple order). Writes a JSON summary and prints a markdown table.

    .venv/bin/python bench/constrained_sparql.py --run runs/dblp-quad-lora [--n 240] [--out runs/constrained.json]
        [--only unconstrained|constrained]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", default=str(ROOT / "examples/dblp_quad/data/valid.jsonl"))
    parser.add_argument("--n", type=int, default=None, help="First N rows (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=176)  # the longest reference is 160 tokens
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None, help="JSON summary; an existing one gains the variants run now")
    parser.add_argument("--only", choices=["unconstrained", "constrained"], default=None,
                        help="Run one variant (two shorter jobs instead of one long one)")
    args = parser.parse_args()

    from tunesmith.config import load_config
    from tunesmith.data.formats import load_examples
    from tunesmith.eval.metrics import Normalizer, build_metrics
    from tunesmith.eval.prompts import prompt_of, reference_of
    from tunesmith.files import atomic_write_json
    from tunesmith.generate import RowRequest, encode_chat, generate_rows, load_for_inference
    from tunesmith.guardrails.config import StructuredOutput
    from tunesmith.guardrails.structured import constraint_factory

    cfg = load_config(Path(args.run) / "config.yaml")
    examples, issues = load_examples(args.data, cfg.data.model_copy(update={"limit": args.n, "truncation": "right"}))
    assert not issues, issues[:3]
    prompts = [prompt_of(e) for e in examples]
    references = [reference_of(e) for e in examples]
    model, tokenizer = load_for_inference(run=args.run)
    make = constraint_factory(StructuredOutput(grammar="sparql"), tokenizer, model.config.vocab_size)
    metrics = build_metrics(["sparql_match", "exact_match"], Normalizer(whitespace=True, strip_quotes=True))
    summary = {"run": args.run, "data": args.data, "n": len(examples), "max_new_tokens": args.max_new_tokens,
               "variants": {}, "predictions": {}}
    if args.out and Path(args.out).is_file():
        summary = json.loads(Path(args.out).read_text())
    predictions = summary["predictions"]
    for name, constrained in (("unconstrained", False), ("constrained", True)):
        if args.only and name != args.only:
            continue
        rows = [RowRequest(encode_chat(tokenizer, p), max_new_tokens=args.max_new_tokens,
                           constraint=make() if constrained else None) for p in prompts]
        start = time.perf_counter()
        results = generate_rows(model, tokenizer, rows, batch_size=args.batch_size, show_progress=True)
        seconds = time.perf_counter() - start
        texts = [r.text.strip() for r in results]
        predictions[name] = texts
        scores = {m.name: round(sum(m.score_items(texts, references)) / len(texts), 1) for m in metrics}
        summary["variants"][name] = {**scores, "seconds": round(seconds, 1),
                                     "cut_by_token_limit": sum(r.finish_reason == "length" for r in results),
                                     "tokens": sum(r.completion_tokens for r in results)}
        print(name, summary["variants"][name], flush=True)
    if args.out:
        atomic_write_json(args.out, summary, indent=1)
    if len(predictions) < 2:
        return
    changed = [i for i, (a, b) in enumerate(zip(predictions["unconstrained"], predictions["constrained"])) if a != b]
    summary["answers_changed"] = len(changed)
    summary["examples_changed"] = [{"reference": references[i], "unconstrained": predictions["unconstrained"][i],
                                    "constrained": predictions["constrained"][i]} for i in changed[:10]]
    print("\n| decoding | parses (sparql_valid) | sparql_match | exact_match | cut by token limit | seconds |")
    print("|---|---|---|---|---|---|")
    for name, v in summary["variants"].items():
        print(f"| {name} | {v['sparql_valid']}% | {v['sparql_match']}% | {v['exact_match']}% | "
              f"{v['cut_by_token_limit']} | {v['seconds']} |")
    print(f"\n{len(changed)} of {len(examples)} answers differ between the two.")
    if args.out:
        atomic_write_json(args.out, summary, indent=1)


if __name__ == "__main__":
    main()
