"""Text-to-text tasks: the interface every task implements, and the registry that names them.

A task turns each raw example into an `Example` (input text, target text, reference for the metric).
Classification tasks declare label *verbalizers* (words); they are scored by rank classification
(the verbalizer with the highest likelihood wins) or by generation. Other tasks decode.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import BmtptError
from .metrics import METRICS

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Example:
    """One text-to-text example: `input` -> `target`; `reference` is what the metric compares with."""

    input: str
    target: str
    reference: Any = None  # defaults to `target`
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def ref(self) -> Any:
        """The metric's reference value."""
        return self.target if self.reference is None else self.reference


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
        preds = [self.postprocess(p) if self.postprocess else p for p in predictions]
        refs = [e.ref for e in examples]
        return {m: float(METRICS[m](preds, refs, **self.metric_kwargs.get(m, {}))) for m in self.metrics}


_REGISTRY: dict[str, Task] = {}
_LAZY_MODULES = ("bmtpt.synth", "bmtpt.suites")  # modules that register tasks when imported


def register(task: Task) -> Task:
    """Add a task to the registry (its name must be new)."""
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def _load_all() -> None:
    import importlib

    for mod in _LAZY_MODULES:
        importlib.import_module(mod)


def list_tasks() -> list[Task]:
    """All registered tasks, sorted by suite then name."""
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda t: (t.suite, t.name))


def get_task(name: str) -> Task:
    """Look a task up by name; an unknown name raises BmtptError suggesting the closest names."""
    _load_all()
    key = name.strip()
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
