"""The train/dev/test convention of ATTEMPT and MPT, and training-set sub-sampling.

The benchmarks' test labels are hidden, so the literature carves dev and test out of the public
splits (all shuffles use the fixed seed 42, independent of the run's seed):

- small sets (RTE, MRPC, CoLA, STS-B, WNLI, CB, COPA, MultiRC, WiC, WSC, BoolQ, SciTail): train is the
  original train; the original validation set is shuffled and halved, first half dev, second half test;
- large sets (QQP, QNLI, SST-2, SQuAD, ReCoRD, Yelp, WinoGrande, PAWS, MRQA): 1,000 shuffled training
  examples are dev, the remaining (shuffled) ones train, and the original validation set is test;
- MNLI: dev is validation-mismatched, test is validation-matched.

Tasks whose data sets come with other splits (the `sentences` suite, see `sentences.py`) add:

- official (SICK): the data set's own train/validation/test, unchanged;
- dev-train (SNLI, of which only the validation and test files are at hand): 1,000 shuffled examples
  of the original validation set are dev, the rest (shuffled) train, and the original test set is test;
- lm-bff (MR, CR, SUBJ): test is LM-BFF's fixed test split, which plays the "validation" original
  split; the task's other sentences are the "train" original split, cut as in the large-set rule
  (1,000 shuffled ones are dev, the rest train).

The permutation is `torch.randperm` with a generator seeded 42, as in ATTEMPT's code, so the splits
are the published ones example for example. A run's own seed comes in later, when it samples its training
set (`bmtpt.runs.load_split`: the cap on training examples and k-shot sets).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from ..tasks import Example

T = TypeVar("T")
SPLIT_SEED = 42
LARGE_DEV_SIZE = 1000

# fetch(original split) -> examples; original splits are "train", "validation" and, for MNLI,
# "validation_matched" / "validation_mismatched" (and "test" for the official / dev-train conventions).
Fetch = Callable[[str], list[Example]]
# the conventions `make_loader` cuts by (tasks.CONVENTIONS adds "generated")
LOADER_CONVENTIONS = ("small", "large", "mnli", "official", "dev-train", "lm-bff")


def shuffled(items: Sequence[T], seed: int = SPLIT_SEED) -> list[T]:
    """`items` in the order of `torch.randperm(len(items))` under a generator seeded `seed`."""
    import torch  # lazy: listing tasks should not pay for importing torch

    gen = torch.Generator()
    gen.manual_seed(seed)
    return [items[i] for i in torch.randperm(len(items), generator=gen).tolist()]


def halve(items: Sequence[Example], key: Callable[[Example], Hashable] | None = None
          ) -> tuple[list[Example], list[Example]]:
    """Shuffle (seed 42) and cut in half: (first half, second half), the first half being the smaller.

    With `key`, whole groups are shuffled and cut (MultiRC: a question's answers stay together), and
    each half keeps its groups' examples in shuffled-group order.
    """
    if key is None:
        order = shuffled(items)
        return order[: len(order) // 2], order[len(order) // 2:]
    groups: dict[Hashable, list[Example]] = defaultdict(list)
    for ex in items:
        groups[key(ex)].append(ex)  # dicts keep first-seen order, so the shuffle is reproducible
    order = shuffled(list(groups))
    cut = len(order) // 2
    return ([ex for g in order[:cut] for ex in groups[g]], [ex for g in order[cut:] for ex in groups[g]])


def small_split(split: str, fetch: Fetch, key: Callable[[Example], Hashable] | None = None) -> list[Example]:
    """Small-set convention: original train; dev/test = halves of the shuffled original validation set."""
    if split == "train":
        return fetch("train")
    dev, test = halve(fetch("validation"), key)
    return dev if split == "dev" else test


def large_split(split: str, fetch: Fetch, dev_size: int | None = None) -> list[Example]:
    """Large-set convention: dev = first 1,000 shuffled training examples, train = the rest (shuffled),
    test = the original validation set."""
    if split == "test":
        return fetch("validation")
    n = LARGE_DEV_SIZE if dev_size is None else dev_size
    order = shuffled(fetch("train"))
    return order[:n] if split == "dev" else order[n:]


def mnli_split(split: str, fetch: Fetch) -> list[Example]:
    """MNLI: original train; dev = validation-mismatched; test = validation-matched."""
    return fetch({"train": "train", "dev": "validation_mismatched", "test": "validation_matched"}[split])


def official_split(split: str, fetch: Fetch) -> list[Example]:
    """Official convention: the data set's own train / validation / test, unchanged."""
    return fetch({"train": "train", "dev": "validation", "test": "test"}[split])


def dev_train_split(split: str, fetch: Fetch, dev_size: int | None = None) -> list[Example]:
    """Dev-train convention (a set without its training file at hand): dev = the first 1,000 shuffled
    examples of the original validation set, train = the rest (shuffled), test = the original test set."""
    if split == "test":
        return fetch("test")
    n = LARGE_DEV_SIZE if dev_size is None else dev_size
    order = shuffled(fetch("validation"))
    return order[:n] if split == "dev" else order[n:]


def split_sizes(convention: str, original: Mapping[str, int]) -> dict[str, int]:
    """The train/dev/test sizes that `convention` cuts from original splits of the given sizes, exactly as
    `small_split` / `large_split` / `mnli_split` cut them.

    small: dev = floor(validation / 2) (the smaller half), test = the rest; large and lm-bff: dev =
    min(1,000, train), train = the rest, test = validation; mnli: dev = validation_mismatched, test =
    validation_matched; official: train, validation, test; dev-train: dev = min(1,000, validation),
    train = the rest of validation, test = test. (MultiRC halves by question, so its dev/test sizes
    depend on the answers per question: see `OfficialSizes.cut`.)
    """
    if convention == "small":
        val = original["validation"]
        return {"train": original["train"], "dev": val // 2, "test": val - val // 2}
    if convention in ("large", "lm-bff"):
        dev = min(LARGE_DEV_SIZE, original["train"])
        return {"train": original["train"] - dev, "dev": dev, "test": original["validation"]}
    if convention == "mnli":
        return {"train": original["train"], "dev": original["validation_mismatched"],
                "test": original["validation_matched"]}
    if convention == "official":
        return {"train": original["train"], "dev": original["validation"], "test": original["test"]}
    if convention == "dev-train":
        dev = min(LARGE_DEV_SIZE, original["validation"])
        return {"train": original["validation"] - dev, "dev": dev, "test": original["test"]}
    raise ValueError(f"unknown split convention {convention!r}")


def make_loader(local: Callable[[Path, str], list[Example]], hub: Fetch, convention: str,
                key: Callable[[Example], Hashable] | None = None
                ) -> Callable[[str, str | None, int], list[Example]]:
    """A `Task.loader`: `local(data_dir, original split)` when a data dir is given, else
    `hub(original split)`, cut by `convention` (one of `LOADER_CONVENTIONS`).

    The loader's `seed` is not used: the split shuffle is fixed at 42; pass the run's seed to
    `bmtpt.runs.load_split` when it samples the training split instead.
    """
    if convention not in LOADER_CONVENTIONS:
        raise ValueError(f"unknown split convention {convention!r}")

    def loader(split: str, data_dir: str | None, seed: int = 0) -> list[Example]:
        def fetch(orig: str) -> list[Example]:
            return local(Path(data_dir).expanduser(), orig) if data_dir else hub(orig)

        if convention == "small":
            return small_split(split, fetch, key)
        if convention in ("large", "lm-bff"):  # lm-bff: the local/hub fetch makes the test split
            return large_split(split, fetch)
        if convention == "official":
            return official_split(split, fetch)
        if convention == "dev-train":
            return dev_train_split(split, fetch)
        return mnli_split(split, fetch)

    loader.convention = convention  # type: ignore[attr-defined]  # read by Task (the table of `bmtpt tasks`)
    return loader
