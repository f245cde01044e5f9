"""Packed rows attended example by example (tunesmith/models/packed_attention.py): the same losses and gradients as
SDPA under the block-diagonal mask, and SDPA itself wherever the call is not one of packed training rows."""

import pytest
import torch

from tunesmith.data.batching import collate
from tunesmith.models.packed_attention import NAME, packed_layout, use_packed_attention, uses_packed_attention
from tunesmith.records import IGNORE_INDEX
from tunesmith.train.loss import TrainedTokenLoss


def test_layout_cuts_rows_at_position_restarts_and_puts_them_back():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 0, 0]])
    layout = packed_layout(positions)
    seen = []
    for group in layout.groups:
        real = group.index[group.kept]
        assert len(group.index) == group.n * group.length and len(real) <= len(group.index)
        for row in group.index.view(group.n, group.length).tolist():  # one segment each: consecutive tokens,
            end = row.index(max(row))                                    # its last one repeated to the end
            assert row[:end + 1] == list(range(row[0], row[0] + end + 1)) and set(row[end:]) == {row[end]}
        seen.append(real)
    placed = torch.cat(seen)
    assert sorted(placed.tolist()) == list(range(24))  # every token in exactly one segment
    assert torch.equal(placed[layout.order], torch.arange(24))  # `order` puts them back
    assert max(g.length for g in layout.groups) <= 8  # no example padded to the row's width
    assert packed_layout(torch.arange(6).expand(2, 6)) is None  # one segment per row: nothing to cut


def _run(model_dir, batch, packed: bool, precision: str):
    from tunesmith.models.loading import load_model
    from tunesmith.models.precision import autocast

    model = load_model(model_dir, device="cpu").train()
    model.config.use_cache = False
    if packed:
        assert use_packed_attention(model) and uses_packed_attention(model)
    with autocast(precision, torch.device("cpu")):
        model.zero_grad()
        loss_sum, n = TrainedTokenLoss(model)(batch)
        loss_sum.backward()
    return float(loss_sum.detach()) / n, {name: p.grad.clone() for name, p in model.named_parameters()
                                          if p.grad is not None}


def test_same_loss_and_gradients_as_sdpa_under_the_block_diagonal_mask(tiny_model_dir, make_examples):
    """fp32: equal to rounding. bf16 autocast: as close to the exact (fp32) loss and gradients as SDPA's own
    bf16 run is (SDPA rounds its inputs and softmax weights to bf16; the packed attention computes in fp32)."""
    examples = make_examples(9, 400, lo=3, hi=40)  # lengths from 3 to 40: several length groups
    batch = collate(examples, [[0, 1, 2, 3], [4, 5], [6, 7, 8]], pad_id=2, pack=True)
    assert batch.attention_mask is None and (batch.position_ids[:, 1:] == 0).any()
    exact_loss, exact = _run(tiny_model_dir, batch, False, "fp32")
    loss, grads = _run(tiny_model_dir, batch, True, "fp32")
    assert grads.keys() == exact.keys() and grads
    assert abs(loss - exact_loss) <= 1e-5 * abs(exact_loss)
    for name, g in grads.items():
        assert (g - exact[name]).norm() <= 1e-5 * exact[name].norm() + 1e-12, name
    sdpa_loss, sdpa = _run(tiny_model_dir, batch, False, "bf16")
    loss, grads = _run(tiny_model_dir, batch, True, "bf16")
    error = sum(float((grads[k] - exact[k]).norm() ** 2) for k in exact) ** 0.5
    sdpa_error = sum(float((sdpa[k] - exact[k]).norm() ** 2) for k in exact) ** 0.5
    assert error <= 1.5 * sdpa_error, (error, sdpa_error)
    assert abs(loss - exact_loss) <= 1e-3 * abs(exact_loss) and abs(sdpa_loss - exact_loss) <= 1e-3 * abs(exact_loss)


def test_packed_equals_alone_per_example(tiny_model, make_examples):
    """An example's loss in a packed row is its loss alone, through the packed attention."""
    tiny_model.config.use_cache = False
    assert use_packed_attention(tiny_model)
    loss = TrainedTokenLoss(tiny_model).eval()
    examples = make_examples(5, tiny_model.config.vocab_size, lo=4, hi=30)
    rows = [[0, 1, 2], [3, 4]]
    for r, row in enumerate(rows):
        for at_index, i in enumerate(row):
            alone_sum, alone_n = loss(collate(examples, [[i]], pad_id=2, pack=True))
            batch = collate(examples, rows, pad_id=2, pack=True)
            at = sum(len(examples[j]) for j in row[:at_index])
            keep = torch.zeros_like(batch.targets, dtype=torch.bool)
            keep[r, at:at + len(examples[i])] = True
            batch.targets[~keep] = IGNORE_INDEX
            packed_sum, packed_n = loss(batch)
            assert packed_n == alone_n and abs(float(packed_sum) - float(alone_sum)) < 1e-4 * alone_n, i


def test_everything_else_goes_to_sdpa(tiny_model, monkeypatch):
    """Generation (a cache, one query a step) and padded rows attend through SDPA, unchanged; so does a call
    without the layout."""
    import transformers.integrations.sdpa_attention as sdpa

    prompt = torch.tensor([[5, 6, 7, 8, 9]])
    before = tiny_model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert use_packed_attention(tiny_model)
    calls = []
    real = sdpa.sdpa_attention_forward
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    after = tiny_model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(before, after) and calls


def test_not_for_encoders_other_attention_or_saved_configs(tiny_model, tmp_path):
    tiny_model.set_attn_implementation("eager")
    assert not use_packed_attention(tiny_model)  # only a model that attends with SDPA is switched
    tiny_model.set_attn_implementation("sdpa")
    assert use_packed_attention(tiny_model) and tiny_model.config._attn_implementation == NAME
    tiny_model.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()  # a saved model loads with transformers' default
