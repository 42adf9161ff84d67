"""Text-to-text tasks: the interface every task implements, and the registry that names them.

A task turns each raw example into an `Example` (input text, target text, reference for the metric).
Classification tasks declare label *verbalizers* (words); they are scored by rank classification
(the verbalizer with the highest likelihood wins) or by generation. Other tasks decode.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
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

    def split_sizes(self) -> dict[str, int] | None:
        """bmtpt's train/dev/test sizes, computed from the official sizes under the task's convention
        (exactly as the loader cuts them); None when the official sizes are not known."""
        if self.official is None or not self.convention:
            return None
        if self.official.cut is not None:
            return {s: self.official.cut[s] for s in SPLITS}
        if self.convention == "generated":
            return {s: self.official.original[s] for s in SPLITS}
        from .suites.splits import split_sizes  # lazy: suites imports this module

        return split_sizes(self.convention, self.official.original)

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
    import importlib

    for mod in _LAZY_MODULES:
        importlib.import_module(mod)


def list_tasks() -> list[Task]:
    """All registered tasks, sorted by suite then name."""
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda t: (t.suite, t.name))


def get_task(name: str) -> Task:
    """Look a task up by name, or read a task YAML file (a name ending in .yaml / .yml, see `bmtpt.custom`);
    an unknown name raises BmtptError suggesting the closest names."""
    _load_all()
    key = name.strip()
    if key.lower().endswith((".yaml", ".yml")):
        from .custom import task_from_file  # custom builds Tasks: it imports this module

        return task_from_file(key)
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


# --- the task table (`bmtpt tasks`) ------------------------------------------------------------------

MISSING = "missing"


def count_splits(task: Task, data_dir: str) -> dict[str, int | str]:
    """The sizes of the task's train/dev/test read from the files under `data_dir`, by its own loader
    (so cut exactly as a run cuts them): a count, 'missing' where a file is absent, or 'error: ...'."""
    from .suites.readers import MissingDataFile  # lazy: suites imports this module

    out: dict[str, int | str] = {}
    for split in SPLITS:
        try:
            out[split] = len(task.loader(split, data_dir, 0))
        except MissingDataFile:
            out[split] = MISSING
        except BmtptError as e:
            out[split] = f"error: {e}"
    return out


def count_all(tasks: Iterable[Task], data_dir: str,
              progress: Callable[[int, int, Task], None] | None = None) -> dict[str, dict[str, int | str]]:
    """`count_splits` of every task, calling `progress(i, n, task)` before each (i from 1)."""
    tasks = list(tasks)
    counts = {}
    for i, task in enumerate(tasks, start=1):
        if progress:
            progress(i, len(tasks), task)
        counts[task.name] = count_splits(task, data_dir)
    return counts


def _n(value: int | str | None) -> str:
    if value is None:
        return "?"
    return f"{value:,}" if isinstance(value, int) else value


def _official(task: Task, md: bool) -> tuple[str, str]:
    """(train, validation) cells of the official sizes."""
    o = task.official
    if task.convention in ("generated", "custom"):
        return "-", "-"
    if o is None:
        return "?", "?"
    if "validation_matched" in o.original:
        m, mm = o.original["validation_matched"], o.original["validation_mismatched"]
        return _n(o.original["train"]), (f"{_n(m)} matched + {_n(mm)} mismatched" if md else f"{_n(m)}m+{_n(mm)}mm")
    return _n(o.original["train"]), _n(o.original["validation"])


def _size_cells(task: Task, counts: Mapping[str, int | str] | None) -> tuple[list[str], list[str]]:
    """(train/dev/test cells, notes): expected sizes, or the counted ones marked '*' where they differ."""
    expected = task.split_sizes()
    if counts is None:
        return [_n(expected[s]) if expected else "?" for s in SPLITS], []
    cells, notes = [], []
    for s in SPLITS:
        got = counts[s]
        if isinstance(got, str) and got.startswith("error: "):
            cells.append("error")
            notes.append(f"- {task.name} {s}: {got[len('error: '):]}")
        elif isinstance(got, int) and expected and got != expected[s]:
            cells.append(f"{got:,}*")
        else:
            cells.append(_n(got))
    return cells, notes


def task_table(tasks: Sequence[Task], fmt: str = "text",
               counts: Mapping[str, Mapping[str, int | str]] | None = None) -> str:
    """The table of `bmtpt tasks`: suite, split convention, official sizes (and whether they were counted
    on the official files or are the published numbers), bmtpt's train/dev/test sizes, metrics, labels.

    fmt is 'text' (aligned columns) or 'md' (a markdown table). With `counts` (from `count_all`) the
    train/dev/test columns hold the sizes read from local files instead of the expected ones.
    """
    if fmt not in ("text", "md"):
        raise BmtptError(f"unknown table format {fmt!r} (choose text or md)")
    md = fmt == "md"
    read = " read" if counts is not None else ""
    head = ["task", "suite", "split", "official train", "official validation", "sizes",
            "train" + read, "dev" + read, "test" + read, "metrics", "labels", "description"]
    numeric = {3, 4, 6, 7, 8}  # right-aligned columns (the same indices in the text table)
    rows, notes = [], []
    for t in tasks:
        cells, task_notes = _size_cells(t, counts[t.name] if counts is not None else None)
        notes += task_notes
        train, val = _official(t, md)
        labels = "/".join(t.verbalizers) if t.verbalizers else "(generated text)"
        source = t.convention if t.convention in ("generated", "custom") else (t.official.source if t.official else "?")
        rows.append([t.name, t.suite, t.convention or "?", train, val, source, *cells, ", ".join(t.metrics),
                     labels, t.description])
    lines = []
    if md:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---:" if i in numeric else "---" for i in range(len(head))) + "|")
        lines += ["| " + " | ".join(f"`{c}`" if i == 0 else c.replace("|", "\\|") for i, c in enumerate(r)) + " |"
                  for r in rows]
    else:  # the text table leaves out the labels column; the description goes last, unpadded
        keep = [i for i in range(len(head)) if head[i] != "labels"]
        head_t = [head[i] if head[i] != "official validation" else "official val" for i in keep]
        rows_t = [[r[i] for i in keep] for r in rows]
        widths = [max(len(r[i]) for r in [head_t, *rows_t]) for i in range(len(head_t) - 1)]
        for r in [head_t, *rows_t]:
            padded = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
            lines.append("  ".join([*padded, r[-1]]).rstrip())
    if counts is not None and any("*" in c for r in rows for c in r[6:9]):
        lines += ["", "* differs from the size expected from the official release (a partial or different copy)."]
    if notes:
        lines += ["", "errors:", *notes]
    return "\n".join(lines)
