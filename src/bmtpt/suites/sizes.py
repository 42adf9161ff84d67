"""Official sizes of every benchmark task's original splits (what `bmtpt tasks` prints).

Counts are in the examples the task's loader makes: rows for most sets, answer options for MultiRC,
questions (queries) for SQuAD, ReCoRD and the MRQA sets. `counted` splits were checked by counting the
official files (the copies under shared/data, which MANIFEST.md checks row for row against the Hugging
Face hub release); the others are the published numbers: the GLUE and SuperGLUE papers and the hub
cards (`nyu-mll/glue`, `aps/super_glue`, `rajpurkar/squad`, `allenai/winogrande`,
`fancyzhx/yelp_polarity`, `allenai/scitail`, `google-research-datasets/paws`), and for MRQA the
shared task's paper (its per-subset counts add up to the hub card's totals: 516,819 train, 58,221
validation). The `sentences` suite's sizes were all counted on the files (SNLI's train set, which is
not used, is the published number of pairs with a gold label, as on the hub card `stanfordnlp/snli`
less its pairs labelled -1); for MR, CR and SUBJ, which have no official split, "validation" is
LM-BFF's test split and "train" the other sentences of the raw files (see `sentences`).
tests/test_tasks.py checks every count against the files wherever they are present.
"""

from __future__ import annotations

from ..tasks import OfficialSizes

_BOTH = ("train", "validation")
_VAL = ("validation",)


def _sizes(train: int, validation: int, counted: tuple[str, ...] = (), **kw) -> OfficialSizes:
    return OfficialSizes({"train": train, "validation": validation}, counted, **kw)


_WINOGRANDE_DEV = 1_267  # dev.jsonl, shared by every training size

OFFICIAL: dict[str, OfficialSizes] = {
    # GLUE
    "mnli": OfficialSizes({"train": 392_702, "validation_matched": 9_815, "validation_mismatched": 9_832}),
    "qqp": _sizes(363_846, 40_430),
    "qnli": _sizes(104_743, 5_463, _VAL),
    "sst2": _sizes(67_349, 872, _BOTH),
    "stsb": _sizes(5_749, 1_500, _BOTH),
    "mrpc": _sizes(3_668, 408, _BOTH),
    "rte": _sizes(2_490, 277, _BOTH),
    "cola": _sizes(8_551, 1_043, _BOTH),
    "wnli": _sizes(635, 71, _BOTH),
    # SuperGLUE
    "boolq": _sizes(9_427, 3_270, _VAL),
    "cb": _sizes(250, 56),
    "copa": _sizes(400, 100, _BOTH),
    # answer options (5,131 train / 953 validation questions); dev/test = 476/477 validation questions
    "multirc": _sizes(27_243, 4_848, _BOTH, cut={"train": 27_243, "dev": 2_410, "test": 2_438},
                      note="answer options; validation halved by question (476 / 477 of 953)"),
    "wic": _sizes(5_428, 638, _BOTH),
    "wsc": _sizes(554, 104, _BOTH),
    "superglue-rte": _sizes(2_490, 277, _BOTH),
    # QA (questions)
    "squad": _sizes(87_599, 10_570, _VAL),
    "record": _sizes(100_730, 10_000, note="queries"),
    "nq": _sizes(104_071, 12_836),
    "hotpotqa": _sizes(72_928, 5_901),
    "searchqa": _sizes(117_384, 16_980),
    "newsqa": _sizes(74_160, 4_212),
    # other
    "winogrande": _sizes(40_398, _WINOGRANDE_DEV, _VAL),
    "winogrande-xs": _sizes(160, _WINOGRANDE_DEV, _BOTH),
    "winogrande-s": _sizes(640, _WINOGRANDE_DEV, _VAL),
    "winogrande-m": _sizes(2_558, _WINOGRANDE_DEV, _VAL),
    "winogrande-l": _sizes(10_234, _WINOGRANDE_DEV, _VAL),
    "yelp": _sizes(560_000, 38_000, note="the official test set plays the validation set"),
    "scitail": _sizes(23_596, 1_304, note="the official dev set; its test set (2,126) is unused"),
    "paws": _sizes(49_401, 8_000, note="PAWS-Wiki labeled_final dev; its test set (8,000) is unused"),
    # sentences (counted on the files of shared/data/other; see sentences.py)
    "snli": OfficialSizes({"train": 549_367, "validation": 9_842, "test": 9_824}, ("validation", "test"),
                          note="pairs with a gold label; the official train set (published) is not used: "
                               "train/dev are cut from the validation set"),
    "sick": OfficialSizes({"train": 4_439, "validation": 495, "test": 4_906}, ("train", "validation", "test"),
                          note="SemEval_set TRAIN / TRIAL / TEST of SICK.txt"),
    # LM-BFF's test split plays the validation set; train = the other sentences of the raw files
    "mr": _sizes(8_661, 2_000, _BOTH, note="10,662 sentences less the 2,001 that match LM-BFF's test split"),
    "cr": _sizes(1_770, 1_999, _BOTH, note="3,771 non-blank sentences less the 2,001 that match LM-BFF's "
                                           "test split, whose one blank row is dropped"),
    "subj": _sizes(7_998, 2_000, _BOTH, note="10,000 sentences less the 2,002 that match LM-BFF's test split"),
    "trec": _sizes(5_452, 500, _BOTH, note="the official test set (TREC_10) plays the validation set"),
}
