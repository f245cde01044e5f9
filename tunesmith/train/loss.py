"""The loss, in one place: cross-entropy summed over trained tokens only, normalised by the caller; and the mean
loss over a whole dataset (training's validation loss and eval's reference loss are both `dataset_loss`).

Logits are computed only at positions whose target is trained. With a 49k-token vocabulary the LM head is
a fifth of SmolLM2's compute, and prompts are often half the tokens: computing it everywhere and masking
afterwards wastes that work (and memory for a (rows, length, vocab) float tensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tunesmith.data.batching import MicroBatch, iter_batches
from tunesmith.models.precision import autocast, resolve_precision
from tunesmith.records import IGNORE_INDEX, TokenizedExample


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM inside a (possibly peft-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class TrainedTokenLoss(nn.Module):
    """Wraps a causal LM so that forward(batch) returns (summed loss, trained-token count).

    It is a module (not a function) so that accelerate/DDP wrap it and gradient sync hooks run.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        lm = causal_lm_of(model)
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)
        if getattr(lm.config, "logit_scale", None) not in (None, 1.0):
            raise NotImplementedError(f"{type(lm).__name__} scales its logits; tunesmith's loss does not handle that yet")

    def forward(self, batch: MicroBatch) -> tuple[torch.Tensor, int]:
        lm = causal_lm_of(self.model)
        backbone = getattr(lm, lm.base_model_prefix)
        hidden = backbone(
            input_ids=batch.input_ids, position_ids=batch.position_ids,
            # Packed rows carry no 2-D mask: transformers builds the block-diagonal causal mask from the position
            # ids that restart at every example. (Per-example SDPA calls were tried and measured slower on CPU.)
            attention_mask=batch.attention_mask,
            use_cache=False,  # a cache would disable packed-sequence masking
        ).last_hidden_state
        trained = batch.targets != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[trained]).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return F.cross_entropy(logits, batch.targets[trained], reduction="sum"), int(trained.sum())


@dataclass
class LossResult:
    loss: float  # mean cross-entropy per trained token (nats); nan when there was nothing to score
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.n_tokens else float("nan")


def dataset_loss(model: nn.Module, examples: list[TokenizedExample], *, pad_id: int, batch_size: int, row_len: int,
                 pack: bool = False, precision: str = "fp32") -> LossResult:
    """Mean loss per trained token over a whole dataset, the model in eval mode (restored afterwards)."""
    if not examples:
        return LossResult(float("nan"), 0)
    device = next(model.parameters()).device
    mode = resolve_precision(precision, device)
    loss_module = TrainedTokenLoss(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.inference_mode():
            for batch in iter_batches(examples, batch_size=batch_size, row_len=row_len, pack=pack, pad_id=pad_id):
                with autocast(mode, device):
                    loss_sum, n = loss_module(batch.to(device))
                total, count = total + float(loss_sum), count + n
    finally:
        model.train(was_training)
    return LossResult(total / max(count, 1), count)
