"""Feature extraction: the base model frozen as a feature extractor, a new head trained on its pooled hidden
states (a classification objective: `objective: {name: classification}` or `token_classification`); optionally
the top N blocks unfreeze too. Saved like `freeze`: the head (and those blocks) alone, onto a fresh base."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.methods.base import register
from tunesmith.methods.freeze import Freeze, FreezeSettings


class FeatureExtractionSettings(FreezeSettings):
    name: Literal["feature_extraction"] = "feature_extraction"
    top_blocks: int = Field(0, ge=0, description="Also unfreeze the last N transformer blocks (0: only the head trains)")


@register
class FeatureExtraction(Freeze):
    name = "feature_extraction"
    config = FeatureExtractionSettings

    def check(self, run_cfg) -> list[str]:
        if run_cfg.objective.name == "causal_lm":
            return ["method feature_extraction trains a new head on the frozen model's features: it needs a "
                    "classification objective (objective.name: classification or token_classification)"]
        return []
