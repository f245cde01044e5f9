"""`tunesmith eval`: one held-out set through every variant, same decoding and metrics, into one report.

Reads top to bottom: data + leakage check → prompts per variant → for each variant: generate (the references' loss
measured in the same pass over the prompts), time it, score it → forgetting panel for tuned models → a typed
`EvalReport` → report files. Each kind of
variant (base, few-shot, RAG, tuned) is a small class with one interface: its prompts, its model, its extras.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Optional

import psutil
import typer
from rich.console import Console

from tunesmith.cli import RequiredConfigArg, SetOpt, ThreadsOpt
from tunesmith.config import read_config
from tunesmith.data.dedup import Item, check_leakage
from tunesmith.data.formats import load_examples
from tunesmith.data.iris import expand
from tunesmith.eval.config import EvalConfig
from tunesmith.eval.metrics import Metric, Normalizer, bootstrap_ci, build_metrics, paired_bootstrap_diff
from tunesmith.eval.prompts import (
    BuiltPrompt, FewShotBuilder, RagBuilder, prompt_of, question_of, reference_of, training_pairs_as_passages,
)
from tunesmith.eval.results import (
    Cell, Comparisons, Cost, Difference, EvalReport, Forgetting, Leakage, LossCurve, MetricInfo, TestItem,
    TunedVsAlternative, VariantResult,
)
from tunesmith.eval.retrieval import load_corpus
from tunesmith.eval.scoring import answers_and_reference_loss
from tunesmith.generate import cut_off_warning, encode_chat, load_for_inference, loop_stop_warning, run_data_config
from tunesmith.files import read_json
from tunesmith.records import DataError, DataIssue, Example, SourceRef, TunesmithError
from tunesmith.threads import use_threads
from tunesmith.train.tracking import read_metrics

console = Console(stderr=True)


def run_eval(cfg: EvalConfig, show_progress: bool = True) -> EvalReport:
    wall_start = time.perf_counter()
    ctx = EvalContext.prepare(cfg)
    variants = [VARIANTS[v.kind](v) for v in cfg.variants]
    prompts = {v.label: v.prompts(ctx) for v in variants}  # identical decoding for all; only the prompt differs
    ctx.measure_base_forgetting(any(v.kind == "tuned" for v in variants))
    results = [evaluate_variant(ctx, v, prompts[v.label], show_progress) for v in variants]
    report = EvalReport(
        title=cfg.report.title, config=cfg.model_dump(mode="json"), n_test=len(ctx.tests), n_train=len(ctx.pool),
        headline=cfg.metrics.headline, metrics=[MetricInfo(name=m.name, description=m.description) for m in ctx.metrics],
        confidence=cfg.metrics.bootstrap.confidence, leakage=ctx.leakage, variants=results,
        items=[TestItem(question=question_of(ex), reference=ref, meta=ex.meta, source=str(ex.source))
               for ex, ref in zip(ctx.tests, ctx.as_scored(ctx.references))],
        forgetting_base=ctx.base_general, general_prompts=[t.prompt[-1]["content"] for t in ctx.general_tasks],
        general_answers=[t.answer for t in ctx.general_tasks], comparisons=compare(results, cfg),
        wall_seconds=round(time.perf_counter() - wall_start, 1))
    from tunesmith.eval.report import write_report

    write_report(report, cfg.report.dir, worst=cfg.report.worst)
    return report


def rescore(cfg: EvalConfig) -> EvalReport:
    """The report already in `report.dir`, its saved predictions scored again with the metrics of `cfg` and of
    this version of tunesmith (a metric added or fixed since): nothing is generated, no model is loaded."""
    from tunesmith.eval.report import write_report

    path = Path(cfg.report.dir) / "report.json"
    if not path.is_file():
        raise TunesmithError(f"{path}: no report to re-score; run `tunesmith eval` without --rescore first")
    report = EvalReport.model_validate_json(path.read_text(encoding="utf-8"))
    references = [item.reference for item in report.items]
    metrics = build_metrics(cfg.metrics.use, Normalizer.from_config(cfg.metrics.normalize), cfg.metrics.custom)
    variants = []
    for old in report.variants:
        if len(old.predictions) != len(references):
            raise TunesmithError(f"{path}: variant {old.name!r} has {len(old.predictions)} predictions for "
                                 f"{len(references)} test items; the report cannot be re-scored")
        new = score_variant(old.name, old.kind, old.predictions, references, report.items, cfg, metrics)
        variants.append(old.model_copy(update={k: getattr(new, k) for k in ("scores", "items", "headline_ci", "breakdown")}))
    report = report.model_copy(update={
        "variants": variants, "headline": cfg.metrics.headline, "confidence": cfg.metrics.bootstrap.confidence,
        "metrics": [MetricInfo(name=m.name, description=m.description) for m in metrics],
        "config": {**report.config, "metrics": cfg.metrics.model_dump(mode="json")},
        "comparisons": compare(variants, cfg)})
    write_report(report, cfg.report.dir, worst=cfg.report.worst)
    return report


# ---- what every variant shares ----

@dataclass
class EvalContext:
    cfg: EvalConfig
    tests: list[Example]
    pool: list[Example]  # the training rows: few-shot pool, default RAG corpus, leakage check
    references: list[str]  # as the model writes them (IRIs compacted under data.iri_prefixes): their loss
    leakage: Leakage
    metrics: list[Metric]
    base_model: Any
    tokenizer: Any
    general_tasks: list = field(default_factory=list)  # forgetting panel: general instructions
    base_general: Any = None  # the base model's scores on them
    general_by_run: dict[str, Any] = field(default_factory=dict)  # tuned and tuned+rag share a run: measured once
    loaded_run: tuple[str, Any, Any] | None = None  # (run, model, tokenizer) of the last tuned variant: reused by
    # the next variant of the same run (tuned, then tuned + rag), replaced by another run's

    def as_scored(self, answers: list[str]) -> list[str]:
        """Answers as they are scored and reported: compacted IRIs expanded back (tunesmith/data/iris.py)."""
        return [expand(a, self.cfg.data.iri_prefixes) for a in answers]

    @classmethod
    def prepare(cls, cfg: EvalConfig) -> EvalContext:
        tests = load_split(cfg.data.test, cfg, cfg.data.n)
        pool = load_split(cfg.data.train, cfg, cfg.data.limit)
        found = check_leakage([Item(question_of(ex), reference_of(ex)) for ex in pool],
                              [Item(question_of(ex), reference_of(ex)) for ex in tests], cfg.leakage.near_duplicate_jaccard,
                              cache_dir=cfg.retrieval.cache_dir)
        if not found.clean:
            console.print(f"[bold yellow]leakage:[/] {len(found.leaked_items)} of {len(tests)} test items overlap the "
                          "training data (see the top of the report)")
        metrics = build_metrics(cfg.metrics.use, Normalizer.from_config(cfg.metrics.normalize), cfg.metrics.custom)
        console.print(f"[bold]eval[/]: {len(tests)} test items, {len(pool)} training items, "
                      f"{len(cfg.variants)} variants: {', '.join(v.label for v in cfg.variants)}")
        base_model, tokenizer = load_for_inference(model=cfg.model.name, device=cfg.model.device,
                                                   precision=cfg.generation.precision)
        references = [reference_of(ex) for ex in tests]
        if warning := cut_off_warning(tokenizer, references, cfg.generation.max_new_tokens, "generation.max_new_tokens"):
            console.print(f"[bold yellow]warning:[/] {warning}")
        if warning := loop_stop_warning(tokenizer, references, cfg.generation.stop_loops, "generation.stop_loops"):
            console.print(f"[bold yellow]warning:[/] {warning}")
        if stopped := [i for i, r in enumerate(references) if any(s in r for s in cfg.generation.stop)]:
            console.print(f"[bold yellow]warning:[/] generation.stop would cut {len(stopped)} of {len(references)} "
                          f"references short (the first: item {stopped[0] + 1}): answers like them would be scored "
                          "wrong; remove the stop string they contain")
        return cls(cfg, tests, pool, references, Leakage(**found.to_dict()), metrics,
                   base_model, tokenizer)

    @cached_property
    def zero_shot_prompts(self) -> list[BuiltPrompt]:
        return [BuiltPrompt(prompt_of(ex), []) for ex in self.tests]

    @cached_property
    def rag_prompts(self) -> list[BuiltPrompt]:
        """Built once: the rag variant and every tuned + rag variant see the same passages."""
        r = self.cfg.retrieval
        if r.corpus:
            passages, keys = load_corpus(r.corpus, r.passage_words), None
        else:  # the training pairs, found by their questions
            passages, keys = training_pairs_as_passages(self.pool)
        return RagBuilder(passages, self.tokenizer, r.k, r.rag_template, r.max_prompt_tokens, r.cache_dir, r.index,
                          keys).build(self.tests)

    def measure_base_forgetting(self, wanted: bool) -> None:
        f, g = self.cfg.forgetting, self.cfg.generation
        if not (wanted and f.enabled):
            return
        from tunesmith.eval.forgetting import (
            base_scores_path, load_general_tasks, measure_general, read_cached_scores, write_cached_scores,
        )

        self.general_tasks = load_general_tasks(f.data, f.n)
        cached = base_scores_path(self.cfg.retrieval.cache_dir, self.cfg.model.name, self.general_tasks,
                                  f.max_new_tokens, g.batch_size, g.precision,
                                  str(next(self.base_model.parameters()).device)) if f.cache else None
        if cached is not None and (scores := read_cached_scores(cached)) is not None:
            console.print(f"[bold]forgetting panel[/]: base model's scores from {cached} (same weights, instructions "
                          "and settings)")
            self.base_general = scores
            return
        console.print(f"[bold]forgetting panel[/]: base model on {len(self.general_tasks)} general instructions")
        self.base_general = measure_general(self.base_model, self.tokenizer, self.general_tasks, None,
                                            f.max_new_tokens, g.batch_size, g.precision)
        if cached is not None:
            write_cached_scores(cached, self.base_general)

    def forgetting_of(self, run: str, model, tokenizer) -> Forgetting | None:
        """The forgetting verdict of a tuned model against the base model, measured once per run folder."""
        if self.base_general is None:
            return None
        from tunesmith.eval.forgetting import judge_forgetting, measure_general

        f, g = self.cfg.forgetting, self.cfg.generation
        if run not in self.general_by_run:
            same_vocab = model.get_output_embeddings().weight.shape == self.base_model.get_output_embeddings().weight.shape
            self.general_by_run[run] = measure_general(model, tokenizer, self.general_tasks,
                                                       self.base_model if same_vocab else None, f.max_new_tokens,
                                                       g.batch_size, g.precision)
        scores = self.general_by_run[run]
        verdict = judge_forgetting(self.base_general, scores, f.max_perplexity_increase, f.max_kl, f.max_chrf_drop)
        return Forgetting(scores=scores, verdict=verdict)


# ---- the variants: one interface (prompts, model, extras), one class per kind ----

class ZeroShot:
    """The base model, asked the test prompt as it is."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.kind, self.label = cfg.kind, cfg.label

    def prompts(self, ctx: EvalContext) -> list[BuiltPrompt]:
        return ctx.zero_shot_prompts

    def model(self, ctx: EvalContext):
        return ctx.base_model, ctx.tokenizer

    def extras(self, ctx: EvalContext, model, tokenizer) -> dict[str, Any]:
        return {}


class FewShot(ZeroShot):
    """The base model with k solved training examples as earlier chat turns."""

    def prompts(self, ctx: EvalContext) -> list[BuiltPrompt]:
        r = ctx.cfg.retrieval
        return FewShotBuilder(ctx.pool, ctx.tokenizer, self.cfg.k, self.cfg.select, self.cfg.seed, r.max_prompt_tokens,
                              r.cache_dir, r.index).build(ctx.tests)


class Rag(ZeroShot):
    """The base model with retrieved passages above the question."""

    def prompts(self, ctx: EvalContext) -> list[BuiltPrompt]:
        return ctx.rag_prompts


class Tuned(ZeroShot):
    """A trained run (optionally with RAG prompts), with its training cost, loss curve and forgetting."""

    def prompts(self, ctx: EvalContext) -> list[BuiltPrompt]:
        return ctx.rag_prompts if self.cfg.rag else ctx.zero_shot_prompts

    def model(self, ctx: EvalContext):
        run = str(Path(self.cfg.run).resolve())
        if ctx.loaded_run is None or ctx.loaded_run[0] != run:
            ctx.loaded_run = None  # the previous run's model goes before the next one loads
            trained_with = run_data_config(self.cfg.run).iri_prefixes
            if trained_with != ctx.cfg.data.iri_prefixes:
                console.print(f"[bold yellow]warning:[/] {self.cfg.run} was trained with data.iri_prefixes "
                              f"{trained_with or '{}'}, this eval writes prompts with {ctx.cfg.data.iri_prefixes or '{}'}:"
                              " its IRIs will not look as they did in training. Set the eval's data.iri_prefixes as "
                              "in the run's config.yaml.")
            ctx.loaded_run = (run, *load_for_inference(run=self.cfg.run, device=ctx.cfg.model.device,
                                                       precision=ctx.cfg.generation.precision))
        return ctx.loaded_run[1], ctx.loaded_run[2]

    def extras(self, ctx: EvalContext, model, tokenizer) -> dict[str, Any]:
        run = Path(self.cfg.run)
        return {"run": str(run), "cost": run_cost(run), "loss_curve": loss_curve(run),
                "forgetting": ctx.forgetting_of(str(run), model, tokenizer)}


VARIANTS = {"base": ZeroShot, "few_shot": FewShot, "rag": Rag, "tuned": Tuned}


def evaluate_variant(ctx: EvalContext, variant: ZeroShot, built: list[BuiltPrompt], show_progress: bool) -> VariantResult:
    """Generate with the variant's model and prompts, time it, score it, and measure the references' loss."""
    cfg, g = ctx.cfg, ctx.cfg.generation
    console.rule(f"[bold]{variant.label}")
    conversations = [b.conversation for b in built]
    model, tokenizer = variant.model(ctx)
    with PeakRss() as memory:
        start = time.perf_counter()
        # the references' loss (metrics.loss) rides in the forwards that prefill the prompts for generation
        predictions, loss, reasons = answers_and_reference_loss(
            model, tokenizer, conversations, ctx.references if cfg.metrics.loss else None,
            max_new_tokens=g.max_new_tokens, batch_size=g.batch_size, precision=g.precision,
            show_progress=show_progress, stop_loops=g.stop_loops, stop=g.stop,
            max_seq_len=max(cfg.data.max_seq_len, cfg.retrieval.max_prompt_tokens + cfg.data.max_seq_len))
        seconds = time.perf_counter() - start
    predictions = ctx.as_scored(predictions)
    result = score_variant(variant.label, variant.kind, predictions, ctx.as_scored(ctx.references), ctx.tests, cfg,
                           ctx.metrics)
    result.predictions = predictions
    result.generation_seconds = round(seconds, 2)
    result.seconds_per_item = round(seconds / len(ctx.tests), 3)
    result.peak_rss_mb = memory.mb
    result.prompt_tokens_mean = round(sum(len(encode_chat(tokenizer, c)) for c in conversations) / len(conversations), 1)
    result.examples_dropped_to_fit = sum(b.dropped for b in built)
    result.answers_cut_at_limit, result.answers_ended_as_loops = reasons.count("length"), reasons.count("loop")
    if loss is not None:
        result.reference_loss, result.reference_perplexity = loss.loss, loss.perplexity
    for key, value in variant.extras(ctx, model, tokenizer).items():
        setattr(result, key, value)
    loops = f", {result.answers_ended_as_loops} stopped in a loop" if g.stop_loops else ""
    console.print(f"{variant.label}: {cfg.metrics.headline} {result.scores[cfg.metrics.headline]:.1f} "
                  f"({seconds:.0f} s, {result.seconds_per_item:.2f} s/item; {result.answers_cut_at_limit} answers "
                  f"cut at the token limit{loops})")
    return result


# ---- scoring ----

def score_variant(name: str, kind: str, predictions: list[str], references: list[str],
                  tests: list[Example] | list[TestItem], cfg: EvalConfig, metrics: list[Metric]) -> VariantResult:
    boot, headline = cfg.metrics.bootstrap, cfg.metrics.headline
    scores: dict[str, float] = {}
    items: dict[str, list[float]] = {}
    for metric in metrics:
        items[metric.name] = metric.score_items(predictions, references)
        scores[metric.name] = metric.score_corpus(predictions, references, items[metric.name])
    low, high = bootstrap_ci(items[headline], boot.samples, boot.confidence, boot.seed)
    breakdown: dict[str, dict[str, Cell]] = {}
    for field_name in cfg.metrics.breakdown_by:
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(tests):
            groups.setdefault(str(ex.meta.get(field_name, "(missing)")), []).append(i)
        breakdown[field_name] = {value: Cell(n=len(idx), score=sum(items[headline][i] for i in idx) / len(idx))
                                 for value, idx in sorted(groups.items())}
    return VariantResult(name=name, kind=kind, scores=scores, items=items, headline_ci=(low, high), breakdown=breakdown)


def compare(results: list[VariantResult], cfg: EvalConfig) -> Comparisons:
    """The winner by the headline metric, and its paired-bootstrap difference to the best other variant."""
    h, b = cfg.metrics.headline, cfg.metrics.bootstrap
    ranked = sorted(results, key=lambda r: -r.scores[h])
    out = Comparisons(ranking=[r.name for r in ranked], winner=ranked[0].name)
    if len(ranked) > 1:
        diff, low, high = paired_bootstrap_diff(ranked[0].items[h], ranked[1].items[h], b.samples, b.confidence, b.seed)
        out.runner_up = ranked[1].name
        out.difference = Difference(mean=diff, ci=(low, high), significant=low > 0 or high < 0)
        untuned = [r for r in ranked if r.kind != "tuned"]
        tuned = [r for r in ranked if r.kind == "tuned"]
        if untuned and tuned:
            diff, low, high = paired_bootstrap_diff(tuned[0].items[h], untuned[0].items[h], b.samples, b.confidence, b.seed)
            out.tuned_vs_best_alternative = TunedVsAlternative(tuned=tuned[0].name, alternative=untuned[0].name, mean=diff,
                                                               ci=(low, high), significant=low > 0 or high < 0)
    return out


# ---- helpers ----

def load_split(path: str, cfg: EvalConfig, limit: int | None) -> list[Example]:
    data_cfg = cfg.data.model_copy(update={"limit": limit})
    examples, issues = load_examples(path, data_cfg)
    if issues:
        raise DataError(issues, hint="fix the rows above, or check the eval config's `data:` section (format, template)")
    if not examples:
        raise TunesmithError(f"{path}: no examples")
    return examples


def run_cost(run: Path) -> Cost:
    """Training cost from the run folder: its train_summary.json, else the size of its adapter."""
    cost: dict[str, Any] = {}
    summary = run / "train_summary.json"
    if summary.is_file():
        values = read_json(summary)
        if not isinstance(values, dict):
            raise DataError([DataIssue(SourceRef(str(summary)), "expected a JSON object (train_summary.json of a run)")])
        cost = {key: values[key] for key in ("train_seconds", "trained_tokens", "trainable_parameters",
                                             "total_parameters", "peak_rss_mb") if key in values}
    adapter = run / "final" / "adapter_model.safetensors"
    if "trainable_parameters" not in cost and adapter.is_file():
        from safetensors import safe_open

        with safe_open(str(adapter), "pt") as f:
            cost["trainable_parameters"] = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return Cost(**cost)


def loss_curve(run: Path) -> LossCurve:
    curve = LossCurve()
    for row in read_metrics(run):
        if "loss" in row:
            curve.step.append(row["step"])
            curve.loss.append(row["loss"])
        if "valid_loss" in row:
            curve.valid_step.append(row["step"])
            curve.valid_loss.append(row["valid_loss"])
    return curve


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


def eval_command(
    config: RequiredConfigArg, overrides: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder (sets report.dir)")] = None,
    n: Annotated[Optional[int], typer.Option("-n", help="Evaluate only the first N test items (sets data.n)")] = None,
    no_forgetting: Annotated[bool, typer.Option("--no-forgetting", help="Skip the forgetting panel (sets forgetting.enabled=false)")] = False,
    threads: ThreadsOpt = None,
    rescore_only: Annotated[bool, typer.Option("--rescore", help="Score the predictions already in report.dir again "
                                               "with this config's metrics; generate nothing")] = False,
):
    """Compare base, few-shot, RAG and tuned variants on one held-out set; write report.md/.html/.json."""
    from tunesmith.eval.report import verdict

    cfg = read_config(EvalConfig, config, overrides or [], options={
        "report.dir": str(out) if out else None, "data.n": n, "forgetting.enabled": False if no_forgetting else None,
        "model.threads": threads})
    use_threads(cfg.model.threads, register="eval")
    report = rescore(cfg) if rescore_only else run_eval(cfg)
    for line in verdict(report):
        console.print(line.replace("**", ""))
    console.print(f"[green]Report[/]: {Path(cfg.report.dir) / 'report.html'} (also report.md, report.json)")
