"""Turn tokenized examples into micro-batches: packed or length-grouped, deterministic per (seed, epoch).

Targets are shifted here, per example, before anything is concatenated: `targets[t]` is the token that
position t must predict. So the last token of one packed example never learns to predict the first token of
the next, and the loss needs no shift of its own. Position ids restart at 0 for every packed example; with
no 2-D attention mask, transformers turns those restarts into a block-diagonal causal mask, so packed
examples never attend to each other (tests/unit/test_batching.py proves packed == unpacked loss).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tunesmith.records import IGNORE_INDEX, TokenizedExample

PAD_MULTIPLE = 8  # rows padded to a multiple of 8: friendlier matmul shapes, few distinct shapes


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (rows, length)
    position_ids: torch.Tensor
    targets: torch.Tensor  # next-token targets, IGNORE_INDEX where not trained
    attention_mask: torch.Tensor | None  # None for packed rows: the mask comes from position_ids
    n_examples: int
    token_type_ids: torch.Tensor | None = None  # when the examples carry token types (0 on padding)

    @property
    def n_trained(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device) -> MicroBatch:
        return MicroBatch(
            self.input_ids.to(device), self.position_ids.to(device), self.targets.to(device),
            None if self.attention_mask is None else self.attention_mask.to(device), self.n_examples,
            None if self.token_type_ids is None else self.token_type_ids.to(device),
        )


def shifted_targets(example: TokenizedExample) -> list[int]:
    return example.labels[1:] + [IGNORE_INDEX]


def pack_rows(lengths: list[int], order: list[int], row_len: int) -> list[list[int]]:
    """First-fit-decreasing packing of examples (in windows of `order`) into rows of at most row_len tokens."""
    rows: list[list[int]] = []
    space: list[int] = []
    for i in sorted(order, key=lambda i: -lengths[i]):
        for r, free in enumerate(space):
            if lengths[i] <= free:
                rows[r].append(i)
                space[r] -= lengths[i]
                break
        else:
            rows.append([i])
            space.append(row_len - lengths[i])
    return rows


def plan_epoch(lengths: list[int], *, seed: int, epoch: int, batch_size: int, row_len: int, pack: bool,
               window: int = 512) -> list[list[list[int]]]:
    """The epoch's micro-batches as lists of rows of example indices. Same (seed, epoch) → same plan.

    Examples are shuffled, then handled in windows: within a window, packing (or sorting by length for padded
    batches) keeps padding low while the shuffle keeps batches varied; the batches are shuffled again.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    rows: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        if pack:
            rows.extend(pack_rows(lengths, chunk, row_len))
        else:
            rows.extend([i] for i in sorted(chunk, key=lambda i: lengths[i]))
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[TokenizedExample], rows: list[list[int]], pad_id: int, pack: bool,
            shift: bool = True) -> MicroBatch:
    """Build tensors for one micro-batch. Padding is never trained and never attended to. `shift=False` keeps each
    label at its own position (classification objectives: the label belongs to the token, not to the next one)."""
    width = max(sum(len(examples[i]) for i in row) for row in rows)
    width = -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    attention_mask = None if pack else torch.zeros((n, width), dtype=torch.long)
    typed = any(examples[i].token_types is not None for row in rows for i in row)
    token_type_ids = torch.zeros((n, width), dtype=torch.long) if typed else None
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ex = examples[i]
            length = len(ex)
            input_ids[r, at : at + length] = torch.tensor(ex.input_ids)
            targets[r, at : at + length] = torch.tensor(shifted_targets(ex) if shift else ex.labels)
            position_ids[r, at : at + length] = torch.arange(length)
            if token_type_ids is not None and ex.token_types is not None:
                token_type_ids[r, at : at + length] = torch.tensor(ex.token_types)
            at += length
        if attention_mask is not None:
            attention_mask[r, :at] = 1
        # The pad tail gets positions restarting at 0: to the packed-sequence mask it is a separate sequence.
        position_ids[r, at:] = torch.arange(width - at)
    return MicroBatch(input_ids, position_ids, targets, attention_mask, sum(len(r) for r in rows), token_type_ids)


def iter_batches(examples: list[TokenizedExample], *, batch_size: int, row_len: int, pack: bool,
                 pad_id: int, shift: bool = True) -> Iterator[MicroBatch]:
    """One pass over a whole dataset for measuring it (validation loss, reference loss, KL): the plan of seed 0,
    epoch 0, collated batch by batch."""
    plan = plan_epoch([len(e) for e in examples], seed=0, epoch=0, batch_size=batch_size, row_len=row_len, pack=pack)
    for rows in plan:
        yield collate(examples, rows, pad_id, pack, shift)
