"""Metric functions against scipy / scikit-learn and hand-computed cases, degenerate inputs included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bmtpt.metrics import (
    METRICS,
    QuestionLabel,
    accuracy,
    f1,
    macro_f1,
    matthews_corr,
    multirc_exact_match,
    multirc_f1a,
    normalize_answer,
    pearson,
    spearman,
    squad_exact_match,
    squad_f1,
)

RNG = np.random.default_rng(0)
REFS = RNG.integers(0, 2, 200).tolist()
PREDS = [r if RNG.random() < 0.7 else 1 - r for r in REFS]
WORDS = ("negative", "positive")


def test_registry_has_every_metric():
    assert set(METRICS) == {"accuracy", "f1", "macro_f1", "matthews_corr", "pearson", "spearman",
                            "multirc_f1a", "multirc_exact_match", "squad_exact_match", "squad_f1"}


def test_accuracy():
    assert accuracy(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 75.0
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        accuracy([1, 2, 3], [1, 2])


def test_f1_matches_sklearn_binary():
    assert f1(PREDS, REFS) == pytest.approx(100 * skm.f1_score(REFS, PREDS))
    sp, sr = [WORDS[p] for p in PREDS], [WORDS[r] for r in REFS]
    expected = 100 * skm.f1_score(sr, sp, pos_label="positive")
    assert f1(sp, sr, positive="positive") == pytest.approx(expected)
    # hand: tp=1, fp=1, fn=1 -> 2/(2+1+1)
    assert f1(["y", "y", "n", "n"], ["y", "n", "y", "n"], positive="y") == pytest.approx(50.0)


def test_f1_degenerate_cases():
    assert f1(["n", "n"], ["n", "n"], positive="y") == 0.0  # positive class absent everywhere
    assert f1(["n", "n"], ["y", "y"], positive="y") == 0.0  # constant negative predictions
    assert f1(["y", "y"], ["y", "y"], positive="y") == 100.0  # one class only
    assert f1(["y", "y", "y"], ["y", "n", "n"], positive="y") == pytest.approx(50.0)  # constant positive
    # a generated string outside the label set counts as negative (sklearn would refuse multiclass input)
    assert f1(["y", "garbage", "n"], ["y", "y", "n"], positive="y") == pytest.approx(100 * 2 / 3)


def test_macro_f1_matches_sklearn():
    refs = RNG.integers(0, 3, 100).tolist()
    preds = [r if RNG.random() < 0.6 else int(RNG.integers(0, 3)) for r in refs]
    assert macro_f1(preds, refs) == pytest.approx(100 * skm.f1_score(refs, preds, average="macro"))
    # constant prediction: per-class F1 = (2/3, 0, 0) for refs a,a,b,c -> 2/9
    assert macro_f1(["a"] * 4, ["a", "a", "b", "c"]) == pytest.approx(100 * (2 / 3) / 3)
    assert macro_f1(["a", "a"], ["a", "a"]) == 100.0  # one class only


def test_matthews_matches_sklearn_and_degenerate():
    assert matthews_corr(PREDS, REFS) == pytest.approx(100 * skm.matthews_corrcoef(REFS, PREDS))
    assert matthews_corr(["acceptable"] * 4, ["acceptable", "unacceptable"] * 2) == 0.0  # constant predictions
    assert matthews_corr(["a", "b"], ["a", "b"]) == pytest.approx(100.0)
    assert matthews_corr(["a", "b"], ["b", "a"]) == pytest.approx(-100.0)


def test_correlations_match_scipy_and_degenerate():
    refs = RNG.uniform(0, 5, 50)
    preds = [f"{x:.1f}" for x in refs + RNG.normal(0, 1, 50)]
    p = np.array([float(x) for x in preds])
    assert pearson(preds, refs.tolist()) == pytest.approx(100 * stats.pearsonr(p, refs)[0])
    assert spearman(preds, refs.tolist()) == pytest.approx(100 * stats.spearmanr(p, refs)[0])
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0  # constant predictions
    assert spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == 0.0  # constant references
    assert pearson([1.0], [1.0]) == 0.0
    # unparsable predictions count as 0: ("x", 2, 3) is (0, 2, 3)
    assert pearson(["x", "2", "3"], [1.0, 2.0, 3.0]) == pytest.approx(100 * stats.pearsonr([0, 2, 3], [1, 2, 3])[0])


@pytest.mark.parametrize("raw, normalised", [
    ("The Cat!", "cat"), ("  an  apple, a pear ", "apple pear"), ("Theatre", "theatre"),
    ("U.S.A.", "usa"), ("the the", ""), ("Denver Broncos", "denver broncos"),
])
def test_squad_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_squad_em_and_f1_by_hand():
    # p = (cat, sat), t = (cat, sat, on, mat): precision 1, recall 1/2 -> F1 2/3
    assert squad_f1(["the cat sat"], ["cat sat on the mat"]) == pytest.approx(100 * 2 / 3)
    assert squad_exact_match(["the cat sat"], ["cat sat on the mat"]) == 0.0
    # best gold answer wins; strings and lists of answers both work
    refs = [("Denver Broncos", "the Broncos"), "Paris", ["x y"]]
    preds = ["broncos", "Paris.", "y z"]
    assert squad_exact_match(preds, refs) == pytest.approx(100 * 2 / 3)
    assert squad_f1(preds, refs) == pytest.approx(100 * (1 + 1 + 0.5) / 3)
    assert squad_f1(["cat cat"], ["cat"]) == pytest.approx(100 * 2 / 3)  # repeated tokens: P 1/2, R 1
    assert squad_exact_match([], []) == 0.0 and squad_f1([], []) == 0.0
    assert squad_exact_match(["a"], [[]]) == 0.0 and squad_f1(["a"], [[]]) == 0.0  # no gold answer
    assert squad_f1([""], ["the"]) == 0.0  # both normalise to empty: no common token


def test_multirc_by_hand():
    refs = [QuestionLabel("true", "q1"), QuestionLabel("false", "q1"), QuestionLabel("true", "q2"),
            QuestionLabel("false", "q2"), QuestionLabel("true", "q3")]
    preds = ["true", "false", "true", "true", "false"]
    # f1a over the 5 options: tp=2 fp=1 fn=1 -> 2*2/(4+1+1)
    assert multirc_f1a(preds, refs) == pytest.approx(100 * 4 / 6)
    assert multirc_f1a(preds, [r.label for r in refs]) == pytest.approx(100 * 4 / 6)
    # EM per question: q1 right, q2 wrong, q3 wrong
    assert multirc_exact_match(preds, refs) == pytest.approx(100 / 3)
    assert multirc_exact_match([r.label for r in refs], refs) == 100.0
    assert multirc_f1a(["false"] * 5, refs) == 0.0  # constant negative predictions
    assert multirc_exact_match([], []) == 0.0
    with pytest.raises(ValueError, match="QuestionLabel"):
        multirc_exact_match(["true"], ["true"])


def test_macro_f1_averages_over_the_whole_label_set():
    """A class absent from a small test set still counts (T5's mean_multiclass_f1): scikit-learn with labels=
    every class; a task passes its verbalizers, so CB's score keeps its meaning on 28 examples."""
    from bmtpt.tasks import Example, Task

    refs = ["entailment", "entailment", "contradiction", "contradiction"]
    preds = ["entailment", "neutral", "contradiction", "contradiction"]
    labels = ["entailment", "contradiction", "neutral"]
    want = 100 * skm.f1_score(refs, preds, labels=labels, average="macro", zero_division=0)
    assert macro_f1(preds, refs, labels=labels) == pytest.approx(want)
    assert macro_f1(preds, refs, labels=labels) != pytest.approx(
        100 * skm.f1_score(refs, preds, labels=["entailment", "contradiction"], average="macro"))
    task = Task("cb-like", loader=lambda *a: [], verbalizers=tuple(labels), metrics=("macro_f1",))
    assert task.score(preds, [Example("x", r) for r in refs])["macro_f1"] == pytest.approx(want)


def test_calibration_by_hand():
    import numpy as np

    from bmtpt.metrics import calibration

    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])
    gold = np.array([0, 1, 1, 0, 1])
    out = calibration(probs, gold, bins=15)
    conf, correct = probs.max(1), (probs.argmax(1) == gold).astype(float)
    assert out["accuracy"] == pytest.approx(60.0)
    assert out["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.45, 0.8])))
    ece = 0.0  # brute force: each example in the bin (lo, hi] of width 1/15 that holds its confidence
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = [i for i in range(5) if lo < conf[i] <= hi]
        if inside:
            ece += len(inside) / 5 * abs(correct[inside].mean() - conf[inside].mean())
    assert out["ece"] == pytest.approx(100 * ece)
    # 80 % coverage keeps the 4 most confident (0.9, 0.8, 0.7, 0.6): correct, correct, correct, wrong
    assert out["acc_at_80"] == pytest.approx(75.0)
