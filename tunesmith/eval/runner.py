"""`tunesmith eval`: one held-out set through every variant, same decoding and metrics, into one report.

Reads top to bottom: data + leakage check → prompts per variant → for each variant: generate, time it, score
it, loss of the references → forgetting panel for tuned models → everything into a JSON-able dict → report.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import psutil
import typer
from rich.console import Console

from tunesmith.cli import RequiredConfigArg, SetOpt
from tunesmith.config import read_config
from tunesmith.data.formats import load_examples
from tunesmith.data.tokenize import render_prompt
from tunesmith.eval.config import EvalConfig, FewShotVariant, RagVariant, TunedVariant, variant_label
from tunesmith.data.dedup import Item, check_leakage
from tunesmith.eval.metrics import Normalizer, bootstrap_ci, build_metrics, paired_bootstrap_diff
from tunesmith.eval.prompts import (
    BuiltPrompt, FewShotBuilder, RagBuilder, prompt_of, question_of, reference_of, training_pairs_as_passages,
)
from tunesmith.eval.retrieval import load_corpus
from tunesmith.eval.scoring import reference_loss
from tunesmith.generate import generate_chat, load_for_inference
from tunesmith.records import DataError, Example, TunesmithError
from tunesmith.train.tracking import read_metrics

console = Console(stderr=True)


class PeakRss:
    """Peak resident memory of this process while a block runs (sampled every 50 ms).

    getrusage's ru_maxrss is a lifetime maximum, so it cannot tell one variant's peak from the previous one's.
    """

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._process = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)


def load_split(path: str, cfg: EvalConfig, limit: int | None) -> list[Example]:
    data_cfg = cfg.data.model_copy(update={"limit": limit})
    examples, issues = load_examples(path, data_cfg)
    if issues:
        raise DataError(issues, hint="fix the rows above, or check the eval config's `data:` section (format, template)")
    if not examples:
        raise TunesmithError(f"{path}: no examples")
    return examples


def run_cost(run: Path) -> dict[str, Any]:
    """Training cost from the run folder: its train_summary.json, else the size of its adapter."""
    cost: dict[str, Any] = {}
    summary = run / "train_summary.json"
    if summary.is_file():
        values = json.loads(summary.read_text(encoding="utf-8"))
        cost = {key: values[key] for key in ("train_seconds", "trained_tokens", "trainable_parameters",
                                             "total_parameters", "peak_rss_mb") if key in values}
    adapter = run / "final" / "adapter_model.safetensors"
    if "trainable_parameters" not in cost and adapter.is_file():
        from safetensors import safe_open

        with safe_open(str(adapter), "pt") as f:
            cost["trainable_parameters"] = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return cost


def loss_curve(run: Path) -> dict[str, list]:
    curve: dict[str, list] = {"step": [], "loss": [], "valid_step": [], "valid_loss": []}
    for row in read_metrics(run):
        if "loss" in row:
            curve["step"].append(row["step"])
            curve["loss"].append(row["loss"])
        if "valid_loss" in row:
            curve["valid_step"].append(row["step"])
            curve["valid_loss"].append(row["valid_loss"])
    return curve


def score_variant(name: str, predictions: list[str], references: list[str], tests: list[Example], cfg: EvalConfig,
                  metrics) -> dict[str, Any]:
    boot = cfg.metrics.bootstrap
    scores: dict[str, Any] = {}
    items: dict[str, list[float]] = {}
    for metric in metrics:
        per_item = metric.score_items(predictions, references)
        items[metric.name] = per_item
        scores[metric.name] = metric.score_corpus(predictions, references, per_item)
    low, high = bootstrap_ci(items[cfg.metrics.headline], boot.samples, boot.confidence, boot.seed)
    breakdown: dict[str, dict[str, dict[str, float]]] = {}
    for field in cfg.metrics.breakdown_by:
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(tests):
            groups.setdefault(str(ex.meta.get(field, "(missing)")), []).append(i)
        breakdown[field] = {value: {"n": len(idx), "score": sum(items[cfg.metrics.headline][i] for i in idx) / len(idx)}
                            for value, idx in sorted(groups.items())}
    return {"name": name, "scores": scores, "items": items, "headline_ci": [low, high], "breakdown": breakdown}


def run_eval(cfg: EvalConfig, out_dir: str | Path | None = None, show_progress: bool = True) -> dict[str, Any]:
    wall_start = time.perf_counter()
    out = Path(out_dir or cfg.report.dir)
    out.mkdir(parents=True, exist_ok=True)

    # ---- data and leakage ----
    tests = load_split(cfg.data.test, cfg, cfg.data.n)
    pool = load_split(cfg.data.train, cfg, cfg.data.limit)
    prompts = [prompt_of(ex) for ex in tests]
    references = [reference_of(ex) for ex in tests]
    leakage = check_leakage([Item(question_of(ex), reference_of(ex)) for ex in pool],
                            [Item(question_of(ex), reference_of(ex)) for ex in tests], cfg.leakage.near_duplicate_jaccard)
    if not leakage.clean:
        console.print(f"[bold yellow]leakage:[/] {len(leakage.leaked_items)} of {len(tests)} test items overlap the "
                      "training data (see the top of the report)")
    metrics = build_metrics(cfg.metrics.use, Normalizer.from_config(cfg.metrics.normalize), cfg.metrics.custom)

    # ---- prompts per variant (identical decoding for all; only the prompt differs) ----
    console.print(f"[bold]eval[/]: {len(tests)} test items, {len(pool)} training items, "
                  f"{len(cfg.variants)} variants: {', '.join(variant_label(v) for v in cfg.variants)}")
    base_model, tokenizer = load_for_inference(model=cfg.model.name, device=cfg.model.device)
    r = cfg.retrieval
    built: dict[str, list[BuiltPrompt]] = {}
    rag_cache: list[BuiltPrompt] | None = None

    def rag_prompts() -> list[BuiltPrompt]:
        nonlocal rag_cache
        if rag_cache is None:
            passages = load_corpus(r.corpus, r.passage_words) if r.corpus else training_pairs_as_passages(pool)
            rag_cache = RagBuilder(passages, tokenizer, r.k, r.rag_template, r.max_prompt_tokens, r.cache_dir,
                                   r.index).build(tests)
        return rag_cache

    for variant in cfg.variants:
        label = variant_label(variant)
        if isinstance(variant, FewShotVariant):
            built[label] = FewShotBuilder(pool, tokenizer, variant.k, variant.select, variant.seed, r.max_prompt_tokens,
                                          r.cache_dir, r.index).build(tests)
        elif isinstance(variant, RagVariant) or (isinstance(variant, TunedVariant) and variant.rag):
            built[label] = rag_prompts()
        else:
            built[label] = [BuiltPrompt(p, []) for p in prompts]

    # ---- forgetting: general data, base model first ----
    forgetting_on = cfg.forgetting.enabled and any(isinstance(v, TunedVariant) for v in cfg.variants)
    general_tasks = base_general = None
    if forgetting_on:
        from tunesmith.eval.forgetting import load_general_tasks, measure_general

        general_tasks = load_general_tasks(cfg.forgetting.data, cfg.forgetting.n)
        console.print(f"[bold]forgetting panel[/]: base model on {len(general_tasks)} general instructions")
        base_general = measure_general(base_model, tokenizer, general_tasks, None, cfg.forgetting.max_new_tokens,
                                       cfg.generation.batch_size, cfg.generation.precision)

    # ---- run every variant ----
    results: list[dict[str, Any]] = []
    general_by_run: dict[str, Any] = {}
    g = cfg.generation
    for variant in cfg.variants:
        label = variant_label(variant)
        console.rule(f"[bold]{label}")
        conversations = [b.conversation for b in built[label]]
        model, model_tokenizer = base_model, tokenizer
        if isinstance(variant, TunedVariant):
            model, model_tokenizer = load_for_inference(run=variant.run, device=cfg.model.device)
        with PeakRss() as memory:
            start = time.perf_counter()
            predictions = generate_chat(model, model_tokenizer, conversations, max_new_tokens=g.max_new_tokens,
                                        batch_size=g.batch_size, precision=g.precision, show_progress=show_progress)
            seconds = time.perf_counter() - start
        result = score_variant(label, predictions, references, tests, cfg, metrics)
        result.update(kind=variant.kind, predictions=predictions, generation_seconds=round(seconds, 2),
                      seconds_per_item=round(seconds / len(tests), 3), peak_rss_mb=memory.mb,
                      prompt_tokens_mean=round(sum(len(model_tokenizer(render_prompt(model_tokenizer, c), add_special_tokens=False)
                                                       ["input_ids"]) for c in conversations) / len(conversations), 1),
                      examples_dropped_to_fit=sum(b.dropped for b in built[label]))
        if cfg.metrics.loss:
            with_answers = [c + [{"role": "assistant", "content": ref}] for c, ref in zip(conversations, references)]
            loss = reference_loss(model, model_tokenizer, chats=with_answers, precision=g.precision,
                                  max_seq_len=max(cfg.data.max_seq_len, r.max_prompt_tokens + cfg.data.max_seq_len))
            result.update(reference_loss=loss.loss, reference_perplexity=loss.perplexity)
        if isinstance(variant, TunedVariant):
            run = Path(variant.run)
            result.update(run=str(run), cost=run_cost(run), loss_curve=loss_curve(run))
            if forgetting_on and general_tasks is not None and base_general is not None:
                from tunesmith.eval.forgetting import judge_forgetting, measure_general

                if str(run) not in general_by_run:  # tuned and tuned+rag share one model: measure it once
                    same_vocab = model.get_output_embeddings().weight.shape == base_model.get_output_embeddings().weight.shape
                    general_by_run[str(run)] = measure_general(
                        model, model_tokenizer, general_tasks, base_model if same_vocab else None,
                        cfg.forgetting.max_new_tokens, g.batch_size, g.precision)
                tuned_general = general_by_run[str(run)]
                f = cfg.forgetting
                verdict = judge_forgetting(base_general, tuned_general, f.max_perplexity_increase, f.max_kl, f.max_chrf_drop)
                result["forgetting"] = {"scores": _general_dict(tuned_general), "verdict": verdict.to_dict()}
        results.append(result)
        console.print(f"{label}: {cfg.metrics.headline} {result['scores'][cfg.metrics.headline]:.1f} "
                      f"({seconds:.0f} s, {result['seconds_per_item']:.2f} s/item)")
        if model is not base_model:
            del model

    report = {
        "title": cfg.report.title,
        "config": cfg.model_dump(mode="json"),
        "n_test": len(tests), "n_train": len(pool),
        "headline": cfg.metrics.headline,
        "metrics": [{"name": m.name, "description": m.description} for m in metrics],
        "confidence": cfg.metrics.bootstrap.confidence,
        "leakage": leakage.to_dict(),
        "variants": results,
        "items": [{"question": question_of(ex), "reference": ref, "meta": ex.meta, "source": str(ex.source)}
                  for ex, ref in zip(tests, references)],
        "forgetting_base": _general_dict(base_general) if base_general else None,
        "general_prompts": [t.prompt[-1]["content"] for t in general_tasks] if general_tasks else [],
        "general_answers": [t.answer for t in general_tasks] if general_tasks else [],
        "comparisons": compare(results, cfg),
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
    }
    from tunesmith.eval.report import write_report

    write_report(report, out, worst=cfg.report.worst)
    return report


def _general_dict(scores) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(scores)


def compare(results: list[dict[str, Any]], cfg: EvalConfig) -> dict[str, Any]:
    """The winner by the headline metric, and its paired-bootstrap difference to the best other variant."""
    h = cfg.metrics.headline
    ranked = sorted(results, key=lambda r: -r["scores"][h])
    out: dict[str, Any] = {"ranking": [r["name"] for r in ranked], "winner": ranked[0]["name"]}
    if len(ranked) > 1:
        b = cfg.metrics.bootstrap
        diff, low, high = paired_bootstrap_diff(ranked[0]["items"][h], ranked[1]["items"][h], b.samples, b.confidence, b.seed)
        out["runner_up"] = ranked[1]["name"]
        out["difference"] = {"mean": diff, "ci": [low, high], "significant": low > 0 or high < 0}
        untuned = [r for r in ranked if r["kind"] != "tuned"]
        tuned = [r for r in ranked if r["kind"] == "tuned"]
        if untuned and tuned:
            diff, low, high = paired_bootstrap_diff(tuned[0]["items"][h], untuned[0]["items"][h], b.samples, b.confidence, b.seed)
            out["tuned_vs_best_alternative"] = {"tuned": tuned[0]["name"], "alternative": untuned[0]["name"],
                                                "mean": diff, "ci": [low, high], "significant": low > 0 or high < 0}
    return out


def eval_command(
    config: RequiredConfigArg, overrides: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder (sets report.dir)")] = None,
    n: Annotated[Optional[int], typer.Option("-n", help="Evaluate only the first N test items (sets data.n)")] = None,
    no_forgetting: Annotated[bool, typer.Option("--no-forgetting", help="Skip the forgetting panel (sets forgetting.enabled=false)")] = False,
):
    """Compare base, few-shot, RAG and tuned variants on one held-out set; write report.md/.html/.json."""
    from tunesmith.eval.report import verdict

    cfg = read_config(EvalConfig, config, overrides or [], options={
        "report.dir": str(out) if out else None, "data.n": n, "forgetting.enabled": False if no_forgetting else None})
    report = run_eval(cfg)
    for line in verdict(report):
        console.print(line.replace("**", ""))
    console.print(f"[green]Report[/]: {Path(cfg.report.dir) / 'report.html'} (also report.md, report.json)")
