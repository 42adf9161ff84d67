"""Batching: collate's padding layout, checked against a row-by-row construction."""

import random

import torch

from bmtpt.data import collate, select_rows


def _expected(inputs, targets, pad, seq2seq):
    """The layout written out row by row in plain Python lists."""
    t = max(len(y) for y in targets)
    tgt = [y + [pad] * (t - len(y)) if seq2seq else [pad] * (t - len(y)) + y for y in targets]
    tmask = [[1] * len(y) + [0] * (t - len(y)) if seq2seq else [0] * (t - len(y)) + [1] * len(y) for y in targets]
    if seq2seq:
        n = max(len(x) for x in inputs)
        ids = [x + [pad] * (n - len(x)) for x in inputs]
        mask = [[1] * len(x) + [0] * (n - len(x)) for x in inputs]
    else:  # left padding of input + target
        n = max(len(x) + len(y) for x, y in zip(inputs, targets))
        ids = [[pad] * (n - len(x) - len(y)) + x + y for x, y in zip(inputs, targets)]
        mask = [[0] * (n - len(x) - len(y)) + [1] * (len(x) + len(y)) for x, y in zip(inputs, targets)]
    return ids, mask, tgt, tmask


def test_collate_matches_a_row_by_row_layout():
    rng = random.Random(0)
    for seq2seq in (True, False):
        for _ in range(20):
            b = rng.randint(1, 6)
            inputs = [[rng.randint(3, 99) for _ in range(rng.randint(1, 9))] for _ in range(b)]
            targets = [[rng.randint(3, 99) for _ in range(rng.randint(1, 4))] for _ in range(b)]
            got = collate(inputs, targets, 0, seq2seq)
            want = _expected(inputs, targets, 0, seq2seq)
            for tensor, rows in zip((got.input_ids, got.attention_mask, got.target_ids, got.target_mask), want):
                assert tensor.dtype == torch.long
                assert tensor.tolist() == rows


def test_select_rows_returns_the_batch_itself_for_all_rows():
    batch = collate([[5, 6], [7]], [[8], [9, 10]], 0, False)
    assert select_rows(batch, torch.arange(2)) is batch
    assert select_rows(batch, torch.tensor([1])).input_ids.tolist() == [batch.input_ids[1].tolist()]
