"""Golden numerics: a fixed tiny model and fixed data give exactly these losses and gradient norms.

Every number that training computes flows through the pieces pinned here (packing/padding, the trained-token
loss, accumulation scaling). A refactor that changes any of them, however slightly, fails this test. If a change
is *meant* to alter the numerics, say why in the commit and update the constants.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from tunesmith.data.batching import collate
from tunesmith.train.loss import TrainedTokenLoss
from tunesmith.train.run import accumulate_gradients


def golden_model():
    """Built from a config and a seed alone (no tokenizer training), so nothing but torch decides the weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.3)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    return model


def golden_step(model, examples, micro_batches, pack):
    model.zero_grad(set_to_none=True)
    window = [collate(examples, rows, pad_id=0, pack=pack) for rows in micro_batches]
    summed, tokens = accumulate_gradients(TrainedTokenLoss(model), window, Accelerator(cpu=True))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    return summed / tokens, tokens, float(norm)


CASES = {
    # name: (pack, micro-batches of rows of example indices)
    "packed, two micro-batches": (True, [[[0, 1, 2], [3]], [[4, 5]]]),
    "padded, one micro-batch": (False, [[[0], [1], [2], [3], [4], [5]]]),
}
GOLDEN = {  # loss per trained token, trained tokens, global gradient norm
    "packed, two micro-batches": (6.332633972167969, 54, 6.464507102966309),
    "padded, one micro-batch": (6.332633689597801, 54, 6.464507579803467),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_loss_and_gradient_norm(case, make_examples):
    pack, micro_batches = CASES[case]
    examples = make_examples(6, 128, seed=7, lo=6, hi=40)
    loss, tokens, norm = golden_step(golden_model(), examples, micro_batches, pack)
    want_loss, want_tokens, want_norm = GOLDEN[case]
    assert tokens == want_tokens
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert norm == pytest.approx(want_norm, rel=1e-5)
