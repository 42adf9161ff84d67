"""Tokenise examples once, then cut padded batches from the cached token ids.

Layouts (the prompt is prepended later, in `bmtpt.prompted`):
- seq2seq: encoder `input_ids` right-padded; decoder `target_ids` right-padded.
- causal:  one sequence `input + target`, *left*-padded, so every example's target ends at the
  last position and the LM head is needed only on the last T + 1 positions (T = longest target).
  Position ids are recomputed from the attention mask, so padding never shifts positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .tasks import Example


@dataclass
class Batch:
    """A padded batch. `target_ids`/`target_mask` are (B, T); for causal models they are the last T
    tokens of `input_ids` (right-aligned), for seq2seq models the decoder labels."""

    input_ids: Tensor
    attention_mask: Tensor
    target_ids: Tensor
    target_mask: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class Encoded:
    """Token ids of a list of examples, computed once and reused by every step."""

    inputs: list[list[int]]
    targets: list[list[int]]

    def __len__(self) -> int:
        return len(self.inputs)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` with the tokenizer's own special tokens (e.g. T5's </s>, Llama's <s>)."""
    return list(tokenizer(text).input_ids)


def encode_input(tokenizer, example: Example, max_tokens: int) -> list[int]:
    """The example's input ids, at most `max_tokens` of them.

    A longer input gives way in its long field first (`Example.cut`: the premise, passage or first
    sentence loses tokens from its end), so the question / hypothesis / second sentence after it stays
    whole; only if that field is used up (or there is none) is the input's end cut. Finding the field's
    tokens needs a fast tokenizer's character offsets; a slow tokenizer falls back to cutting the end.
    """
    ids = encode_text(tokenizer, example.input)
    if len(ids) <= max_tokens:
        return ids
    if example.cut is None or not getattr(tokenizer, "is_fast", False):
        return ids[:max_tokens]
    enc = tokenizer(example.input, return_offsets_mapping=True)
    a, b = example.cut
    # a token belongs to the field when its middle character does (BPE tokens carry the space before them)
    inside = [i for i, (s, e) in enumerate(enc.offset_mapping) if e > s and a <= (s + e) / 2 < b]
    excess = len(enc.input_ids) - max_tokens
    drop = set(inside[len(inside) - min(excess, len(inside)):])
    return [t for i, t in enumerate(enc.input_ids) if i not in drop][:max_tokens]


def is_truncated(tokenizer, example: Example, max_tokens: int) -> bool:
    """True when the example's input is longer than `max_tokens` tokens (so `encode_input` shortens it)."""
    return len(encode_text(tokenizer, example.input)) > max_tokens


def encode_examples(tokenizer, examples: Sequence[Example], is_seq2seq: bool, max_input_tokens: int = 256,
                    max_target_tokens: int = 32, words: Mapping[str, str] | None = None, eos: bool = True
                    ) -> Encoded:
    """Tokenise inputs (see `encode_input` for long ones) and targets.

    `words` maps a target label to the word the backbone is trained on (`bmtpt.verbalizers`); `eos=False`
    leaves the end-of-text token out of the targets (rank-classified tasks are scored on the label only).
    """
    inputs, targets = [], []
    for ex in examples:
        inputs.append(encode_input(tokenizer, ex, max_input_tokens))
        text = words.get(ex.target, ex.target) if words else ex.target
        targets.append(encode_target(tokenizer, text, is_seq2seq, eos)[:max_target_tokens])
    return Encoded(inputs, targets)


def encode_target(tokenizer, text: str, is_seq2seq: bool, eos: bool = True) -> list[int]:
    """Target ids. Seq2seq tokenizers add </s> themselves; for causal LMs we tokenise ' ' + text without
    special tokens and append EOS, so generation learns to stop. `eos=False`: no end-of-text token."""
    if is_seq2seq:
        ids = encode_text(tokenizer, text)
        if not eos and len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
        return ids
    ids = list(tokenizer(" " + text, add_special_tokens=False).input_ids)
    if eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def collate(inputs: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int, is_seq2seq: bool) -> Batch:
    """Pad a list of (input ids, target ids) pairs into a `Batch` in the backbone's layout.

    The rows are filled in numpy and handed to torch once: a torch op per row (~10 us each) made this
    2.7 ms of a 169 ms paper-scale GPU step, the largest piece of the step outside the backbone.
    """
    b = len(inputs)
    t = max(len(x) for x in targets)
    tgt = np.full((b, t), pad_id, dtype=np.int64)
    tmask = np.zeros((b, t), dtype=np.int64)
    if is_seq2seq:
        n = max(len(x) for x in inputs)
        ids = np.full((b, n), pad_id, dtype=np.int64)
        mask = np.zeros((b, n), dtype=np.int64)
        for i, (x, y) in enumerate(zip(inputs, targets)):
            ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
            tgt[i, : len(y)] = y
            tmask[i, : len(y)] = 1
    else:  # causal: left-padded input + target, the target also right-aligned in its own block
        n = max(len(x) + len(y) for x, y in zip(inputs, targets))
        ids = np.full((b, n), pad_id, dtype=np.int64)
        mask = np.zeros((b, n), dtype=np.int64)
        for i, (x, y) in enumerate(zip(inputs, targets)):
            start = n - len(x) - len(y)
            ids[i, start: n - len(y)] = x
            ids[i, n - len(y):] = y
            mask[i, start:] = 1
            tgt[i, t - len(y):] = y
            tmask[i, t - len(y):] = 1
    return Batch(*(torch.from_numpy(a) for a in (ids, mask, tgt, tmask)))


def select_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """The batch's rows `rows` (the batch itself, uncopied, when they are all of it in order)."""
    rows = rows.cpu()
    if len(rows) == len(batch.input_ids) and bool((rows == torch.arange(len(rows))).all()):
        return batch
    return Batch(batch.input_ids[rows], batch.attention_mask[rows], batch.target_ids[rows], batch.target_mask[rows])


def batch_of(enc: Encoded, indices: Sequence[int], pad_id: int, is_seq2seq: bool) -> Batch:
    """The batch of the given example indices."""
    return collate([enc.inputs[i] for i in indices], [enc.targets[i] for i in indices], pad_id, is_seq2seq)


class EpochSampler:
    """Endless shuffled index stream over one data set, reproducible from (seed, epoch, position).

    The state is two integers, so a checkpoint can store and restore the data position exactly.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        """The next k indices (wrapping into a new shuffled epoch when needed)."""
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(k - len(out), self.n - self.pos)
            out.extend(self._perm[self.pos: self.pos + take])
            self.pos += take
        return out

    def state_dict(self) -> dict:
        """Epoch and position, enough to resume the stream."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        """Restore the stream position saved by `state_dict`."""
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._perm = self._permutation(self.epoch)


def chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most `size` items."""
    for i in range(0, len(seq), size):
        yield seq[i: i + size]
