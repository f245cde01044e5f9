"""Gradient accumulation changes nothing: one micro-batch of 8 rows == 8 micro-batches of 1 row, packed or padded."""

import pytest
import torch
from accelerate import Accelerator

from tunesmith.data.batching import collate
from tunesmith.train.loss import TrainedTokenLoss
from tunesmith.train.run import accumulate_gradients


def grads_after(model, examples, groups_of_rows, pack):
    model.zero_grad(set_to_none=True)
    loss_module = TrainedTokenLoss(model)
    window = [collate(examples, rows, pad_id=2, pack=pack) for rows in groups_of_rows]
    summed, tokens = accumulate_gradients(loss_module, window, Accelerator(cpu=True))
    return summed / tokens, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pack", [True, False])
def test_batch8_accum1_equals_batch1_accum8(tiny_model, make_examples, pack):
    tiny_model.config.use_cache = False
    # very different lengths: a mean of per-micro-batch means would weight the short ones more
    examples = make_examples(8, tiny_model.config.vocab_size, seed=3, lo=4, hi=60)
    # packed: all eight examples in one row of one micro-batch; padded: eight rows of one micro-batch
    one_batch = [[list(range(8))]] if pack else [[[i] for i in range(8)]]
    loss_a, grads_a = grads_after(tiny_model, examples, one_batch, pack)
    loss_b, grads_b = grads_after(tiny_model, examples, [[[i]] for i in range(8)], pack)
    assert abs(loss_a - loss_b) < 1e-5
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


def test_a_mean_of_micro_batch_means_would_differ(tiny_model, make_examples):
    """The invariant above can fail: weighting each micro-batch equally changes the loss."""
    tiny_model.config.use_cache = False
    examples = make_examples(8, tiny_model.config.vocab_size, seed=3, lo=4, hi=60)
    loss_module = TrainedTokenLoss(tiny_model)
    with torch.no_grad():
        per_batch = [loss_module(collate(examples, [[i]], pad_id=2, pack=False)) for i in range(8)]
    token_mean = sum(float(s) for s, _ in per_batch) / sum(n for _, n in per_batch)
    mean_of_means = sum(float(s) / n for s, n in per_batch) / 8
    assert abs(token_mean - mean_of_means) > 1e-3
