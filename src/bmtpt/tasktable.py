"""The task table of `bmtpt tasks`: each task's split convention, official sizes, the train/dev/test sizes
bmtpt cuts from them (computed, or read from local files with --data-dir), metrics and labels.

Kept apart from `bmtpt.tasks` (the types and the registry), which every loader imports: the table needs
the suites' split arithmetic and readers, and they need the types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from .errors import BmtptError
from .suites.readers import MissingDataFile
from .suites.splits import split_sizes as convention_sizes
from .tasks import SPLITS, Task


def split_sizes(task: Task) -> dict[str, int] | None:
    """bmtpt's train/dev/test sizes of a task, computed from its official sizes under its convention (exactly
    as the loader cuts them); None when the official sizes are not known."""
    if task.official is None or not task.convention or task.convention == "custom":
        return None
    if task.official.cut is not None:
        return {s: task.official.cut[s] for s in SPLITS}
    if task.convention == "generated":
        return {s: task.official.original[s] for s in SPLITS}
    return convention_sizes(task.convention, task.official.original)


MISSING = "missing"


def count_splits(task: Task, data_dir: str) -> dict[str, int | str]:
    """The sizes of the task's train/dev/test read from the files under `data_dir`, by its own loader
    (so cut exactly as a run cuts them): a count, 'missing' where a file is absent, or 'error: ...'."""
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
    expected = split_sizes(task)
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
