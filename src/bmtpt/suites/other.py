"""Other target tasks: WinoGrande, Yelp polarity, SciTail, PAWS-Wiki.

Local layout under `<data_dir>/other/`:
- `winogrande_1.1/train_<size>.jsonl` and `dev.jsonl` (size xl for `winogrande`; `winogrande-xs` ...
  `winogrande-l` pick the smaller official training sets). The large-set convention needs far more
  than 1,000 training examples, so the xs (160) and s (640) sizes follow the small-set convention
  (dev/test = halves of the official dev set) while m, l and xl follow the large-set one;
- `yelp_polarity/train.csv` and `test.csv` (header-less, quoted "label","text"; 1 = negative,
  2 = positive); there is no validation file, so the official test set is the "original validation";
- `scitail/tsv_format/scitail_1.0_train.tsv` and `scitail_1.0_dev.tsv` (header-less premise, hypothesis,
  label); a small set, so dev/test are the halves of the official dev file (its test file is unused);
- `paws/train.tsv` and `dev.tsv` (PAWS-Wiki labeled_final, header id/sentence1/sentence2/label); a large
  set, so test is the official dev file.
Hub: `allenai/winogrande`, `fancyzhx/yelp_polarity`, `allenai/scitail` (tsv_format),
`google-research-datasets/paws` (labeled_final).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..tasks import Example, Task, register
from . import readers
from .readers import Row, label_word, long_span, make_input
from .sizes import OFFICIAL
from .splits import make_loader

Loader = Callable[[str, str | None, int], list[Example]]
WINOGRANDE_SIZES = ("xs", "s", "m", "l", "xl")
_SMALL_WINOGRANDE = ("xs", "s")


def _pair_example(task: str, row: Row, names: tuple[str, str], keys: tuple[str, str], label: str) -> Example:
    """A sentence pair whose first sentence (premise) gives way when the input is too long."""
    parts = [(n, row.text(k)) for n, k in zip(names, keys)]
    return Example(make_input(task, parts), label, cut=long_span(task, parts, names[0]))


# --- WinoGrande --------------------------------------------------------------------------------------

def _winogrande_examples(task: str, rows: list[Row]) -> list[Example]:
    out = []
    for row in rows:
        fields = [("sentence", row.text("sentence")), ("option1", row.text("option1")),
                  ("option2", row.text("option2"))]
        # answers are the strings "1"/"2" in the jsonl and on the hub
        label = label_word(row, "answer", {"1": "option1", "2": "option2"}, task)
        out.append(Example(make_input("winogrande", fields), label, cut=long_span("winogrande", fields, "sentence")))
    return out


def _winogrande_loader(task: str, size: str) -> Loader:
    def local(data_dir: Path, orig: str) -> list[Example]:
        name = f"train_{size}.jsonl" if orig == "train" else "dev.jsonl"
        path = data_dir / "other" / "winogrande_1.1" / name
        return _winogrande_examples(task, list(readers.read_jsonl(path)))

    def hub(orig: str) -> list[Example]:
        return _winogrande_examples(task, readers.hub_rows("allenai/winogrande", f"winogrande_{size}", orig))

    return make_loader(local, hub, "small" if size in _SMALL_WINOGRANDE else "large")


# --- Yelp polarity -----------------------------------------------------------------------------------

YELP_VERBALIZERS = ("negative", "positive")


def _yelp_text(text: str) -> str:
    # the csv escapes newlines as a literal backslash-n
    return " ".join(text.replace("\\n", " ").split())


def _yelp_local(data_dir: Path, orig: str) -> list[Example]:
    name = "train.csv" if orig == "train" else "test.csv"
    rows = readers.read_csv(data_dir / "other" / "yelp_polarity" / name, ("label", "text"))
    return [_yelp_example(_yelp_text(row.get("text")), label_word(row, "label", {"1": "negative", "2": "positive"},
                                                                  "yelp")) for row in rows]


def _yelp_hub(orig: str) -> list[Example]:
    rows = readers.hub_rows("fancyzhx/yelp_polarity", None, "train" if orig == "train" else "test")
    return [_yelp_example(_yelp_text(row.text("text")), label_word(row, "label", dict(enumerate(YELP_VERBALIZERS)),
                                                                   "yelp")) for row in rows]


def _yelp_example(text: str, label: str) -> Example:
    parts = [("review", text)]
    return Example(make_input("yelp", parts), label, cut=long_span("yelp", parts, "review"))


# --- SciTail -----------------------------------------------------------------------------------------

SCITAIL_VERBALIZERS = ("entailment", "neutral")
_SCITAIL_LABELS = {"entails": "entailment", "neutral": "neutral"}
SCITAIL_COLUMNS = ("premise", "hypothesis", "label")


def scitail_examples(rows: list[Row] | tuple[Row, ...]) -> list[Example]:
    """Examples of SciTail tsv_format rows (the labels 'entails'/'neutral' become entailment/neutral)."""
    return [_pair_example("scitail", row, ("premise", "hypothesis"), ("premise", "hypothesis"),
                          label_word(row, "label", _SCITAIL_LABELS, "scitail")) for row in rows]


def _scitail_local(data_dir: Path, orig: str) -> list[Example]:
    name = "scitail_1.0_train.tsv" if orig == "train" else "scitail_1.0_dev.tsv"
    path = data_dir / "other" / "scitail" / "tsv_format" / name
    return scitail_examples(readers.read_tsv(path, SCITAIL_COLUMNS))


def _scitail_hub(orig: str) -> list[Example]:
    return scitail_examples(readers.hub_rows("allenai/scitail", "tsv_format", orig))


# --- PAWS-Wiki ---------------------------------------------------------------------------------------

PAWS_VERBALIZERS = ("not_paraphrase", "paraphrase")


def _paws_local(data_dir: Path, orig: str) -> list[Example]:
    rows = readers.read_tsv(data_dir / "other" / "paws" / ("train.tsv" if orig == "train" else "dev.tsv"))
    return [_pair_example("paws", row, ("sentence1", "sentence2"), ("sentence1", "sentence2"),
                          label_word(row, "label", {"0": "not_paraphrase", "1": "paraphrase"}, "paws"))
            for row in rows]


def _paws_hub(orig: str) -> list[Example]:
    return [_pair_example("paws", row, ("sentence1", "sentence2"), ("sentence1", "sentence2"),
                          label_word(row, "label", dict(enumerate(PAWS_VERBALIZERS)), "paws"))
            for row in readers.hub_rows("google-research-datasets/paws", "labeled_final", orig)]


def _task(name: str, loader: Loader, verbalizers: tuple[str, ...], description: str) -> Task:
    return register(Task(name=name, loader=loader, verbalizers=verbalizers, description=description,
                         suite="other", official=OFFICIAL.get(name)))


TASKS: dict[str, Task] = {t.name: t for t in (
    _task("winogrande", _winogrande_loader("winogrande", "xl"), ("option1", "option2"),
          "WinoGrande (train_xl): which option fills the blank"),
    *(_task(f"winogrande-{s}", _winogrande_loader(f"winogrande-{s}", s), ("option1", "option2"),
            f"WinoGrande with the official train_{s} set") for s in WINOGRANDE_SIZES if s != "xl"),
    _task("yelp", make_loader(_yelp_local, _yelp_hub, "large"), YELP_VERBALIZERS,
          "Yelp polarity: review sentiment"),
    _task("scitail", make_loader(_scitail_local, _scitail_hub, "small"), SCITAIL_VERBALIZERS,
          "SciTail: science entailment"),
    _task("paws", make_loader(_paws_local, _paws_hub, "large"), PAWS_VERBALIZERS,
          "PAWS-Wiki (labeled_final): are the sentences paraphrases?"),
)}
