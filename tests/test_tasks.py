"""The task table: split conventions, official and train/dev/test sizes, `bmtpt tasks` (text, markdown,
--suite, --data-dir counting), and `bmtpt eval` reporting a benchmark task's own metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SMALL as TINY_RUN
from helpers import cli
from test_suites import DATA, build_fixtures, jsonl, needs_data, write

from bmtpt.suites import TASKS, splits
from bmtpt.suites.sizes import OFFICIAL
from bmtpt.synth import SPLIT_SIZES
from bmtpt.tasks import CONVENTIONS, SPLITS, Example, list_tasks
from bmtpt.tasktable import MISSING, count_all, count_splits, split_sizes, task_table

SMALL = [*TINY_RUN, "--max-train-examples", "4"]

# the original splits each of bmtpt's splits is cut from, by convention
SOURCES = {"small": {"train": ("train",), "dev": ("validation",), "test": ("validation",)},
           "large": {"train": ("train",), "dev": ("train",), "test": ("validation",)},
           "mnli": {"train": ("train",), "dev": ("validation_mismatched",), "test": ("validation_matched",)},
           "official": {"train": ("train",), "dev": ("validation",), "test": ("test",)},
           "dev-train": {"train": ("validation",), "dev": ("validation",), "test": ("test",)},
           "lm-bff": {"train": ("train",), "dev": ("train",), "test": ("validation",)}}
# original splits a convention lists in the table but does not cut from (SNLI's train set is not at hand)
UNUSED = {"dev-train": ("train",)}


# --- the convention's arithmetic ------------------------------------------------------------------------

def exs(n: int, prefix: str) -> list[Example]:
    return [Example(f"{prefix}{i}", "a") for i in range(n)]


@pytest.mark.parametrize("convention, original", [
    ("small", {"train": 3, "validation": 1}), ("small", {"train": 3, "validation": 7}),
    ("small", {"train": 10, "validation": 8}), ("small", {"train": 2490, "validation": 277}),
    ("large", {"train": 999, "validation": 5}), ("large", {"train": 1000, "validation": 5}),
    ("large", {"train": 1001, "validation": 5}), ("large", {"train": 2500, "validation": 3}),
    ("mnli", {"train": 5, "validation_matched": 4, "validation_mismatched": 3}),
])
def test_split_sizes_are_what_the_cuts_produce(convention, original):
    fetched = {name: exs(n, name) for name, n in original.items()}
    cut = {"small": splits.small_split, "large": splits.large_split, "mnli": splits.mnli_split}[convention]
    got = {s: len(cut(s, fetched.__getitem__)) for s in SPLITS}
    assert splits.split_sizes(convention, original) == got
    if convention == "small":  # dev is the smaller half (floor), test the larger
        assert got["dev"] == original["validation"] // 2


def test_every_task_has_a_convention_and_sizes():
    tasks = list_tasks()
    assert set(OFFICIAL) == set(TASKS)
    for t in tasks:
        assert t.convention in CONVENTIONS and t.official is not None, t.name
        sizes = split_sizes(t)
        assert set(sizes) == set(SPLITS) and all(isinstance(n, int) and n > 0 for n in sizes.values()), t.name
        assert set(t.official.counted) <= set(t.official.original), t.name
        if t.suite == "synth":
            assert t.convention == "generated" and sizes == SPLIT_SIZES
        else:  # the declared convention is the one the loader cuts by
            assert t.convention == t.loader.convention
            assert set(t.official.original) == set(SOURCES[t.convention]["train"] + SOURCES[t.convention]["dev"]
                                                   + SOURCES[t.convention]["test"]
                                                   + UNUSED.get(t.convention, ())), t.name
    # spot checks against the published numbers and the convention
    assert split_sizes(TASKS["rte"]) == {"train": 2490, "dev": 138, "test": 139}
    assert split_sizes(TASKS["qqp"]) == {"train": 362_846, "dev": 1000, "test": 40_430}
    assert split_sizes(TASKS["mnli"]) == {"train": 392_702, "dev": 9_832, "test": 9_815}
    assert split_sizes(TASKS["multirc"]) == {"train": 27_243, "dev": 2_410, "test": 2_438}
    assert split_sizes(TASKS["winogrande-s"]) == {"train": 640, "dev": 633, "test": 634}
    assert split_sizes(TASKS["winogrande-m"]) == {"train": 1_558, "dev": 1000, "test": 1_267}
    assert (TASKS["cb"].official.source, TASKS["qnli"].official.source, TASKS["rte"].official.source) == (
        "published", "val counted", "counted")


# --- the sizes match what the loaders produce --------------------------------------------------------------

# original split sizes of the fixture files written by test_suites.build_fixtures (n=1003, v=7)
FIXTURE_ORIGINALS = {
    "mnli": {"train": 5, "validation_matched": 4, "validation_mismatched": 3},
    "boolq": {"train": 5, "validation": 7}, "cb": {"train": 6, "validation": 7},
    "scitail": {"train": 4, "validation": 7},
    **{name: {"train": 1003, "validation": 7} for name in ("qqp", "record", "paws", "yelp", "hotpotqa", "squad",
                                                           "winogrande")},
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    build_fixtures(d)
    return d


@pytest.mark.parametrize("name", sorted(FIXTURE_ORIGINALS))
def test_convention_sizes_match_the_loaders_on_fixture_files(fixtures, name):
    task = TASKS[name]
    expected = splits.split_sizes(task.convention, FIXTURE_ORIGINALS[name])
    assert count_splits(task, str(fixtures)) == expected
    assert {s: len(task.load(s, str(fixtures))) for s in SPLITS} == expected


@needs_data
@pytest.mark.parametrize("name", sorted(TASKS))
def test_official_sizes_match_the_real_files(name):
    """Every split readable from ../shared/data has exactly the size the table gives, and the table marks
    as counted exactly the original splits whose files are there."""
    task = TASKS[name]
    counts = count_splits(task, str(DATA))
    if all(c == MISSING for c in counts.values()):
        pytest.skip(f"no {name} files under {DATA}: its sizes are the published ones")
    expected = split_sizes(task)
    sources = SOURCES[task.convention]
    for split, got in counts.items():
        originals = set(sources[split])
        if got == MISSING:
            assert not originals <= set(task.official.counted), f"{name} {split}: marked counted but missing"
        else:
            assert got == expected[split], f"{name} {split}"
            assert originals <= set(task.official.counted), f"{name} {split}: present but not marked counted"


# --- `bmtpt tasks` ------------------------------------------------------------------------------------------

def row_of(out: str, name: str) -> str:
    rows = [line for line in out.splitlines() if line.split(" ", 1)[0] == name]
    assert len(rows) == 1, f"{name} listed {len(rows)} times"
    return rows[0]


def test_tasks_table_lists_every_task_with_sizes_and_metrics(capsys):
    rc, out, _ = cli(capsys, "tasks")
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["task", "suite", "split"] and "metrics" in lines[0]
    assert len(lines) == 1 + len(list_tasks())
    for t in list_tasks():
        row = row_of(out, t.name)
        cells = row.split()
        assert cells[1:3] == [t.suite, t.convention]
        sizes = split_sizes(t)
        assert [f"{sizes[s]:,}" for s in SPLITS] in [cells[i:i + 3] for i in range(len(cells))], row
        assert ", ".join(t.metrics) in row and t.description in row
    assert "392,702" in row_of(out, "mnli") and "9,815m+9,832mm" in row_of(out, "mnli")


def test_tasks_suite_filter_and_unknown_suite(capsys):
    rc, out, _ = cli(capsys, "tasks", "--suite", "glue")
    assert rc == 0
    assert {line.split()[0] for line in out.strip().splitlines()[1:]} == {
        n for n, t in TASKS.items() if t.suite == "glue"}
    rc, _, err = cli(capsys, "tasks", "--suite", "gleu")
    assert rc == 2 and err.count("\n") == 1 and "unknown suite 'gleu'" in err and "superglue" in err


def test_tasks_markdown_table(capsys):
    rc, out, _ = cli(capsys, "tasks", "--format", "md")
    assert rc == 0
    lines = out.strip().splitlines()
    width = lines[0].count("|")
    assert all(line.startswith("| ") or line.startswith("|-") for line in lines)
    assert all(line.count("|") == width for line in lines) and set(lines[1]) <= set("|-:")
    assert len(lines) == 2 + len(list_tasks())
    cb = next(line for line in lines if line.startswith("| `cb` |"))
    cells = [c.strip() for c in cb.strip("|").split("|")]
    assert cells[1:10] == ["superglue", "small", "250", "56", "published", "250", "28", "28", "macro_f1, accuracy"]
    assert cells[10] == "entailment/contradiction/neutral"
    assert "9,815 matched + 9,832 mismatched" in out


def test_tasks_reads_no_data_and_imports_no_torch_without_data_dir():
    code = ("import sys\nfrom bmtpt.tasks import list_tasks\nfrom bmtpt.tasktable import task_table\n"
            "task_table(list_tasks()); task_table(list_tasks(), 'md')\n"
            "heavy = [m for m in ('torch', 'sklearn', 'scipy', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_tasks_data_dir_counts_local_files(fixtures, capsys):
    rc, out, err = cli(capsys, "tasks", "--data-dir", fixtures)
    assert rc == 0, err
    assert "reading the split sizes" in err
    assert "train read" in out.splitlines()[0]
    # fixture sizes differ from the official ones: counted values are shown and marked
    assert row_of(out, "cb").split()[6:9] == ["6*", "3*", "4*"]
    assert row_of(out, "qqp").split()[6:9] == ["3*", "1,000", "7*"]
    assert row_of(out, "rte").split()[6:9] == [MISSING] * 3
    assert row_of(out, "synth-product").split()[6:9] == ["2,000", "200", "400"]  # generated, no files needed
    assert "* differs from the size expected" in out and "errors:" not in out


def test_tasks_data_dir_reports_bad_files_and_missing_dir(tmp_path, capsys):
    write(tmp_path / "superglue/CB/train.jsonl", jsonl([{"premise": "p", "hypothesis": "h", "label": "maybe"}]))
    rc, out, err = cli(capsys, "tasks", "--suite", "superglue", "--data-dir", tmp_path)
    assert rc == 0, err
    assert row_of(out, "cb").split()[6:9] == ["error", MISSING, MISSING]
    assert "errors:" in out and "cb train: task cb: label 'maybe'" in out
    rc, _, err = cli(capsys, "tasks", "--data-dir", tmp_path / "nowhere")
    assert rc == 2 and "does not exist" in err and err.count("\n") == 1


def test_count_all_reports_progress(fixtures):
    seen = []
    counts = count_all([TASKS["cb"], TASKS["rte"]], str(fixtures), lambda i, n, t: seen.append((i, n, t.name)))
    assert seen == [(1, 2, "cb"), (2, 2, "rte")]
    assert counts == {"cb": {"train": 6, "dev": 3, "test": 4}, "rte": dict.fromkeys(SPLITS, MISSING)}
    assert "6*" in task_table([TASKS["cb"]], "md", {"cb": counts["cb"]})


# --- `bmtpt eval` reports the task's own metrics --------------------------------------------------------


@pytest.mark.parametrize("name", ["cb", "squad"])
def test_eval_of_a_saved_prompt_reports_the_task_metrics(name, fixtures, tiny_dirs, tmp_path, capsys):
    """A prompt trained on a benchmark task (fixture files) and evaluated with `bmtpt eval`: its metrics
    are the task's (CB: macro-F1 + accuracy by rank classification; SQuAD: EM + F1 of decoded answers),
    and eval reads the run's own --data-dir."""
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "target", "--model", tiny_dirs["t5"], "--out", run, "--task", name, "--method", "pt",
                     "--data-dir", fixtures, "--steps", "1", "--eval-every", "1", "--max-eval-examples", "4",
                     "--max-target-tokens", "4", *SMALL)
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", run, "--split", "test", "--max-eval-examples", "4", "--device", "cpu")
    assert rc == 0, err
    result = json.loads((run / "eval-test.json").read_text())["results"][name]
    assert set(TASKS[name].metrics) <= set(result) and result["examples"] == 4
    assert all(0 <= result[m] <= 100 for m in TASKS[name].metrics)
    assert json.loads(out[: out.rindex("}") + 1])[name] == result


def test_docs_table_is_current():
    """docs/tasks.md holds the output of `bmtpt tasks --format md` between its markers."""
    doc = (Path(__file__).parents[1] / "docs" / "tasks.md").read_text()
    begin, end = "<!-- begin: bmtpt tasks --format md -->\n", "\n<!-- end: bmtpt tasks --format md -->"
    assert begin in doc and end in doc
    table = doc[doc.index(begin) + len(begin): doc.index(end)]
    assert table == task_table(list_tasks(), "md"), "regenerate the table of docs/tasks.md: bmtpt tasks --format md"
