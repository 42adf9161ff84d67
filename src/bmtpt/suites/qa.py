"""Extractive QA tasks, decoded and scored with SQuAD EM/F1: SQuAD v1.1 and ReCoRD (sources) and four
MRQA targets (Natural Questions, HotpotQA, SearchQA, NewsQA). All are large sets (splits.py).

Each example's target is the first gold answer (what the model is trained to write); its reference is
the tuple of distinct gold answers (the metric takes the best match).

Local layout:
- SQuAD: `<data_dir>/other/squad_v1.1/{train,dev}-v1.1.json` (the official JSON);
- ReCoRD: `<data_dir>/superglue/ReCoRD/{train,val}.jsonl` (SuperGLUE's jsonl: one passage per line with
  its entity spans and queries; one example per query);
- MRQA: `<data_dir>/other/mrqa/<Name>/{train,dev}.jsonl.gz` in the official MRQA format (a header line,
  then one context per line with its questions), <Name> being the MRQA subset name:
  NaturalQuestionsShort, HotpotQA, SearchQA, NewsQA.
Hub: `rajpurkar/squad`, `aps/super_glue` (record), `mrqa-workshop/mrqa` (filtered by `subset`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import BmtptError
from ..tasks import Example, Task, register
from . import readers
from .readers import Row, long_span, make_input
from .sizes import OFFICIAL
from .splits import make_loader

MAX_TARGET_TOKENS = 32
MRQA_HUB = "mrqa-workshop/mrqa"
MRQA_SUBSETS = {"nq": "NaturalQuestionsShort", "hotpotqa": "HotpotQA", "searchqa": "SearchQA",
                "newsqa": "NewsQA"}


def _answers_example(task: str, fields: list[tuple[str, str]], answers: Iterable[str], where: str) -> Example:
    golds = tuple(dict.fromkeys(a.strip() for a in answers if isinstance(a, str) and a.strip()))
    if not golds:
        raise BmtptError(f"task {task}: {where}: the question has no gold answer")
    # the context / passage (the last field) gives way when the input is too long; the question stays whole
    return Example(make_input(task, fields), golds[0], reference=golds, cut=long_span(task, fields, fields[-1][0]))


# --- SQuAD v1.1 ------------------------------------------------------------------------------------

def squad_examples(document: object, where: str, task: str = "squad") -> list[Example]:
    """Examples of a SQuAD-format JSON document ({"data": [{"paragraphs": [{"context", "qas"}]}]})."""
    out = []
    try:
        for a, article in enumerate(document["data"]):  # type: ignore[index]
            for p, para in enumerate(article["paragraphs"]):
                for q in para["qas"]:
                    place = f"{where} (article {a}, paragraph {p}, question {q.get('id', '?')})"
                    fields = [("question", q["question"].strip()), ("context", para["context"].strip())]
                    out.append(_answers_example(task, fields, (x["text"] for x in q["answers"]), place))
    except (KeyError, TypeError, AttributeError) as e:
        raise BmtptError(f"{where}: not in SQuAD format (missing or bad field {e})") from None
    return out


def _squad_local(data_dir: Path, orig: str) -> list[Example]:
    path = data_dir / "other" / "squad_v1.1" / ("train-v1.1.json" if orig == "train" else "dev-v1.1.json")
    return squad_examples(readers.read_json(path), str(path))


def _squad_hub(orig: str) -> list[Example]:
    out = []
    for row in readers.hub_rows("rajpurkar/squad", None, orig):
        fields = [("question", row.text("question")), ("context", row.text("context"))]
        out.append(_answers_example("squad", fields, row.get("answers")["text"], row.where))
    return out


# --- ReCoRD ----------------------------------------------------------------------------------------

def clean_record_passage(text: str) -> str:
    """Turn ReCoRD's '@highlight' bullet lines into sentences (T5's preprocessing)."""
    text = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", text)
    return re.sub(r"\n@highlight\n", ". ", text).strip()


def _record_example(passage: str, entities: Iterable[str], query: str, answers: Iterable[str],
                    where: str) -> Example:
    fields = [("query", query.strip()), ("entities", ", ".join(dict.fromkeys(entities))),
              ("passage", clean_record_passage(passage))]
    return _answers_example("record", fields, answers, where)


def record_examples(rows: Iterable[Row]) -> list[Example]:
    """One example per query of SuperGLUE ReCoRD jsonl rows (passage text + entity spans + queries)."""
    out = []
    for row in rows:
        passage = Row(row.where, row.get("passage"))
        text = passage.get("text")
        try:  # entity spans are inclusive character offsets
            entities = [text[e["start"]: e["end"] + 1] for e in passage.get("entities")]
        except (KeyError, TypeError):
            raise BmtptError(f"{row.where}: malformed ReCoRD entity spans") from None
        for q in row.get("qas"):
            q = Row(row.where, q)
            answers = [Row(row.where, a).text("text") for a in q.get("answers")]
            out.append(_record_example(text, entities, q.text("query"), answers, row.where))
    return out


def _record_local(data_dir: Path, orig: str) -> list[Example]:
    name = "train.jsonl" if orig == "train" else "val.jsonl"
    return record_examples(readers.read_jsonl(data_dir / "superglue" / "ReCoRD" / name))


def _record_hub(orig: str) -> list[Example]:
    return [_record_example(row.get("passage"), row.get("entities"), row.text("query"), row.get("answers"),
                            row.where)
            for row in readers.hub_rows("aps/super_glue", "record", orig)]


# --- MRQA ------------------------------------------------------------------------------------------

def mrqa_examples(task: str, rows: Iterable[Row]) -> list[Example]:
    """One example per question of official-format MRQA rows ({"context", "qas": [...]})."""
    out = []
    for row in rows:
        context = row.text("context")
        for q in row.get("qas"):
            q = Row(row.where, q)
            fields = [("question", q.text("question")), ("context", context)]
            out.append(_answers_example(task, fields, q.get("answers"), row.where))
    return out


def _mrqa_loader(task: str, subset: str) -> Callable[[str, str | None, int], list[Example]]:
    def local(data_dir: Path, orig: str) -> list[Example]:
        name = "train.jsonl.gz" if orig == "train" else "dev.jsonl.gz"
        path = data_dir / "other" / "mrqa" / subset / name
        return mrqa_examples(task, readers.read_jsonl(path, skip_header=True))

    def hub(orig: str) -> list[Example]:
        out = []
        for row in readers.hub_rows(MRQA_HUB, None, orig):
            if row.get("subset") != subset:  # the hub holds all MRQA subsets in one table
                continue
            fields = [("question", row.text("question")), ("context", row.text("context"))]
            out.append(_answers_example(task, fields, row.get("answers"), row.where))
        return out

    return make_loader(local, hub, "large")


def _task(name: str, loader, suite: str, description: str) -> Task:
    return register(Task(name=name, loader=loader, metrics=("squad_exact_match", "squad_f1"),
                         verbalizers=None, description=description, suite=suite,
                         max_target_tokens=MAX_TARGET_TOKENS, official=OFFICIAL.get(name)))


TASKS: dict[str, Task] = {t.name: t for t in (
    _task("squad", make_loader(_squad_local, _squad_hub, "large"), "qa",
          "SQuAD v1.1: extractive question answering (source task)"),
    _task("record", make_loader(_record_local, _record_hub, "large"), "qa",
          "ReCoRD: fill the @placeholder with a passage entity (source task)"),
    *(_task(name, _mrqa_loader(name, subset), "mrqa", f"MRQA {subset}: extractive question answering")
      for name, subset in MRQA_SUBSETS.items()),
)}
