"""The distillation loss (tunesmith/objectives/distill.py says what it is for), in one place.

    loss = α · CE(labels) + (1 − α) · τ² · D(teacher ‖ student), summed over trained positions

D is forward KL (KL(p ‖ q), p the teacher, q the student: mass-covering; torchtune's KD recipe), reverse KL (KL(q ‖ p):
mode-seeking; MiniLLM) or GKD's generalised Jensen-Shannon divergence JSD_β = β·KL(p ‖ m) + (1 − β)·KL(q ‖ m),
m = β·p + (1 − β)·q (TRL's `generalized_jsd_loss`; β → 0 and β → 1 approach forward and reverse KL in shape, scaled).
Both distributions are at temperature τ; the τ² factor keeps the gradient of the soft term at the same scale for every
τ (Hinton et al. 2015). Like every tunesmith loss it returns (sum, trained positions): the loop normalises per trained
token across the whole accumulation window (`tunesmith.train.run.accumulate_gradients`), so nothing is averaged here.

Written by hand: torch has `F.kl_div` but no reverse/JSD form that handles a zero-probability teacher bucket without
nan, and TRL's GKD loss averages per batch (our loop needs sums).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tunesmith.records import IGNORE_INDEX
from tunesmith.train.loss import TrainedTokenLoss


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis, from log-probabilities; terms where p == 0 count 0 (not nan)."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per position: D(teacher ‖ student), both as log-probabilities over the same support (last axis)."""
    if kind == "forward_kl":
        return kl(teacher_logp, student_logp)
    if kind == "reverse_kl":
        return kl(student_logp, teacher_logp)
    if kind == "jsd":
        mixture = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1 - beta)]), 0)
        return beta * kl(teacher_logp, mixture) + (1 - beta) * kl(student_logp, mixture)
    raise ValueError(f"unknown divergence {kind!r}")


TAIL_FLOOR = 1e-12  # the teacher's tail bucket holds at least this: reverse KL stays finite when top-k hold ~all mass


def bucketed(student_logp: torch.Tensor, ids: torch.Tensor, teacher_topk_logp: torch.Tensor):
    """(student, teacher) log-probabilities over k + 1 buckets: the teacher's top-k ids, then one tail bucket with
    the rest of the mass (teacher: 1 − Σ top-k; student: log-sum-exp over every other id). Both are proper
    distributions, so every divergence stays ≥ 0 and is 0 when student == teacher, and a student that moves mass
    outside the teacher's top k pays for it (renormalising over the k ids alone would hide that)."""
    student_k = student_logp.gather(-1, ids)
    student_tail = student_logp.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    teacher_tail = torch.log((1 - teacher_topk_logp.exp().sum(-1, keepdim=True)).clamp(min=TAIL_FLOOR))
    return torch.cat([student_k, student_tail], -1), torch.cat([teacher_topk_logp, teacher_tail], -1)


class DistillLoss(TrainedTokenLoss):
    """forward(batch) → (Σ over trained positions of α·CE + (1 − α)·τ²·D, their count).

    The teacher's side comes from `source(batch, temperature)`: either (full-vocabulary log-probs, None) from an
    online teacher, or (top-k log-probs, their ids) from an offline store. It is a plain callable, not a submodule,
    so the teacher never reaches the optimizer, DDP, checkpoints or `.train()`.
    """

    def __init__(self, model, *, alpha: float, temperature: float, divergence: str, beta: float, source):
        super().__init__(model)
        self.alpha, self.temperature, self.kind, self.beta = alpha, temperature, divergence, beta
        self._source = (source,)  # in a tuple: nn.Module would register a module-valued attribute

    def forward(self, batch) -> tuple[torch.Tensor, int]:
        trained = batch.targets != IGNORE_INDEX
        logits = self.logits(batch)
        total = logits.new_zeros(())
        if self.alpha > 0:
            total = total + self.alpha * F.cross_entropy(logits, batch.targets[trained], reduction="sum")
        if self.alpha < 1:
            student = torch.log_softmax(logits / self.temperature, -1)
            teacher, ids = self._source[0](batch, self.temperature)
            teacher = teacher.to(logits.device)
            if ids is not None:
                student, teacher = bucketed(student, ids.to(logits.device), teacher)
            d = divergence(teacher, student, self.kind, self.beta).sum()
            total = total + (1 - self.alpha) * self.temperature ** 2 * d
        return total, int(trained.sum())
