"""`bmtpt predict`: its predictions equal what `bmtpt eval` scores, probabilities sum to 1, an exported PEFT
adapter predicts as its run, and bad inputs are one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import SMALL

from bmtpt.cli import main
from bmtpt.tasks import _REGISTRY

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def run(tiny_dirs, tmp_path_factory):
    """A pt target run on the example tickets task (a CSV task with one input column)."""
    out = tmp_path_factory.mktemp("predict") / "tgt"
    assert main(["target", "--model", str(tiny_dirs["llama"]), "--task", str(EXAMPLES / "tickets" / "task.yaml"),
                 "--method", "pt", "--steps", "3", "--eval-every", "3", "--out", str(out), *SMALL]) == 0
    yield out
    _REGISTRY.pop("tickets", None)


def _test_rows():
    with open(EXAMPLES / "tickets" / "test.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_match_what_eval_scores(run, tmp_path, capsys):
    rows = _test_rows()
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"subject": r["subject"]}) + "\n" for r in rows))
    assert main(["predict", str(run), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                 "--device", "cpu", "--no-progress"]) == 0
    preds = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(preds) == len(rows)
    for p in preds:
        assert set(p["probabilities"]) == {"high", "low"}  # the labels as the data name them
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["prediction"] == max(p["probabilities"], key=p["probabilities"].get)
    accuracy = 100 * sum(p["prediction"] == r["priority"] for p, r in zip(preds, rows)) / len(rows)
    assert main(["eval", str(run), "--split", "test", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    evaluated = json.loads((run / "eval-test.json").read_text())["results"]["tickets"]
    assert evaluated["examples"] == len(rows) and evaluated["accuracy"] == pytest.approx(accuracy)


def test_plain_text_lines_and_the_adapter_give_the_same_predictions(run, tiny_dirs, tmp_path, capsys):
    """A one-column task takes plain lines; the exported PEFT adapter (with bmtpt.json) predicts as the run."""
    lines = [json.loads(line)["subject"] for line in (EXAMPLES / "tickets" / "new.jsonl").read_text().splitlines()]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    assert main(["predict", str(run), "--input", str(tmp_path / "in.txt"), "--device", "cpu", "--no-progress"]) == 0
    from_run = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["export", "--to", "peft", str(run), str(tmp_path / "adapter")]) == 0
    capsys.readouterr()
    assert (tmp_path / "adapter" / "bmtpt.json").is_file()
    assert main(["predict", str(tmp_path / "adapter"), "--input", str(tmp_path / "in.txt"), "--model",
                 str(tiny_dirs["llama"]), "--device", "cpu", "--no-progress"]) == 0
    from_adapter = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(from_run) == 3 and [p["prediction"] for p in from_adapter] == [p["prediction"] for p in from_run]
    for a, b in zip(from_adapter, from_run):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_the_python_api_loads_once_and_predicts(run, tiny_dirs):
    from bmtpt.predict import Predictor

    p = Predictor.load(run, device="cpu")
    out = p.predict([{"subject": "The site is down"}, "Could you add a dark mode"])
    assert [set(r) for r in out] == [{"prediction", "probabilities"}] * 2


@pytest.mark.parametrize("content,fragment", [
    ('{"title": "no subject column"}\n', "line 1: missing column(s) subject"),
    ('{"subject": "ok"}\n{"subject": \n', "line 2: not valid JSON"),
])
def test_bad_inputs_are_one_line_errors_and_write_nothing(run, tmp_path, capsys, content, fragment):
    (tmp_path / "in.jsonl").write_text(content)
    rc = main(["predict", str(run), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"),
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and fragment in err[0] and not (tmp_path / "o.jsonl").exists()


def test_an_existing_output_is_kept_and_an_adapter_without_task_needs_one(run, tmp_path, capsys):
    (tmp_path / "o.jsonl").write_text("keep me")
    assert main(["predict", str(run), "--input", "x", "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "o.jsonl").read_text() == "keep me"
    (tmp_path / "in.txt").write_text("a ticket\n")
    assert main(["predict", str(tmp_path), "--input", str(tmp_path / "in.txt")]) == 2
    assert "neither a target run folder" in capsys.readouterr().err
