"""The loss, in one place: cross-entropy summed over trained tokens only, normalised by the caller.

Logits are computed only at positions whose target is trained. With a 49k-token vocabulary the LM head is
a fifth of SmolLM2's compute, and prompts are often half the tokens: computing it everywhere and masking
afterwards wastes that work (and memory for a (rows, length, vocab) float tensor).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tunesmith.data.batching import MicroBatch
from tunesmith.records import IGNORE_INDEX


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
