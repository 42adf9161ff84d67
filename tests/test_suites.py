"""The benchmark suites: registry, split convention, local readers (real files and fixtures), fake hub, errors."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from bmtpt.errors import BmtptError
from bmtpt.metrics import QuestionLabel
from bmtpt.suites import TASKS, qa, readers, splits
from bmtpt.suites.other import scitail_examples
from bmtpt.tasks import Example, get_task

DATA = Path(__file__).parents[2] / "shared" / "data"  # ../shared/data relative to the repo root
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(),
                                reason=f"benchmark files not found at {DATA} (see shared/data/MANIFEST.md)")


def sizes(name: str, data_dir: Path | str | None) -> tuple[int, int, int]:
    task = TASKS[name]
    return tuple(len(task.load(s, None if data_dir is None else str(data_dir))) for s in ("train", "dev", "test"))


# --- registry ----------------------------------------------------------------------------------------

EXPECTED = {"glue": "mnli qqp qnli sst2 stsb mrpc rte cola wnli",
            "superglue": "multirc boolq wic wsc cb copa superglue-rte",
            "qa": "squad record", "mrqa": "nq hotpotqa searchqa newsqa",
            "other": "winogrande winogrande-xs winogrande-s winogrande-m winogrande-l yelp scitail paws",
            "sentences": "snli sick mr cr subj trec"}


def test_registry_names_suites_and_kinds():
    assert {n: t.suite for n, t in TASKS.items()} == {n: s for s, names in EXPECTED.items() for n in names.split()}
    for name, task in TASKS.items():
        assert get_task(name) is task
        if task.suite in ("qa", "mrqa"):
            assert task.verbalizers is None and task.max_target_tokens == 32
            assert task.metrics == ("squad_exact_match", "squad_f1")
        elif name != "stsb":
            assert task.is_classification and all(" " not in v for v in task.verbalizers)
    assert TASKS["stsb"].verbalizers is None and TASKS["stsb"].metrics == ("pearson", "spearman")
    assert TASKS["cola"].metrics == ("matthews_corr",) and TASKS["cb"].metrics == ("macro_f1", "accuracy")
    assert TASKS["mrpc"].metric_kwargs == {"f1": {"positive": "equivalent"}}
    assert TASKS["qqp"].metric_kwargs == {"f1": {"positive": "duplicate"}}


# --- the split convention ----------------------------------------------------------------------------

def exs(n: int, prefix: str = "x") -> list[Example]:
    return [Example(f"{prefix}{i}", "a" if i % 3 else "b") for i in range(n)]


def test_shuffle_is_attempts_randperm_with_seed_42():
    gen = torch.Generator()
    gen.manual_seed(42)
    assert splits.shuffled(list(range(50))) == torch.randperm(50, generator=gen).tolist()
    assert splits.shuffled(list(range(50))) == splits.shuffled(list(range(50)))


def test_small_large_and_mnli_conventions():
    fetched = {"train": exs(1500, "t"), "validation": exs(277, "v"),
               "validation_matched": exs(5, "m"), "validation_mismatched": exs(7, "mm")}
    dev, test = splits.small_split("dev", fetched.get), splits.small_split("test", fetched.get)
    assert (len(dev), len(test)) == (138, 139) and {*dev, *test} == set(fetched["validation"])
    assert splits.small_split("train", fetched.get) == fetched["train"]
    dev, train = splits.large_split("dev", fetched.get), splits.large_split("train", fetched.get)
    assert (len(dev), len(train)) == (1000, 500) and not set(dev) & set(train)
    assert splits.large_split("test", fetched.get) == fetched["validation"]
    assert splits.mnli_split("dev", fetched.get) == fetched["validation_mismatched"]
    assert splits.mnli_split("test", fetched.get) == fetched["validation_matched"]


def test_halve_by_group_keeps_groups_together():
    items = [Example(f"{q}-{a}", "t", meta={"q": q}) for q in range(9) for a in range(q % 3 + 1)]
    dev, test = splits.halve(items, key=lambda e: e.meta["q"])
    dq, tq = {e.meta["q"] for e in dev}, {e.meta["q"] for e in test}
    assert (len(dq), len(tq)) == (4, 5) and not dq & tq and len(dev) + len(test) == len(items)


# --- real files in ../shared/data ----------------------------------------------------------------------

REAL_SIZES = {  # (train, dev, test) by the convention; validation sizes from MANIFEST.md
    "rte": (2490, 138, 139), "cola": (8551, 521, 522), "stsb": (5749, 750, 750), "mrpc": (3668, 204, 204),
    "wnli": (635, 35, 36), "sst2": (67349 - 1000, 1000, 872), "superglue-rte": (2490, 138, 139),
    "wic": (5428, 319, 319), "copa": (400, 50, 50), "wsc": (554, 52, 52), "winogrande-xs": (160, 633, 634),
}


@needs_data
@pytest.mark.parametrize("name", sorted(REAL_SIZES))
def test_real_files_split_sizes(name):
    assert sizes(name, DATA) == REAL_SIZES[name]
    task = TASKS[name]
    assert all(e.input.startswith(f"{name.split('-xs')[0]} ") for e in task.load("dev", str(DATA)))


@needs_data
@pytest.mark.parametrize("name, expected, missing", [
    ("qnli", 5463, "glue/QNLI/train.tsv"), ("squad", 10570, "squad_v1.1/train-v1.1.json"),
    ("winogrande", 1267, "winogrande_1.1/train_xl.jsonl"),
])
def test_real_test_split_where_train_is_absent(name, expected, missing):
    assert len(TASKS[name].load("test", str(DATA))) == expected
    with pytest.raises(BmtptError, match=missing):
        TASKS[name].load("train", str(DATA))


@needs_data
def test_real_sst2_dev_comes_from_train():
    train, dev = TASKS["sst2"].load("train", str(DATA)), TASKS["sst2"].load("dev", str(DATA))
    assert len({e.input for e in train} | {e.input for e in dev}) > 66000 and dev[0].target in ("negative", "positive")


@needs_data
def test_real_multirc_split_by_question():
    task = TASKS["multirc"]
    train, dev, test = (task.load(s, str(DATA)) for s in ("train", "dev", "test"))
    assert len(train) == 27243 and len(dev) + len(test) == 4848
    dq, tq = {e.ref.question for e in dev}, {e.ref.question for e in test}
    assert (len(dq), len(tq)) == (476, 477) and not dq & tq
    assert all(isinstance(e.ref, QuestionLabel) and e.ref.label == e.target for e in dev)
    perfect = task.score([e.target for e in test], test)
    assert perfect == {"multirc_f1a": 100.0, "multirc_exact_match": 100.0}


@needs_data
def test_real_boolq_and_stsb_values():
    dev, test = TASKS["boolq"].load("dev", str(DATA)), TASKS["boolq"].load("test", str(DATA))
    assert (len(dev), len(test)) == (1635, 1635)
    with pytest.raises(BmtptError, match="superglue/BoolQ/train.jsonl"):
        TASKS["boolq"].load("train", str(DATA))
    stsb = TASKS["stsb"].load("train", str(DATA))
    assert stsb[1].target == "3.8" and stsb[1].ref == pytest.approx(3.8)
    assert {round(float(e.target) * 5, 6) % 1 for e in stsb} == {0.0}  # every target a multiple of 0.2


def link_data(tmp_path: Path, links: dict[str, Path]) -> Path:
    """A data dir whose official paths are symlinks to real files stored elsewhere under ../shared/data."""
    for rel, target in links.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).symlink_to(target)
    return tmp_path


@needs_data
def test_real_format_substitutes(tmp_path):
    """MNLI/QQP k-shot files (GLUE tsv format), FewGLUE BoolQ/ReCoRD train and the SciTail test file."""
    k = DATA / "other" / "lm-bff-k-shot"
    d = link_data(tmp_path, {
        "glue/MNLI/train.tsv": k / "MNLI/16-42/train.tsv",
        "glue/MNLI/dev_matched.tsv": k / "MNLI/16-42/dev_matched.tsv",
        "glue/MNLI/dev_mismatched.tsv": k / "MNLI/16-13/dev_matched.tsv",
        "glue/QQP/dev.tsv": k / "QQP/16-42/dev.tsv",
        "superglue/BoolQ/train.jsonl": DATA / "other/fewglue/BoolQ/train.jsonl",
        "superglue/BoolQ/val.jsonl": DATA / "superglue/BoolQ/val.jsonl"})
    assert sizes("mnli", d) == (48, 48, 48)
    assert Counter(e.target for e in TASKS["mnli"].load("train", str(d))) == dict.fromkeys(
        ("entailment", "neutral", "contradiction"), 16)
    qqp = TASKS["qqp"].load("test", str(d))
    assert len(qqp) == 32 and Counter(e.target for e in qqp) == {"duplicate": 16, "not_duplicate": 16}
    assert Counter(e.target for e in TASKS["boolq"].load("train", str(d))) == {"true": 18, "false": 14}
    record = qa.record_examples(readers.read_jsonl(DATA / "other/fewglue/ReCoRD/train.jsonl"))
    assert len(record) == 32 and all("@placeholder" in e.input and e.target in e.input for e in record)
    assert "@highlight" not in record[0].input
    scitail = scitail_examples(readers.read_tsv(DATA / "other/scitail/tsv_format/scitail_1.0_test.tsv",
                                                ("premise", "hypothesis", "label")))
    assert Counter(e.target for e in scitail) == {"entailment": 842, "neutral": 1284}


# --- fixtures in the official formats (tasks whose files are not in ../shared/data) --------------------

def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def tsv(rows, header=None) -> str:
    return "".join("\t".join(map(str, r)) + "\n" for r in ([header] if header else []) + list(rows))


def build_fixtures(d: Path, n: int = 1003, v: int = 7) -> None:
    """Every fixture-only task's files: large sets get n training examples (1,000 go to dev)."""
    parse = "( x )"
    write(d / "glue/MNLI/train.tsv", tsv(
        [(i, i, f"{i}e", "fiction", parse, parse, parse, parse, f"p{i}", f"h{i}", "neutral", "neutral")
         for i in range(5)], "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
        "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label".split()))
    dev_header = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse "
                  "sentence2_parse sentence1 sentence2 label1 label2 label3 label4 label5 gold_label").split()
    for name, m in (("dev_matched.tsv", 4), ("dev_mismatched.tsv", 3)):
        write(d / "glue/MNLI" / name, tsv([(i, i, f"{i}n", "slate", parse, parse, parse, parse, f"p{i}", f"h{i}",
                                           *["contradiction"] * 6) for i in range(m)], dev_header))
    qqp_header = "id qid1 qid2 question1 question2 is_duplicate".split()
    write(d / "glue/QQP/train.tsv", tsv([(i, 2 * i, 2 * i + 1, f"q{i}?", f"r{i}?", i % 2) for i in range(n)],
                                        qqp_header))
    write(d / "glue/QQP/dev.tsv", tsv([(i, 0, 1, f"dq{i}?", f"dr{i}?", 1) for i in range(v)], qqp_header))

    def record(i):
        text = f"Anna met Bob{i} in Paris.\n@highlight\nA visit"
        return {"source": "x", "idx": i, "passage": {"text": text, "entities": [{"start": 0, "end": 3}, {
            "start": 9, "end": 11 + len(str(i))}]}, "qas": [{"query": "@placeholder went to Paris.", "idx": i,
                                                              "answers": [{"start": 0, "end": 3, "text": "Anna"}]}]}
    write(d / "superglue/ReCoRD/train.jsonl", jsonl(record(i) for i in range(n)))
    write(d / "superglue/ReCoRD/val.jsonl", jsonl(record(i) for i in range(v)))
    write(d / "superglue/BoolQ/train.jsonl", jsonl({"question": f"q{i}", "passage": "p", "idx": i, "label": i % 2 == 0}
                                                   for i in range(5)))
    write(d / "superglue/BoolQ/val.jsonl", jsonl({"question": f"v{i}", "passage": "p", "idx": i, "label": True}
                                                 for i in range(v)))
    cb = ("entailment", "contradiction", "neutral")
    for name, m in (("train", 6), ("val", v)):
        write(d / f"superglue/CB/{name}.jsonl", jsonl({"premise": f"p{i}", "hypothesis": f"h{i}", "idx": i,
                                                       "label": cb[i % 3]} for i in range(m)))
    for name, m in (("train", 4), ("dev", v)):
        write(d / f"other/scitail/tsv_format/scitail_1.0_{name}.tsv", tsv(
            (f"{name} premise {i}.", f"hyp {i}.", "entails" if i % 2 else "neutral") for i in range(m)))
    paws_header = ["id", "sentence1", "sentence2", "label"]
    write(d / "other/paws/train.tsv", tsv([(i, f"s{i}", f"t{i}", i % 2) for i in range(n)], paws_header))
    write(d / "other/paws/dev.tsv", tsv([(i, f"ds{i}", f"dt{i}", 0) for i in range(v)], paws_header))
    write(d / "other/yelp_polarity/train.csv", "".join(f'"{1 + i % 2}","review {i}, ""quoted""\\nline"\n'
                                                       for i in range(n)))
    write(d / "other/yelp_polarity/test.csv", "".join(f'"2","test review {i}"\n' for i in range(v)))
    for name, m in (("train", n), ("dev", v)):
        lines = [{"header": {"dataset": "HotpotQA", "split": name}}] + [
            {"id": f"c{i}", "context": f"[PAR] Context {i} about Paris.",
             "qas": [{"qid": f"q{i}", "question": f"where {i}?", "answers": ["Paris", "paris", "Paris"],
                      "detected_answers": [{"text": "Paris", "char_spans": [[20, 24]]}]}]} for i in range(m)]
        (d / "other/mrqa/HotpotQA").mkdir(parents=True, exist_ok=True)
        with gzip.open(d / "other/mrqa/HotpotQA" / f"{name}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write(jsonl(lines))
    for name, m in (("train", n), ("dev", v)):
        squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
            {"context": f"Context {i}.", "qas": [{"id": str(i), "question": f"Q{i}?", "answers": [
                {"answer_start": 0, "text": "Context"}, {"answer_start": 0, "text": f"Context {i}"}]}]}
            for i in range(m)]}]}
        write(d / f"other/squad_v1.1/{name}-v1.1.json", json.dumps(squad))
    wino = [{"qID": f"w{i}", "sentence": f"A {i} and B so _ won.", "option1": "A", "option2": "B",
             "answer": str(1 + i % 2)} for i in range(n)]
    write(d / "other/winogrande_1.1/train_xl.jsonl", jsonl(wino))
    write(d / "other/winogrande_1.1/dev.jsonl", jsonl(wino[:v]))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    build_fixtures(d)
    return d


@pytest.mark.parametrize("name, expected", [
    ("mnli", (5, 3, 4)), ("qqp", (3, 1000, 7)), ("record", (3, 1000, 7)), ("boolq", (5, 3, 4)),
    ("cb", (6, 3, 4)), ("scitail", (4, 3, 4)), ("paws", (3, 1000, 7)), ("yelp", (3, 1000, 7)),
    ("hotpotqa", (3, 1000, 7)), ("squad", (3, 1000, 7)), ("winogrande", (3, 1000, 7)),
])
def test_fixture_split_sizes(fixtures, name, expected):
    assert sizes(name, fixtures) == expected


def test_fixture_examples_look_right(fixtures):
    load = {n: TASKS[n].load("test", str(fixtures)) for n in ("mnli", "record", "yelp", "hotpotqa", "cb", "scitail")}
    assert load["mnli"][0] == Example("mnli premise: p0 hypothesis: h0", "contradiction")
    rec = load["record"][0]
    assert rec.input == "record query: @placeholder went to Paris. entities: Anna, Bob0 passage: Anna met Bob0 " \
                        "in Paris. A visit" and rec.target == "Anna" and rec.ref == ("Anna",)
    assert load["yelp"][0] == Example("yelp review: test review 0", "positive")
    assert TASKS["yelp"].load("dev", str(fixtures))[0].input.endswith('"quoted" line')
    assert load["hotpotqa"][0].ref == ("Paris", "paris") and load["hotpotqa"][0].input.startswith("hotpotqa question:")
    assert {e.target for e in load["cb"]} == {"entailment", "contradiction", "neutral"}
    assert {e.target for e in load["scitail"]} == {"entailment", "neutral"}
    squad = TASKS["squad"].load("train", str(fixtures))
    assert all(len(e.ref) == 2 and e.target == "Context" for e in squad)


# --- the hub path, with a fake loader ------------------------------------------------------------------

class FakeHub:
    def __init__(self, tables: dict[tuple, list[dict]]):
        self.tables, self.calls = tables, []

    def __call__(self, path, name, split):
        self.calls.append((path, name, split))
        return self.tables[(path, name, split)]


def test_fake_hub_loader(monkeypatch):
    rte = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 2, "idx": i} for i in range(10)]
    multirc = [{"paragraph": "<b>P</b>", "question": f"q{q}", "answer": f"a{a}", "label": a % 2,
                "idx": {"paragraph": 0, "question": q, "answer": 3 * q + a}} for q in range(4) for a in range(3)]
    mrqa = [{"subset": s, "context": "ctx", "question": f"{s}?", "answers": ["x"], "qid": s}
            for s in ("SearchQA", "NewsQA", "SearchQA")]
    fake = FakeHub({("nyu-mll/glue", "rte", "validation"): rte, ("nyu-mll/glue", "stsb", "validation"): [
        {"sentence1": "a", "sentence2": "b", "label": 3.47, "idx": 0}, {"sentence1": "c", "sentence2": "d",
                                                                        "label": 1.0, "idx": 1}],
        ("aps/super_glue", "multirc", "validation"): multirc, ("mrqa-workshop/mrqa", None, "validation"): mrqa,
        ("fancyzhx/yelp_polarity", None, "test"): [{"text": "good", "label": 1}],
        ("allenai/winogrande", "winogrande_xs", "train"): [
            {"sentence": "s _", "option1": "A", "option2": "B", "answer": "2"}]})
    monkeypatch.setattr(readers, "hub_loader", fake)
    dev, test = TASKS["rte"].load("dev"), TASKS["rte"].load("test")
    assert (len(dev), len(test)) == (5, 5) and {e.target for e in dev + test} == {"entailment", "not_entailment"}
    assert Example("rte sentence1: a0 sentence2: b0", "entailment") in dev + test
    stsb = TASKS["stsb"].load("test") + TASKS["stsb"].load("dev")
    assert sorted((e.target, e.ref) for e in stsb) == [("1.0", 1.0), ("3.4", 3.47)]
    mdev, mtest = TASKS["multirc"].load("dev"), TASKS["multirc"].load("test")
    assert (len(mdev), len(mtest)) == (6, 6) and mdev[0].input.startswith("multirc question: q")
    assert mdev[0].input.endswith("paragraph: P") and mdev[0].ref.question.startswith("0-")
    assert [e.input for e in TASKS["searchqa"].load("test")] == ["searchqa question: SearchQA? context: ctx"] * 2
    assert TASKS["yelp"].load("test") == [Example("yelp review: good", "positive")]
    assert TASKS["winogrande-xs"].load("train")[0].target == "option2"
    assert ("aps/super_glue", "multirc", "validation") in fake.calls


def test_real_hub_loader_errors_are_one_line(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nsecond line")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BmtptError, match=r"^could not load nyu-mll/glue \(rte\) split 'train' .*no network$"):
        TASKS["rte"].load("train")


# --- bad data ----------------------------------------------------------------------------------------

def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(BmtptError, match=str(tmp_path / "glue" / "RTE" / "train.tsv")):
        TASKS["rte"].load("train", str(tmp_path))


def test_malformed_rows_name_file_and_line(tmp_path):
    write(tmp_path / "glue/RTE/train.tsv", tsv([(0, "a", "b", "entailment"), (1, "a", "entailment")],
                                               ["index", "sentence1", "sentence2", "label"]))
    with pytest.raises(BmtptError, match=r"RTE/train.tsv line 3: expected 4 tab-separated fields, found 3"):
        TASKS["rte"].load("train", str(tmp_path))
    write(tmp_path / "superglue/WiC/train.jsonl",
          '{"word": "a", "sentence1": "x", "sentence2": "y", "label": true}\n{oops\n')
    with pytest.raises(BmtptError, match=r"WiC/train.jsonl line 2: not valid JSON"):
        TASKS["wic"].load("train", str(tmp_path))
    write(tmp_path / "superglue/COPA/train.jsonl", '{"premise": "x", "choice1": "a", "choice2": "b", "label": 0}\n')
    with pytest.raises(BmtptError, match=r"COPA/train.jsonl line 1: missing field 'question'"):
        TASKS["copa"].load("train", str(tmp_path))
    write(tmp_path / "glue/STS-B/train.tsv", tsv([(0, "a", "b", "high")], ["index", "sentence1", "sentence2", "score"]))
    with pytest.raises(BmtptError, match=r"stsb: score 'high' .*line 2"):
        TASKS["stsb"].load("train", str(tmp_path))


def test_label_outside_verbalizers_names_label_and_task(tmp_path):
    write(tmp_path / "glue/SST-2/dev.tsv", tsv([("fine", 1), ("meh", 2)], ["sentence", "label"]))
    with pytest.raises(BmtptError, match=r"task sst2: label '2' \(.*SST-2/dev.tsv line 3\)"):
        TASKS["sst2"].load("test", str(tmp_path))
    write(tmp_path / "superglue/CB/val.jsonl", jsonl([{"premise": "p", "hypothesis": "h", "label": "maybe"}] * 2))
    with pytest.raises(BmtptError, match=r"task cb: label 'maybe'"):
        TASKS["cb"].load("dev", str(tmp_path))


# --- scoring through the tasks ------------------------------------------------------------------------

def test_task_scoring_uses_verbalizers_and_postprocess():
    refs = [Example("i", t) for t in ("equivalent", "equivalent", "not_equivalent", "not_equivalent")]
    score = TASKS["mrpc"].score(["equivalent", "not_equivalent", "equivalent", "not_equivalent"], refs)
    assert score == {"f1": pytest.approx(50.0), "accuracy": pytest.approx(50.0)}
    stsb = [Example("i", "1.0", reference=1.0), Example("i", "2.0", reference=2.1), Example("i", "4.0", reference=3.9)]
    assert TASKS["stsb"].score([" 1.2.", "score: 2", "3.8 or so"], stsb)["pearson"] > 99
    qa_refs = [Example("i", "Paris", reference=("Paris", "the city of Paris"))]
    assert TASKS["squad"].score(["city of Paris"], qa_refs) == {"squad_exact_match": 100.0, "squad_f1": 100.0}
