"""The `sentences` suite (SNLI, SICK, MR, CR, SUBJ, TREC): real files, split conventions, fixtures, fake hub."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from test_suites import DATA, FakeHub, needs_data, tsv, write

from bmtpt.errors import BmtptError
from bmtpt.suites import SENTENCE_TARGETS, TASKS, readers, sentences, splits
from bmtpt.suites.readers import MissingDataFile, make_input
from bmtpt.suites.sentences import long_text, sentence_key
from bmtpt.tasks import CONVENTIONS, SPLITS, Example
from bmtpt.tasktable import split_sizes

OTHER = DATA / "other"
LM_BFF = ("mr", "cr", "subj")

# (train, dev, test), counted by hand on the files (wc -l; blank lines; the LM-BFF overlap, see the tests below)
HAND_SIZES = {
    "snli": (9842 - 1000, 1000, 9824),  # wc -l labels.dev / labels.test
    "sick": (4439, 495, 4906),  # awk -F'\t' '{print $12}' SICK.txt | sort | uniq -c
    "mr": (10662 - 2001 - 1000, 1000, 2000),  # 5331 + 5331 lines; 2,001 of them match a test sentence
    "cr": (3771 - 2001 - 1000, 1000, 1999),  # 2407 + 1368 lines, 4 blank; test.csv line 769 is blank
    "subj": (10000 - 2002 - 1000, 1000, 2000),  # 5000 + 5000 lines; 2,002 match a test sentence
    "trec": (5452 - 1000, 1000, 500),  # wc -l train_5500.label / TREC_10.label
}
TEST_LABELS = {  # MANIFEST.md
    "snli": {"entailment": 3368, "neutral": 3219, "contradiction": 3237},
    "sick": {"entailment": 1404, "neutral": 2790, "contradiction": 712},
    "mr": {"negative": 1000, "positive": 1000},
    "cr": {"negative": 999, "positive": 1000},  # the blank row (label 0) is dropped
    "subj": {"subjective": 1000, "objective": 1000},
    "trec": {"abbreviation": 9, "description": 138, "entity": 94, "human": 65, "location": 81, "number": 113},
}


@cache
def real(name: str, split: str) -> tuple[Example, ...]:
    return tuple(TASKS[name].load(split, str(DATA)))


def one_line_error(match: str, name: str, split: str, data_dir: Path) -> str:
    with pytest.raises(BmtptError, match=match) as info:
        TASKS[name].load(split, str(data_dir))
    assert "\n" not in str(info.value)
    return str(info.value)


# --- the tasks ----------------------------------------------------------------------------------------

def test_tasks_are_registered_with_labels_words_and_conventions():
    assert {n for n, t in TASKS.items() if t.suite == "sentences"} == set(SENTENCE_TARGETS)
    conventions = {n: TASKS[n].convention for n in SENTENCE_TARGETS}
    assert conventions == {"snli": "dev-train", "sick": "official", "mr": "lm-bff", "cr": "lm-bff",
                           "subj": "lm-bff", "trec": "large"}
    assert set(conventions.values()) <= set(CONVENTIONS)
    nli = ("entailment", "neutral", "contradiction")
    for name in ("snli", "sick"):
        assert TASKS[name].verbalizers == nli
        assert TASKS[name].words == {"entailment": "yes", "neutral": "maybe", "contradiction": "no"}
    for name in ("mr", "cr"):
        assert TASKS[name].verbalizers == TASKS["sst2"].verbalizers == ("negative", "positive")
        assert TASKS[name].words is None
    assert TASKS["subj"].verbalizers == ("subjective", "objective")
    assert TASKS["subj"].words == {"subjective": "opinion", "objective": "fact"}
    trec = ("abbreviation", "description", "entity", "human", "location", "number")
    assert TASKS["trec"].verbalizers == trec and TASKS["trec"].words == dict(zip(trec, trec))
    for name in SENTENCE_TARGETS:
        task = TASKS[name]
        assert task.metrics == ("accuracy",) and task.description and task.official is not None
        assert split_sizes(task) == dict(zip(SPLITS, HAND_SIZES[name]))


@pytest.mark.parametrize("convention, original", [
    ("official", {"train": 5, "validation": 3, "test": 4}),
    ("dev-train", {"train": 9, "validation": 1003, "test": 4}), ("dev-train", {"train": 0, "validation": 7, "test": 4}),
    ("lm-bff", {"train": 1003, "validation": 20}), ("lm-bff", {"train": 7, "validation": 20}),
])
def test_new_conventions_cut_what_split_sizes_predicts(convention, original):
    fetched = {name: [Example(f"{name}{i}", "a") for i in range(n)] for name, n in original.items()}
    cut = {"official": splits.official_split, "dev-train": splits.dev_train_split, "lm-bff": splits.large_split}
    got = {s: cut[convention](s, fetched.__getitem__) for s in SPLITS}
    assert {s: len(v) for s, v in got.items()} == splits.split_sizes(convention, original)
    assert not set(got["train"]) & set(got["dev"]) and not set(got["dev"]) & set(got["test"])
    if convention == "dev-train":  # train and dev share out the validation set; the train set is not used
        assert set(got["train"]) | set(got["dev"]) == set(fetched["validation"])
        assert got["dev"] == splits.shuffled(fetched["validation"])[:1000]


# --- the real files in ../shared/data ---------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("name", SENTENCE_TARGETS)
def test_real_split_sizes_and_test_labels(name):
    got = tuple(len(real(name, s)) for s in SPLITS)
    assert got == HAND_SIZES[name] == tuple(split_sizes(TASKS[name])[s] for s in SPLITS)
    assert Counter(e.target for e in real(name, "test")) == TEST_LABELS[name]
    assert all(set(e.target for e in real(name, s)) == set(TASKS[name].verbalizers) for s in SPLITS)
    field = {"snli": "premise", "sick": "premise", "trec": "question"}.get(name, "sentence")
    for s in SPLITS:
        for e in real(name, s):
            assert e.input.startswith(f"{name} {field}: ") and e.input == e.input.strip()
            span = long_text(e)
            assert span and span == span.strip() and e.input[: e.cut[0]] == f"{name} {field}: "


@needs_data
@pytest.mark.parametrize("name, split, s1", [("snli", "test", "s1.test"), ("sick", "test", None)])
def test_real_premise_span_is_the_premise(name, split, s1):
    examples = real(name, split)
    for e in examples:
        premise, hypothesis = e.input[len(f"{name} premise: "):].split(" hypothesis: ")
        assert long_text(e) == premise
        assert e.input == make_input(name, [("premise", premise), ("hypothesis", hypothesis)])
    if s1:  # the test split keeps the file's order: the spans are s1's lines (without SentEval's final space)
        lines = (OTHER / "snli/senteval" / s1).read_text(encoding="utf-8").splitlines()
        assert [long_text(e) for e in examples] == [line.strip() for line in lines]
    else:
        rows = readers.read_tsv(OTHER / "sick/SICK.txt")
        premises = [r.text("sentence_A") for r in rows if r.text("SemEval_set") == "TEST"]
        assert [long_text(e) for e in examples] == premises
    assert examples[0].input.startswith(f"{name} premise: ")


@needs_data
def test_real_snli_train_and_dev_share_out_the_validation_set():
    dev, train = real("snli", "dev"), real("snli", "train")
    assert Counter(e.target for e in dev + train) == {"entailment": 3329, "neutral": 3235, "contradiction": 3278}
    validation = sentences._snli_local(DATA, "validation")  # the official validation set, in file order
    assert len(validation) == 9842 and Counter(dev + train) == Counter(validation)
    order = splits.shuffled(validation)
    assert (list(dev), list(train)) == (order[:1000], order[1000:])


@needs_data
@pytest.mark.parametrize("name", LM_BFF)
def test_real_no_test_sentence_in_train_or_dev(name):
    test_keys = {sentence_key(long_text(e)) for e in real(name, "test")}
    for split in ("train", "dev"):
        assert not {sentence_key(long_text(e)) for e in real(name, split)} & test_keys, split
    spec = next(s for s in sentences.LM_BFF_SPECS if s.name == name)
    raw = sentences.lm_bff_raw(spec, DATA)
    # every test sentence is one of the raw sentences; train + dev are the others
    raw_keys = Counter(sentence_key(long_text(e)) for e in raw)
    assert test_keys <= set(raw_keys)
    assert len(real(name, "train")) + len(real(name, "dev")) == len(raw) - sum(raw_keys[k] for k in test_keys)
    assert not any(not long_text(e).strip() for e in raw)  # blank lines dropped


@needs_data
def test_real_cr_drops_blank_lines_and_the_blank_test_row():
    raw = sentences.lm_bff_raw(sentences.LM_BFF_SPECS[1], DATA)
    lines = sum(len((OTHER / "cr" / f).read_bytes().splitlines()) for f in ("custrev.neg", "custrev.pos"))
    assert (lines, len(raw)) == (3775, 3771)
    csv_rows = (OTHER / "lm-bff-k-shot/cr/test.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_rows) == 2000 and csv_rows[768].strip() == "0," and len(real("cr", "test")) == 1999


@needs_data
def test_real_legacy_bytes_decode():
    """MR / SUBJ / TREC bytes are Latin-1 (Windows-1252 punctuation in 0x80-0x9f, as LM-BFF decoded them)."""
    mr = [long_text(e) for s in SPLITS for e in real("mr", s)]
    assert "'compleja e intelectualmente retadora , el ladrón de orquídeas es uno de esos filmes que vale la pena " \
           "ver precisamente por su originalidad . '" in mr
    assert ("garcía bernal and talancón are an immensely appealing couple , and even though their story is "
            "predictable , you'll want things to work out .") in mr
    assert any(t.startswith("singer/composer bryan adams contributes a slew of songs — a few") for t in mr)
    raw = (OTHER / "mr/rt-polarity.pos").read_bytes().splitlines()[43]
    assert b"ladr\xf3n de orqu\xeddeas" in raw  # one byte each: Latin-1, not UTF-8
    subj = [long_text(e) for s in ("train", "dev") for e in real("subj", s)]
    assert any("surface-obsession – one that typifies" in t for t in subj)  # byte 0x96: an en dash
    trec = [long_text(e) for e in real("trec", "train") + real("trec", "dev")]
    assert "Which city has the oldest relationship as a sisterðcity with Los Angeles ?" in trec
    assert not any("\ufffd" in e.input or re.search("[\x80-\x9f]", e.input) for s in SPLITS for e in real("mr", s))


@needs_data
@pytest.mark.parametrize("name", SENTENCE_TARGETS)
def test_real_splits_are_deterministic(name):
    first = {s: real(name, s) for s in SPLITS}
    sentences._read_lines.cache_clear()
    readers._read_tsv.cache_clear()
    readers._read_csv.cache_clear()
    again = {s: tuple(TASKS[name].loader(s, str(DATA), 7)) for s in SPLITS}  # the run's seed plays no part
    assert again == first
    assert [e.cut for e in again["dev"]] == [e.cut for e in first["dev"]]


# --- fixtures: the same rules on small files, and malformed input ---------------------------------------

def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def lm_bff_fixture(d: Path) -> None:
    """MR-like files: 700 + 700 raw sentences (Latin-1, a blank line, a test sentence repeated with other
    non-ASCII bytes), and a test.csv of 10 of them plus a blank row."""
    neg = [f"bad film {i} ." for i in range(700)]
    pos = [f"good film {i} ." for i in range(700)]
    neg[5] = "el ladr\xf3n , bad film 5 ."
    write_bytes(d / "other/mr/rt-polarity.neg", ("\n".join([*neg, "", "EL LADR\xc9N , BAD FILM 5 ."]) + "\n")
                .encode("latin-1"))
    write_bytes(d / "other/mr/rt-polarity.pos", "\n".join(pos).encode("latin-1"))  # no final newline
    rows = [f'0,"{neg[i]}"' for i in range(5, 10)] + [f"1,{pos[i]}" for i in range(5)] + ["0, "]
    write(d / "other/lm-bff-k-shot/mr/test.csv", "\n".join(rows) + "\n")


def test_lm_bff_rule_on_fixture_files(tmp_path):
    lm_bff_fixture(tmp_path)
    train, dev, test = (TASKS["mr"].load(s, str(tmp_path)) for s in SPLITS)
    assert len(test) == 10 and Counter(e.target for e in test) == {"negative": 5, "positive": 5}
    assert test[0] == Example("mr sentence: el ladrón , bad film 5 .", "negative", cut=(13, 37))
    # 1,401 non-blank raw lines, less the 10 test sentences and the upper-case copy of one of them
    assert (len(train), len(dev)) == (1401 - 11 - 1000, 1000)
    keys = {sentence_key(long_text(e)) for e in test}
    assert not keys & {sentence_key(long_text(e)) for e in train + dev}
    assert dev == splits.shuffled(sentences._without(sentences.lm_bff_raw(sentences.LM_BFF_SPECS[0], tmp_path),
                                                     test))[:1000]


def snli_fixture(d: Path, ext: str, pairs: list[tuple[str, str, str]]) -> None:
    for i, name in enumerate(("s1", "s2", "labels")):
        write(d / "other/snli/senteval" / f"{name}.{ext}", "".join(f"{p[i]} \n" if i < 2 else f"{p[i]}\n"
                                                                    for p in pairs))


def test_snli_fixture_and_errors(tmp_path):
    snli_fixture(tmp_path, "dev", [(f"A man {i} .", f"He {i} .", "neutral") for i in range(1003)])
    snli_fixture(tmp_path, "test", [("A dog runs .", "An animal moves .", "entailment")])
    assert [len(TASKS["snli"].load(s, str(tmp_path))) for s in SPLITS] == [3, 1000, 1]
    assert TASKS["snli"].load("test", str(tmp_path))[0] == Example(
        "snli premise: A dog runs . hypothesis: An animal moves .", "entailment", cut=(14, 26))
    snli_fixture(tmp_path, "test", [("p", "h", "entailment"), ("p", "h", "maybe")])
    msg = one_line_error(r"task snli: label 'maybe' \(.*labels\.test line 2", "snli", "test", tmp_path)
    assert str(tmp_path / "other/snli/senteval/labels.test") in msg
    write(tmp_path / "other/snli/senteval/s2.test", "h \n")
    one_line_error(r"s2\.test line 2: s2\.test has 1 lines but labels\.test has 2", "snli", "test", tmp_path)
    write_bytes(tmp_path / "other/snli/senteval/s2.test", b"h \nh\xe9 \n")  # Latin-1 in a UTF-8 file
    one_line_error(r"s2\.test line 2: not valid utf-8", "snli", "test", tmp_path)
    write(tmp_path / "other/snli/senteval/s2.test", "h \nh \n")
    (tmp_path / "other/snli/senteval/labels.test").unlink()
    with pytest.raises(MissingDataFile, match=re.escape(str(tmp_path / "other/snli/senteval/labels.test"))):
        TASKS["snli"].load("test", str(tmp_path))
    with pytest.raises(MissingDataFile, match=re.escape(str(tmp_path / "nowhere/other/snli/senteval/s1.dev"))) as info:
        TASKS["snli"].load("train", str(tmp_path / "nowhere"))
    assert "\n" not in str(info.value)


SICK_HEADER = ["pair_ID", "sentence_A", "sentence_B", "entailment_label", "relatedness_score", "entailment_AB",
               "entailment_BA", "sentence_A_original", "sentence_B_original", "sentence_A_dataset",
               "sentence_B_dataset", "SemEval_set"]


def sick_row(i: int, label: str, which: str) -> list:
    return [i, f"A man {i} is here", f"Someone {i} is here", label, 4.5, "A_neutral_B", "B_neutral_A", "x", "y",
            "FLICKR", "FLICKR", which]


def test_sick_fixture_and_errors(tmp_path):
    rows = [sick_row(i, label, which) for i, (label, which) in enumerate(
        [("ENTAILMENT", "TRAIN"), ("NEUTRAL", "TRAIN"), ("CONTRADICTION", "TRIAL"), ("NEUTRAL", "TEST")])]
    text = tsv(rows, SICK_HEADER).replace("\n", "\r\n").removesuffix("\r\n")  # CRLF, no final newline
    write(tmp_path / "other/sick/SICK.txt", text)
    got = {s: TASKS["sick"].load(s, str(tmp_path)) for s in SPLITS}
    assert [len(got[s]) for s in SPLITS] == [2, 1, 1]
    assert got["dev"] == [Example("sick premise: A man 2 is here hypothesis: Someone 2 is here", "contradiction",
                                  cut=(14, 29))]
    assert [e.target for e in got["train"]] == ["entailment", "neutral"]
    write(tmp_path / "other/sick/SICK.txt", tsv([sick_row(0, "MAYBE", "TRAIN")], SICK_HEADER))
    one_line_error(r"task sick: label 'MAYBE' \(.*SICK\.txt line 2\)", "sick", "train", tmp_path)
    write(tmp_path / "other/sick/SICK.txt", tsv([sick_row(0, "NEUTRAL", "TRAIN"), sick_row(1, "NEUTRAL", "TRAIN")[:11]],
                                                SICK_HEADER))
    one_line_error(r"SICK\.txt line 3: expected 12 tab-separated fields, found 11", "sick", "train", tmp_path)
    write(tmp_path / "other/sick/SICK.txt", tsv([sick_row(0, "NEUTRAL", "DEV")], SICK_HEADER))
    one_line_error(r"SICK\.txt line 2: SemEval_set 'DEV' is not one of", "sick", "test", tmp_path)


def test_lm_bff_errors(tmp_path):
    lm_bff_fixture(tmp_path)
    write(tmp_path / "other/lm-bff-k-shot/mr/test.csv", "0,fine\n2,odd\n")
    one_line_error(r"task mr: label '2' \(.*lm-bff-k-shot/mr/test\.csv line 2\)", "mr", "test", tmp_path)
    write(tmp_path / "other/lm-bff-k-shot/mr/test.csv", "0,fine\n1,a, b\n")
    one_line_error(r"test\.csv line 2: expected 2 comma-separated fields, found 3", "mr", "dev", tmp_path)
    write(tmp_path / "other/lm-bff-k-shot/mr/test.csv", "0,fine\n")
    (tmp_path / "other/mr/rt-polarity.pos").unlink()
    with pytest.raises(MissingDataFile, match=re.escape(str(tmp_path / "other/mr/rt-polarity.pos"))):
        TASKS["mr"].load("train", str(tmp_path))
    assert len(TASKS["mr"].load("test", str(tmp_path))) == 1  # the test split needs only LM-BFF's file
    with pytest.raises(MissingDataFile, match=re.escape(str(tmp_path / "other/lm-bff-k-shot/cr/test.csv"))):
        TASKS["cr"].load("test", str(tmp_path))


def test_trec_fixture_and_errors(tmp_path):
    trec = tmp_path / "other/trec"
    write_bytes(trec / "train_5500.label", b"".join(b"NUM:date When was %d ?\n" % i for i in range(1002))
                + b"LOC:city Which city has a sister\xf0city ?\n")
    write_bytes(trec / "TREC_10.label", b"DESC:def What is a caldera ?\nABBR:exp What does NASA stand for ?\n")
    got = {s: TASKS["trec"].load(s, str(tmp_path)) for s in SPLITS}
    assert [len(got[s]) for s in SPLITS] == [3, 1000, 2]
    assert got["test"][0] == Example("trec question: What is a caldera ?", "description", cut=(15, 34))
    assert "trec question: Which city has a sisterðcity ?" in {e.input for e in got["train"] + got["dev"]}
    write(trec / "TREC_10.label", "DESC:def What is it ?\nDESC What is it ?\n")
    one_line_error(r"TREC_10\.label line 2: expected 'COARSE:fine question'", "trec", "test", tmp_path)
    write(trec / "TREC_10.label", "DESC:def What is it ?\n\nFOO:bar What is it ?\n")
    one_line_error(r"task trec: label 'FOO' \(.*TREC_10\.label line 3\)", "trec", "test", tmp_path)


# --- the hub, with a fake loader -------------------------------------------------------------------------

def test_fake_hub_loader(monkeypatch):
    snli_val = [{"premise": f"p{i} ", "hypothesis": f"h{i}", "label": i % 3} for i in range(1004)]
    snli_val[7]["label"] = -1  # no gold label: dropped
    rt = {split: [{"text": f"{split} review {i} .", "label": i % 2} for i in range(n)]
          for split, n in (("train", 2800), ("validation", 150), ("test", 150))}
    rt["test"][0]["text"] = "TRAIN review 3"  # a copy of a train sentence (normalised): kept with it
    setfit = {split: [{"text": f"{split} s{i}", "label": i % 2, "label_text": "x"} for i in range(n)]
              for split, n in (("train", 2600), ("test", 500))}
    fake = FakeHub({
        ("stanfordnlp/snli", None, "validation"): snli_val,
        ("stanfordnlp/snli", None, "test"): [{"premise": "a", "hypothesis": "b", "label": 2}],
        **{("RobZamp/sick", None, s): [{"sentence_A": f"{s} a", "sentence_B": "b", "label": 1, "id": "1"}]
           for s in ("train", "validation", "test")},
        **{("cornell-movie-review-data/rotten_tomatoes", None, s): rows for s, rows in rt.items()},
        **{(path, None, s): rows for path in ("SetFit/CR", "SetFit/subj") for s, rows in setfit.items()},
        ("CogComp/trec", None, "train"): [{"text": f"q{i} ?", "coarse_label": i % 6, "fine_label": 0}
                                          for i in range(1003)],
        ("CogComp/trec", None, "test"): [{"text": "What is it ?", "coarse_label": 2, "fine_label": 0}]})
    monkeypatch.setattr(readers, "hub_loader", fake)
    load = {(n, s): TASKS[n].load(s) for n in SENTENCE_TARGETS for s in SPLITS}
    sizes = {n: tuple(len(load[n, s]) for s in SPLITS) for n in SENTENCE_TARGETS}
    assert sizes["snli"] == (3, 1000, 1) and sizes["sick"] == (1, 1, 1) and sizes["trec"] == (3, 1000, 1)
    assert load["snli", "test"] == [Example("snli premise: a hypothesis: b", "contradiction", cut=(14, 15))]
    assert all(long_text(e).startswith("p") for e in load["snli", "dev"])  # text stripped
    assert load["sick", "dev"][0].target == "neutral" and long_text(load["sick", "dev"][0]) == "validation a"
    assert load["trec", "test"] == [Example("trec question: What is it ?", "description", cut=(15, 27))]
    assert {e.target for e in load["trec", "train"] + load["trec", "dev"]} == set(TASKS["trec"].verbalizers)
    # MR, CR, SUBJ: a seeded 2,000-example test drawn from all the hub's rows, the rest cut 1,000 dev / train
    for name in LM_BFF:
        test, train, dev = load[name, "test"], load[name, "train"], load[name, "dev"]
        assert len(test) == 2000 and len(dev) == 1000
        keys = {sentence_key(long_text(e)) for e in test}
        assert not keys & {sentence_key(long_text(e)) for e in train + dev}
    assert sizes["cr"] == sizes["subj"] == (3100 - 2000 - 1000, 1000, 2000)
    # MR's hub test holds a copy of a training sentence: whichever of the two is drawn for test, the other
    # leaves train/dev with it
    in_test = sum(long_text(e) in ("train review 3 .", "TRAIN review 3") for e in load["mr", "test"])
    assert sizes["mr"] == (3100 - 2000 - (in_test == 1) - 1000, 1000, 2000)
    assert set(Counter(e.target for e in load["subj", "test"])) == {"objective", "subjective"}
    subj0 = next(e for s in SPLITS for e in load["subj", s] if long_text(e) == "train s0")
    assert subj0.target == "objective"  # SetFit/subj: 0 objective, 1 subjective
    cr0 = next(e for s in SPLITS for e in load["cr", s] if long_text(e) == "test s1")
    assert cr0.target == "positive"
    assert ("cornell-movie-review-data/rotten_tomatoes", None, "validation") in fake.calls
    assert load["mr", "test"] == TASKS["mr"].load("test")  # the hub cut is deterministic too
