"""Model-side measurements without generation: loss / perplexity of reference text, and KL between two models.

Tokenization, batching and the loss are the training path's own (tokenize_examples, iter_batches,
`train.loss.dataset_loss`), so "held-out loss" here means exactly what the trainer's validation loss means: summed
cross-entropy over the reference answer's tokens (end-of-turn included), divided by their number.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from tunesmith.data.batching import iter_batches
from tunesmith.data.tokenize import tokenize_examples
from tunesmith.models.precision import autocast, resolve_precision
from tunesmith.records import IGNORE_INDEX, Example, Message, SourceRef, TokenizedExample
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


class Answers(NamedTuple):
    texts: list[str]
    loss: LossResult | None  # the references' loss; None when no references were given
    finish_reasons: list[str]  # per answer, RowResult.finish_reason: "stop", "length", "loop"


def answers_and_reference_loss(model, tokenizer, conversations: list[list[Message]], references: list[str] | None, *,
                               max_new_tokens: int, batch_size: int, precision: str = "auto", max_seq_len: int = 1024,
                               show_progress: bool = False, stop_loops: int = 0, stop: list[str] | None = None) -> Answers:
    """Greedy answers to `conversations` (as `generate_chat` gives them) and `reference_loss` of the chats answered
    with `references`, from one pass over each prompt: each reference rides as its prompt's continuation in the
    forward that prefills the prompt for generation (`tunesmith.generate._prefill`), instead of a second forward over
    the prompt. The tokens and the scored positions are the reference loss's own (`tokenize_references`, the
    training path's tokenization); where a chat's tokens do not start with its generation prompt, or the model
    cannot be scored while generating (virtual-token methods, special cache layers), the loss is measured on its
    own, as `reference_loss`. The same loss up to float rounding (tests/unit/test_eval_scoring.py).
    `stop_loops`, `stop`: RowRequest.stop_loops and .stop."""
    from tunesmith.generate import chat_requests, generate_rows

    requests = chat_requests(tokenizer, conversations, max_new_tokens=max_new_tokens, stop=stop, stop_loops=stop_loops)
    if references is None:
        results = generate_rows(model, tokenizer, requests, batch_size=batch_size, precision=precision,
                                show_progress=show_progress)
        return Answers([r.text.strip() for r in results], None, [r.finish_reason for r in results])
    chats = [c + [{"role": "assistant", "content": ref}] for c, ref in zip(conversations, references)]
    tokenized = tokenize_references(tokenizer, chats=chats, max_seq_len=max_seq_len)
    aligned = len(tokenized) == len(requests) and all(
        tok.input_ids[:len(req.prompt_ids)] == req.prompt_ids
        and all(label == IGNORE_INDEX for label in tok.labels[:len(req.prompt_ids)])
        for req, tok in zip(requests, tokenized))
    if aligned:
        for req, tok in zip(requests, tokenized):
            req.continuation = tok.input_ids[len(req.prompt_ids):]
            req.scored = [label != IGNORE_INDEX for label in tok.labels[len(req.prompt_ids):]]
    results = generate_rows(model, tokenizer, requests, batch_size=batch_size, precision=precision,
                            show_progress=show_progress)
    answers, reasons = [r.text.strip() for r in results], [r.finish_reason for r in results]
    if aligned and all(r.continuation_loss is not None for q, r in zip(requests, results) if q.continuation):
        count = sum(r.continuation_scored for r in results)
        total = sum(r.continuation_loss or 0.0 for r in results)
        return Answers(answers, LossResult(total / max(count, 1) if tokenized else float("nan"), count),  # as dataset_loss
                       reasons)
    return Answers(answers, reference_loss(model, tokenizer, chats=chats, max_seq_len=max_seq_len, precision=precision),
                   reasons)


def mean_kl(reference_model, other_model, tokenizer, chats: list[list[Message]] | None = None,
            texts: list[str] | None = None, batch_size: int = 4, max_seq_len: int = 1024,
            precision: str = "auto") -> float:
    """Mean over scored positions of KL(P_reference || P_other) in nats: how far `other` moved from `reference`.

    Scored positions are those the loss would train (the answer of a chat, every token of a text), i.e. where
    the models' next-token distributions matter for what they say.
    """
    return kl_and_loss(reference_model, other_model, tokenizer, chats, texts, batch_size, max_seq_len, precision)[0]


def kl_and_loss(reference_model, other_model, tokenizer, chats: list[list[Message]] | None = None,
                texts: list[str] | None = None, batch_size: int = 4, max_seq_len: int = 1024,
                precision: str = "auto") -> tuple[float, LossResult]:
    """(`mean_kl`, `reference_loss` of `other_model`) from one pass: the loss is the cross-entropy of the scored
    tokens under the log-probabilities the KL already has, so a tuned model's forgetting panel does not run the
    model over the same chats a second time to score them (tests/unit/test_eval_scoring.py)."""
    tokenized = tokenize_references(tokenizer, chats, texts, max_seq_len)
    device = next(reference_model.parameters()).device
    mode = resolve_precision(precision, device)
    total, loss, count = 0.0, 0.0, 0
    with torch.inference_mode(), autocast(mode, device):
        for batch in iter_batches(tokenized, batch_size=rows_per_batch(tokenized, batch_size), row_len=max_seq_len, pack=False,
                                  pad_id=tokenizer.pad_token_id):
            batch = batch.to(device)
            # the training loss's own logits at the scored positions: any method's model (virtual tokens included)
            log_p = [F.log_softmax(TrainedTokenLoss(m).logits(batch), dim=-1) for m in (reference_model, other_model)]
            total += float(F.kl_div(log_p[1], log_p[0], log_target=True, reduction="sum"))
            loss += float(F.nll_loss(log_p[1], batch.targets[batch.targets != IGNORE_INDEX], reduction="sum"))
            count += batch.n_trained
    return total / max(count, 1), LossResult(loss / count if count else float("nan"), count)  # as dataset_loss
