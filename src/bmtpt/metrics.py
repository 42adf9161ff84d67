"""Metric functions: each takes predictions and references and returns a score in 0-100.

We delegate to scikit-learn / scipy wherever they compute the same thing; the SQuAD answer
normalisation is the official evaluation script's, written out because no library we depend on
ships it.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Percentage of exact matches."""
    _check(predictions, references)
    return 100.0 * float(np.mean([p == r for p, r in zip(predictions, references)])) if references else 0.0


def f1(predictions: Sequence, references: Sequence, positive=1) -> float:
    """Binary F1 of the positive class (GLUE's MRPC/QQP convention); every other value counts as negative.

    Computed from the counts rather than with sklearn's `average="binary"`, which raises when a
    generated prediction is a third label or when the positive label occurs nowhere; on two-label
    inputs the two agree (0 when there is no true positive).
    """
    _check(predictions, references)
    tp = sum(p == positive and r == positive for p, r in zip(predictions, references))
    fp = sum(p == positive and r != positive for p, r in zip(predictions, references))
    fn = sum(p != positive and r == positive for p, r in zip(predictions, references))
    return 100.0 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(predictions: Sequence, references: Sequence, labels: Sequence | None = None) -> float:
    """Unweighted mean of per-class F1 over `labels`, the task's whole label set (T5's `mean_multiclass_f1`,
    which the ATTEMPT / MPT code scores CB with): on a small test set a class can be absent from the
    references, and averaging over the classes present would change what the score means. Without
    `labels`, the classes seen in the references or predictions."""
    _check(predictions, references)
    labels = list(labels) if labels is not None else sorted(set(references) | set(predictions), key=str)
    return 100.0 * skm.f1_score(references, predictions, labels=labels, average="macro", zero_division=0)


def matthews_corr(predictions: Sequence, references: Sequence) -> float:
    """Matthews correlation coefficient x 100 (0 when undefined, e.g. constant predictions)."""
    _check(predictions, references)
    return 100.0 * skm.matthews_corrcoef(references, predictions)


def _corr(fn, predictions, references) -> float:
    _check(predictions, references)
    p = np.asarray([_to_float(x) for x in predictions], dtype=float)
    r = np.asarray(references, dtype=float)
    if len(p) < 2 or np.all(p == p[0]) or np.all(r == r[0]):
        return 0.0  # correlation with a constant is undefined; score it as no correlation
    return 100.0 * float(fn(p, r)[0])


def pearson(predictions: Sequence, references: Sequence) -> float:
    """Pearson correlation x 100; unparsable predictions count as 0."""
    return _corr(stats.pearsonr, predictions, references)


def spearman(predictions: Sequence, references: Sequence) -> float:
    """Spearman rank correlation x 100; unparsable predictions count as 0."""
    return _corr(stats.spearmanr, predictions, references)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _token_f1(prediction: str, truth: str) -> float:
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def _answers(ref) -> list[str]:
    return [ref] if isinstance(ref, str) else list(ref)


class QuestionLabel(NamedTuple):
    """Reference of one MultiRC answer option: its label and the id of the question it answers."""

    label: Any
    question: Hashable


def _label(ref) -> Any:
    return ref.label if isinstance(ref, QuestionLabel) else ref


def multirc_f1a(predictions: Sequence, references: Sequence, positive="true") -> float:
    """MultiRC F1a: binary F1 of the positive label over all answer options (references may be
    `QuestionLabel`s or plain labels)."""
    return f1(predictions, [_label(r) for r in references], positive=positive)


def multirc_exact_match(predictions: Sequence, references: Sequence[QuestionLabel]) -> float:
    """MultiRC EM: percentage of questions whose answer options are all predicted correctly."""
    _check(predictions, references)
    correct: dict[Hashable, bool] = {}
    for p, r in zip(predictions, references):
        if not isinstance(r, QuestionLabel):
            raise ValueError("multirc_exact_match needs QuestionLabel references (label, question id)")
        correct[r.question] = correct.get(r.question, True) and p == r.label
    return 100.0 * float(np.mean(list(correct.values()))) if correct else 0.0


def _best(score: Callable[[str, str], float], prediction: str, reference) -> float:
    # an item without gold answers scores 0 (max over nothing)
    return max((score(prediction, a) for a in _answers(reference)), default=0.0)


def _exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_exact_match(predictions: Sequence[str], references: Sequence) -> float:
    """SQuAD exact match: max over the gold answers of normalised string equality."""
    _check(predictions, references)
    if not references:
        return 0.0
    return 100.0 * float(np.mean([_best(_exact, p, r) for p, r in zip(predictions, references)]))


def squad_f1(predictions: Sequence[str], references: Sequence) -> float:
    """SQuAD token F1: max over the gold answers of bag-of-tokens F1."""
    _check(predictions, references)
    if not references:
        return 0.0
    return 100.0 * float(np.mean([_best(_token_f1, p, r) for p, r in zip(predictions, references)]))


def _to_float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def _check(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "matthews_corr": matthews_corr,
    "pearson": pearson,
    "spearman": spearman,
    "multirc_f1a": multirc_f1a,
    "multirc_exact_match": multirc_exact_match,
    "squad_exact_match": squad_exact_match,
    "squad_f1": squad_f1,
}


def calibration(probs: np.ndarray, gold: np.ndarray, bins: int = 15, coverage: float = 0.8) -> dict[str, float]:
    """How trustworthy predicted probabilities are, from (N, C) label probabilities and gold label indices:

    - accuracy: of the most probable label (0-100);
    - nll: mean -log p(gold label) (nats);
    - ece: expected calibration error over `bins` equal-width confidence bins, sum_b |B_b| / N *
      |accuracy_b - mean confidence_b| (0-100);
    - acc_at_80: the accuracy on the `coverage` share of examples predicted most confidently (abstaining on
      the rest; 0-100; ties at the cut are broken by order).
    """
    probs, gold = np.asarray(probs, dtype=float), np.asarray(gold, dtype=int)
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == gold).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi] bins, 0 in the first
    ece = sum(abs(correct[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
              for b in range(bins) if (which == b).any())
    keep = np.argsort(-conf, kind="stable")[: max(1, int(round(coverage * len(conf))))]
    nll = -np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-300, None)).mean()
    return {"accuracy": 100.0 * float(correct.mean()), "nll": float(nll), "ece": 100.0 * float(ece),
            "acc_at_80": 100.0 * float(correct[keep].mean())}
