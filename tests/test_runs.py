"""runs.py: seeded sub-sampling of training sets, plain and label-balanced (k-shot)."""

from __future__ import annotations

from collections import Counter

import pytest

from bmtpt.config import TargetConfig
from bmtpt.errors import BmtptError
from bmtpt.runs import load_split, load_train
from bmtpt.tasks import Example, Task

# a skewed binary task: 90 "yes", 10 "no" (like CoLA's 70/30, only more so)
ROWS = [Example(f"x{i}", "yes" if i % 10 else "no") for i in range(100)]
SKEWED = Task(name="skewed", loader=lambda split, data_dir, seed: list(ROWS), verbalizers=("yes", "no"))
FREE = Task(name="free", loader=lambda split, data_dir, seed: list(ROWS))  # generation: no labels


def _cfg(**kw) -> TargetConfig:
    return TargetConfig(out="unused", task="skewed", method="pt", **kw)


def test_balanced_k_shot_takes_the_labels_in_turn():
    for k in (2, 7, 16):
        got = load_split(SKEWED, "train", _cfg(seed=3), k, balanced=True)
        counts = Counter(e.target for e in got)
        assert len(got) == k == len({e.input for e in got})  # k distinct examples
        assert abs(counts["yes"] - counts["no"]) <= 1, counts


def test_balanced_sample_stops_taking_a_label_that_runs_out():
    got = load_split(SKEWED, "train", _cfg(), 30, balanced=True)
    assert Counter(e.target for e in got) == {"no": 10, "yes": 20}


def test_plain_sample_is_seeded_and_follows_the_data():
    a = load_split(SKEWED, "train", _cfg(seed=1), 16)
    assert a == load_split(SKEWED, "train", _cfg(seed=1), 16)
    assert a != load_split(SKEWED, "train", _cfg(seed=2), 16)
    seeds_without_no = sum("no" not in {e.target for e in load_split(SKEWED, "train", _cfg(seed=s), 16)}
                           for s in range(50))
    # P(no "no" in 16 of 100 with 10 "no") = C(90,16)/C(100,16) ~ 0.16: a random draw often misses a label
    assert seeds_without_no > 0


def test_load_train_uses_shots_balanced_and_ignores_the_cap():
    got = load_train(SKEWED, _cfg(shots=8, max_train_examples=50, seed=4))
    assert len(got) == 8 and Counter(e.target for e in got) == {"yes": 4, "no": 4}
    assert len(load_train(SKEWED, _cfg(max_train_examples=50))) == 50
    assert len(load_train(FREE, _cfg(shots=8))) == 8  # no labels: a plain seeded sample


def test_device_option_is_resolved_or_refused(monkeypatch):
    import pytest
    import torch

    from bmtpt.errors import BmtptError
    from bmtpt.runs import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(BmtptError, match="no CUDA device is available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_test_mix_dev_sample_mirrors_the_test_labels_by_hand():
    mix = ["yes"] * 5 + ["no"] * 5  # a balanced test sample
    got = load_split(SKEWED, "dev", _cfg(), 12, label_mix=mix)
    assert Counter(e.target for e in got) == {"yes": 6, "no": 6} and len({e.input for e in got}) == 12
    # more than the 10 "no" rows can mirror: n = min(limit, 10 / 0.5) = 20 examples, 10 of each
    assert Counter(e.target for e in load_split(SKEWED, "dev", _cfg(), 50, label_mix=mix)) == {"yes": 10, "no": 10}
    assert load_split(SKEWED, "dev", _cfg(seed=5), 12, label_mix=mix) == got  # dev samples ignore the run's seed


def test_test_mix_counts_follow_the_largest_remainder_rule():
    rows = [Example(f"x{i}", y) for y, n in (("a", 100), ("b", 10), ("c", 100)) for i in range(n)]
    three = Task(name="three", loader=lambda split, data_dir, seed: list(rows), verbalizers=("a", "b", "c"))
    # test mix 5:3:2; b's 10 rows allow n = floor(10 / 0.3) = 33; exact 16.5, 9.9, 6.6 -> floors 16, 9, 6 (31) and
    # the 2 left over go to the largest fractions (b's .9, c's .6): 16, 10, 7
    got = load_split(three, "dev", _cfg(), None, label_mix=["a"] * 5 + ["b"] * 3 + ["c"] * 2)
    assert Counter(e.target for e in got) == {"a": 16, "b": 10, "c": 7}


def test_test_mix_refuses_a_dev_pool_without_a_test_label():
    with pytest.raises(BmtptError, match="no examples of label.*maybe"):
        load_split(SKEWED, "dev", _cfg(), 10, label_mix=["yes", "maybe"])
