"""The demo runner on a tiny model with a tiny budget (the real one runs SmolLM2; see README)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bmtpt.cli import main
from bmtpt.demo import METHODS, QUICK, DemoConfig, run_demo
from bmtpt.errors import BmtptError

TINY = replace(QUICK, source_steps=2, target_steps=2, eval_every=2, eval_examples=8, prompt_length=4)


@pytest.fixture(scope="module")
def demo_run(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = DemoConfig(out=str(out), model=str(tiny_dirs["llama"]), progress=False)
    return out, cfg, run_demo(cfg, TINY)


def test_results_are_keyed_by_method_with_every_target(demo_run):
    out, _, results = demo_run
    saved = json.loads((out / "results.json").read_text())
    assert list(saved) == list(METHODS) == ["pt", "avg", "bmtpt"]
    for r in saved.values():
        assert list(r["tasks"]) == list(TINY.targets)
        scores = [t["test"] for t in r["tasks"].values()]
        assert all(0 <= s <= 100 for s in scores)
        assert r["average_test"] == pytest.approx(sum(scores) / len(scores))
        # accuracy on 8 examples moves in steps of 12.5 points
        assert all((s / 12.5) == pytest.approx(round(s / 12.5)) for s in scores)


def test_source_compute_is_counted_per_method(demo_run):
    _, _, results = demo_run
    rows = TINY.per_task_batch * 4  # four synth source tasks
    assert results["pt"]["source_example_passes"] == 0
    assert results["avg"]["source_example_passes"] == TINY.source_steps * rows  # each row seen by one prompt
    assert results["bmtpt"]["source_example_passes"] == TINY.source_steps * rows * TINY.particles


def test_table_and_run_folders_are_written(demo_run):
    out, _, _ = demo_run
    table = (out / "results.md").read_text()
    for method in METHODS:
        assert f"| `{method}` |" in table
    run = json.loads((out / "run.json").read_text())
    assert run["machine"]["cores"] >= 1 and run["timings_s"]["total_s"] > 0
    for method in METHODS:
        assert (out / "target" / f"synth-product-{method}" / "prompt.safetensors").is_file()
    assert (out / "source-svgd" / "particles.safetensors").is_file()


def test_existing_results_are_refused_without_overwrite(demo_run, capsys):
    out, cfg, _ = demo_run
    before = (out / "results.json").read_bytes()
    with pytest.raises(BmtptError, match="already holds demo results"):
        run_demo(cfg, TINY)
    assert main(["demo", "--out", str(out), "--model", cfg.model, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert (out / "results.json").read_bytes() == before


def test_unfinished_demo_is_refused_without_overwrite(tmp_path):
    (tmp_path / "source-svgd").mkdir()
    with pytest.raises(BmtptError, match="unfinished demo"):
        run_demo(DemoConfig(out=str(tmp_path)), TINY)
