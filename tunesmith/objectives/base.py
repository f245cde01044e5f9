"""Training objectives are plug-ins behind one small interface and one registry, like methods.

An objective says what the model learns to output and how that is scored: the data transform (rows → token ids
with targets), the transformers class the base is loaded as (a causal LM, or one with a classification head),
the loss (`tunesmith.train.loss`: every loss returns (summed loss, count) so that the loop's normalisation across
micro-batches and processes stays in one place), what is saved beside the method's output (label names), and its
validation metrics. Methods decide what trains; objectives decide what it learns: any method trains under any
objective (feature_extraction needs one with a head).

Adding an objective is one file in this package: its config section (an `ObjectiveSettings` subclass with a
literal `name`) and a registered class; `tunesmith.config` builds the `objective:` union from this registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from tunesmith.files import read_json
from tunesmith.methods.base import Task
from tunesmith.plugins import Registry

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from tunesmith.data.dataset import PreparedData
    from tunesmith.records import TokenizedExample

LABELS_FILE = "labels.json"


class ObjectiveSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str


class Objective:
    name: ClassVar[str]
    config: ClassVar[type[ObjectiveSettings]]
    shift: ClassVar[bool] = True  # targets are the next token (causal LM) or the token's own label (classification)
    generates: ClassVar[bool] = True  # the trained model answers by generating text (probe, generate, export parity)

    def check(self, run_cfg) -> list[str]:
        """Problems with the rest of the run config, as messages."""
        return []

    def prepare(self, path: str, run_cfg, tokenizer, label_names: list[str] | None = None,
                require_labels: bool = True) -> PreparedData:
        raise NotImplementedError

    def task(self, run_cfg, label_names: list[str], model_path: Path, tokenizer) -> Task:
        raise NotImplementedError

    def loss_module(self, model: nn.Module, run_cfg) -> nn.Module:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data: PreparedData, run_cfg, tokenizer, precision: str) -> dict | None:
        """Validation metrics beyond the loss (accuracy, F1, ...), or None."""
        return None

    def save(self, directory: Path, label_names: list[str]) -> None:
        if label_names:
            (directory / LABELS_FILE).write_text(json.dumps({"objective": self.name, "labels": label_names}, indent=1))


def saved_labels(directory: Path) -> list[str]:
    path = Path(directory) / LABELS_FILE
    return read_json(path)["labels"] if path.is_file() else []


PLUGINS: Registry[Objective] = Registry("tunesmith.objectives", "objective")
register = PLUGINS.register  # class decorator of each plug-in module
registry = PLUGINS.all  # every objective by name
get_objective = PLUGINS.get
objective_configs = PLUGINS.configs  # the config classes, in name order (the union of `objective:` in a run config)


def labelled_logits(loss_module, examples: list[TokenizedExample], *, pad_id: int, batch_size: int,
                    precision: str = "auto") -> list[torch.Tensor]:
    """For each example, in order: the logits (labelled positions, labels) of a head objective, in eval mode."""
    import torch

    from tunesmith.data.batching import collate
    from tunesmith.models.precision import autocast, resolve_precision

    model = loss_module.model
    device = next(model.parameters()).device
    mode = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(examples), batch_size):
                rows = [[i] for i in range(start, min(start + batch_size, len(examples)))]
                batch = collate(examples, rows, pad_id, pack=False, shift=False).to(device)
                with autocast(mode, device):
                    logits = loss_module.logits(batch).float().cpu()
                counts = (batch.targets != -100).sum(1).tolist()
                out.extend(logits.split(counts))
    finally:
        model.train(was_training)
    return out
