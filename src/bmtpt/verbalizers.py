"""Which words a backbone is trained and scored on for a classification task's labels.

A task's labels are T5-style words ("entailment", "not_entailment", "not_duplicate"). A causal LM's
tokenizer often splits them into several tokens ("not_entailment" = 5 tokens in SmolLM2's), and then
two things go wrong at once: the token-mean loss is dominated by the label's *spelling* (the first
token of "not_entailment" already tells the rest), so the loss falls while accuracy does not move, and
an untrained prompt's rank classification prefers the label with fewer tokens. So on a causal LM each
label becomes one token where the tokenizer allows: the labels themselves when every one is a single
token, else natural one-word alternatives ("yes" / "no" / "maybe": the task's own `Task.words`, else the
`WORDS` table below) when each of those is one token, else the labels as they are. Seq2seq backbones
keep the labels: T5's text-to-text convention, which the published baselines follow.

`--verbalizers labels` turns the mapping off (the task's labels, on every backbone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import BmtptError
from .tasks import Task

MODES = ("auto", "labels")
# one-word alternatives of the benchmark suites' label words (a task's own `Task.words` take precedence)
WORDS = {"entailment": "yes", "not_entailment": "no", "neutral": "maybe", "contradiction": "no",
         "duplicate": "yes", "not_duplicate": "no", "equivalent": "yes", "not_equivalent": "no",
         "acceptable": "yes", "unacceptable": "no", "paraphrase": "yes", "not_paraphrase": "no",
         "true": "yes", "false": "no", "choice1": "first", "choice2": "second", "option1": "first",
         "option2": "second"}


def target_tokens(tokenizer, word: str, is_seq2seq: bool) -> list[int]:
    """The tokens of `word` as a target, without special tokens (a causal LM sees it after a space)."""
    return list(tokenizer((word if is_seq2seq else " " + word), add_special_tokens=False).input_ids)


def single_tokens(tokenizer, words: Sequence[str], is_seq2seq: bool = False) -> bool:
    """True when every word is one token and no two words share it."""
    ids = [target_tokens(tokenizer, w, is_seq2seq) for w in words]
    return all(len(t) == 1 for t in ids) and len({t[0] for t in ids}) == len(ids)


def label_words(task: Task, tokenizer, is_seq2seq: bool, mode: str = "auto") -> dict[str, str]:
    """label -> the word that stands for it on this backbone (identity for generation tasks)."""
    if mode not in MODES:
        raise BmtptError(f"unknown --verbalizers {mode!r} (choose {', '.join(MODES)})")
    labels = tuple(task.verbalizers or ())
    same = {label: label for label in labels}
    if not labels or mode == "labels" or is_seq2seq or single_tokens(tokenizer, labels):
        return same
    table = task.words or WORDS
    words = [table.get(label, label) for label in labels]
    if single_tokens(tokenizer, words):
        return dict(zip(labels, words))
    return same


def describe(words: Mapping[str, str]) -> str:
    """'entailment=yes, not_entailment=no' (or the labels alone when they are their own words)."""
    return ", ".join(label if label == w else f"{label}={w}" for label, w in words.items())
