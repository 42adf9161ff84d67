"""The paper's benchmark task suites, registered under lower-case names when this package is imported.

Suites: `glue` (mnli, qqp, qnli, sst2, stsb, mrpc, rte, cola, wnli), `superglue` (boolq, cb, copa,
multirc, wic, wsc, superglue-rte), `qa` (squad, record), `mrqa` (nq, hotpotqa, searchqa, newsqa),
`other` (winogrande and its smaller train sizes, yelp, scitail, paws) and `sentences` (snli, sick, mr,
cr, subj, trec). Each loader reads the official files under a data dir or, without one, the Hugging
Face hub, and cuts train/dev/test by the ATTEMPT/MPT convention or, for the `sentences` sets, by the
convention that suits their official files (see `splits` and `sentences`).
"""

from __future__ import annotations

from ..tasks import Task
from . import glue, other, qa, sentences, superglue

SOURCE_TASKS = ("mnli", "qnli", "qqp", "sst2", "squad", "record")
GLUE_TARGETS = ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola")
SUPERGLUE_TARGETS = ("multirc", "boolq", "wic", "wsc", "cb", "copa")
MRQA_TARGETS = ("nq", "hotpotqa", "searchqa", "newsqa")
OTHER_TARGETS = ("winogrande", "yelp", "scitail", "paws")
SENTENCE_TARGETS = ("snli", "sick", "mr", "cr", "subj", "trec")

TASKS: dict[str, Task] = {**glue.TASKS, **superglue.TASKS, **qa.TASKS, **other.TASKS, **sentences.TASKS}

__all__ = ["GLUE_TARGETS", "MRQA_TARGETS", "OTHER_TARGETS", "SENTENCE_TARGETS", "SOURCE_TASKS", "SUPERGLUE_TARGETS",
           "TASKS"]
