"""What each export level changes: every format and GGUF level of one run, against the run's own answers.

    python bench/export_parity.py RUN [--levels q4_0,q4_1,q5_1,q8_0,f16] [-n 32] [--backend transformers|llama.cpp|both]

Reuses the export code itself (one merge, one set of reference answers) and writes RUN/export-bench/parity.json
plus a markdown table on stdout (docs/export.md holds the measured one). `tunesmith export --to gguf` (auto)
keeps the smallest level that passes; this script measures them all, and the runtime-adapter route
(base GGUF + adapter.f16.gguf) through llama.cpp when it is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from tunesmith.export import ExportOptions, _Checker
    from tunesmith.export import llamacpp
    from tunesmith.export.gguf import GgufBuilder, gguf_name
    from tunesmith.export.hf import save_hf
    from tunesmith.export.merge import load_trained, merge_checked
    from tunesmith.models.loading import resolve_model

    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--levels", default="q4_0,q4_1,q5_1,q8_0,f16")
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=Path)
    ap.add_argument("--precision", default="fp32", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--backend", default="transformers", choices=["transformers", "llama.cpp", "both"])
    args = ap.parse_args()
    backends = ["transformers", "llama.cpp"] if args.backend == "both" else [args.backend]

    t0 = time.perf_counter()
    trained = load_trained(args.run)
    merged = merge_checked(trained)
    opts = ExportOptions(n=args.n, max_new_tokens=args.max_new_tokens, prompts=args.prompts, precision=args.precision)
    checker = _Checker(trained.cfg, merged, trained.tokenizer, opts)
    rows = []
    out = args.run / "export-bench"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as work:
        hf_dir = Path(work) / "hf"
        save_hf(merged, trained.tokenizer, hf_dir, "f32")
        builder = GgufBuilder(hf_dir, Path(work))
        for quant in args.levels.split(","):
            path = builder.build(quant, Path(work) / gguf_name(quant))
            for backend in backends:
                checker.opts.backend = backend
                rows.append(checker.gguf(path, quant).to_dict())
        if "llama.cpp" in backends and (args.run / "final" / "adapter_config.json").exists():
            # the runtime-adapter route: the base as published (for the embedded model, its own Q4_1 GGUF) + LoRA
            base_gguf = _base_gguf(trained.cfg.model.name, Path(work))
            adapter = llamacpp.convert_lora(args.run / "final", resolve_model(trained.cfg.model.name), Path(work) / "adapter.f16.gguf")
            exported = llamacpp.answer_with_llamacpp(base_gguf, checker.prompts.conversations, args.max_new_tokens, lora=adapter)
            result = checker.check(exported, base_gguf, "llama.cpp", f"{base_gguf.name} + adapter.f16.gguf")
            rows.append(result.to_dict())
    report = {"run": str(args.run), "prompts": checker.prompts.source, "n": len(checker.reference),
              "max_new_tokens": args.max_new_tokens, "precision": opts.precision, "seconds": round(time.perf_counter() - t0),
              "results": rows}
    (out / "parity.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"prompts: {report['prompts']}, n={report['n']}, greedy, max_new_tokens={args.max_new_tokens}\n")
    print("| level | runtime | size (MiB) | identical to the run | exact match: run → export | first divergence (item: char) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        first = r["divergences"][0] if r["divergences"] else None
        where = f"{first['item']}: {first['at_char']}" if first else "–"
        size = f"{r['size_bytes'] / 2**20:.1f}" if r["size_bytes"] else "–"
        print(f"| {r['quant']} | {r['backend']} | {size} | {r['identical']}/{r['n']} | "
              f"{r['exact_match_reference']:.1f} → {r['exact_match_exported']:.1f} | {where} |")


def _base_gguf(name: str, work: Path) -> Path:
    from tunesmith.models.loading import EMBEDDED, _embedded_gguf, resolve_model

    if name in EMBEDDED:
        return _embedded_gguf(name)
    from tunesmith.export import llamacpp

    return llamacpp.convert_hf(resolve_model(name), work / "base.f16.gguf", "f16")


if __name__ == "__main__":
    main()
