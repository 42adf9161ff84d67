"""The experiment grid: runs, skips finished cells, resumes after a crash, renders; config validation and CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

import bmtpt.experiment as experiment
from bmtpt import tasks
from bmtpt.cli import main
from bmtpt.errors import BmtptError
from bmtpt.expconfig import load_experiment
from bmtpt.experiment import append_record, read_records, run_experiment
from bmtpt.grid import plan_experiment
from bmtpt.tasks import get_task


def _config(out, **kw) -> dict:
    cfg = {"name": "grid", "out": str(out), "model": "tiny-llama", "device": "cpu", "progress": False,
           "prompt_length": 4, "batch_size": 4, "lr": 0.05, "optimizer": "adam", "max_input_tokens": 32,
           "sources": ["synth-sentiment", "synth-animal"],
           "source": {"steps": 2, "particles": 2, "max_train_examples": 12},
           "targets": ["synth-product"],
           "target": {"steps": 2, "eval_every": 1, "max_train_examples": 12, "max_eval_examples": 8},
           "seeds": [0, 1], "methods": ["pt", "bmtpt"]}
    return {**cfg, **kw}


class _Counting:
    """Wraps run_target: counts calls and can raise after the n-th call's run finished (a crash before its
    record is written)."""

    def __init__(self, crash_after: int | None = None):
        self.calls, self.crash_after, self.real = 0, crash_after, experiment.run_target

    def __call__(self, cfg, model=None, tokenizer=None):
        self.calls += 1
        res = self.real(cfg, model, tokenizer)
        if self.calls == self.crash_after:
            raise RuntimeError("simulated crash")
        return res


def _no_backbone(*_a, **_k):
    raise AssertionError("a finished grid must not load the backbone")


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("grid") / "exp"
    res = run_experiment(_config(out), *tiny_llama, echo=None)
    return out, res


def test_grid_runs_every_cell_and_renders(grid):
    out, res = grid
    assert res.ran == 4 and len(res.records) == 4
    assert {(r["method"], r["seed"]) for r in res.records} == {("pt", 0), ("pt", 1), ("bmtpt", 0), ("bmtpt", 1)}
    assert len(list((out / "sources").iterdir())) == 1  # one svgd stage, shared by both seeds
    bm = [r for r in res.records if r["method"] == "bmtpt"]
    assert {r["source_passes"] for r in bm} == {2 * 4 * 2} and bm[0]["trainable_parameters"] == 4 * 32
    md = (out / "results.md").read_text()
    assert "| pt |" in md and "| bmtpt |" in md and "synth-product" in md and "Params/task" in md
    for r in res.records:  # per-example test results: their mean is the cell's test accuracy
        assert len(r["test_correct"]) == r["test_examples"]
        assert 100 * r["test_correct"].count("1") / r["test_examples"] == pytest.approx(r["test_score"])
        assert 100 * r["dev_correct"].count("1") / r["dev_examples"] == pytest.approx(r["dev_score"])
    assert "### Confidence intervals" in md and "| bmtpt − pt (best baseline) |" in md and "dev-selected step 0" in md
    assert "Mean dev score [95 % interval]" in md and "bootstrap replicates over seeds and dev examples" in md
    assert "## Source stages: dev scores of the final prompts" in md
    for name in ("curves-full.png", "prompts-pca.png", "source-losses.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md


def test_second_call_skips_finished_cells(grid, monkeypatch):
    out, first = grid
    counter = _Counting()
    monkeypatch.setattr(experiment, "run_target", counter)
    monkeypatch.setattr("bmtpt.backbone.load_backbone", _no_backbone)
    res = run_experiment(_config(out), plots=False, echo=None)
    assert counter.calls == 0 and res.ran == 0 and res.skipped == 4
    assert [r["key"] for r in res.records] == [r["key"] for r in first.records]


def test_resume_after_a_crash(tmp_path, tiny_llama, monkeypatch):
    cfg = _config(tmp_path / "exp")
    crashing = _Counting(crash_after=3)
    monkeypatch.setattr(experiment, "run_target", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(cfg, *tiny_llama, plots=False, echo=None)
    assert len(read_records(tmp_path / "exp" / "results.jsonl")) == 2
    # the third cell's folder holds a finished-looking run with no record: it is run again over it
    resumed = _Counting()
    monkeypatch.setattr(experiment, "run_target", resumed)
    res = run_experiment(cfg, *tiny_llama, plots=False, echo=None)
    assert resumed.calls == 2 and res.ran == 2 and res.skipped == 2
    keys = [r["key"] for r in read_records(tmp_path / "exp" / "results.jsonl")]
    assert len(keys) == len(set(keys)) == 4


def test_changed_method_settings_rerun_only_that_method(grid, tiny_llama, monkeypatch, tmp_path):
    out, first = grid
    copy = tmp_path / "exp"
    import shutil

    shutil.copytree(out, copy)
    counter = _Counting()
    monkeypatch.setattr(experiment, "run_target", counter)
    cfg = _config(copy, methods=["pt", {"name": "bmtpt", "overrides": {"target": {"prior_weight": 0.5}}}])
    res = run_experiment(cfg, *tiny_llama, plots=False, echo=None)
    old = {r["key"]: r["config_hash"] for r in first.records}
    changed = {r["key"] for r in res.records if r["config_hash"] != old[r["key"]]}
    assert counter.calls == 2 and changed == {r["key"] for r in first.records if r["method"] == "bmtpt"}
    assert len(res.records) == 4 and len(read_records(copy / "results.jsonl")) == 6


def test_torn_last_line_is_skipped_and_not_glued(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"key": "a"})
    with path.open("a") as f:
        f.write('{"key": "b", "te')  # a write killed half-way
    append_record(path, {"key": "c"})
    assert [r["key"] for r in read_records(path)] == ["a", "c"]


def test_method_variants_share_or_split_source_stages(tmp_path):
    methods = ["bmtpt", {"name": "noprior", "base": "bmtpt", "overrides": {"target": {"prior_weight": 0}}},
               {"name": "m1", "base": "bmtpt", "overrides": {"source": {"particles": 1}}}, "avg", "spot", "pt"]
    plan = plan_experiment(load_experiment(_config(tmp_path, methods=methods, seeds=[0, 1], shots=[None, 4])))
    assert len(plan.cells) == 6 * 2 * 2
    stage = {c.method: c.stage.key for c in plan.cells if c.stage}
    assert stage["bmtpt"] == stage["noprior"] != stage["m1"] and stage["avg"] == stage["spot"]
    assert len(plan.stages) == 3  # shared over seeds unless source.per_seed
    # a bmtpt variant whose particles are the per-task prompts trains no stage of its own: it reads avg's
    task_prompts = {"name": "tp", "base": "bmtpt", "overrides": {"source": {"method": "independent"},
                                                                 "target": {"particle_weights": "target"}}}
    with_tp = plan_experiment(load_experiment(_config(tmp_path, methods=[*methods, task_prompts])))
    tp = {c.method: c.stage for c in with_tp.cells if c.stage}
    assert tp["tp"].key == tp["avg"].key and tp["tp"].kind == "independent" and len(with_tp.stages) == 3
    assert {c.target.method for c in with_tp.cells if c.method == "tp"} == {"bmtpt"}
    k4 = [c for c in plan.cells if c.shots == 4]
    assert all(c.target.shots == 4 for c in k4)
    per_seed = plan_experiment(load_experiment(_config(tmp_path, methods=methods, source={"per_seed": True})))
    assert len(per_seed.stages) == 6
    # experiments with the same source settings share stage folders through sources_dir
    a, b = (plan_experiment(load_experiment(_config(tmp_path / n, sources_dir=str(tmp_path / "src"), methods=methods,
                                                     targets=[t]))) for n, t in (("a", "synth-product"),
                                                                                  ("b", "synth-tense")))
    assert {s.cfg.out for s in a.stages.values()} == {s.cfg.out for s in b.stages.values()}


@pytest.mark.parametrize("change, message", [
    ({"methods": ["pt", "foo"]}, "unknown base 'foo'"),
    ({"methods": ["pt", "pt"]}, "used twice"),
    ({"methods": [{"name": "x", "base": "avg", "overrides": {"source": {"particles": 3}}}]}, "fixes the number"),
    ({"methods": [{"name": "x", "base": "spot", "overrides": {"target": {"init": "vocab"}}}]}, "fixes target"),
    ({"methods": [{"name": "x", "base": "pt", "overrides": {"source": {"steps": 3}}}]}, "no source stage"),
    ({"shots": [0]}, "positive integers or null"),
    ({"seeds": []}, "non-empty"),
    ({"target": {"lr": "fast"}}, "lr must be float"),
    ({"target": {"task": "rte"}}, "set by the runner"),
    ({"target": {"eval_mode": "guess"}}, "eval_mode must be one of"),
    ({"targets": ["synth-nope"]}, "unknown task"),
    ({"targets": ["synth-product@dev"]}, "sources only"),
    ({"source": {"steps": 0}}, "--steps must be positive"),
    ({"learning_rate": 0.1}, "unknown key"),
    ({"model": ""}, "model"),
    ({"per_target": {"synth-tense": {"steps": 3}}}, "'synth-tense' is not one of the targets"),
    ({"per_target": {"synth-product": {"task": "x"}}}, "per_target.synth-product: unknown key 'task'"),
    ({"per_target": {"synth-product": {"dev_sample": "sorted"}}}, "dev_sample must be one of random, test-mix"),
    ({"per_target": ["synth-product"]}, "must map target tasks to options"),
    ({"methods": [{"name": "x", "base": "mpt", "overrides": {"source": {"repulsion": 2.0}}}]},
     "MPT's source stage has no repulsion"),
    ({"methods": [{"name": "x", "base": "avg", "overrides": {"source": {"method": "svgd"}}}]},
     "for base bmtpt only"),
    ({"methods": [{"name": "x", "base": "bmtpt", "overrides": {"source": {"method": "mpt"}}}]},
     "method must be one of svgd, independent"),
    ({"source": {"method": "independent"}}, "unknown key 'method'"),
    ({"compare": ["spot"]}, "compare must list methods of this config"),
    ({"compare": "bmtpt"}, "compare must list methods of this config"),
])
def test_bad_configs_give_one_line_errors(tmp_path, change, message):
    with pytest.raises(BmtptError, match=message) as e:
        plan_experiment(load_experiment(_config(tmp_path, **change)))
    assert "\n" not in str(e.value)


def test_source_split_alias_trains_on_that_split(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))  # the alias is registered for this test only
    exp = load_experiment(_config(tmp_path, sources=["synth-sentiment@dev", "synth-animal"]))
    assert exp.sources == ["synth-sentiment@dev", "synth-animal"]
    alias, base = get_task("synth-sentiment@dev"), get_task("synth-sentiment")
    assert alias.load("train") == base.load("dev") and alias.load("test") == base.load("test")


def test_cli_bad_yaml_exits_2(tmp_path, capsys):
    bad = {"syntax.yaml": "methods: [pt\n", "schema.yaml": yaml.safe_dump(_config(tmp_path, methods=["nope"])),
           "list.yaml": "- a\n- b\n"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        assert main(["experiment", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bmtpt experiment: error:") and err.count("\n") == 1
    assert main(["experiment", str(tmp_path / "missing.yaml")]) == 2


def test_cli_render_only(grid, tmp_path, capsys, monkeypatch):
    out, _ = grid
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_config(out)))
    (out / "results.md").unlink()
    monkeypatch.setattr("bmtpt.backbone.load_backbone", _no_backbone)
    assert main(["experiment", str(path), "--render-only", "--no-plots"]) == 0
    assert "| bmtpt |" in (out / "results.md").read_text()
    path.write_text(yaml.safe_dump(_config(tmp_path / "never-run")))
    assert main(["experiment", str(path), "--render-only"]) == 2
    assert "nothing to render" in capsys.readouterr().err
    assert main(["experiment", str(path), "--render-only", "--stages-only"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert json.loads((out / "experiment.json").read_text())["name"] == "grid"


def test_a_cell_killed_mid_run_resumes_from_its_checkpoint(tmp_path, tiny_llama, monkeypatch):
    """A crash inside a target run (after its step-2 checkpoint) is continued, not restarted, by the next
    call, and ends with the scores of the uninterrupted grid."""
    import bmtpt.target as target

    cfg = _config(tmp_path / "exp", seeds=[0], methods=["bmtpt"], log_every=1,
                  target={"steps": 4, "eval_every": 1, "checkpoint_every": 2, "max_train_examples": 12,
                          "max_eval_examples": 8, "train_eval_examples": 0})  # one predict_and_score per eval
    real_eval, calls = target.predict_and_score, []

    def dying_eval(*a, **k):  # dev evaluations at steps 0..3; step 3 dies, after the step-2 checkpoint
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return real_eval(*a, **k)

    monkeypatch.setattr(target, "predict_and_score", dying_eval)
    with pytest.raises(RuntimeError, match="killed"):
        run_experiment(cfg, *tiny_llama, plots=False, echo=None)
    cell = tmp_path / "exp" / "cells" / "bmtpt" / "synth-product" / "full-seed0"
    assert (cell / "checkpoint.safetensors").is_file() and not (cell / "target.json").exists()
    monkeypatch.setattr(target, "predict_and_score", real_eval)
    seen = []
    real_resume = experiment.resume_or_restart
    monkeypatch.setattr(experiment, "resume_or_restart", lambda c, *a: seen.append(r := real_resume(c, *a)) or r)
    res = run_experiment(cfg, *tiny_llama, plots=False, echo=None)
    assert res.ran == 1 and [c.resume for c in seen if hasattr(c, "task")] == [True]
    recs = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "nll" in r] == [1, 2, 3, 4]  # step 3's first try was cut back, not repeated
    fresh = run_experiment(_config(tmp_path / "fresh", seeds=[0], methods=["bmtpt"], log_every=1, target=cfg["target"]),
                           *tiny_llama, plots=False, echo=None)
    assert res.records[0]["test"] == fresh.records[0]["test"] and res.records[0]["dev"] == fresh.records[0]["dev"]


def test_an_m1_ablation_borrows_the_m_particle_stages_bandwidth(tmp_path, tiny_llama):
    """prior_bandwidth_from names a grid method: the M = 1 cell's prior uses that method's stage's bandwidth,
    so the ablation changes only M (the stage is trained first even when the M = 1 method comes first)."""
    cfg = _config(tmp_path / "exp", seeds=[0], methods=[
        {"name": "bmtpt-m1", "base": "bmtpt",
         "overrides": {"source": {"particles": 1}, "target": {"prior_bandwidth_from": "bmtpt"}}}, "bmtpt"])
    res = run_experiment(cfg, *tiny_llama, plots=False, echo=None)
    by = {r["method"]: r for r in res.records}
    h = json.loads((tmp_path / "exp" / by["bmtpt"]["source_stage"] / "posterior.json").read_text())["bandwidth"]
    m1 = json.loads((tmp_path / "exp" / by["bmtpt-m1"]["run_dir"] / "target.json").read_text())
    assert m1["prior_bandwidth"] == pytest.approx(h)
    assert json.loads((tmp_path / "exp" / by["bmtpt-m1"]["source_stage"] / "posterior.json").read_text())[
        "bandwidth"] is None
    bad = _config(tmp_path / "bad", methods=[{"name": "x", "base": "bmtpt",
                                              "overrides": {"target": {"prior_bandwidth_from": "pt"}}}, "pt"])
    with pytest.raises(BmtptError, match="has no source stage"):
        run_experiment(bad, *tiny_llama, plots=False, echo=None)


def test_a_method_can_be_limited_to_some_few_shot_settings(tmp_path):
    cfg = _config(tmp_path / "exp", shots=[4, None],
                  methods=["pt", {"name": "bmtpt", "shots": [4]}, {"name": "avg", "shots": [None]}])
    plan = plan_experiment(load_experiment(cfg))
    assert sorted((c.method, c.shots or 0) for c in plan.cells if c.seed == 0) == [
        ("avg", 0), ("bmtpt", 4), ("pt", 0), ("pt", 4)]
    with pytest.raises(BmtptError, match="outside the grid"):
        load_experiment(_config(tmp_path / "bad", shots=[4], methods=[{"name": "pt", "shots": [8]}]))


def test_a_method_can_be_limited_to_some_seeds(tmp_path):
    cfg = _config(tmp_path / "exp", seeds=[0, 1, 2], source={"steps": 2, "particles": 2, "per_seed": True},
                  methods=["pt", {"name": "bmtpt", "seeds": [1]}])
    plan = plan_experiment(load_experiment(cfg))
    assert sorted((c.method, c.seed) for c in plan.cells) == [("bmtpt", 1), ("pt", 0), ("pt", 1), ("pt", 2)]
    assert [s.seed for s in plan.stages.values()] == [1]  # no stage for the seeds it does not run


def test_a_method_can_add_seeds_beyond_the_grids(tmp_path):
    """More seeds for the one comparison that needs them: the method's extra seeds are planned (and
    selectable with --seeds), the other methods keep the grid's, and a shared source stage stays seed 0's."""
    cfg = _config(tmp_path / "exp", seeds=[0, 1], source={"steps": 2, "particles": 2},
                  methods=["pt", {"name": "bmtpt", "seeds": [0, 1, 2, 3]}])
    exp = load_experiment(cfg)
    assert exp.all_seeds == [0, 1, 2, 3] and exp.seeds == [0, 1]
    plan = plan_experiment(exp)
    assert sorted((c.method, c.seed) for c in plan.cells) == [
        ("bmtpt", 0), ("bmtpt", 1), ("bmtpt", 2), ("bmtpt", 3), ("pt", 0), ("pt", 1)]
    assert [s.seed for s in plan.stages.values()] == [0]
    with pytest.raises(BmtptError, match="--seeds: 4 is not a seed"):
        run_experiment(cfg, methods=["bmtpt"], seeds=[4], echo=None)


def test_a_method_can_have_its_own_sources(tmp_path):
    cfg = _config(tmp_path / "exp", sources=["synth-sentiment", "synth-animal", "synth-past"],
                  methods=["avg", "bmtpt", {"name": "bmtpt-no-past", "base": "bmtpt",
                                            "sources": ["synth-sentiment", "synth-animal"]},
                           {"name": "avg-two", "base": "avg", "sources": "synth-sentiment,synth-past"}])
    plan = plan_experiment(load_experiment(cfg))
    tasks = {c.method: c.stage.cfg.tasks for c in plan.cells if c.seed == 0}
    three = "synth-sentiment,synth-animal,synth-past"
    assert tasks == {"avg": three, "bmtpt": three, "bmtpt-no-past": "synth-sentiment,synth-animal",
                     "avg-two": "synth-sentiment,synth-past"}
    parts = {c.method: c.stage.cfg.particles for c in plan.cells if c.seed == 0}
    assert parts["avg-two"] == 2 and parts["avg"] == 3  # one prompt per own source
    assert len({c.stage.key for c in plan.cells}) == 4
    for bad, message in [({"name": "pt2", "base": "pt", "sources": ["synth-animal"]}, "no source stage"),
                         ({"name": "b2", "base": "bmtpt", "sources": ["nosuch"]}, "unknown task")]:
        with pytest.raises(BmtptError, match=message):
            load_experiment(_config(tmp_path / "bad", methods=["pt", bad]))


def test_a_cell_checkpoint_from_another_posterior_is_started_over(tmp_path, tiny_llama):
    """A grid whose source stage changed (its sources were edited, so the stage is trained again) finds an old
    half-finished cell in the same folder: it must start it over, not fail to resume (the posterior's digest
    differs from the checkpoint's)."""
    import torch

    from bmtpt.config import TargetConfig
    from bmtpt.experiment import resume_or_restart
    from bmtpt.runfiles import save_posterior
    from bmtpt.target import run_target

    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        save_posterior(tmp_path / name, torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(seed)),
                       {"backbone": "tiny-llama", "source_tasks": ["synth-animal"], "bandwidth": 1.0, "method": "svgd"})
    cfg = TargetConfig(model="tiny-llama", out=str(tmp_path / "cell"), task="synth-product",
                       posterior=str(tmp_path / "a"), steps=2, eval_every=2, checkpoint_every=1, batch_size=4,
                       max_train_examples=8, max_eval_examples=4, train_eval_examples=0, progress=False, device="cpu")
    run_target(cfg, *tiny_llama)
    (tmp_path / "cell" / "target.json").unlink()  # as if killed after its last checkpoint
    assert resume_or_restart(cfg, "target", "target.json").resume is True
    other = resume_or_restart(dataclasses.replace(cfg, posterior=str(tmp_path / "b")), "target", "target.json")
    assert other.resume is False


def test_methods_option_runs_only_those_cells_and_reports_all_finished(tmp_path, tiny_llama, monkeypatch):
    cfg = _config(tmp_path / "exp", seeds=[0])
    counter = _Counting()
    monkeypatch.setattr(experiment, "run_target", counter)
    lines = []
    first = run_experiment(cfg, *tiny_llama, plots=False, methods=["pt"], echo=lines.append)
    assert counter.calls == 1 and [r["method"] for r in first.records] == ["pt"]
    assert "1 to run, 1 of other methods, shots or seeds left for later" in lines[0]
    assert not (tmp_path / "exp" / "sources").exists()  # bmtpt's source stage waits with its cells
    second = run_experiment(cfg, *tiny_llama, plots=False, echo=None)
    assert counter.calls == 2 and [r["method"] for r in second.records] == ["pt", "bmtpt"]


def test_stages_only_trains_the_selected_methods_stages_and_runs_no_cell(tmp_path, tiny_llama, monkeypatch):
    cfg = _config(tmp_path / "exp", seeds=[0], methods=["pt", "bmtpt", "avg"])
    counter = _Counting()
    monkeypatch.setattr(experiment, "run_target", counter)
    lines = []
    res = run_experiment(cfg, *tiny_llama, plots=False, methods=["bmtpt"], stages_only=True, echo=lines.append)
    stages = sorted(p.parent.name for p in (tmp_path / "exp" / "sources").glob("*/posterior.json"))
    assert counter.calls == 0 and res.ran == 0 and res.records == []
    assert len(stages) == 1 and stages[0].startswith("svgd-")  # bmtpt's stage; avg's waits
    assert "source stages only, no cell runs" in lines[0] and f"source stage {stages[0]}: ready" in lines[1]
    # the stage is found, not trained again, when the cells run: only the cells' runs remain
    monkeypatch.setattr(experiment, "run_source", _no_backbone)
    run_experiment(cfg, *tiny_llama, plots=False, methods=["bmtpt"], echo=None)
    assert counter.calls == 1
    with pytest.raises(BmtptError, match="exclude each other"):
        run_experiment(cfg, *tiny_llama, render_only=True, stages_only=True, echo=None)


def test_shots_option_runs_only_those_settings(tmp_path, tiny_llama, monkeypatch):
    cfg = _config(tmp_path / "exp", seeds=[0], shots=[4, None], methods=["pt"])
    counter = _Counting()
    monkeypatch.setattr(experiment, "run_target", counter)
    lines = []
    first = run_experiment(cfg, *tiny_llama, plots=False, shots=[4], echo=lines.append)
    assert counter.calls == 1 and [r["shots"] for r in first.records] == [4]
    assert "1 to run, 1 of other methods, shots or seeds left for later" in lines[0]
    second = run_experiment(cfg, *tiny_llama, plots=False, shots=[None], echo=None)
    assert counter.calls == 2 and sorted(r["shots"] or 0 for r in second.records) == [0, 4]


def test_shots_option_is_parsed_and_unknown_settings_refused(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path / "exp", shots=[4, None])))
    assert main(["experiment", str(path), "--shots", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--shots: 8 is not a setting of grid (its shots: 4, full)" in err
    with pytest.raises(SystemExit) as e:
        main(["experiment", str(path), "--shots", "few"])
    assert e.value.code == 2 and "'few' is not a positive number or full" in capsys.readouterr().err


def test_seeds_option_runs_only_those_seeds_and_refuses_others(tmp_path, tiny_llama, monkeypatch, capsys):
    cfg = _config(tmp_path / "exp", methods=["pt"])  # seeds 0 and 1
    counter = _Counting()
    monkeypatch.setattr(experiment, "run_target", counter)
    first = run_experiment(cfg, *tiny_llama, plots=False, seeds=[1], echo=None)
    assert counter.calls == 1 and [r["seed"] for r in first.records] == [1]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(path), "--seeds", "0,3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--seeds: 3 is not a seed of grid (its seeds: 0, 1)" in err
    with pytest.raises(SystemExit) as e:
        main(["experiment", str(path), "--seeds", "-1"])
    assert e.value.code == 2 and "'-1' is not a seed" in capsys.readouterr().err


def test_methods_option_refuses_unknown_names(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path / "exp")))
    assert main(["experiment", str(path), "--methods", "pt,spot"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "spot is not a method of grid (its methods: pt, bmtpt)" in err


def test_per_target_options_reach_only_that_tasks_cells_and_hashes(tmp_path):
    base = _config(tmp_path / "exp", targets=["synth-product", "synth-tense"],
                   methods=["pt", {"name": "bmtpt", "overrides": {"target": {"steps": 5}}}])
    plain = plan_experiment(load_experiment(base))
    own = plan_experiment(load_experiment({**base, "per_target": {"synth-tense": {"dev_sample": "test-mix",
                                                                                   "steps": 4}}}))
    for a, b in zip(plain.cells, own.cells):
        assert a.key == b.key
        if b.task == "synth-tense":
            assert b.target.dev_sample == "test-mix" and a.config_hash != b.config_hash
            # over `target:` (steps 2) and under a method's own overrides (bmtpt's steps 5)
            assert b.target.steps == (5 if b.method == "bmtpt" else 4)
        else:
            assert b.target == a.target and a.config_hash == b.config_hash


def test_a_bmtpt_variant_on_the_per_task_prompts_runs_from_avgs_stage(tmp_path, tiny_llama):
    """overrides.source.method independent: the bmtpt cell reads avg's stage (one prompt per source task) as
    its particles, its start is their target-likelihood-weighted mean, and no SVGD stage is trained."""
    import torch
    from safetensors.torch import load_file

    tp = {"name": "tp", "base": "bmtpt", "overrides": {"source": {"method": "independent"},
                                                       "target": {"particle_weights": "target"}}}
    res = run_experiment(_config(tmp_path / "exp", methods=["avg", tp], seeds=[0]), *tiny_llama, plots=False,
                         echo=None)
    assert res.ran == 2
    stages = sorted(p.name for p in (tmp_path / "exp" / "sources").iterdir())
    assert len(stages) == 1 and stages[0].startswith("independent-")
    metas = [json.loads(p.read_text()) for p in (tmp_path / "exp").rglob("target.json")]
    tp_meta = [m for m in metas if m.get("particle_weights") is not None]
    assert len(metas) == 2 and len(tp_meta) == 1  # avg's run has no particle weights, tp's has one per prompt
    w = tp_meta[0]["particle_weights"]
    assert len(w) == 2 and sum(w) == pytest.approx(1, abs=1e-5)
    parts = load_file(str(tmp_path / "exp" / "sources" / stages[0] / "particles.safetensors"))["particles"]
    assert parts.shape[0] == 2 and torch.isfinite(parts).all()
