"""Task YAML files (bmtpt.custom): the example tasks, the split rule by hand, every file error in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bmtpt.cli import main
from bmtpt.custom import parse_task_file
from bmtpt.errors import BmtptError
from bmtpt.tasks import _REGISTRY, get_task, parse_task_list

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(autouse=True)
def _forget_custom_tasks():
    """Custom tasks register by name; each test starts without them (the table tests list every task)."""
    yield
    for name in [n for n, t in _REGISTRY.items() if t.source_file]:
        del _REGISTRY[name]


def test_the_example_task_reads_its_files_through_the_template():
    task = get_task(str(EXAMPLES / "reviews" / "task.yaml"))
    assert task.name == "reviews" and task.suite == "custom" and task.verbalizers == ("negative", "positive")
    assert task.label_names == {"negative": "1", "positive": "5"} and task.metrics == ("accuracy", "macro_f1")
    rows = [json.loads(line) for line in (EXAMPLES / "reviews" / "test.jsonl").read_text().splitlines()]
    test = task.load("test")
    assert [e.input for e in test] == [f"review of a {r['product']}: {r['text']}" for r in rows]
    assert [e.target for e in test] == ["positive" if r["stars"] == 5 else "negative" for r in rows]
    assert get_task(str(EXAMPLES / "reviews" / "task.yaml")) is task  # the same file again: the same task


def test_missing_dev_is_cut_from_train_by_the_fixed_rule():
    """No dev file: the train rows in torch.randperm(n) order under seed 42, the first round(10 %) are dev."""
    task = get_task(str(EXAMPLES / "reviews" / "task.yaml"))
    rows = [json.loads(line) for line in (EXAMPLES / "reviews" / "train.jsonl").read_text().splitlines()]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(42)).tolist()
    texts = [f"review of a {rows[i]['product']}: {rows[i]['text']}" for i in order]
    assert [e.input for e in task.load("dev")] == texts[:4]
    assert [e.input for e in task.load("train")] == texts[4:]
    tickets = get_task(str(EXAMPLES / "tickets" / "task.yaml"))  # CSV with a header
    assert len(tickets.load("train")) + len(tickets.load("dev")) == 32 and len(tickets.load("test")) == 16
    assert {e.target for e in tickets.load("test")} == {"urgent", "routine"}


def _write(tmp_path, yaml_text, rows=None, name="train.jsonl"):
    (tmp_path / "task.yaml").write_text(yaml_text)
    if rows is not None:
        (tmp_path / name).write_text(rows)
    return str(tmp_path / "task.yaml")


GOOD = 'name: t\ntrain: train.jsonl\ninput: "q: {q}"\ntarget: y\nlabels: {a: yes, b: no}\n'


@pytest.mark.parametrize("yaml_text,rows,fragment", [
    (GOOD, '{"q": "x", "y": "a"}\n{"y": "b"}\n', "train.jsonl line 2: missing column(s) q"),
    (GOOD, '{"q": "x", "y": "a"}\n{"q": "z", "y": "c"}\n', "train.jsonl line 2: label 'c' is not one of ['a', 'b']"),
    (GOOD, "", "train.jsonl: no examples (the file is empty)"),
    (GOOD.replace("{q}", "{question}"), '{"q": "x", "y": "a"}\n', "line 1: missing column(s) question"),
    (GOOD, '{"q": "x", "y": "a"}\nnot json\n', "train.jsonl line 2: not valid JSON"),
    (GOOD + "metrics: [accuracy, bleu]\n", "", "unknown metric(s) bleu"),
    (GOOD + "colour: red\n", "", "unknown key(s) colour"),
    (GOOD.replace("train.jsonl", "train.parquet"), None, "must end in .jsonl, .csv or .tsv"),
    (GOOD.replace("train.jsonl", "nowhere.jsonl"), None, "nowhere.jsonl does not exist"),
    ("name: t\ninput: x\n", None, "train is required"),
    (GOOD.replace("b: no", "b: yes"), "", "two labels share a verbalizer"),
])
def test_bad_task_files_are_one_line_errors(tmp_path, yaml_text, rows, fragment):
    path = _write(tmp_path, yaml_text, rows)
    with pytest.raises(BmtptError, match=None) as e:
        get_task(path).load("train")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_csv_rows_with_the_wrong_field_count_name_the_line(tmp_path):
    path = _write(tmp_path, GOOD.replace("train.jsonl", "train.csv"), "q,y\nx,a\nx,a,extra\n", "train.csv")
    with pytest.raises(BmtptError, match="train.csv line 3: the row has a different number of fields"):
        get_task(path).load("train")


def test_a_task_file_is_usable_wherever_a_task_name_is(tmp_path, tiny_dirs, capsys):
    """source --tasks, target --task, bmtpt tasks; a bad file fails the command in one line, writing nothing."""
    reviews, tickets = str(EXAMPLES / "reviews" / "task.yaml"), str(EXAMPLES / "tickets" / "task.yaml")
    assert [t.name for t in parse_task_list(f"{reviews},synth-sentiment")] == ["reviews", "synth-sentiment"]
    model = str(tiny_dirs["llama"])
    small = ["--prompt-length", "3", "--batch-size", "4", "--device", "cpu", "--no-progress", "--log-every", "1"]
    assert main(["source", "--model", model, "--tasks", f"{reviews},synth-sentiment", "--particles", "2",
                 "--steps", "2", "--out", str(tmp_path / "src"), "--final-eval-examples", "4", *small]) == 0
    post = json.loads((tmp_path / "src" / "posterior.json").read_text())
    assert post["source_tasks"] == ["reviews", "synth-sentiment"] and post["source_task_files"][0] == reviews
    assert main(["target", "--model", model, "--task", tickets, "--posterior", str(tmp_path / "src"), "--steps", "2",
                 "--eval-every", "2", "--out", str(tmp_path / "tgt"), *small]) == 0
    meta = json.loads((tmp_path / "tgt" / "target.json").read_text())
    assert meta["task"] == "tickets" and meta["task_file"] == tickets and meta["metrics"]["test_examples"] == 16
    assert main(["eval", str(tmp_path / "tgt"), "--no-progress", "--device", "cpu"]) == 0  # found again by its file
    capsys.readouterr()
    assert main(["tasks", tickets, "--suite", "custom"]) == 0 and "tickets" in capsys.readouterr().out
    bad = _write(tmp_path, GOOD, '{"q": "x"}\n')
    assert main(["target", "--model", model, "--task", bad, "--method", "pt", "--out", str(tmp_path / "bad"),
                 *small]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing column(s) y" in err[0] and not (tmp_path / "bad").exists()


def test_parse_reports_the_template_fields():
    tf = parse_task_file(EXAMPLES / "reviews" / "task.yaml")
    assert tf.fields == ("product", "text") and tf.target == "stars" and "dev" not in tf.files


def test_yes_and_no_are_words_not_booleans(tmp_path):
    """PyYAML reads an unquoted yes / no as a boolean; a verbalizer yes must stay the word yes."""
    path = _write(tmp_path, GOOD, '{"q": "x", "y": "a"}\n{"q": "z", "y": "b"}\n' * 6)
    task = get_task(path)
    assert task.verbalizers == ("yes", "no") and {e.target for e in task.load("train")} == {"yes", "no"}
