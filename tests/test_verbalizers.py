"""Label words: one token per label on causal LMs where the tokenizer allows, the labels otherwise."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bmtpt.errors import BmtptError
from bmtpt.prompted import PromptedModel
from bmtpt.tasks import Example, Task
from bmtpt.verbalizers import label_words, single_tokens


class CharTokenizer:
    """Words of `vocab` are one token each (after a leading space); anything else one token per character."""

    def __init__(self, vocab):
        self.vocab = {w: i for i, w in enumerate(vocab, start=1000)}

    def __call__(self, text, add_special_tokens=True):
        word = text.strip()
        ids = [self.vocab[word]] if word in self.vocab else [ord(c) for c in text]
        return SimpleNamespace(input_ids=ids)


def _task(labels, words=None):
    return Task("t", loader=lambda *a: [], verbalizers=labels, words=words)


NLI = ("entailment", "not_entailment")


def test_labels_that_are_single_tokens_are_kept():
    tok = CharTokenizer(["entailment", "not_entailment", "yes", "no"])
    assert label_words(_task(NLI), tok, False) == {"entailment": "entailment", "not_entailment": "not_entailment"}


def test_multi_token_labels_become_the_one_word_alternatives():
    tok = CharTokenizer(["yes", "no"])
    assert label_words(_task(NLI), tok, False) == {"entailment": "yes", "not_entailment": "no"}
    # a task's own words take precedence over the shared table
    assert label_words(_task(NLI, {"entailment": "no", "not_entailment": "yes"}), tok, False) == \
        {"entailment": "no", "not_entailment": "yes"}


def test_labels_stay_when_the_alternatives_are_not_single_tokens_or_collide():
    assert label_words(_task(NLI), CharTokenizer(["yes"]), False) == {w: w for w in NLI}  # "no" is 3 characters
    clash = _task(NLI, {"entailment": "yes", "not_entailment": "yes"})
    assert label_words(clash, CharTokenizer(["yes"]), False) == {w: w for w in NLI}
    assert not single_tokens(CharTokenizer(["yes"]), ["yes", "yes"])


def test_seq2seq_backbones_and_the_labels_mode_keep_the_labels():
    tok = CharTokenizer(["yes", "no"])
    assert label_words(_task(NLI), tok, True) == {w: w for w in NLI}
    assert label_words(_task(NLI), tok, False, "labels") == {w: w for w in NLI}
    with pytest.raises(BmtptError, match="--verbalizers"):
        label_words(_task(NLI), tok, False, "words")


def test_predictions_come_back_as_labels_and_use_the_words(tiny_llama):
    """Rank classification over the words ("yes"/"no" are tiny-vocabulary words; the labels are not) gives the
    label of the likelier word, checked against rank_classify over the words themselves."""
    model, tok = tiny_llama
    task = Task("t", loader=lambda *a: [], verbalizers=("affirmed", "denied"),
                words={"affirmed": "yes", "denied": "no"})
    pm = PromptedModel(model, tok)
    assert pm.words(task) == {"affirmed": "yes", "denied": "no"}
    examples = [Example("is the movie good ?", "affirmed"), Example("the cat sat on the mat", "denied")]
    prompt = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    by_words, _ = pm.rank_classify(prompt, examples, ["yes", "no"])
    assert pm.predict(prompt, task, examples) == [{"yes": "affirmed", "no": "denied"}[w] for w in by_words]
    enc = pm.encode(task, examples)
    assert enc.targets == [[tok.convert_tokens_to_ids("yes")], [tok.convert_tokens_to_ids("no")]]  # no end-of-text
