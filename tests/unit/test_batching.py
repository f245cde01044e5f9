import random

import torch

from tunesmith.data.batching import collate, pack_rows, plan_epoch
from tunesmith.records import IGNORE_INDEX, SourceRef, TokenizedExample
from tunesmith.train.loss import TrainedTokenLoss


def test_plan_is_deterministic_complete_and_fits():
    lengths = [random.Random(i).randint(3, 60) for i in range(200)]
    a = plan_epoch(lengths, seed=1, epoch=0, batch_size=3, row_len=64, pack=True)
    assert a == plan_epoch(lengths, seed=1, epoch=0, batch_size=3, row_len=64, pack=True)
    assert a != plan_epoch(lengths, seed=1, epoch=1, batch_size=3, row_len=64, pack=True)
    flat = [i for batch in a for row in batch for i in row]
    assert sorted(flat) == list(range(200))  # every example exactly once per epoch
    assert all(sum(lengths[i] for i in row) <= 64 for batch in a for row in batch)
    assert len(pack_rows(lengths, list(range(200)), 64)) < 200 * 0.6  # packing actually packs


def test_targets_never_cross_example_boundaries():
    examples = [TokenizedExample([5, 6, 7], [5, 6, 7], SourceRef("x")), TokenizedExample([8, 9], [8, 9], SourceRef("x"))]
    batch = collate(examples, [[0, 1]], pad_id=2, pack=True)
    assert batch.targets[0, :5].tolist() == [6, 7, IGNORE_INDEX, 9, IGNORE_INDEX]
    assert batch.position_ids[0, :5].tolist() == [0, 1, 2, 0, 1]
    assert batch.attention_mask is None
    assert (batch.targets[0, 5:] == IGNORE_INDEX).all()  # padding never trained
    assert batch.input_ids.shape[1] % 8 == 0


def per_example_losses(loss_module, examples, rows, pack):
    """Loss of every example computed from one (packed or padded) batch, via per-example target masks."""
    batch = collate(examples, rows, pad_id=2, pack=pack)
    out = {}
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            masked = collate(examples, rows, pad_id=2, pack=pack)
            keep = torch.zeros_like(masked.targets, dtype=torch.bool)
            keep[r, at:at + len(examples[i])] = True
            masked.targets[~keep] = IGNORE_INDEX
            loss_sum, n = loss_module(masked)
            out[i] = float(loss_sum) / n
            at += len(examples[i])
    return out, batch


def test_packed_equals_unpacked_per_example_loss(tiny_model, make_examples):
    tiny_model.config.use_cache = False
    loss = TrainedTokenLoss(tiny_model).eval()
    examples = make_examples(6, tiny_model.config.vocab_size)
    packed, _ = per_example_losses(loss, examples, [[0, 1, 2], [3, 4, 5]], pack=True)
    alone, _ = per_example_losses(loss, examples, [[i] for i in range(6)], pack=False)
    for i in range(6):
        assert abs(packed[i] - alone[i]) < 1e-5, (i, packed[i], alone[i])


def test_packing_without_position_restart_would_leak(tiny_model, make_examples):
    """The invariant above can fail: continuous positions make later examples attend to earlier ones."""
    tiny_model.config.use_cache = False
    loss = TrainedTokenLoss(tiny_model).eval()
    examples = make_examples(2, tiny_model.config.vocab_size, lo=10, hi=12)
    batch = collate(examples, [[0, 1]], pad_id=2, pack=True)
    only_second = batch.targets.clone()
    only_second[0, : len(examples[0])] = IGNORE_INDEX
    batch.targets = only_second
    right, n = loss(batch)
    batch.position_ids = torch.arange(batch.input_ids.shape[1]).unsqueeze(0)
    leaked, _ = loss(batch)
    assert abs(float(right) - float(leaked)) / n > 1e-4


def test_padded_rows_of_a_causal_model_run_without_a_mask_and_lose_nothing(tiny_model, make_examples, monkeypatch):
    """Right-padded rows of a decoder skip the padding mask (SDPA's causal kernel is faster on CPU): every example's
    loss in a padded batch equals its loss under a mask (packed path: the block-diagonal mask from position
    restarts), and the mask really was dropped."""
    import tunesmith.train.loss as loss_mod

    tiny_model.config.use_cache = False
    loss = TrainedTokenLoss(tiny_model).eval()
    examples = make_examples(6, tiny_model.config.vocab_size, lo=5, hi=30)
    rows = [[i] for i in range(6)]
    batched, batch = per_example_losses(loss, examples, rows, pack=False)
    assert (batch.attention_mask == 0).any()  # the rows really are padded
    masked, _ = per_example_losses(loss, examples, [[0, 1, 2], [3, 4, 5]], pack=True)
    for i in range(6):
        assert abs(batched[i] - masked[i]) < 1e-5, (i, batched[i], masked[i])
    seen = []
    backbone = tiny_model.model
    monkeypatch.setattr(backbone, "forward", lambda **kw: seen.append(kw["attention_mask"]) or type(backbone).forward(backbone, **kw))
    loss(batch)
    assert seen == [None]
    assert loss_mod.is_causal(backbone) and loss_mod.right_padded(batch.attention_mask)
    assert not loss_mod.right_padded(batch.attention_mask.flip(1))  # left padding keeps its mask
