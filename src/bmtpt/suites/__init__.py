"""The paper's benchmark task suites, registered under lower-case names when this package is imported.

Suites: `glue` (mnli, qqp, qnli, sst2, stsb, mrpc, rte, cola, wnli), `superglue` (boolq, cb, copa,
multirc, wic, wsc, superglue-rte), `qa` (squad, record), `mrqa` (nq, hotpotqa, searchqa, newsqa) and
`other` (winogrande and its smaller train sizes, yelp, scitail, paws). Each loader reads the official
files under a data dir or, without one, the Hugging Face hub, and cuts train/dev/test by the
ATTEMPT/MPT convention (see `splits`).
"""

from __future__ import annotations

from ..tasks import Task
from . import glue, other, qa, superglue
from .splits import few_shot, subsample

SOURCE_TASKS = ("mnli", "qnli", "qqp", "sst2", "squad", "record")
GLUE_TARGETS = ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola")
SUPERGLUE_TARGETS = ("multirc", "boolq", "wic", "wsc", "cb", "copa")
MRQA_TARGETS = ("nq", "hotpotqa", "searchqa", "newsqa")
OTHER_TARGETS = ("winogrande", "yelp", "scitail", "paws")

TASKS: dict[str, Task] = {**glue.TASKS, **superglue.TASKS, **qa.TASKS, **other.TASKS}

__all__ = ["GLUE_TARGETS", "MRQA_TARGETS", "OTHER_TARGETS", "SOURCE_TASKS", "SUPERGLUE_TARGETS", "TASKS",
           "few_shot", "subsample"]
