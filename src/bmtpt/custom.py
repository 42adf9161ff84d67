"""Your own tasks: a task defined by a YAML file is usable wherever a task name is.

    name: my-nli                  # how runs and tables name it
    train: train.jsonl            # JSONL, CSV or TSV, chosen by extension; CSV/TSV have a header row
    dev: dev.jsonl                # optional
    test: test.jsonl              # optional
    input: "premise: {premise} hypothesis: {hypothesis}"   # template over the columns
    target: label                 # the column holding the answer
    labels: {entailment: "yes", not_entailment: "no"}     # label value -> verbalizer; omit for generation
    metrics: [accuracy, macro_f1] # names of bmtpt.metrics functions (default: accuracy)

Paths are relative to the YAML file. With `labels` the task is classification: an example's target is
its label's verbalizer (the word the model is trained on and scores), and predictions are reported under
the label names. Without `labels` it is generation: the target column is the text to produce.

Missing splits are cut from train, by a fixed rule (seed 42, the benchmark suites' shuffle, independent of
a run's seed): without test, 10 % of train (at least one example) becomes test; without dev, 10 % of what
is left becomes dev. Every problem in a file is one BmtptError naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import read_yaml_mapping
from .errors import BmtptError
from .suites.readers import read_jsonl
from .suites.splits import shuffled
from .tasks import SPLITS, Example, Task, register, registered


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true / false. PyYAML's 1.1 rules read `yes`, `no`, `on`, `off` as booleans,
    and yes / no are the most common verbalizers there are (`labels: {a: yes}` must mean the word)."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != _BOOL]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))

SUFFIXES = (".yaml", ".yml")
KEYS = ("name", "train", "dev", "test", "input", "target", "labels", "metrics", "description")
CUT = 0.1  # the share of train cut off for a missing test split, then for a missing dev split


@dataclass(frozen=True)
class TaskFile:
    """A parsed task YAML: where it is, its data files, template, target column and label map."""

    path: Path
    name: str
    files: dict  # split -> Path (train always; dev/test when given)
    template: str
    fields: tuple[str, ...]  # the columns the template reads
    target: str
    labels: dict | None  # label value (as text) -> verbalizer
    metrics: tuple[str, ...]
    description: str


def is_task_file(name: str) -> bool:
    """True when a task argument names a task YAML file rather than a registered task."""
    return str(name).strip().lower().endswith(SUFFIXES)


def parse_task_file(path: str | Path) -> TaskFile:
    """Read and check a task YAML (its data files are read later, when a split is loaded)."""
    from .metrics import METRICS  # lazy, as in Task.score: numpy / scipy / sklearn only when needed

    path = Path(path).expanduser().resolve()
    raw = read_yaml_mapping(path, "task file", "name, train, input, target, ...", _Loader)
    unknown = sorted(set(map(str, raw)) - set(KEYS))
    if unknown:
        raise BmtptError(f"{path}: unknown key(s) {', '.join(unknown)} (expected {', '.join(KEYS)})")
    for key in ("name", "train", "input", "target"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise BmtptError(f"{path}: {key} is required (a non-empty string)")
    name = raw["name"].strip()
    if is_task_file(name) or "," in name or "/" in name:
        raise BmtptError(f"{path}: name {name!r} must be a plain task name (no commas, slashes or .yaml)")
    files = {s: (path.parent / raw[s]).resolve() for s in SPLITS if raw.get(s) is not None}
    for split, f in files.items():
        if f.suffix.lower() not in (".jsonl", ".csv", ".tsv"):
            raise BmtptError(f"{path}: {split} file {f.name} must end in .jsonl, .csv or .tsv")
        if not f.is_file():
            raise BmtptError(f"{path}: {split} file {f} does not exist")
    try:
        fields = tuple(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(raw["input"]) if f))
    except ValueError as e:
        raise BmtptError(f"{path}: input template {raw['input']!r} is malformed ({e})") from None
    if not fields or any(not f.isidentifier() for f in fields):
        raise BmtptError(f"{path}: input template must name columns as {{column}}, got {raw['input']!r}")
    labels = raw.get("labels")
    if labels is not None:
        if not isinstance(labels, dict) or not labels or not all(isinstance(v, str) and v.strip()
                                                                 for v in labels.values()):
            raise BmtptError(f"{path}: labels must map each label value to a non-empty verbalizer word")
        labels = {(str(k).lower() if isinstance(k, bool) else str(k)): str(v).strip() for k, v in labels.items()}
        if len(set(labels.values())) != len(labels):
            raise BmtptError(f"{path}: two labels share a verbalizer ({labels})")
    metrics = raw.get("metrics", ["accuracy"])
    if isinstance(metrics, str):
        metrics = [metrics]
    bad = [m for m in metrics if m not in METRICS]
    if not metrics or bad:
        raise BmtptError(f"{path}: unknown metric(s) {', '.join(map(str, bad)) or '(none given)'} "
                         f"(choose from {', '.join(sorted(METRICS))})")
    return TaskFile(path, name, files, raw["input"], fields, raw["target"].strip(), labels, tuple(metrics),
                    str(raw.get("description") or f"custom task from {path.name}"))


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) of a JSONL, CSV or TSV file (CSV/TSV: a header row names the columns); `where` is
    "path line N" for error messages."""
    if path.suffix.lower() == ".jsonl":
        return [(r.where, dict(r.data)) for r in read_jsonl(path)]
    rows = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            for row in reader:
                if None in row or None in row.values():
                    raise BmtptError(f"{path} line {reader.line_num}: the row has a different number of fields "
                                     "than the header")
                rows.append((f"{path} line {reader.line_num}", row))
    except UnicodeDecodeError as e:
        raise BmtptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise BmtptError(f"{path}: malformed {path.suffix[1:].upper()} ({e})") from None
    return rows


def file_examples(tf: TaskFile, path: Path) -> list[Example]:
    """The examples of one data file: the template filled from each row, the target its label's verbalizer
    (classification) or the target column's text (generation)."""
    out = []
    for where, row in read_rows(path):
        missing = [c for c in (*tf.fields, tf.target) if c not in row]
        if missing:
            raise BmtptError(f"{where}: missing column(s) {', '.join(missing)} (the task file "
                             f"{tf.path.name} reads {', '.join((*tf.fields, tf.target))})")
        text = tf.template.format(**{c: str(row[c]).strip() for c in tf.fields})
        value = str(row[tf.target]).strip()
        if tf.labels is not None:
            if value not in tf.labels:
                raise BmtptError(f"{where}: label {value!r} is not one of {list(tf.labels)} (the labels "
                                 f"of {tf.path.name})")
            value = tf.labels[value]
        out.append(Example(text, value))
    if not out:
        raise BmtptError(f"{path}: no examples (the file is empty)")
    return out


def task_from_file(path: str | Path) -> Task:
    """The Task a YAML file defines (registered under its name; the same file again returns it)."""
    tf = parse_task_file(path)
    known = registered(tf.name)
    if known is not None:
        if known.source_file == str(tf.path):
            return known
        raise BmtptError(f"{tf.path}: task name {tf.name!r} is already taken"
                         + (f" by {known.source_file}" if known.source_file else " by a built-in task"))

    def loader(split: str, data_dir: str | None = None, seed: int = 0) -> list[Example]:
        if split != "train" and split in tf.files:
            return file_examples(tf, tf.files[split])
        if "dev" in tf.files and "test" in tf.files:
            return file_examples(tf, tf.files["train"])
        order = shuffled(file_examples(tf, tf.files["train"]))  # the fixed split seed, not the run's
        n_test = 0 if "test" in tf.files else max(1, round(CUT * len(order)))
        rest = order[n_test:]
        n_dev = 0 if "dev" in tf.files else max(1, round(CUT * len(rest)))
        parts = {"test": order[:n_test], "dev": rest[:n_dev], "train": rest[n_dev:]}
        if not parts[split]:
            raise BmtptError(f"{tf.path}: too few training examples ({len(order)}) to cut a {split} split from")
        return parts[split]

    verbalizers = tuple(tf.labels.values()) if tf.labels else None
    return register(Task(name=tf.name, loader=loader, metrics=tf.metrics, verbalizers=verbalizers,
                         description=tf.description, suite="custom", convention="custom", source_file=str(tf.path),
                         label_names={v: k for k, v in tf.labels.items()} if tf.labels else None))
