"""Model-side measurements without generation: loss / perplexity of reference text, and KL between two models.

Tokenization, batching and the loss are the training path's own (tokenize_examples, plan_epoch/collate,
TrainedTokenLoss), so "held-out loss" here means exactly what the trainer's loss means: summed cross-entropy over
the reference answer's tokens (end-of-turn included), divided by their number.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.config import DataConfig
from tunesmith.data.batching import collate, plan_epoch
from tunesmith.data.tokenize import tokenize_examples
from tunesmith.models.loading import bf16_available
from tunesmith.records import IGNORE_INDEX, Example, Message, SourceRef, TokenizedExample
from tunesmith.train.loss import TrainedTokenLoss


@dataclass
class LossResult:
    loss: float  # mean cross-entropy per reference token (nats)
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.n_tokens else float("nan")


def _autocast(model, precision: str):
    device = next(model.parameters()).device
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_available(device))
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def tokenize_references(tokenizer, chats: list[list[Message]] | None = None, texts: list[str] | None = None,
                        max_seq_len: int = 1024) -> list[TokenizedExample]:
    """Chats are scored on their last assistant turn only (few-shot turns are context); texts on every token."""
    examples = [Example(messages=c, source=SourceRef("<eval>", item=i)) for i, c in enumerate(chats or [])]
    examples += [Example(messages=[], text=t, source=SourceRef("<eval>", item=i)) for i, t in enumerate(texts or [])]
    cfg = DataConfig(train="<eval>", max_seq_len=max_seq_len, truncation="right", train_on="last_assistant")
    tokenized, _report = tokenize_examples(tokenizer, examples, cfg)
    return tokenized


def _batches(tokenized: list[TokenizedExample], batch_size: int, max_seq_len: int, pad_id: int):
    plan = plan_epoch([len(t) for t in tokenized], seed=0, epoch=0, batch_size=batch_size, row_len=max_seq_len, pack=False)
    for rows in plan:
        yield collate(tokenized, rows, pad_id, pack=False)


def reference_loss(model, tokenizer, chats: list[list[Message]] | None = None, texts: list[str] | None = None,
                   batch_size: int = 8, max_seq_len: int = 1024, precision: str = "auto") -> LossResult:
    tokenized = tokenize_references(tokenizer, chats, texts, max_seq_len)
    if not tokenized:
        return LossResult(float("nan"), 0)
    device = next(model.parameters()).device
    loss_module = TrainedTokenLoss(model)
    total, count = 0.0, 0
    with torch.inference_mode(), _autocast(model, precision):
        for batch in _batches(tokenized, batch_size, max_seq_len, tokenizer.pad_token_id):
            loss_sum, n = loss_module(batch.to(device))
            total, count = total + float(loss_sum), count + n
    return LossResult(total / max(count, 1), count)


def mean_kl(reference_model, other_model, tokenizer, chats: list[list[Message]] | None = None,
            texts: list[str] | None = None, batch_size: int = 4, max_seq_len: int = 1024,
            precision: str = "auto") -> float:
    """Mean over scored positions of KL(P_reference || P_other) in nats: how far `other` moved from `reference`.

    Scored positions are those the loss would train (the answer of a chat, every token of a text), i.e. where
    the models' next-token distributions matter for what they say.
    """
    tokenized = tokenize_references(tokenizer, chats, texts, max_seq_len)
    device = next(reference_model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode(), _autocast(reference_model, precision):
        for batch in _batches(tokenized, batch_size, max_seq_len, tokenizer.pad_token_id):
            batch = batch.to(device)
            scored = batch.targets != IGNORE_INDEX
            log_p = [F.log_softmax(m(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                     position_ids=batch.position_ids, use_cache=False).logits[scored].float(), dim=-1)
                     for m in (reference_model, other_model)]
            total += float(F.kl_div(log_p[1], log_p[0], log_target=True, reduction="sum"))
            count += int(scored.sum())
    return total / max(count, 1)
