"""The demo runner on a tiny model with a tiny budget (the real one runs SmolLM2; see README): real data from
a data folder, and the generated tasks when no data can be read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import bmtpt.demo as demo
from bmtpt.cli import main
from bmtpt.demo import METHODS, QUICK, DemoConfig, run_demo
from bmtpt.errors import BmtptError

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(), reason=f"benchmark files not found at {DATA}")

TINY = replace(QUICK, source_steps=2, target_steps=2, eval_every=2, dev_examples=8, test_examples=8, prompt_length=4)


@pytest.fixture(scope="module")
def demo_run(tiny_dirs, tmp_path_factory):
    if not (DATA / "MANIFEST.md").is_file():
        pytest.skip(f"benchmark files not found at {DATA}")
    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = DemoConfig(out=str(out), model=str(tiny_dirs["llama"]), progress=False, data_dir=str(DATA))
    return out, cfg, run_demo(cfg, TINY)


def test_results_are_keyed_by_method_with_every_target(demo_run):
    out, _, results = demo_run
    saved = json.loads((out / "results.json").read_text())
    assert list(saved) == list(METHODS) == ["pt", "avg", "bmtpt", "bmtpt-tw-task-noprior"]
    for r in saved.values():
        assert list(r["tasks"]) == list(TINY.targets)
        scores = [t["test"] for t in r["tasks"].values()]
        assert all(0 <= s <= 100 for s in scores)
        assert r["average_test"] == pytest.approx(sum(scores) / len(scores))
        # accuracy on 8 examples moves in steps of 12.5 points
        assert all((s / 12.5) == pytest.approx(round(s / 12.5)) for s in scores)


def test_source_compute_is_counted_per_method(demo_run):
    _, _, results = demo_run
    rows = TINY.per_task_batch * 3  # sst2, subj, trec
    assert results["pt"]["source_example_passes"] == 0
    assert results["avg"]["source_example_passes"] == TINY.source_steps * rows  # each row seen by one prompt
    assert results["bmtpt"]["source_example_passes"] == TINY.source_steps * rows * TINY.particles
    # the dev-chosen variant reads avg's stage: the same passes, no stage of its own
    assert results["bmtpt-tw-task-noprior"]["source_example_passes"] == results["avg"]["source_example_passes"]


def test_table_and_run_folders_are_written(demo_run):
    out, _, _ = demo_run
    table = (out / "results.md").read_text()
    for method in METHODS:
        assert f"| `{method}` |" in table
    run = json.loads((out / "run.json").read_text())
    assert run["machine"]["cores"] >= 1 and run["timings_s"]["total_s"] > 0
    grid = out / demo.EXPERIMENT_DIR  # the runs are an experiment grid, with its own full report
    for method in METHODS:
        assert (grid / "cells" / method / "mr" / "k16-seed0" / "prompt.safetensors").is_file()
    assert len(list(grid.glob("sources/svgd-*/particles.safetensors"))) == 1
    assert len(list(grid.glob("sources/independent-*/particles.safetensors"))) == 1  # avg's, read by tw-task too
    chosen = grid / "cells" / "bmtpt-tw-task-noprior" / "mr" / "k16-seed0"
    weights = json.loads((chosen / "target.json").read_text())
    assert len(weights["particle_weights"]) == 3 and sum(weights["particle_weights"]) == pytest.approx(1, abs=1e-5)
    assert yaml.safe_load((chosen / "config.yaml").read_text())["prior_weight"] == 0.0  # the dev-chosen: no prior
    assert "### Confidence intervals" in (grid / "results.md").read_text()


def test_existing_results_are_refused_without_overwrite(demo_run, capsys):
    out, cfg, _ = demo_run
    before = (out / "results.json").read_bytes()
    with pytest.raises(BmtptError, match="already holds demo results"):
        run_demo(cfg, TINY)
    assert main(["demo", "--out", str(out), "--model", cfg.model, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert (out / "results.json").read_bytes() == before


@needs_data
def test_a_demo_stopped_half_way_continues_and_ends_as_an_uninterrupted_one(demo_run, tmp_path, monkeypatch):
    import bmtpt.experiment as experiment

    _, cfg, uninterrupted = demo_run
    real, calls = experiment.run_target, []

    def crash_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the third target run
        return real(*a, **k)

    monkeypatch.setattr(experiment, "run_target", crash_on_the_third)
    stopped = replace(cfg, out=str(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        run_demo(stopped, TINY)
    assert not (tmp_path / "run" / "results.json").exists()
    calls.clear()
    assert run_demo(stopped, TINY) == uninterrupted
    assert len(calls) == len(METHODS) * len(TINY.targets) - 2  # the two finished target runs are kept


def test_real_data_results_record_test_counts_and_intervals(demo_run):
    """Each target records how many test examples it was scored on; each score's 95 % interval (a bootstrap
    over those examples) holds the score, and the paired difference to pt is that of the two scores."""
    out, _, results = demo_run
    run = json.loads((out / "run.json").read_text())
    assert run["real_data"] is True and str(DATA) in run["data"] and run["source_tasks"] == ["sst2", "subj", "trec"]
    for r in results.values():
        t = r["tasks"]["mr"]
        assert t["test_examples"] == 8 and t["test_ci95"][0] <= t["test"] <= t["test_ci95"][1]
    d = results["bmtpt"]["minus_pt_ci95"]["mr"]
    assert d[0] == pytest.approx(results["bmtpt"]["tasks"]["mr"]["test"] - results["pt"]["tasks"]["mr"]["test"])
    table = (out / "results.md").read_text()
    assert f"local files in {DATA}" in table and "95 %" in table and "generated toy tasks" not in table


def test_without_data_or_hub_the_demo_says_it_uses_the_generated_tasks(tiny_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "SHARED_DATA", (tmp_path / "nowhere",))
    monkeypatch.setattr(demo, "hub_reachable", lambda timeout=3.0: False)
    cfg = DemoConfig(out=str(tmp_path / "run"), model=str(tiny_dirs["llama"]), progress=False)
    results = run_demo(cfg, TINY)
    assert list(results["pt"]["tasks"]) == ["synth-product"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["real_data"] is False and run["source_tasks"][0].startswith("synth-")
    assert "generated toy tasks" in (tmp_path / "run" / "results.md").read_text()
    assert "[demo] data: the generated synth-* tasks" in capsys.readouterr().out


@needs_data
def test_shared_data_beside_the_project_is_found(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "SHARED_DATA", (tmp_path / "nowhere", DATA))
    monkeypatch.setattr(demo, "hub_reachable", lambda timeout=3.0: pytest.fail("the hub must not be tried"))
    sizes, data_dir, where, real = demo.choose_data(DemoConfig(out=str(tmp_path / "o")), TINY)
    assert real and data_dir == str(DATA) and sizes.targets == ("mr",)


def test_the_hub_is_used_when_no_files_are_found(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "SHARED_DATA", (tmp_path / "nowhere",))
    monkeypatch.setattr(demo, "hub_reachable", lambda timeout=3.0: True)
    _, data_dir, where, real = demo.choose_data(DemoConfig(out=str(tmp_path / "o")), TINY)
    assert real and data_dir is None and where == "the Hugging Face hub"


def test_a_data_dir_without_the_files_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["demo", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "empty"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks the demo's files" in err[0] and not (tmp_path / "o").exists()
    assert main(["demo", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@needs_data
def test_quick_picks_the_smaller_budget(capsys, monkeypatch):
    from bmtpt.cli import build_config, make_parser

    ns = make_parser().parse_args(["demo", "--quick", "--data-dir", str(DATA)])
    cfg = build_config(DemoConfig, ns)
    assert cfg.quick and demo.choose_data(cfg, None)[0] == QUICK
    assert demo.choose_data(replace(cfg, quick=False), None)[0] == demo.FULL
    assert QUICK.test_examples < demo.FULL.test_examples and len(QUICK.targets) < len(demo.FULL.targets)
