"""How tasks meet one backbone's tokenizer (`bmtpt tasks --model M`): the words its classification labels
become (`bmtpt.verbalizers`) and, with a data dir, how many inputs exceed --max-input-tokens.

An input over the limit is shortened in its long field (premise, passage, first sentence; see
`bmtpt.data.encode_input`), so the share reported here is the share of examples that lose part of that
field: a benchmark whose long field matters (RTE, BoolQ, SQuAD) needs a limit that keeps this small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import BmtptError
from .suites.readers import MissingDataFile
from .tasks import SPLITS, Task
from .verbalizers import describe, label_words


def truncated_counts(task: Task, tokenizer, data_dir: str, max_tokens: int) -> dict[str, tuple[int, int] | str]:
    """split -> (inputs over `max_tokens` tokens, inputs), 'missing' where a file is absent, or 'error: ...'."""
    out: dict[str, tuple[int, int] | str] = {}
    for split in SPLITS:
        try:
            examples = task.loader(split, data_dir, 0)
        except MissingDataFile:
            out[split] = "missing"
            continue
        except BmtptError as e:
            out[split] = f"error: {e}"
            continue
        lengths = [len(ids) for ids in tokenizer([e.input for e in examples]).input_ids] if examples else []
        out[split] = (sum(n > max_tokens for n in lengths), len(lengths))
    return out


def _share(counts: dict[str, tuple[int, int] | str]) -> tuple[str, list[str]]:
    """('12.3 % of 5,000', per-split cells) over the splits that were read."""
    read = [c for c in counts.values() if isinstance(c, tuple)]
    cut, total = sum(c[0] for c in read), sum(c[1] for c in read)
    cells = [f"{c[0]:,}/{c[1]:,}" if isinstance(c, tuple) else ("missing" if c == "missing" else "error")
             for c in counts.values()]
    return (f"{100 * cut / total:.1f} % of {total:,}" if total else "-"), cells


def fit_table(tasks: Sequence[Task], tokenizer, is_seq2seq: bool, model: str, verbalizers: str = "auto",
              data_dir: str | None = None, max_tokens: int = 256,
              progress: Callable[[int, int, Task], None] | None = None) -> str:
    """Markdown table: each task's label words on `model` and, with `data_dir`, its inputs over `max_tokens`."""
    head = ["task", f"label words on {model}"]
    if data_dir:
        head += [f"inputs over {max_tokens} tokens", *(f"{s} cut/read" for s in SPLITS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, task in enumerate(tasks, start=1):
        if progress:
            progress(i, len(tasks), task)
        words = describe(label_words(task, tokenizer, is_seq2seq, verbalizers)) if task.is_classification \
            else "(generated text)"
        row = [f"`{task.name}`", words]
        if data_dir:
            share, cells = _share(truncated_counts(task, tokenizer, data_dir, max_tokens))
            row += [share, *cells]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
