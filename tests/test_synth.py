"""The synthetic suite: deterministic, balanced, learnable, and with the relations it claims."""

from __future__ import annotations

import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from bmtpt import synth
from bmtpt.tasks import get_task, list_tasks

ALL = synth.SOURCE_TASKS + synth.TARGET_TASKS


def test_roles_sources_and_targets_are_disjoint():
    assert len(synth.SOURCE_TASKS) >= 4 and len(synth.TARGET_TASKS) >= 2
    assert not set(synth.SOURCE_TASKS) & set(synth.TARGET_TASKS)
    kinds = {r.split()[0] for r in synth.RELATIONS.values()}
    assert kinds == {"agrees", "conflicts"}
    assert all(a in ALL and b in ALL for a, b in synth.RELATIONS)


def test_every_task_is_registered_with_the_shared_label_space():
    registered = {t.name for t in list_tasks() if t.suite == "synth"}
    assert registered == set(ALL)
    for name in ALL:
        task = get_task(name)
        assert task.name.startswith("synth-") and task.suite == "synth"
        assert task.verbalizers == ("yes", "no") and task.metrics == ("accuracy",)
        assert task.is_classification and task.max_target_tokens == 2


@pytest.mark.parametrize("name", ALL)
def test_split_sizes_balance_and_length(name):
    task = get_task(name)
    for split, size in synth.SPLIT_SIZES.items():
        examples = task.load(split, None, 0)
        assert len(examples) == size
        assert sum(e.target == "yes" for e in examples) == size // 2  # exactly balanced
        question = synth.SPECS[name].question
        assert all(e.input.startswith(question + " ") for e in examples)
        lengths = [len(e.input.split()) for e in examples]
        assert 8 <= min(lengths) and max(lengths) <= 26


@pytest.mark.parametrize("name", ALL)
def test_deterministic_per_seed(name):
    task = get_task(name)
    first, again = task.load("dev", "/ignored", 3), task.load("dev", None, 3)
    assert [(e.input, e.target) for e in first] == [(e.input, e.target) for e in again]
    other = task.load("dev", None, 4)
    assert [e.input for e in first] != [e.input for e in other]


def test_determinism_does_not_depend_on_global_random_state():
    import random

    random.seed(1)
    a = synth.generate("synth-animal", "dev", 0, n=20)
    random.seed(2)
    b = synth.generate("synth-animal", "dev", 0, n=20)
    assert a == b


@pytest.mark.parametrize("name", ALL)
def test_train_and_test_sentences_barely_overlap(name):
    train = {e.input for e in synth.generate(name, "train", 0)}
    test = [e.input for e in synth.generate(name, "test", 0)]
    dev = [e.input for e in synth.generate(name, "dev", 0)]
    assert sum(x in train for x in test) / len(test) < 0.08
    assert sum(x in train for x in dev) / len(dev) < 0.08
    assert len(set(test)) > 0.9 * len(test)  # templates are varied enough to rarely repeat


def test_sentiment_flip_is_the_exact_flip_of_sentiment():
    pos = synth.generate("synth-sentiment", "train", 0)
    neg = synth.generate("synth-sentiment-flip", "train", 0)
    assert [e.meta["sentence"] for e in pos] == [e.meta["sentence"] for e in neg]
    flip = {"yes": "no", "no": "yes"}
    assert [flip[e.target] for e in pos] == [e.target for e in neg]
    assert pos[0].input != neg[0].input  # only the question tells them apart


def test_labels_follow_the_words():
    """Independent checks of each generator's rule on the raw sentences."""
    pos_words = set(synth.POS_FOOD) | set(synth.POS_VERB)
    neg_words = set(synth.NEG_FOOD) | set(synth.NEG_VERB)
    for e in synth.generate("synth-sentiment", "dev", 0):
        words = set(e.meta["sentence"].rstrip(".").replace(",", " ").replace(";", " ").split())
        assert bool(words & pos_words) == (e.target == "yes")
        assert bool(words & neg_words) == (e.target == "no")
    animals = set(synth.ANIMALS)
    for e in synth.generate("synth-animal", "dev", 0):
        words = set(e.meta["sentence"].rstrip(".").split())
        assert bool(words & animals) == (e.target == "yes")
    for e in synth.generate("synth-past", "dev", 0):
        past_verbs = {p for p, _, _ in synth.VERBS}
        assert bool(set(e.meta["sentence"].rstrip(".").split()) & past_verbs) == (e.target == "yes")


def _bow_accuracy(name: str) -> float:
    train, test = synth.generate(name, "train", 0), synth.generate(name, "test", 0)
    vec = CountVectorizer()
    clf = LogisticRegression(max_iter=1000).fit(vec.fit_transform([e.input for e in train]),
                                                [e.target for e in train])
    preds = clf.predict(vec.transform([e.input for e in test]))
    return sum(p == e.target for p, e in zip(preds, test)) / len(test)


@pytest.mark.parametrize("name", ALL)
def test_bag_of_words_learns_each_task(name):
    assert _bow_accuracy(name) > 0.9


def _transfer_accuracy(source: str, target: str) -> float:
    """Bag-of-words model trained on the source's sentences, tested on the target's."""
    train, test = synth.generate(source, "train", 0), synth.generate(target, "test", 0)
    vec = CountVectorizer()
    clf = LogisticRegression(max_iter=1000).fit(vec.fit_transform([e.meta["sentence"] for e in train]),
                                                [e.target for e in train])
    preds = clf.predict(vec.transform([e.meta["sentence"] for e in test]))
    return sum(p == e.target for p, e in zip(preds, test)) / len(test)


def test_relations_show_up_in_zero_shot_transfer():
    # agreeing pairs transfer above chance, conflicting pairs below it
    assert _transfer_accuracy("synth-sentiment", "synth-product") > 0.6
    assert _transfer_accuracy("synth-sentiment-flip", "synth-product") < 0.4
    assert _transfer_accuracy("synth-past", "synth-tense") > 0.6


def test_describe_lists_every_task():
    table = synth.describe()
    assert table.startswith("| task | role | question | relation |")
    for name in ALL:
        assert f"`{name}`" in table
    assert len(table.splitlines()) == 2 + len(ALL)
