"""SuperGLUE target tasks (BoolQ, CB, COPA, MultiRC, WiC, WSC, RTE) from the SuperGLUE jsonl files or the hub.

Local layout: `<data_dir>/superglue/<Task>/train.jsonl` and `val.jsonl` (the official zip's files).
Hub: `aps/super_glue` (labels are class indices; WSC uses the `wsc.fixed` config, as T5 does).
All seven are small sets: dev and test are the halves of the shuffled validation set.

MultiRC is scored per answer option; each example's reference is a `QuestionLabel` carrying the
question id ("<paragraph idx>-<question idx>"), which the exact-match metric groups by. Its
validation set is halved *by question* (the questions are shuffled, a question's options stay
together), so dev and test hold about the same number of questions; a paragraph may have questions
in both halves, as in ATTEMPT's per-row split, but no question is ever split.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..tasks import Example, Task, register
from . import readers
from .readers import Row, label_word, long_span, make_input
from .sizes import OFFICIAL
from .splits import make_loader

HUB_PATH = "aps/super_glue"
FILES = {"train": "train.jsonl", "validation": "val.jsonl"}
BOOL = ("false", "true")  # hub index order: 0 = False, 1 = True
_BOOL_LOCAL = {False: "false", True: "true"}  # the jsonl files hold JSON booleans

ToExample = Callable[[Row, str], list[Example]]  # (row, 'local' | 'hub') -> examples


def _loader(folder: str, hub_config: str, to_examples: ToExample, key=None):
    def local(data_dir: Path, orig: str) -> list[Example]:
        rows = readers.read_jsonl(data_dir / "superglue" / folder / FILES[orig])
        return [ex for row in rows for ex in to_examples(row, "local")]

    def hub(orig: str) -> list[Example]:
        return [ex for row in readers.hub_rows(HUB_PATH, hub_config, orig) for ex in to_examples(row, "hub")]

    return make_loader(local, hub, "small", key)


def _labels(row: Row, source: str, task: str, verbalizers: tuple[str, ...], local_map: dict) -> str:
    mapping = dict(enumerate(verbalizers)) if source == "hub" else local_map
    return label_word(row, "label", mapping, task)


def _classifier(name: str, fields: tuple[str, ...], verbalizers: tuple[str, ...], local_map: dict, long: str
                ) -> ToExample:
    """Rows whose named text fields go into the input verbatim and whose 'label' is a class; `long` is the
    field that gives way when the input is too long."""

    def to_examples(row: Row, source: str) -> list[Example]:
        parts = [(f, row.text(f)) for f in fields]
        return [Example(make_input(name, parts), _labels(row, source, name, verbalizers, local_map),
                        cut=long_span(name, parts, long))]

    return to_examples


def _copa(row: Row, source: str) -> list[Example]:
    parts = [(f, row.text(f)) for f in ("premise", "question", "choice1", "choice2")]
    label = _labels(row, source, "copa", ("choice1", "choice2"), {0: "choice1", 1: "choice2"})
    return [Example(make_input("copa", parts), label, cut=long_span("copa", parts, "premise"))]


def mark_span(text: str, index: int, span: str, mark: str = "*") -> str:
    """Wrap the words of `span` starting at word `index` in `mark`s (T5's WSC input); unchanged if the
    words there do not match `span` (a few WSC rows have shifted indices)."""
    words = text.split(" ")
    n = len(span.split(" "))
    if 0 <= index and " ".join(words[index:index + n]).rstrip(".,;:!?'\"") == span.rstrip(".,;:!?'\""):
        words[index] = mark + words[index]
        words[index + n - 1] = words[index + n - 1] + mark
    return " ".join(words)


def _wsc(row: Row, source: str) -> list[Example]:
    # the jsonl nests the spans under 'target'; the hub has them at top level
    spans = Row(row.where, row.get("target")) if source == "local" else row
    span1, span2 = spans.text("span1_text"), spans.text("span2_text")
    index = spans.get("span2_index")
    text = mark_span(row.text("text"), index if isinstance(index, int) else -1, span2)
    parts = [("text", text), ("span1", span1), ("span2", span2)]
    return [Example(make_input("wsc", parts), _labels(row, source, "wsc", BOOL, _BOOL_LOCAL),
                    cut=long_span("wsc", parts, "text"))]


_TAGS = re.compile(r"<[^>]+>")  # some MultiRC copies carry <b>Sent 1: </b> ... <br> markup


def _multirc_example(paragraph: str, question: str, answer: str, label: str, qid: str) -> Example:
    from ..metrics import QuestionLabel  # lazy: listing tasks should not import numpy/scipy/sklearn

    parts = [("question", question), ("answer", answer), ("paragraph", paragraph)]
    return Example(make_input("multirc", parts), label, reference=QuestionLabel(label, qid), meta={"question_id": qid},
                   cut=long_span("multirc", parts, "paragraph"))


def _multirc(row: Row, source: str) -> list[Example]:
    if source == "hub":  # one row per answer option
        idx = row.get("idx")
        qid = f"{idx['paragraph']}-{idx['question']}"
        label = _labels(row, source, "multirc", BOOL, {})
        paragraph = " ".join(_TAGS.sub(" ", row.text("paragraph")).split())
        return [_multirc_example(paragraph, row.text("question"), row.text("answer"), label, qid)]
    passage = Row(row.where, row.get("passage"))
    paragraph = " ".join(_TAGS.sub(" ", passage.text("text")).split())
    out = []
    for q in passage.get("questions"):
        q = Row(row.where, q)
        qid = f"{row.get('idx')}-{q.get('idx')}"
        for a in q.get("answers"):
            a = Row(row.where, a)
            label = label_word(a, "label", {0: "false", 1: "true"}, "multirc")
            out.append(_multirc_example(paragraph, q.text("question"), a.text("text"), label, qid))
    return out


def _question_id(ex: Example) -> str:
    return ex.meta["question_id"]


def _task(name: str, loader, verbalizers: tuple[str, ...], description: str,
          metrics: tuple[str, ...] = ("accuracy",), metric_kwargs: dict | None = None) -> Task:
    return register(Task(name=name, loader=loader, metrics=metrics, verbalizers=verbalizers,
                         description=description, suite="superglue", metric_kwargs=metric_kwargs or {},
                         official=OFFICIAL.get(name)))


_NLI3 = ("entailment", "contradiction", "neutral")  # CB's hub index order
_NLI2 = ("entailment", "not_entailment")

_BOOLQ = _classifier("boolq", ("question", "passage"), BOOL, _BOOL_LOCAL, "passage")
_CB = _classifier("cb", ("premise", "hypothesis"), _NLI3, {w: w for w in _NLI3}, "premise")
_WIC = _classifier("wic", ("word", "sentence1", "sentence2"), BOOL, _BOOL_LOCAL, "sentence1")
_RTE = _classifier("superglue-rte", ("premise", "hypothesis"), _NLI2, {w: w for w in _NLI2}, "premise")

TASKS: dict[str, Task] = {t.name: t for t in (
    _task("boolq", _loader("BoolQ", "boolq", _BOOLQ), BOOL, "BoolQ: yes/no questions about a passage"),
    _task("cb", _loader("CB", "cb", _CB), _NLI3, "CommitmentBank: three-way entailment",
          metrics=("macro_f1", "accuracy")),
    _task("copa", _loader("COPA", "copa", _copa), ("choice1", "choice2"),
          "COPA: which choice is the cause/effect of the premise"),
    _task("multirc", _loader("MultiRC", "multirc", _multirc, key=_question_id), BOOL,
          "MultiRC: is this answer option correct? (per option; EM per question)",
          metrics=("multirc_f1a", "multirc_exact_match"),
          metric_kwargs={"multirc_f1a": {"positive": "true"}}),
    _task("wic", _loader("WiC", "wic", _WIC), BOOL, "WiC: is the word used in the same sense in both sentences?"),
    _task("wsc", _loader("WSC", "wsc.fixed", _wsc), BOOL, "WSC: does the marked pronoun refer to span1?"),
    _task("superglue-rte", _loader("RTE", "rte", _RTE), _NLI2, "RTE in SuperGLUE's jsonl format"),
)}
