"""Short-text classification sets of the SentEval era: SNLI, SICK, MR, CR, SUBJ and TREC (suite `sentences`).

Local layout under `<data_dir>/other/` (that of shared/data, see its MANIFEST.md):
- `snli/senteval/{s1,s2,labels}.{dev,test}`: SNLI 1.0 in SentEval's compact format (line i of the three
  files is one pair: premise, hypothesis, gold label; pairs without a gold label already removed; UTF-8).
  Only the validation (dev) and test files are at hand, so SNLI follows the *dev-train* convention:
  1,000 shuffled validation pairs are dev, the other 8,842 train, and the official test set (9,824) is
  test. The hub path cuts `stanfordnlp/snli`'s validation and test the same way (pairs labelled -1,
  i.e. without a gold label, dropped), so local and hub runs agree; SNLI's own train set is not used;
- `sick/SICK.txt`: the full SICK release (tab-separated, header row, CRLF line ends, no final newline);
  the *official* convention: the SemEval_set column's TRAIN (4,439) / TRIAL (495) / TEST (4,906) are
  train / dev / test; the label is entailment_label (NEUTRAL / ENTAILMENT / CONTRADICTION). Hub:
  `RobZamp/sick` (train / validation / test; label 0 entailment, 1 neutral, 2 contradiction);
- `mr/rt-polarity.{neg,pos}`, `cr/custrev.{neg,pos}`, `subj/subj.{subjective,objective}`: one sentence
  per line, the file is the label; single-byte legacy encoding (Windows-1252, i.e. Latin-1 whose bytes
  0x80-0x9f are punctuation such as an em dash; MR and SUBJ have such bytes, CR is ASCII). Blank lines
  are dropped (CR has 4). These sets have no official split, so they follow the *lm-bff* convention:
  test is LM-BFF's fixed test split, `lm-bff-k-shot/<task>/test.csv` (header-less UTF-8 csv
  `label,sentence`; 0 = negative / subjective, 1 = positive / objective; 2,000 rows, of which CR's one
  blank row is dropped, leaving 1,999), which plays the "validation" original split. The other
  sentences of the raw files, in file order (label 0's file first), less every sentence that also
  occurs in the test file, are the "train" original split: shuffled with seed 42, the first 1,000 are
  dev and the rest train. Sentences are matched on a normalised form (lower case, ASCII letters and
  digits only), so that a test sentence whose non-ASCII characters LM-BFF decoded differently or
  dropped (19 in SUBJ) and a second copy of a test sentence (one in MR, two in CR, two in SUBJ) stay
  out of train and dev. The test sentences keep LM-BFF's text. The hub has no LM-BFF split: all rows
  of the hub splits together are shuffled (seed 42), the first 2,000 are test, and the rest, less the
  sentences of the test, are cut as above, so hub and local splits differ. Hub:
  `cornell-movie-review-data/rotten_tomatoes` (train, validation, test), `SetFit/CR` and `SetFit/subj`
  (train, test); labels 0 negative / 1 positive, and for SUBJ 0 objective / 1 subjective;
- `trec/train_5500.label` and `trec/TREC_10.label`: `COARSE:fine question` per line (Windows-1252 /
  Latin-1); the *large* convention with TREC_10 (the official test set, 500) as the "validation" set:
  1,000 shuffled training questions are dev, the other 4,452 train. Labels are the 6 coarse classes.
  Hub: `CogComp/trec` (train, test; `coarse_label` in the order ABBR, ENTY, DESC, HUM, LOC, NUM).

Every input is T5-style (`snli premise: ... hypothesis: ...`, `mr sentence: ...`, `trec question: ...`),
and `Example.cut` marks the premise (or the one sentence / question) as the part to shorten when an
input is too long. Raw files are parsed once per process (cached by path, size and mtime).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import BmtptError
from ..tasks import Example, Task, register
from . import readers
from .readers import Row, label_word, long_span, make_input
from .sizes import OFFICIAL
from .splits import make_loader, shuffled

Loader = Callable[[str, str | None, int], list[Example]]
SUITE = "sentences"
HUB_TEST_SIZE = 2000  # the hub's stand-in for LM-BFF's 2,000-sentence test split

NLI_VERBALIZERS = ("entailment", "neutral", "contradiction")
NLI_WORDS = {"entailment": "yes", "neutral": "maybe", "contradiction": "no"}
SENTIMENT_VERBALIZERS = ("negative", "positive")  # SST-2's, so a prompt moved from sst2 keeps its words
SUBJ_VERBALIZERS = ("subjective", "objective")
SUBJ_WORDS = {"subjective": "opinion", "objective": "fact"}
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
TREC_VERBALIZERS = ("abbreviation", "description", "entity", "human", "location", "number")
TREC_WORDS = {v: v for v in TREC_VERBALIZERS}
TREC_HUB_ORDER = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")  # CogComp/trec's coarse_label indices

_NLI_HUB_LABELS = dict(enumerate(NLI_VERBALIZERS))  # stanfordnlp/snli and RobZamp/sick: 0 / 1 / 2
_SICK_LABELS = {"ENTAILMENT": "entailment", "NEUTRAL": "neutral", "CONTRADICTION": "contradiction"}
_SICK_SETS = {"train": "TRAIN", "validation": "TRIAL", "test": "TEST"}
_TREC_LABELS = dict(zip(TREC_CLASSES, TREC_VERBALIZERS))
_TREC_HUB_LABELS = {i: _TREC_LABELS[c] for i, c in enumerate(TREC_HUB_ORDER)}
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


# --- reading the raw files ---------------------------------------------------------------------------

def decode_legacy(raw: bytes) -> str:
    """One line of the MR / SUBJ / TREC files: Windows-1252 (Latin-1 whose bytes 0x80-0x9f are punctuation,
    as LM-BFF decoded them: MR's `\\x97` is an em dash), Latin-1 for a byte that 1252 leaves undefined."""
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_lines(path: Path, encoding: str = "utf-8") -> tuple[tuple[int, str], ...]:
    """(line number, text) of every line of a text file, line ends (LF or CRLF) removed; `encoding`
    'legacy' decodes each line with `decode_legacy`. An undecodable line names the file and line."""
    st = readers.require(path).stat()
    return _read_lines(str(path), st.st_size, st.st_mtime_ns, encoding)


@lru_cache(maxsize=32)
def _read_lines(path: str, _size: int, _mtime: int, encoding: str) -> tuple[tuple[int, str], ...]:
    lines = Path(path).read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start another
    out = []
    for n, raw in enumerate(lines, start=1):
        raw = raw.removesuffix(b"\r")
        if encoding == "legacy":
            out.append((n, decode_legacy(raw)))
            continue
        try:
            out.append((n, raw.decode(encoding)))
        except UnicodeDecodeError as e:
            raise BmtptError(f"{path} line {n}: not valid {encoding} ({e.reason})") from None
    return tuple(out)


def sentence_key(text: str) -> str:
    """The normalised form sentences are matched on: lower case, ASCII letters and digits only (so
    decoding differences of non-ASCII bytes and tokenisation spaces do not matter)."""
    return _NOT_ALNUM.sub("", text.lower()) or text.strip()


def _text(row: Row, key: str) -> str:
    text = row.text(key)
    if not text:
        raise BmtptError(f"{row.where}: empty field {key!r}")
    return text


def _single(task: str, name: str, text: str, label: str) -> Example:
    fields = [(name, text)]
    return Example(make_input(task, fields), label, cut=long_span(task, fields, name))


def _pair(task: str, premise: str, hypothesis: str, label: str) -> Example:
    fields = [("premise", premise), ("hypothesis", hypothesis)]
    return Example(make_input(task, fields), label, cut=long_span(task, fields, "premise"))


def long_text(example: Example) -> str:
    """The text of the example's `cut` field (premise, sentence or question)."""
    assert example.cut is not None
    return example.input[slice(*example.cut)]


# --- SNLI --------------------------------------------------------------------------------------------

SNLI_HUB = "stanfordnlp/snli"
_SNLI_EXT = {"validation": "dev", "test": "test"}


def snli_rows(data_dir: Path, orig: str) -> list[Row]:
    """SentEval's line-aligned s1 / s2 / labels files of one split as rows (premise, hypothesis, label)."""
    folder = data_dir / "other" / "snli" / "senteval"
    paths = [folder / f"{name}.{_SNLI_EXT[orig]}" for name in ("s1", "s2", "labels")]
    s1, s2, labels = (read_lines(p) for p in paths)
    for path, lines in zip(paths, (s1, s2)):
        if len(lines) != len(labels):
            raise BmtptError(f"{path} line {min(len(lines), len(labels)) + 1}: {path.name} has {len(lines)} "
                             f"lines but {paths[2].name} has {len(labels)} (the three files are line-aligned)")
    return [Row(f"{paths[2]} line {n} (pair {n} of {paths[0].name} / {paths[1].name})",
                {"premise": p, "hypothesis": h, "label": label.strip()})
            for (n, label), (_, p), (_, h) in zip(labels, s1, s2)]


def _snli_local(data_dir: Path, orig: str) -> list[Example]:
    mapping = {v: v for v in NLI_VERBALIZERS}
    return [_pair("snli", _text(r, "premise"), _text(r, "hypothesis"), label_word(r, "label", mapping, "snli"))
            for r in snli_rows(data_dir, orig)]


def _snli_hub(orig: str) -> list[Example]:
    return [_pair("snli", _text(r, "premise"), _text(r, "hypothesis"), label_word(r, "label", _NLI_HUB_LABELS, "snli"))
            for r in readers.hub_rows(SNLI_HUB, None, orig) if r.get("label") != -1]  # -1: no gold label


# --- SICK --------------------------------------------------------------------------------------------

SICK_HUB = "RobZamp/sick"


def _sick_local(data_dir: Path, orig: str) -> list[Example]:
    rows = readers.read_tsv(data_dir / "other" / "sick" / "SICK.txt")
    wanted, out = _SICK_SETS[orig], []
    for r in rows:
        which = r.text("SemEval_set")
        if which not in _SICK_SETS.values():
            raise BmtptError(f"{r.where}: SemEval_set {which!r} is not one of {sorted(_SICK_SETS.values())}")
        if which == wanted:
            out.append(_pair("sick", _text(r, "sentence_A"), _text(r, "sentence_B"),
                             label_word(r, "entailment_label", _SICK_LABELS, "sick")))
    return out


def _sick_hub(orig: str) -> list[Example]:
    return [_pair("sick", _text(r, "sentence_A"), _text(r, "sentence_B"),
                  label_word(r, "label", _NLI_HUB_LABELS, "sick")) for r in readers.hub_rows(SICK_HUB, None, orig)]


# --- MR, CR, SUBJ: LM-BFF's test split ----------------------------------------------------------------

@dataclass(frozen=True)
class LmBffSpec:
    """One of the LM-BFF single-sentence sets: raw files, LM-BFF's label order, the hub copy."""

    name: str  # the task, and its folders other/<name>/ and other/lm-bff-k-shot/<name>/
    files: tuple[str, str]  # the raw files of LM-BFF's label 0 and label 1
    verbalizers: tuple[str, str]  # the words of LM-BFF's label 0 and label 1
    hub_path: str
    hub_splits: tuple[str, ...]  # pooled, in this order, before the hub test split is drawn
    hub_labels: tuple[str, str]  # the words of the hub's class 0 and class 1
    words: Mapping[str, str] | None
    description: str


def _without(examples: Iterable[Example], test: Iterable[Example]) -> list[Example]:
    """`examples` less every one whose sentence matches (normalised) a sentence of `test`."""
    keys = {sentence_key(long_text(e)) for e in test}
    return [e for e in examples if sentence_key(long_text(e)) not in keys]


def lm_bff_test(spec: LmBffSpec, data_dir: Path) -> list[Example]:
    """LM-BFF's test split (its blank rows dropped: CR has one)."""
    rows = readers.read_csv(data_dir / "other" / "lm-bff-k-shot" / spec.name / "test.csv", ("label", "sentence"))
    mapping = {"0": spec.verbalizers[0], "1": spec.verbalizers[1]}
    return [_single(spec.name, "sentence", r.text("sentence"), label_word(r, "label", mapping, spec.name))
            for r in rows if r.text("sentence")]


def lm_bff_raw(spec: LmBffSpec, data_dir: Path) -> list[Example]:
    """Every non-blank sentence of the raw files, label 0's file first, in file order."""
    return [_single(spec.name, "sentence", text.strip(), verbalizer)
            for verbalizer, name in zip(spec.verbalizers, spec.files)
            for _, text in read_lines(data_dir / "other" / spec.name / name, "legacy") if text.strip()]


def _lm_bff_local(spec: LmBffSpec) -> Callable[[Path, str], list[Example]]:
    def local(data_dir: Path, orig: str) -> list[Example]:
        test = lm_bff_test(spec, data_dir)
        return test if orig == "validation" else _without(lm_bff_raw(spec, data_dir), test)

    return local


def _lm_bff_hub(spec: LmBffSpec) -> Callable[[str], list[Example]]:
    mapping = dict(enumerate(spec.hub_labels))

    def hub(orig: str) -> list[Example]:
        pool = [_single(spec.name, "sentence", r.text("text"), label_word(r, "label", mapping, spec.name))
                for split in spec.hub_splits for r in readers.hub_rows(spec.hub_path, None, split) if r.text("text")]
        test = shuffled(pool)[:HUB_TEST_SIZE]
        return test if orig == "validation" else _without(pool, test)

    return hub


LM_BFF_SPECS = (
    LmBffSpec("mr", ("rt-polarity.neg", "rt-polarity.pos"), SENTIMENT_VERBALIZERS,
              "cornell-movie-review-data/rotten_tomatoes", ("train", "validation", "test"), SENTIMENT_VERBALIZERS,
              None, "MR: movie review sentiment (LM-BFF test split)"),
    LmBffSpec("cr", ("custrev.neg", "custrev.pos"), SENTIMENT_VERBALIZERS, "SetFit/CR", ("train", "test"),
              SENTIMENT_VERBALIZERS, None, "CR: customer review sentiment (LM-BFF test split)"),
    LmBffSpec("subj", ("subj.subjective", "subj.objective"), SUBJ_VERBALIZERS, "SetFit/subj", ("train", "test"),
              ("objective", "subjective"), SUBJ_WORDS,
              "SUBJ: is the sentence subjective (a review) or objective (a plot)? (LM-BFF test split)"),
)


# --- TREC --------------------------------------------------------------------------------------------

TREC_HUB = "CogComp/trec"
_TREC_FILES = {"train": "train_5500.label", "validation": "TREC_10.label"}


def trec_rows(path: Path) -> list[Row]:
    """Rows (coarse, fine, question) of a CogComp file: `COARSE:fine question text` per line."""
    rows = []
    for n, line in read_lines(path, "legacy"):
        if not line.strip():
            continue
        label, _, question = line.strip().partition(" ")
        coarse, colon, fine = label.partition(":")
        if not (coarse and colon and fine and question.strip()):
            raise BmtptError(f"{path} line {n}: expected 'COARSE:fine question', found {line[:60]!r}")
        rows.append(Row(f"{path} line {n}", {"coarse": coarse, "fine": fine, "question": question.strip()}))
    return rows


def _trec_local(data_dir: Path, orig: str) -> list[Example]:
    return [_single("trec", "question", r.text("question"), label_word(r, "coarse", _TREC_LABELS, "trec"))
            for r in trec_rows(data_dir / "other" / "trec" / _TREC_FILES[orig])]


def _trec_hub(orig: str) -> list[Example]:
    return [_single("trec", "question", _text(r, "text"), label_word(r, "coarse_label", _TREC_HUB_LABELS, "trec"))
            for r in readers.hub_rows(TREC_HUB, None, "train" if orig == "train" else "test")]


# --- the tasks ---------------------------------------------------------------------------------------

def _task(name: str, loader: Loader, verbalizers: tuple[str, ...], words: Mapping[str, str] | None,
          description: str) -> Task:
    return register(Task(name=name, loader=loader, verbalizers=verbalizers, description=description, suite=SUITE,
                         official=OFFICIAL.get(name), words=words))


TASKS: dict[str, Task] = {t.name: t for t in (
    _task("snli", make_loader(_snli_local, _snli_hub, "dev-train"), NLI_VERBALIZERS, NLI_WORDS,
          "SNLI: three-way entailment (train/dev cut from the official validation set)"),
    _task("sick", make_loader(_sick_local, _sick_hub, "official"), NLI_VERBALIZERS, NLI_WORDS,
          "SICK: three-way entailment (SemEval-2014 train/trial/test)"),
    *(_task(s.name, make_loader(_lm_bff_local(s), _lm_bff_hub(s), "lm-bff"), s.verbalizers, s.words, s.description)
      for s in LM_BFF_SPECS),
    _task("trec", make_loader(_trec_local, _trec_hub, "large"), TREC_VERBALIZERS, TREC_WORDS,
          "TREC: question type (6 coarse classes)"),
)}
