"""The eval report as typed records: what `run_eval` returns, what report.md/.html are rendered from, and what
report.json holds (`EvalReport.to_json()`; `EvalReport.model_validate(json)` reads it back)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.eval.forgetting import ForgettingVerdict, GeneralScores


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a report.json from a newer tunesmith still reads


class MetricInfo(Record):
    name: str
    description: str = ""


class Cell(Record):
    n: int
    score: float


class Cost(Record):
    """What training a tuned variant cost, from its run folder."""

    train_seconds: float | None = None
    trained_tokens: int | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    peak_rss_mb: float | None = None


class LossCurve(Record):
    step: list[int] = Field(default_factory=list)
    loss: list[float] = Field(default_factory=list)
    valid_step: list[int] = Field(default_factory=list)
    valid_loss: list[float] = Field(default_factory=list)


class Forgetting(Record):
    scores: GeneralScores
    verdict: ForgettingVerdict


class VariantResult(Record):
    name: str
    kind: str
    scores: dict[str, float]  # metric → corpus score (0-100)
    items: dict[str, list[float]]  # metric → per-item scores, in test order
    headline_ci: tuple[float, float]
    breakdown: dict[str, dict[str, Cell]] = Field(default_factory=dict)  # field → value → headline score
    predictions: list[str] = Field(default_factory=list)
    generation_seconds: float = 0.0  # the answers, and with metrics.loss the references scored in the same prefill
    seconds_per_item: float = 0.0
    peak_rss_mb: float = 0.0
    prompt_tokens_mean: float = 0.0
    examples_dropped_to_fit: int = 0
    answers_cut_at_limit: int = 0  # answers that ran to generation.max_new_tokens
    answers_ended_as_loops: int = 0  # answers stopped by generation.stop_loops
    reference_loss: float | None = None
    reference_perplexity: float | None = None
    run: str | None = None  # tuned variants: the run folder, its cost, loss curve and forgetting
    cost: Cost | None = None
    loss_curve: LossCurve | None = None
    forgetting: Forgetting | None = None


class Difference(Record):
    mean: float
    ci: tuple[float, float]
    significant: bool


class TunedVsAlternative(Difference):
    tuned: str
    alternative: str


class Comparisons(Record):
    ranking: list[str]
    winner: str
    runner_up: str | None = None
    difference: Difference | None = None  # winner − runner-up, paired bootstrap
    tuned_vs_best_alternative: TunedVsAlternative | None = None


class Leakage(Record):
    n_test: int
    n_train: int
    exact_prompts: list[dict[str, Any]] = Field(default_factory=list)
    near_duplicate_prompts: list[dict[str, Any]] = Field(default_factory=list)
    shared_targets: list[dict[str, Any]] = Field(default_factory=list)
    threshold: float
    leaked_items: list[int] = Field(default_factory=list)
    clean: bool = True


class TestItem(Record):
    question: str
    reference: str
    meta: dict[str, Any] = Field(default_factory=dict)
    source: str = ""


class EvalReport(Record):
    title: str
    config: dict[str, Any] = Field(default_factory=dict)
    n_test: int
    n_train: int
    headline: str
    metrics: list[MetricInfo]
    confidence: float
    leakage: Leakage
    variants: list[VariantResult]
    items: list[TestItem]
    forgetting_base: GeneralScores | None = None
    general_prompts: list[str] = Field(default_factory=list)
    general_answers: list[str] = Field(default_factory=list)
    comparisons: Comparisons
    wall_seconds: float | None = None

    def variant(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
