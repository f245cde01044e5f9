"""The eval config: which test set, which variants, which metrics, where the report goes.

Read like every config (`tunesmith.config.read_config`): unknown keys rejected, every error at once with its
line, `--set section.key=value` overrides. One `data:` section shapes the test rows *and* the training pool exactly as
`tunesmith train` does (same DataConfig fields), so every variant sees the same prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunesmith.config import DataConfig, ModelConfig, Strict


class EvalDataConfig(DataConfig):
    """`train` is the pool for few-shot examples, the RAG corpus (by default) and the leakage check."""

    test: str = Field(..., description="Held-out file: .jsonl .json .csv .parquet, same shape as train")
    n: int | None = Field(100, ge=1, description="Evaluate the first N test rows (None: all)")
    # Eval cuts over-long references instead of failing: a long reference is still a fair thing to score.
    truncation: Literal["error", "right", "drop"] = "right"


class BaseVariant(Strict):
    kind: Literal["base"] = "base"
    name: str = "base"

    @property
    def label(self) -> str:
        """The variant's name in the report."""
        return self.name


class FewShotVariant(BaseVariant):
    kind: Literal["few_shot"] = "few_shot"  # type: ignore[assignment]
    name: str = "few-shot"
    k: int = Field(3, ge=1, le=32)
    select: Literal["similar", "random"] = "similar"
    seed: int = 0


class RagVariant(BaseVariant):
    kind: Literal["rag"] = "rag"  # type: ignore[assignment]
    name: str = "rag"


class TunedVariant(BaseVariant):
    kind: Literal["tuned"] = "tuned"  # type: ignore[assignment]
    name: str | None = None  # type: ignore[assignment]  # default: "tuned (<run folder name>)"
    run: str = Field(..., description="A run folder written by `tunesmith train`")
    rag: bool = Field(False, description="Also put retrieved passages in the prompt (tuned + RAG)")

    @property
    def label(self) -> str:
        return self.name or f"tuned ({Path(self.run).name}){' + rag' if self.rag else ''}"


Variant = Annotated[BaseVariant | FewShotVariant | RagVariant | TunedVariant, Field(discriminator="kind")]


class GenerationConfig(Strict):
    max_new_tokens: int = Field(192, ge=1)
    batch_size: int = Field(64, ge=1, description="Rows generated together; a batch of long prompts takes fewer, so "
                            "that its KV cache stays within 3 GB on a CPU, an eighth of memory below 24 GB "
                            "(tunesmith.generate.rows_that_fit)")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    stop_loops: int = Field(0, ge=0, description=(
        "End an answer once its last N or more tokens are one block repeated at least 3 times back to back (a greedy "
        "loop, which would run on to max_new_tokens and hold its batch up); 0: never. Only where such an answer "
        "scores as wrong either way: it changes a looping answer's text, and so text-overlap metrics (chrF). The "
        "eval warns if a reference would be stopped"))
    stop: list[str] = Field(default_factory=list, description=(
        "Stop strings: an answer ends before the first of these it writes (as in the OpenAI API and lm-eval's "
        "'until'), e.g. the start of another retrieved passage or example. The eval warns if a reference contains one"))


class NormalizeConfig(Strict):
    """How answers are normalised before exact match and label accuracy."""

    whitespace: bool = True
    lowercase: bool = False
    strip_punctuation: bool = False
    strip_quotes: bool = Field(False, description="Treat ' and \" as the same character")


class BootstrapConfig(Strict):
    samples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = 0


class MetricsConfig(Strict):
    use: list[str] = Field(
        default_factory=lambda: ["exact_match", "token_f1", "bleu", "chrf", "rouge_l"],
        description="Built-in metrics: the names in tunesmith.eval.metrics.REGISTRY")
    headline: str = Field("exact_match", description="The metric the verdict, CIs and worst failures are about")
    custom: dict[str, str] = Field(default_factory=dict, description="name: 'package.module:function' (pred, ref) -> float")
    normalize: NormalizeConfig = NormalizeConfig()
    breakdown_by: list[str] = Field(default_factory=list, description="Data fields to break the headline down by")
    bootstrap: BootstrapConfig = BootstrapConfig()
    loss: bool = Field(True, description="Held-out loss / perplexity of the references under each variant")

    @model_validator(mode="after")
    def _headline_is_computed(self) -> MetricsConfig:
        from tunesmith.eval.metrics import REGISTRY

        unknown = [m for m in self.use if m not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; built-in: {', '.join(REGISTRY)} (others go in `custom:`)")
        if self.headline not in self.use and self.headline not in self.custom:
            raise ValueError(f"headline {self.headline!r} must be one of the metrics in `use` or `custom`")
        return self


class RetrievalConfig(Strict):
    corpus: str | None = Field(
        None, description="RAG documents: a .jsonl with a `text` field, or a folder of .txt/.md files. "
                          "None: the training pairs (prompt + answer) are the corpus")
    k: int = Field(3, ge=1, le=32, description="Passages put in a RAG prompt")
    index: Literal["flat", "hnsw"] = Field("flat", description="faiss index: exact inner product, or HNSW for big corpora")
    cache_dir: str = Field(".cache/tunesmith/eval", description="Embeddings, indexes and the base model's forgetting-panel scores, keyed by content hash")
    max_prompt_tokens: int = Field(1536, ge=64, description="Few-shot / RAG prompts are cut to fit (fewest examples dropped)")
    passage_words: int = Field(120, ge=10, description="Documents are cut into passages of about this many words")
    rag_template: str = Field(
        "Use the following reference material if it helps.\n\n{context}\n\n{prompt}",
        description="How the retrieved passages and the question are put together ({context}, {prompt})")


class LeakageConfig(Strict):
    near_duplicate_jaccard: float = Field(0.8, gt=0, le=1, description="Word 3-gram Jaccard at which prompts count as near-duplicates")


class ForgettingConfig(Strict):
    enabled: bool = True
    data: str | None = Field(None, description="General instructions (Self-Instruct seed-task JSONL); None: the shipped copy")
    n: int = Field(40, ge=1, description="General instructions used")
    max_new_tokens: int = Field(96, ge=1)
    max_perplexity_increase: float = Field(0.10, ge=0, description="Flag if general perplexity rises by more than this fraction")
    max_kl: float = Field(0.25, ge=0, description="Flag if mean per-token KL(base || tuned) in nats exceeds this")
    max_chrf_drop: float = Field(5.0, ge=0, description="Flag if chrF of general answers drops by more points than this")
    cache: bool = Field(True, description="Cache the base model's scores in retrieval.cache_dir, keyed by its weights, the "
                                          "instructions and the settings: later evals against the same base model skip them")


class ReportConfig(Strict):
    dir: str = "runs/eval"
    worst: int = Field(8, ge=0, description="Worst failures shown side by side with the reference")
    title: str = "Was fine-tuning worth it?"


class EvalConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: EvalDataConfig
    variants: list[Variant] = Field(default_factory=lambda: [BaseVariant(), FewShotVariant(), RagVariant()])
    generation: GenerationConfig = GenerationConfig()
    metrics: MetricsConfig = MetricsConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    leakage: LeakageConfig = LeakageConfig()
    forgetting: ForgettingConfig = ForgettingConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _names_unique(self) -> EvalConfig:
        names = [v.label for v in self.variants]
        if not names:
            raise ValueError("list at least one variant")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; repeated: {dupes} (give each a `name:`)")
        return self
