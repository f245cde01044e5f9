import pytest
import torch
from accelerate import Accelerator

from tunesmith.data.batching import collate
from tunesmith.train.loss import TrainedTokenLoss
from tunesmith.train.run import accumulate_gradients


def grads_after(model, examples, groups_of_rows):
    model.zero_grad(set_to_none=True)
    loss_module = TrainedTokenLoss(model)
    window = [collate(examples, rows, pad_id=2, pack=True) for rows in groups_of_rows]
    summed, tokens = accumulate_gradients(loss_module, window, Accelerator(cpu=True))
    return summed / tokens, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pack", [True])
def test_batch8_accum1_equals_batch1_accum8(tiny_model, make_examples, pack):
    tiny_model.config.use_cache = False
    # very different lengths: a mean of per-micro-batch means would weight the short ones more
    examples = make_examples(8, tiny_model.config.vocab_size, seed=3, lo=4, hi=60)
    loss_a, grads_a = grads_after(tiny_model, examples, [[[i] for i in range(8)]])
    loss_b, grads_b = grads_after(tiny_model, examples, [[[i]] for i in range(8)])
    assert abs(loss_a - loss_b) < 1e-5
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)
