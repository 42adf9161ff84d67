"""Text-to-text tasks: the interface every task implements, and the registry that names them.

A task turns each raw example into an `Example` (input text, target text, reference for the metric).
Classification tasks declare label *verbalizers* (words); they are scored by rank classification
(the verbalizer with the highest likelihood wins) or by generation. Other tasks decode.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import BmtptError

SPLITS = ("train", "dev", "test")
# How a task's train/dev/test come from its original splits (see suites/splits.py): the ATTEMPT/MPT
# conventions for benchmark sets, or "generated" for tasks that generate each split directly.
CONVENTIONS = ("small", "large", "mnli", "official", "dev-train", "lm-bff", "generated", "custom")


@dataclass(frozen=True)
class Example:
    """One text-to-text example: `input` -> `target`; `reference` is what the metric compares with."""

    input: str
    target: str
    reference: Any = None  # defaults to `target`
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    # (start, end) characters of the input's long field (premise, passage, context, first sentence): when the
    # input exceeds --max-input-tokens, tokens are dropped from the end of this field, so the question /
    # hypothesis / second sentence stays whole. None: the input's end is cut.
    cut: tuple[int, int] | None = field(default=None, compare=False, hash=False)

    @property
    def ref(self) -> Any:
        """The metric's reference value."""
        return self.target if self.reference is None else self.reference


@dataclass(frozen=True)
class OfficialSizes:
    """Example counts of a task's original splits, as officially released.

    `original` maps the original split names ("train", "validation"; MNLI: "validation_matched" and
    "validation_mismatched"; a generated task: "train", "dev", "test") to counts of the examples the
    task's loader makes of them (rows; for MultiRC answer options, for ReCoRD/SQuAD/MRQA questions).
    `counted` names the original splits whose count was checked by counting the official files; the
    others are the published numbers. `cut` gives bmtpt's train/dev/test sizes directly when the
    convention's cut does not follow from the counts alone (MultiRC halves its validation set by
    question), as counted on the official files.
    """

    original: Mapping[str, int]
    counted: tuple[str, ...] = ()
    cut: Mapping[str, int] | None = None
    note: str = ""

    @property
    def source(self) -> str:
        """'counted', 'published', or which original splits were counted (e.g. 'val counted')."""
        if not self.counted:
            return "published"
        if set(self.counted) >= set(self.original):
            return "counted"
        return "+".join("val" if s.startswith("validation") else s for s in self.counted) + " counted"


@dataclass
class Task:
    """A named text-to-text task.

    `loader(split, data_dir, seed)` returns the split's examples. `verbalizers` (classification only)
    are the candidate target words for rank classification. `metrics` name functions of
    `bmtpt.metrics`; `postprocess` maps a predicted string to what the metric compares.
    """

    name: str
    loader: Callable[[str, str | None, int], list[Example]]
    metrics: tuple[str, ...] = ("accuracy",)
    verbalizers: tuple[str, ...] | None = None
    description: str = ""
    suite: str = ""
    max_target_tokens: int = 16
    postprocess: Callable[[str], Any] | None = None
    metric_kwargs: dict = field(default_factory=dict)
    convention: str = ""  # one of CONVENTIONS; by default the loader's own (`make_loader` labels it)
    official: OfficialSizes | None = None
    # label -> a natural one-word alternative ("entailment" -> "yes"): on backbones whose tokenizer makes every
    # label several tokens, these become the verbalizers when each is one token (see `bmtpt.verbalizers`)
    words: Mapping[str, str] | None = None
    source_file: str | None = None  # a task defined by a YAML file (`bmtpt.custom`): that file's path
    label_names: Mapping[str, str] | None = None  # verbalizer -> the label as the task's data names it

    def __post_init__(self) -> None:
        if not self.convention:
            self.convention = getattr(self.loader, "convention", "")
        if self.convention and self.convention not in CONVENTIONS:
            raise ValueError(f"task {self.name}: unknown split convention {self.convention!r}")

    @property
    def is_classification(self) -> bool:
        """True when the task has label verbalizers (rank classification applies)."""
        return bool(self.verbalizers)

    def load(self, split: str, data_dir: str | None = None, seed: int = 0) -> list[Example]:
        """Load one split ('train', 'dev' or 'test'); raises BmtptError on bad data or an empty split."""
        if split not in SPLITS:
            raise BmtptError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        examples = self.loader(split, data_dir, seed)
        if not examples:
            raise BmtptError(f"task {self.name}: the {split} split is empty")
        if self.verbalizers:
            bad = {e.target for e in examples} - set(self.verbalizers)
            if bad:
                raise BmtptError(f"task {self.name}: label(s) {sorted(bad)} are not among its verbalizers "
                                 f"{list(self.verbalizers)}")
        return examples

    def score(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        """Compute every metric of the task from predicted strings."""
        from .metrics import METRICS  # lazy: listing tasks should not pay for numpy/scipy/sklearn

        preds = [self.postprocess(p) if self.postprocess else p for p in predictions]
        refs = [e.ref for e in examples]
        out = {}
        for m in self.metrics:
            kw = dict(self.metric_kwargs.get(m, {}))
            if m == "macro_f1" and self.verbalizers:  # every class of the task, present in this split or not
                kw.setdefault("labels", list(self.verbalizers))
            out[m] = float(METRICS[m](preds, refs, **kw))
        return out


_REGISTRY: dict[str, Task] = {}
_LAZY_MODULES = ("bmtpt.synth", "bmtpt.suites")  # modules that register tasks when imported


def register(task: Task) -> Task:
    """Add a task to the registry (its name must be new)."""
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def _load_all() -> None:
    for mod in _LAZY_MODULES:
        importlib.import_module(mod)


def score_of(metrics: dict) -> float:
    """One number per evaluation: the mean of the task's metrics (as GLUE averages F1 and accuracy)."""
    return sum(metrics.values()) / len(metrics)


def scored(task: Task, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
    """The task's metrics of `predictions` plus their mean under 'score' (what every evaluation reports)."""
    m = task.score(predictions, examples)
    return {**m, "score": score_of(m)}


def registered(name: str) -> Task | None:
    """The task registered under exactly `name` (built-in or from a task file), if any."""
    return _REGISTRY.get(name)


def list_tasks() -> list[Task]:
    """All registered tasks, sorted by suite then name."""
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda t: (t.suite, t.name))


def get_task(name: str) -> Task:
    """Look a task up by name, or read a task YAML file (a name ending in .yaml / .yml, see `bmtpt.custom`);
    an unknown name raises BmtptError suggesting the closest names."""
    _load_all()
    key = name.strip()
    if key.lower().endswith((".yaml", ".yml")):  # a task file: bmtpt.custom reads it (a provider, as the suites)
        return importlib.import_module(f"{__package__}.custom").task_from_file(key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    lowered = {n.lower(): n for n in _REGISTRY}
    if key.lower() in lowered:
        return _REGISTRY[lowered[key.lower()]]
    close = difflib.get_close_matches(key.lower(), list(lowered), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(lowered[c] for c in close)}?" if close else "; `bmtpt tasks` lists them"
    raise BmtptError(f"unknown task {name!r}{hint}")


def parse_task_list(spec: str | Sequence[str]) -> list[Task]:
    """Parse 'a,b,c' (or a list of names) into tasks, rejecting duplicates and empty lists."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise BmtptError("no task given")
    tasks = [get_task(n) for n in names]
    seen = [t.name for t in tasks]
    dups = sorted({n for n in seen if seen.count(n) > 1})
    if dups:
        raise BmtptError(f"task(s) listed twice: {', '.join(dups)}")
    return tasks
