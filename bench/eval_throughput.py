"""Eval generation throughput: tunesmith's batched `generate_chat` vs one prompt at a time with plain transformers,
and, with `--llamacpp` (needs `make llamacpp`), vs llama.cpp itself.

Same model, same prompts (DBLP-QuAD validation questions through the chat template), greedy, same token budget and
stop tokens, one process, run back to back. Prints a table and writes it into docs/benchmarks.md.
llama.cpp (llama-cpp-python, one prompt at a time, as its chat API serves them) runs an f16 GGUF of the very weights
tunesmith uses (a run is merged first), and for the base model also the Q4_1 GGUF the embedded model ships as; it
renders prompts with the GGUF's own chat template and counts the tokens it reports.

    .venv/bin/python bench/eval_throughput.py [--n 48] [--batch-size 16] [--max-new-tokens 96] [--run runs/demo]
                                              [--llamacpp]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_at_a_time(model, tokenizer, conversations, max_new_tokens: int) -> list[str]:
    """The plain recipe: tokenize one rendered prompt, model.generate, decode; no batching."""
    import torch

    from tunesmith.data.tokenize import render_prompt
    from tunesmith.generate import stop_token_ids

    stops = stop_token_ids(model, tokenizer)
    answers = []
    with torch.inference_mode():
        for conversation in conversations:
            enc = tokenizer(render_prompt(tokenizer, conversation), add_special_tokens=False, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id)
            answers.append(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def llamacpp_runs(source: dict, model_name: str, conversations, max_new_tokens: int) -> list[tuple[str, float, int]]:
    """(label, seconds, generated tokens) for each GGUF llama.cpp answers the prompts from, one at a time."""
    import tempfile

    from llama_cpp import Llama

    from tunesmith.export import llamacpp
    from tunesmith.models.loading import EMBEDDED, _embedded_gguf, resolve_model

    threads = int(os.environ.get("TUNESMITH_THREADS", "0") or 0) or None
    rows = []
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as work:
        if "run" in source:  # the run's weights, merged, as the f16 GGUF `tunesmith export` would write
            from tunesmith.export.hf import save_hf
            from tunesmith.export.merge import load_trained, merge_checked

            trained = load_trained(source["run"])
            save_hf(merge_checked(trained), trained.tokenizer, Path(work) / "hf", "f32")
            ggufs = [("f16 GGUF of the merged run", llamacpp.convert_hf(Path(work) / "hf", Path(work) / "run.f16.gguf", "f16"))]
        else:
            ggufs = [("f16 GGUF of the same weights",
                      llamacpp.convert_hf(resolve_model(model_name), Path(work) / "base.f16.gguf", "f16"))]
            if model_name in EMBEDDED:
                ggufs.append(("the embedded model's own Q4_1 GGUF", _embedded_gguf(model_name)))
        for label, path in ggufs:
            llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, seed=0,
                        verbose=False)
            llm.create_chat_completion(messages=conversations[0], temperature=0.0, top_k=1, max_tokens=8)  # warm-up
            start, tokens = time.perf_counter(), 0
            for conversation in conversations:
                out = llm.create_chat_completion(messages=conversation, temperature=0.0, top_k=1,
                                                 max_tokens=max_new_tokens)
                # + the end-of-turn token where it ended there, as tunesmith's count below includes it
                tokens += out["usage"]["completion_tokens"] + (out["choices"][0]["finish_reason"] == "stop")
            rows.append((label, time.perf_counter() - start, tokens))
            del llm
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--run", default="runs/demo", help="A trained run (its answers stop like real eval answers); "
                                                           "the base model if the folder does not exist")
    parser.add_argument("--llamacpp", action="store_true", help="also time llama.cpp (llama-cpp-python, `make llamacpp`)")
    args = parser.parse_args()

    import torch

    from tunesmith.config import load_config
    from tunesmith.data.formats import load_examples
    from tunesmith.eval.prompts import prompt_of
    from tunesmith.generate import generate_chat, load_for_inference

    cfg = load_config(ROOT / "configs" / "dblp-quad-lora.yaml", [f"data.limit={args.n}"])
    examples, _ = load_examples(ROOT / "examples/dblp_quad/data/valid.jsonl", cfg.data)
    conversations = [prompt_of(ex) for ex in examples]
    run = ROOT / args.run
    source = dict(run=run) if (run / "final").exists() else dict(model=cfg.model.name)
    # tunesmith's path: weights prepared for inference (bf16 Linear weights where the CPU has native bf16);
    # the plain recipe: the model as from_pretrained gives it (fp32), no autocast
    model, tokenizer = load_for_inference(**source, precision="auto")
    plain_model, _ = load_for_inference(**source)
    which = f"LoRA run {args.run} (merged in memory)" if (run / "final").exists() else "base SmolLM2-135M-Instruct"

    generate_chat(model, tokenizer, conversations[:2], max_new_tokens=8, batch_size=2, show_progress=False)  # warm-up
    start = time.perf_counter()
    batched = generate_chat(model, tokenizer, conversations, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size, show_progress=False)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    single = one_at_a_time(plain_model, tokenizer, conversations, args.max_new_tokens)
    single_s = time.perf_counter() - start
    del plain_model
    llama_rows = llamacpp_runs(source, cfg.model.name, conversations, args.max_new_tokens) if args.llamacpp else []

    precision = "bf16" if any(p.dtype == torch.bfloat16 for p in model.parameters()) else "fp32"
    same = sum(a == b for a, b in zip(batched, single))
    # generated tokens (answers re-tokenized, end-of-turn token included): comparable with llama.cpp's tokens/s
    tokens = {name: sum(len(tokenizer(a, add_special_tokens=False).input_ids) + 1 for a in answers)
              for name, answers in (("single", single), ("batched", batched))}
    ratio = single_s / batched_s
    table = (
        "## Eval generation throughput: batched vs one prompt at a time\n\n"
        f"Command: `.venv/bin/python bench/eval_throughput.py --n {args.n} --batch-size {args.batch_size} "
        f"--max-new-tokens {args.max_new_tokens} --run {args.run}{' --llamacpp' if args.llamacpp else ''}` · machine: {os.cpu_count()}-core CPU "
        f"({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads · model: {which} · "
        f"{args.n} DBLP-QuAD validation questions, greedy, up to {args.max_new_tokens} new tokens, stop at end-of-turn.\n\n"
        "| how | items | seconds | items/s | generated tokens/s |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"| transformers `generate`, one prompt at a time | {args.n} | {single_s:.1f} | {args.n / single_s:.2f} | "
        f"{tokens['single'] / single_s:.1f} |\n"
        f"| tunesmith `generate_chat` (batch {args.batch_size}, left-padded, KV cache, sorted by length, finished rows "
        f"dropped every 16 tokens, {precision} weights) | {args.n} | "
        f"{batched_s:.1f} | {args.n / batched_s:.2f} | {tokens['batched'] / batched_s:.1f} |\n"
        + "".join(f"| llama.cpp (llama-cpp-python), one prompt at a time, {label} | {args.n} | {seconds:.1f} | "
                  f"{args.n / seconds:.2f} | {count / seconds:.1f} |\n" for label, seconds, count in llama_rows)
        + "\n"
        + "".join(f"tunesmith batched against llama.cpp ({label}): **{tokens['batched'] / batched_s / (count / seconds):.2f}x** "
                  "its generated tokens/s.\n" for label, seconds, count in llama_rows)
        + f"**Speed-up: {ratio:.1f}x.** Identical answers: {same} of {args.n} (greedy decoding; {precision} against "
        "fp32 and batched against single matmuls round differently, so a near-tie between two tokens can go the "
        "other way).\n"
    )
    print(table)
    from bench.report import update_section

    update_section("eval-throughput", table)


if __name__ == "__main__":
    main()
