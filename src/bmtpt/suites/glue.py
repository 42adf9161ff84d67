"""GLUE tasks (MNLI, QQP, QNLI, SST-2 as sources; all nine as targets) from GLUE's tsv files or the hub.

Local layout: `<data_dir>/glue/<TASK>/train.tsv` and `dev.tsv` as written by the GLUE download script
(MNLI: `dev_matched.tsv` / `dev_mismatched.tsv`; CoLA has no header; MRPC's header starts with a BOM).
Hub: `nyu-mll/glue`, whose labels are class indices (the order is given per task below).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BmtptError
from ..tasks import Example, Task, register
from . import readers
from .readers import Row, label_word, long_span, make_input
from .sizes import OFFICIAL
from .splits import make_loader

HUB_PATH = "nyu-mll/glue"
FILES = {"train": "train.tsv", "validation": "dev.tsv",
         "validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"}
COLA_COLUMNS = ("source", "label", "original_label", "sentence")  # CoLA's tsv has no header


@dataclass(frozen=True)
class GlueSpec:
    """How one GLUE task reads: shown field names, tsv and hub column names, label maps."""

    name: str
    folder: str  # <data_dir>/glue/<folder>
    hub_config: str
    convention: str  # 'small', 'large' or 'mnli' (see splits.py)
    fields: tuple[tuple[str, str, str], ...]  # (name in the input text, tsv column, hub column)
    label_column: str  # tsv column of the label (the hub's is always 'label')
    verbalizers: tuple[str, ...] = ()  # in the hub's class-index order; empty for STS-B (regression)
    tsv_labels: tuple[str, ...] = ()  # tsv label strings, in the same order as verbalizers
    columns: tuple[str, ...] | None = None  # names of the tsv columns when the file has no header
    metrics: tuple[str, ...] = ("accuracy",)
    positive: str | None = None  # F1's positive class (a verbalizer)
    description: str = ""
    long: str = ""  # the field that gives way when an input is too long (default: the first)


def _stsb_target(score: float) -> str:
    """STS-B target: the score rounded to the nearest 0.2, e.g. 3.4 (T5's and ATTEMPT's convention)."""
    return f"{round(score * 5) / 5:.1f}"


_NUMBER = re.compile(r"[-+]?\d*\.?\d+")


def parse_score(text: str) -> float:
    """Postprocess for STS-B: the first number in the generated text (0.0 when there is none)."""
    m = _NUMBER.search(str(text))
    return float(m.group()) if m else 0.0


def _example(spec: GlueSpec, row: Row, fields: list[tuple[str, str]], label: object) -> Example:
    text = make_input(spec.name, fields)
    cut = long_span(spec.name, fields, spec.long or fields[0][0])
    if not spec.verbalizers:  # STS-B: generate the rounded score; the metric compares with the gold score
        try:
            score = float(label)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BmtptError(f"task {spec.name}: score {label!r} ({row.where}) is not a number") from None
        return Example(text, _stsb_target(score), reference=score, cut=cut)
    return Example(text, str(label), cut=cut)


def _local(spec: GlueSpec) -> Callable[[Path, str], list[Example]]:
    tsv_map = dict(zip(spec.tsv_labels, spec.verbalizers))

    def local(data_dir: Path, orig: str) -> list[Example]:
        rows = readers.read_tsv(data_dir / "glue" / spec.folder / FILES[orig], spec.columns)
        out = []
        for row in rows:
            fields = [(shown, row.text(col)) for shown, col, _ in spec.fields]
            label = (label_word(row, spec.label_column, tsv_map, spec.name) if spec.verbalizers
                     else row.get(spec.label_column))
            out.append(_example(spec, row, fields, label))
        return out

    return local


def _hub(spec: GlueSpec) -> Callable[[str], list[Example]]:
    index_map = dict(enumerate(spec.verbalizers))

    def hub(orig: str) -> list[Example]:
        out = []
        for row in readers.hub_rows(HUB_PATH, spec.hub_config, orig):
            fields = [(shown, row.text(col)) for shown, _, col in spec.fields]
            label = (label_word(row, "label", index_map, spec.name) if spec.verbalizers
                     else row.get("label"))
            out.append(_example(spec, row, fields, label))
        return out

    return hub


def make_task(spec: GlueSpec) -> Task:
    """The `Task` for one GLUE spec."""
    return Task(
        name=spec.name,
        loader=make_loader(_local(spec), _hub(spec), spec.convention),
        metrics=spec.metrics,
        verbalizers=spec.verbalizers or None,
        description=spec.description,
        suite="glue",
        max_target_tokens=8 if not spec.verbalizers else 16,
        postprocess=None if spec.verbalizers else parse_score,
        metric_kwargs={"f1": {"positive": spec.positive}} if spec.positive else {},
        official=OFFICIAL.get(spec.name),
    )


_PAIR = (("sentence1", "sentence1", "sentence1"), ("sentence2", "sentence2", "sentence2"))
_NLI2 = ("entailment", "not_entailment")

SPECS = (
    GlueSpec("mnli", "MNLI", "mnli", "mnli",
             (("premise", "sentence1", "premise"), ("hypothesis", "sentence2", "hypothesis")), "gold_label",
             ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
             description="MultiNLI: three-way entailment (source task)"),
    GlueSpec("qqp", "QQP", "qqp", "large",
             (("question1", "question1", "question1"), ("question2", "question2", "question2")),
             "is_duplicate",
             ("not_duplicate", "duplicate"), ("0", "1"), metrics=("f1", "accuracy"), positive="duplicate",
             description="Quora Question Pairs: are the questions duplicates? (source task)"),
    GlueSpec("qnli", "QNLI", "qnli", "large",
             (("question", "question", "question"), ("sentence", "sentence", "sentence")), "label",
             _NLI2, _NLI2, description="QNLI: does the sentence answer the question? (source task)",
             long="sentence"),
    GlueSpec("sst2", "SST-2", "sst2", "large", (("sentence", "sentence", "sentence"),), "label",
             ("negative", "positive"), ("0", "1"), description="SST-2: sentence sentiment (source task)"),
    GlueSpec("stsb", "STS-B", "stsb", "small", _PAIR, "score", metrics=("pearson", "spearman"),
             description="STS-B: similarity score 0-5, generated as a number rounded to 0.2"),
    GlueSpec("mrpc", "MRPC", "mrpc", "small",
             (("sentence1", "#1 String", "sentence1"), ("sentence2", "#2 String", "sentence2")), "Quality",
             ("not_equivalent", "equivalent"), ("0", "1"), metrics=("f1", "accuracy"), positive="equivalent",
             description="MRPC: are the sentences paraphrases?"),
    GlueSpec("rte", "RTE", "rte", "small", _PAIR, "label", _NLI2, _NLI2,
             description="RTE: recognising textual entailment"),
    GlueSpec("cola", "CoLA", "cola", "small", (("sentence", "sentence", "sentence"),), "label",
             ("unacceptable", "acceptable"), ("0", "1"), columns=COLA_COLUMNS, metrics=("matthews_corr",),
             description="CoLA: grammatical acceptability"),
    GlueSpec("wnli", "WNLI", "wnli", "small", _PAIR, "label", ("not_entailment", "entailment"), ("0", "1"),
             description="WNLI: Winograd schemas as entailment"),
)

TASKS: dict[str, Task] = {spec.name: register(make_task(spec)) for spec in SPECS}
