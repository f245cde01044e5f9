"""The losses, in one place: cross-entropy summed over trained positions only, normalised by the caller; and the
mean loss over a whole dataset (training's validation loss and eval's reference loss are both `dataset_loss`).

Every loss starts from `final_hidden_states`, the one way to run a model over a micro-batch whatever wraps it
(peft, quantization, bottleneck adapters): the backbone directly, or, for virtual-token methods (prompt, prefix,
p-tuning), peft's own forward, which prepends the virtual tokens or the per-layer prefix and extends the mask;
the positions of the virtual tokens are dropped from its output, so position t is always input token t.

Logits are computed only at positions whose target is trained. With a 49k-token vocabulary the LM head is
a fifth of SmolLM2's compute, and prompts are often half the tokens: computing it everywhere and masking
afterwards wastes that work (and memory for a (rows, length, vocab) float tensor). Training goes further
(`linear_cross_entropy`): the head and the cross-entropy run a chunk of positions at a time, gradients included,
so a step never holds all of its logits. Heads of classification
objectives (`HeadLoss`) are applied the same way: at the labelled positions only.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tunesmith.data.batching import MicroBatch, iter_batches
from tunesmith.models.packed_attention import packed_layout, uses_packed_attention
from tunesmith.models.precision import autocast, resolve_precision
from tunesmith.records import IGNORE_INDEX, TokenizedExample, TunesmithError


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers model (*ForCausalLM, *ForSequenceClassification, ...) inside a (possibly peft-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_prompt_learning(model: nn.Module) -> bool:
    """True for peft's virtual-token methods (prompt tuning, prefix tuning, p-tuning)."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def final_hidden_states(model: nn.Module, batch: MicroBatch) -> torch.Tensor:
    """(rows, length, hidden): the last layer's output at every input position of the batch."""
    if is_prompt_learning(model):
        if batch.token_type_ids is not None:
            raise TunesmithError("virtual-token methods (prompt/prefix/p-tuning) cannot take token types (word shapes): "
                                 "choose another method or turn the objective's word_shapes off")
        if batch.attention_mask is None:
            raise TunesmithError("virtual-token methods (prompt/prefix/p-tuning) need padded rows: set train.pack=false")
        inner = causal_lm_of(model)
        extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(inner.forward).parameters else {}
        # Through peft's forward: it prepends the virtual tokens (or the prefix cache) and extends the mask. Position
        # ids are left to it (padded rows start at 0). The LM head runs on one position only (logits_to_keep): the
        # loss applies it at the trained positions itself.
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                    output_hidden_states=True, **extra)
        return out.hidden_states[-1][:, -batch.input_ids.shape[1]:]
    lm = causal_lm_of(model)
    backbone = getattr(lm, lm.base_model_prefix)
    typed = {} if batch.token_type_ids is None else {"token_type_ids": batch.token_type_ids}
    mask, positions = batch.attention_mask, batch.position_ids
    if mask is not None and is_causal(backbone) and right_padded(mask):
        # Padded rows of a causal model need no mask: every padding token comes after the row's last real token, and
        # a causal model's real token never attends to a later position. Without a mask (and with positions that do
        # not restart, which transformers would read as packing) SDPA runs its causal kernel, which skips the blocks
        # above the diagonal, instead of the masked one, whose CPU backward computes all of them. Real tokens see
        # exactly what they saw with the mask (tests/unit/test_batching.py); padding outputs are never trained.
        rows, width = batch.input_ids.shape
        mask, positions = None, torch.arange(width, device=batch.input_ids.device).expand(rows, width)
    elif mask is None and uses_packed_attention(backbone):
        # Packed rows attended example by example (tunesmith/models/packed_attention.py); the layout is worked out
        # once here for every layer.
        layout = packed_layout(positions)
        if layout is not None:
            typed["packed_layout"] = layout
    return backbone(
        input_ids=batch.input_ids, position_ids=positions, **typed,
        # Packed rows carry no 2-D mask: transformers builds the block-diagonal causal mask from the position
        # ids that restart at every example (SDPA's, or the packed attention's fallback, reads it).
        attention_mask=mask,
        use_cache=False,  # a cache would disable packed-sequence masking
    ).last_hidden_state


def is_causal(backbone: nn.Module) -> bool:
    """True when the backbone's attention layers are causal (decoders: Llama, Qwen...; not BERT-like encoders)."""
    return any(getattr(m, "is_causal", False) is True for m in backbone.modules() if "Attention" in type(m).__name__)


def right_padded(mask: torch.Tensor) -> bool:
    """Every row's ones come first, then only zeros."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


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

    def logits(self, batch: MicroBatch) -> torch.Tensor:
        """(trained positions, vocab): next-token logits where the target is trained, in fp32."""
        hidden = final_hidden_states(self.model, batch)
        return self.logits_of(hidden[batch.targets != IGNORE_INDEX])

    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (fp32) of final hidden states: the LM head, then the model's soft cap if it has one."""
        logits = causal_lm_of(self.model).get_output_embeddings()(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def forward(self, batch: MicroBatch) -> tuple[torch.Tensor, int]:
        trained = batch.targets != IGNORE_INDEX
        hidden = final_hidden_states(self.model, batch)[trained]
        head = causal_lm_of(self.model).get_output_embeddings()
        if type(head) is not nn.Linear:  # a LoRA- or quantization-wrapped head: logits through its own forward
            return F.cross_entropy(self.logits_of(hidden), batch.targets[trained], reduction="sum"), int(trained.sum())
        return linear_cross_entropy(hidden, head.weight, head.bias, batch.targets[trained], self.softcap), \
            int(trained.sum())


CE_CHUNK = 128  # trained positions whose logits exist at once: 128 x 49k vocabulary = 25 MB in fp32


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                         softcap: float | None = None, chunk: int = CE_CHUNK) -> torch.Tensor:
    """Σ cross-entropy of `targets` under logits = hidden @ weight.T (+ bias), soft-capped where the model does,
    computed `chunk` positions at a time: the same value and gradients as the LM head followed by F.cross_entropy
    on fp32 logits, without ever holding the (positions, vocabulary) logits, their log-probabilities and their
    gradients at once (about 0.3 GB a step for SmolLM2 at 550 trained positions, all of it alive at the start of
    the backward pass, where a step's memory peaks). The matmuls run in the autocast dtype where autocast is on,
    as the head's Linear would.

    Written by hand: torch has no fused linear cross-entropy, and the libraries that do (Liger Kernel, Apple's
    cut-cross-entropy) are Triton kernels for GPUs only."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    # Gradients are computed in the forward only where autograd records: a custom Function's needs_input_grad says True
    # for a weight that requires grad even under no_grad (a full fine-tune's validation loss), and grad mode is off
    # inside its forward, so the caller's grad mode travels as an argument.
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, softcap, chunk, dtype, torch.is_grad_enabled())


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, where anything needs it, the gradients of hidden, weight and bias chunk by
    chunk (the softmax minus the one-hot target, through the soft cap, times the head); backward scales them by the
    incoming gradient. Gradients come out in the inputs' dtypes, the weight's and bias's accumulated in fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, chunk, dtype, grad_enabled):
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            need = grad_enabled and any(ctx.needs_input_grad[:3])
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if need and ctx.needs_input_grad[0] else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need and ctx.needs_input_grad[1] else None
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need and ctx.needs_input_grad[2] else None
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start:start + chunk].to(dtype)
                t = targets[start:start + chunk]
                logits = (h @ w.T).float()
                if bias is not None:
                    logits += bias.float()
                if softcap:
                    capped = torch.tanh(logits / softcap)
                    logits = capped * softcap
                lse = torch.logsumexp(logits, -1)
                total += (lse - logits.gather(1, t[:, None])[:, 0]).sum()
                if not need:
                    continue
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                grad[torch.arange(len(t), device=t.device), t] -= 1
                if softcap:
                    grad *= 1 - capped * capped
                if grad_bias is not None:
                    grad_bias += grad.sum(0)
                grad = grad.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[start:start + chunk] = grad @ w
                if grad_weight is not None:
                    grad_weight.add_(grad.T @ h)  # bf16 product, fp32 sum, no fp32 copy of it in between
        # Results of this function, not its inputs or outputs, so they may sit on ctx rather than in save_for_backward:
        # backward scales them in place and lets them go. A scaled copy beside the kept gradient would add a full
        # fine-tune's fp32 head gradient (113 MB for SmolLM2) at the start of the backward pass, where memory peaks.
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grads = getattr(ctx, "grads", None)
        if grads is None:
            raise RuntimeError("linear_cross_entropy's gradients were used by an earlier backward pass through this "
                               "graph (retain_graph=True); compute the loss again for another backward pass")
        del ctx.grads
        grad_hidden, grad_weight, grad_bias = grads
        scale = lambda g, dtype=None: None if g is None else g.mul_(grad_out).to(dtype or g.dtype)  # noqa: E731
        return (scale(grad_hidden), scale(grad_weight, ctx.dtypes[0]), scale(grad_bias, ctx.dtypes[1]),
                None, None, None, None, None)


HEAD_NAMES = ("score", "classifier")  # what transformers calls the head of *ForSequence/TokenClassification


def head_of(model: nn.Module) -> nn.Module:
    """The classification head of a (possibly peft-wrapped) transformers model (peft's trainable copy if wrapped)."""
    inner = causal_lm_of(model)
    for name in HEAD_NAMES:
        head = getattr(inner, name, None)
        if isinstance(head, nn.Module):
            return head
    raise TunesmithError(f"{type(inner).__name__} has no classification head ({' or '.join(HEAD_NAMES)})")


class HeadLoss(nn.Module):
    """A classification head on the final hidden states: forward(batch) returns (summed CE, labelled positions).

    The targets hold a class id at each labelled position (not shifted). `pooling` says what the head sees there:
    "token" (that position's hidden state: token classification; for sequences, the last token, which has seen the
    whole text in a causal model), "first" (the first token, through the encoder's pooler if it has one, as BERT's
    [CLS]), or "mean" (the mean over the labelled position's example: position ids restart at every example, so
    this works for packed rows too).
    """

    def __init__(self, model: nn.Module, pooling: str = "token"):
        super().__init__()
        self.model = model
        self.pooling = pooling

    def logits(self, batch: MicroBatch) -> torch.Tensor:
        """(labelled positions, labels) in fp32."""
        hidden = final_hidden_states(self.model, batch)
        labelled = batch.targets != IGNORE_INDEX
        if self.pooling == "mean":
            pooled = segment_means(hidden, batch.position_ids, labelled)
        elif self.pooling == "first":
            inner = causal_lm_of(self.model)
            pooler = getattr(getattr(inner, inner.base_model_prefix, None), "pooler", None)
            pooled = pooler(hidden)[labelled[:, 0]] if pooler is not None else hidden[labelled]
        else:
            pooled = hidden[labelled]
        dropout = getattr(causal_lm_of(self.model), "dropout", None)  # BERT-style heads drop out their input
        if isinstance(dropout, nn.Module):
            pooled = dropout(pooled)
        return head_of(self.model)(pooled).float()

    def forward(self, batch: MicroBatch) -> tuple[torch.Tensor, int]:
        labelled = batch.targets != IGNORE_INDEX
        return F.cross_entropy(self.logits(batch), batch.targets[labelled], reduction="sum"), int(labelled.sum())


def segment_means(hidden: torch.Tensor, position_ids: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """For each True of `at` (rows, length): the mean hidden state of the example it belongs to (an example is a run
    of positions that starts where the position id is 0)."""
    rows, length, width = hidden.shape
    segment = (position_ids == 0).cumsum(1) + torch.arange(rows, device=hidden.device)[:, None] * (length + 1)
    flat = segment.flatten()
    sums = hidden.new_zeros(rows * (length + 1), width).index_add_(0, flat, hidden.flatten(0, 1))
    counts = hidden.new_zeros(rows * (length + 1)).index_add_(0, flat, hidden.new_ones(flat.shape))
    chosen = segment[at]
    return sums[chosen] / counts[chosen, None]


@dataclass
class LossResult:
    loss: float  # mean cross-entropy per trained token (nats); nan when there was nothing to score
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.n_tokens else float("nan")


def dataset_loss(model: nn.Module, examples: list[TokenizedExample], *, pad_id: int, batch_size: int, row_len: int,
                 pack: bool = False, precision: str = "fp32", loss_module: nn.Module | None = None,
                 shift: bool = True, progress: str | None = None) -> LossResult:
    """Mean loss per trained token over a whole dataset, the model in eval mode (restored afterwards). The loss is
    the causal-LM loss unless an objective passes its own `loss_module` (and `shift=False` for unshifted targets).
    `progress`: a label for a progress bar on stderr (examples done, tokens/s, ETA); on a CPU a validation set of
    1,000 DBLP-QuAD rows takes minutes, which a user should not spend looking at a finished training bar."""
    if not examples:
        return LossResult(float("nan"), 0)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    device = next(model.parameters()).device
    mode = resolve_precision(precision, device)
    loss_module = loss_module or TrainedTokenLoss(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    bar = Progress(TextColumn(f"[bold]{progress}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[tps]} tok/s"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
                   disable=progress is None)
    try:
        with bar, torch.inference_mode():
            task, tokens, t0 = bar.add_task("loss", total=len(examples), tps="-"), 0, time.perf_counter()
            for batch in iter_batches(examples, batch_size=batch_size, row_len=row_len, pack=pack, pad_id=pad_id,
                                      shift=shift):
                with autocast(mode, device):
                    loss_sum, n = loss_module(batch.to(device))
                total, count = total + float(loss_sum), count + n
                tokens += batch.n_tokens
                bar.update(task, advance=batch.n_examples, tps=f"{tokens / (time.perf_counter() - t0):,.0f}")
    finally:
        model.train(was_training)
    return LossResult(total / max(count, 1), count)
