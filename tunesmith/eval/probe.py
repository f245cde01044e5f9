"""Generation-based evaluation during training: every N steps, answer a small validation subset and score it.

The training loop owns the schedule; this module owns what happens at a probe: batched greedy generation with
the inference path (`generate_chat`), the same metrics as `tunesmith eval`, and the bookkeeping for keeping the
best checkpoint and stopping early. Loss alone is a poor guide for generation tasks (a lower loss can come with
more malformed queries), which is why the probe scores what the model actually generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console

from tunesmith.config import ProbeConfig
from tunesmith.data.iris import expand
from tunesmith.eval.metrics import Normalizer, build_metrics
from tunesmith.eval.prompts import prompt_of, reference_of
from tunesmith.generate import cut_off_warning, generate_chat, loop_stop_warning
from tunesmith.records import Example, TunesmithError

console = Console(stderr=True)


@dataclass
class ProbeState:
    best: float | None = None
    best_step: int | None = None
    probes_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)


class GenerationProbe:
    """probe(model, tokenizer) -> {"probe/exact_match": 41.0, ...}; probe.update(step, scores) -> (is_best, stop)."""

    def __init__(self, cfg: ProbeConfig, examples: list[Example], tokenizer=None,
                 iri_prefixes: dict[str, str] | None = None):
        if not examples:
            raise TunesmithError("the generation probe needs validation examples (data.valid)")
        self.cfg = cfg
        self.examples = examples[: cfg.n]
        self.prompts = [prompt_of(ex) for ex in self.examples]
        self.references = [reference_of(ex) for ex in self.examples]  # as the model writes them
        self.iri_prefixes = iri_prefixes or {}  # scored as `tunesmith eval` scores: compacted IRIs expanded back
        names = list(dict.fromkeys(cfg.metrics + [cfg.metric]))
        self.metrics = build_metrics(names, Normalizer())
        self.state = ProbeState()
        if tokenizer is not None and (warning := cut_off_warning(tokenizer, self.references, cfg.max_new_tokens,
                                                                 "probe.max_new_tokens")):
            console.print(f"[bold yellow]warning:[/] {warning}")  # now, not after hours of training
        if tokenizer is not None and (warning := loop_stop_warning(tokenizer, self.references, cfg.stop_loops,
                                                                   "probe.stop_loops")):
            console.print(f"[bold yellow]warning:[/] {warning}")

    def __call__(self, model, tokenizer) -> dict[str, float]:
        was_training = model.training
        config = getattr(model, "config", None)
        cached = getattr(config, "use_cache", None)
        model.eval()
        if config is not None:
            config.use_cache = True  # training turns the KV cache off; generation without it is quadratic
        try:
            predictions = generate_chat(model, tokenizer, self.prompts, max_new_tokens=self.cfg.max_new_tokens,
                                        batch_size=self.cfg.batch_size, show_progress=False,
                                        stop_loops=self.cfg.stop_loops)
        finally:
            if config is not None:
                config.use_cache = cached
            model.train(was_training)
        predictions = [expand(p, self.iri_prefixes) for p in predictions]
        references = [expand(r, self.iri_prefixes) for r in self.references]
        return {f"probe/{m.name}": m.score_corpus(predictions, references) for m in self.metrics}

    def update(self, step: int, scores: dict[str, float]) -> tuple[bool, bool]:
        """Record a probe; returns (this is the best so far: save it, patience exhausted: stop training)."""
        value = scores[f"probe/{self.cfg.metric}"]
        s = self.state
        s.history.append({"step": step, **scores})
        improved = s.best is None or value > s.best + self.cfg.min_delta
        if improved:
            s.best, s.best_step, s.probes_without_improvement = value, step, 0
        else:
            s.probes_without_improvement += 1
        stop = self.cfg.patience is not None and s.probes_without_improvement >= self.cfg.patience
        return improved, stop
