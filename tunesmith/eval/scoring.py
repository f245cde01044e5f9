"""Model-side measurements without generation: loss / perplexity of reference text, and KL between two models.

Tokenization, batching and the loss are the training path's own (tokenize_examples, iter_batches,
`train.loss.dataset_loss`), so "held-out loss" here means exactly what the trainer's validation loss means: summed
cross-entropy over the reference answer's tokens (end-of-turn included), divided by their number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.data.batching import iter_batches
from tunesmith.data.tokenize import tokenize_examples
from tunesmith.models.precision import autocast, resolve_precision
from tunesmith.records import Example, Message, SourceRef, TokenizedExample
from tunesmith.train.loss import LossResult, TrainedTokenLoss, dataset_loss


def tokenize_references(tokenizer, chats: list[list[Message]] | None = None, texts: list[str] | None = None,
                        max_seq_len: int = 1024) -> list[TokenizedExample]:
    """Chats are scored on their last assistant turn only (few-shot turns are context); texts on every token."""
    examples = [Example(messages=c, source=SourceRef("<eval>", item=i)) for i, c in enumerate(chats or [])]
    examples += [Example(messages=[], text=t, source=SourceRef("<eval>", item=i)) for i, t in enumerate(texts or [])]
    tokenized, _report = tokenize_examples(tokenizer, examples, max_seq_len=max_seq_len, truncation="right",
                                           train_on="last_assistant")
    return tokenized


SCORE_TOKENS = 2048  # at most this many tokens (rows × width) per scoring forward; see `rows_per_batch`


def rows_per_batch(tokenized: list[TokenizedExample], batch_size: int) -> int:
    """`batch_size`, fewer where the longest row would make a forward of more than SCORE_TOKENS tokens. Big
    forwards are slow on a CPU (their activations leave the cache): the reference loss of 25 few-shot DBLP-QuAD
    chats of ~700 tokens took 29.4 s in batches of 8 and 21.4 s in batches of 2 (SmolLM2-135M, 2 threads, bf16);
    the loss is the same sum over the same tokens whatever the batch."""
    longest = max((len(t) for t in tokenized), default=1)
    return max(1, min(batch_size, SCORE_TOKENS // longest))


def reference_loss(model, tokenizer, chats: list[list[Message]] | None = None, texts: list[str] | None = None,
                   batch_size: int = 8, max_seq_len: int = 1024, precision: str = "auto") -> LossResult:
    tokenized = tokenize_references(tokenizer, chats, texts, max_seq_len)
    return dataset_loss(model, tokenized, pad_id=tokenizer.pad_token_id, batch_size=rows_per_batch(tokenized, batch_size),
                        row_len=max_seq_len, precision=precision)


def mean_kl(reference_model, other_model, tokenizer, chats: list[list[Message]] | None = None,
            texts: list[str] | None = None, batch_size: int = 4, max_seq_len: int = 1024,
            precision: str = "auto") -> float:
    """Mean over scored positions of KL(P_reference || P_other) in nats: how far `other` moved from `reference`.

    Scored positions are those the loss would train (the answer of a chat, every token of a text), i.e. where
    the models' next-token distributions matter for what they say.
    """
    tokenized = tokenize_references(tokenizer, chats, texts, max_seq_len)
    device = next(reference_model.parameters()).device
    mode = resolve_precision(precision, device)
    total, count = 0.0, 0
    with torch.inference_mode(), autocast(mode, device):
        for batch in iter_batches(tokenized, batch_size=rows_per_batch(tokenized, batch_size), row_len=max_seq_len, pack=False,
                                  pad_id=tokenizer.pad_token_id):
            batch = batch.to(device)
            # the training loss's own logits at the scored positions: any method's model (virtual tokens included)
            log_p = [F.log_softmax(TrainedTokenLoss(m).logits(batch), dim=-1) for m in (reference_model, other_model)]
            total += float(F.kl_div(log_p[1], log_p[0], log_target=True, reduction="sum"))
            count += batch.n_trained
    return total / max(count, 1)
