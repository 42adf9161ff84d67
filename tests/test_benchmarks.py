"""The benchmark scripts' own arithmetic (benchmarks/*.py are scripts, loaded here by path)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(),
                                reason=f"benchmark files not found at {DATA} (see shared/data/MANIFEST.md)")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke():
    return load_script("gpu_smoke")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_log_times_separates_training_steps_from_evaluations(smoke, tmp_path):
    log = write_jsonl(tmp_path / "metrics.jsonl", [
        {"time_s": 5.0, "step": 0, "dev/score": 1.0},   # start-up + first evaluation: left out
        {"time_s": 6.0, "step": 2, "loss": 1.0},        # interval after an evaluation: not a training interval
        {"time_s": 7.0, "step": 4, "loss": 1.0},        # 0.5 s/step
        {"time_s": 8.5, "step": 6, "loss": 1.0},        # 0.75 s/step
        {"time_s": 9.0, "step": 6, "dev/score": 2.0},   # a 0.5 s evaluation
        {"time_s": 10.2, "step": 8, "loss": 1.0},       # follows an evaluation: left out
        {"time_s": 11.4, "step": 10, "loss": 1.0},      # 0.6 s/step
        {"time_s": 13.4, "step": 10, "test/score": 2.0},  # a 2 s test pass
    ])
    t = smoke.log_times(log)
    assert t["step_s"] == pytest.approx(0.6)  # median of 0.5, 0.75, 0.6
    assert t["step_samples"] == 3
    assert t["dev_eval_s"] == pytest.approx([0.5])
    assert t["test_eval_s"] == pytest.approx([2.0])


def test_estimate_prices_every_stage_and_cell(smoke, tmp_path):
    config = {"name": "x", "out": str(tmp_path / "x"), "model": "m", "sources": ["synth-sentiment"],
              "source": {"steps": 20, "particles": 2, "batch_size": 4},
              "targets": ["synth-animal"], "batch_size": 4,
              "target": {"steps": 10, "eval_every": 4, "max_eval_examples": 8}, "methods": ["pt", "bmtpt"]}
    r = {"source_row_s": 1.0, "target_row_s": 2.0, "cls_example_label_s": 3.0, "gen_example_s": 5.0}
    e = smoke.estimate(config, r)
    # by hand: one SVGD stage of 20 steps x 4 examples x 2 particles at 1 s a row = 160 s;
    # two cells of 10 steps x 4 rows at 2 s = 80 s each; dev at steps 0, 4, 8 and 10 (the last) plus
    # one test pass, 8 examples each, 2 labels at 3 s = 6 s an example: 5 x 8 x 6 = 240 s a cell.
    assert (e["stages"], e["cells"]) == (1, 2)
    assert e["sources"] * 3600 == pytest.approx(160)
    assert e["target_training"] * 3600 == pytest.approx(160)
    assert e["evaluation"] * 3600 == pytest.approx(480)
    assert e["total"] * 3600 == pytest.approx(800)


def test_rates_divide_by_rows_and_labels(smoke):
    m = {"source": {"s": {"kind": "svgd", "row_s": 0.001}},
         "cells": {"a": {"row_s": 0.004, "classification": True, "labels": 2, "eval_example_s": 0.006},
                   "b": {"row_s": 0.002, "classification": False, "labels": 0, "eval_example_s": 0.01}}}
    assert smoke.rates(m) == pytest.approx({"source_row_s": 0.001, "target_row_s": 0.003,
                                            "cls_example_label_s": 0.003, "gen_example_s": 0.01})


def test_smoke_rejects_targets_without_a_generation_task(smoke, capsys):
    assert smoke.main(["--targets", "synth-animal,synth-past"]) == 2
    assert "generation task" in capsys.readouterr().err


def test_price_reprices_a_saved_run(smoke, capsys):
    saved = ROOT / "benchmarks" / "results" / "gpu-smoke-t5-base-h200.json"
    assert smoke.main(["--price", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "t5-base-full.yaml" in out and "NVIDIA H200" in out


@needs_data
def test_smoke_run_on_a_tiny_t5_end_to_end(smoke, tmp_path, capsys):
    out = tmp_path / "result.json"
    rc = smoke.main(["--data-dir", str(DATA), "--out", str(tmp_path / "run"), "--json", str(out),
                     "--shape", "tiny-t5-shape", "--device", "cpu", "--precision", "fp32", "--source", "cola",
                     "--source-steps", "4", "--target-steps", "4", "--eval-every", "2", "--particles", "2",
                     "--batch-size", "2", "--prompt-length", "2", "--max-eval-examples", "4", "--log-every", "1"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert len(res["measured"]["cells"]) == 4 and len(res["measured"]["source"]) == 1
    assert all(v > 0 for v in res["unit_costs"].values())
    assert set(res["gpu_hours"]) == {"t5-base-full.yaml", "t5-base-fewshot.yaml", "t5-base-ablations.yaml"}


def test_the_transfer_grid_keeps_its_cell_hashes():
    """The powered benchmark runs across sessions: a later version of the code must recognise its finished
    cells (the same cell keys and config hashes as the records committed in benchmarks/results/). The CR
    cells committed before CR's dev sample became test-mix (`per_target`) keep their old hashes: without
    that one setting the plan must reproduce them, and with it only CR's cells change."""
    import json
    from pathlib import Path

    from bmtpt.expconfig import load_experiment
    from bmtpt.grid import plan_experiment

    root = Path(__file__).parents[1]
    config = load_experiment(root / "benchmarks" / "configs" / "cpu-transfer.yaml")
    assert config.per_target == {"cr": {"dev_sample": "test-mix"}}
    hashes = {c.key: c.config_hash for c in plan_experiment(config).cells}
    config.per_target = {}
    before = {c.key: c.config_hash for c in plan_experiment(config).cells}
    records = [json.loads(line) for line in
               (root / "benchmarks" / "results" / "cpu-transfer" / "results.jsonl").read_text().splitlines()]
    current = [r for r in records if r["key"] in hashes]
    assert current and all(hashes[r["key"]] == r["config_hash"] or (r["task"] == "cr" and before[r["key"]] ==
                                                                     r["config_hash"]) for r in current)
    assert all((hashes[k] == before[k]) == (not k.split("|")[1] == "cr") for k in hashes)


def test_loso_help_table_and_rank_correlation_by_hand():
    lo = load_script("loso_alignment")
    full = [{"method": "bmtpt", "task": "mr", "seed": s, "shots": 16, "test_score": 70.0 + s} for s in (0, 1)]
    full += [{"method": "pt", "task": "mr", "seed": 0, "shots": 16, "test_score": 0.0}]
    loso = [{"method": "bmtpt-no-sst2", "task": "mr", "seed": 0, "shots": 16, "test_score": 60.0},
            {"method": "bmtpt-no-sst2", "task": "mr", "seed": 1, "shots": 16, "test_score": 65.0},
            {"method": "bmtpt-no-trec", "task": "mr", "seed": 0, "shots": 16, "test_score": 71.0},
            {"method": "bmtpt-no-trec", "task": "mr", "seed": 2, "shots": 16, "test_score": 50.0}]  # no full seed 2
    assert lo.help_table(full, loso) == {("sst2", "mr"): {"help": (10.0 + 6.0) / 2, "seeds": 2},
                                         ("trec", "mr"): {"help": -1.0, "seeds": 1}}
    rho, low, high = lo.spearman_with_interval([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert rho == pytest.approx(1 - 6 * (1 + 1 + 1 + 1) / (5 * 24))  # no ties: 1 - 6 sum d^2 / (n (n^2 - 1))
    assert -1 <= low <= rho <= high <= 1


def test_the_loso_grid_keeps_the_transfer_benchmarks_settings():
    from bmtpt.expconfig import load_experiment

    configs = ROOT / "benchmarks" / "configs"
    loso, transfer = (load_experiment(configs / f"{n}.yaml") for n in ("cpu-loso", "cpu-transfer"))
    assert (loso.common, loso.source, loso.target, loso.per_target, loso.seeds, loso.targets, loso.sources) == (
        transfer.common, transfer.source, transfer.target, transfer.per_target, transfer.seeds, transfer.targets,
        transfer.sources)
    assert loso.sources_dir == transfer.out + "/sources" and loso.shots == [16]
    assert {m.name: m.sources for m in loso.methods} == {
        f"bmtpt-no-{s}": [t for t in transfer.sources if t != s] for s in transfer.sources}


def test_the_method_grid_shares_the_transfer_benchmarks_stages_and_dev_samples():
    """cpu-method.yaml picks settings on dev: its dev samples and its plain bmtpt stage must be the benchmark's."""
    from bmtpt.expconfig import load_experiment
    from bmtpt.grid import plan_experiment

    configs = ROOT / "benchmarks" / "configs"
    method, transfer = (load_experiment(configs / f"{n}.yaml") for n in ("cpu-method", "cpu-transfer"))
    assert (method.common, method.source, method.per_target, method.targets, method.sources) == (
        transfer.common, transfer.source, transfer.per_target, transfer.targets, transfer.sources)
    assert method.sources_dir == transfer.out + "/sources"
    stages = {c.method: c.stage.cfg.out for c in plan_experiment(method).cells if c.stage}
    assert stages["bmtpt"] == next(c.stage.cfg.out for c in plan_experiment(transfer).cells if c.method == "bmtpt")
    dev = {k: v for k, v in method.target.items() if k != "max_eval_examples"}
    assert dev == {k: v for k, v in transfer.target.items() if k != "max_eval_examples"}


def test_grid_analysis_reads_the_latest_record_of_the_grids_cells(tmp_path):
    ag = load_script("analyse_grid")
    rec = lambda key, score: {"key": key, "method": key.split("|")[0], "task": key.split("|")[1],  # noqa: E731
                              "test_score": score}
    lines = [rec("pt|cr|seed=0|shots=16", 50.0), rec("pt|subj|seed=0|shots=16", 70.0),
             rec("spot|cr|seed=0|shots=16", 60.0), rec("pt|cr|seed=0|shots=16", 65.0)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert len(ag._rows(tmp_path)) == 3  # no experiment.json: every cell, each at its latest record
    (tmp_path / "experiment.json").write_text(json.dumps({"targets": ["cr"], "methods": [{"name": "pt"}]}))
    assert ag._rows(tmp_path) == [rec("pt|cr|seed=0|shots=16", 65.0)]


def test_the_priors_reach_by_hand(tmp_path):
    import torch
    import yaml
    from safetensors.torch import save_file

    ag = load_script("analyse_grid")
    post, cell = tmp_path / "sources" / "svgd", tmp_path / "cells" / "bmtpt"
    post.mkdir(parents=True)
    cell.mkdir(parents=True)
    particles = torch.tensor([[[0.0, 0.0]], [[6.0, 0.0]], [[0.0, 8.0]]])  # mean (2, 8/3)
    save_file({"particles": particles}, str(post / "particles.safetensors"))
    (post / "posterior.json").write_text(json.dumps({"bandwidth": 16.0}))
    save_file({"prompt": torch.tensor([[2.0, 8 / 3 + 3.0]])}, str(cell / "prompt.safetensors"))  # 3 from the mean
    (cell / "config.yaml").write_text(yaml.safe_dump({"posterior": str(post)}))
    logs = [{"step": 0, "dev/score": 50.0}, {"step": 5, "log_prior": -0.5}, {"step": 10, "log_prior": -0.75}]
    (cell / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    row = ag.prior_reach(tmp_path, {"key": "bmtpt|mr", "best_step": 10, "run_dir": "cells/bmtpt"})
    # distances of the particles to their mean: sqrt(4 + 64/9) = 3.3, sqrt(16 + 64/9) = 4.8, sqrt(4 + 256/9) = 5.7
    assert row == "| bmtpt\\|mr | 10 | 3.0 | 3.3-5.7 | 4.0 | -0.50 → -0.75 |"
    (cell / "metrics.jsonl").write_text(json.dumps({"step": 5, "log_prior": 0.0}) + "\n")  # pt / avg: no prior
    assert ag.prior_reach(tmp_path, {"key": "pt|mr", "best_step": 10, "run_dir": "cells/bmtpt"}) is None


@pytest.mark.parametrize("name", ["t5-base-full", "t5-base-fewshot"])
def test_the_paper_configs_use_the_dev_chosen_bmtpt_beside_the_published_recipe(name):
    """issue 13: bmtpt = the per-task prompts (avg's stage, not trained twice) weighted by the target, no prior;
    bmtpt-paper = the published recipe (one SVGD stage, uniform particles, the rank-one factor)."""
    from pathlib import Path

    from bmtpt.expconfig import load_experiment
    from bmtpt.grid import plan_experiment

    plan = plan_experiment(load_experiment(Path(__file__).parents[1] / "configs" / "paper" / f"{name}.yaml"))
    cell = {c.method: c for c in plan.cells}
    assert cell["bmtpt"].stage.key == cell["avg"].stage.key and cell["bmtpt"].stage.kind == "independent"
    assert cell["bmtpt"].target.particle_weights == "target" and not cell["bmtpt"].target.rank_one
    assert cell["bmtpt"].target.prior_weight == 0.0 and cell["bmtpt-paper"].target.prior_weight == 1.0
    assert cell["bmtpt-paper"].stage.kind == "svgd" and cell["bmtpt-paper"].target.particle_weights == "uniform"
    assert cell["bmtpt-paper"].target.rank_one and cell["bmtpt-paper"].target.lr_factor == 0.01


def test_grid_analysis_pairs_two_methods_by_hand(tmp_path, capsys):
    """--pair A B prints only A − B on dev and test; its point estimate is the mean of the per-cell differences."""
    ag = load_script("analyse_grid")
    rows = []
    for m, (dev, test) in {"a": ((8, 6), (7, 5)), "pt": ((5, 5), (6, 6))}.items():
        for seed, (d, t) in enumerate(zip(dev, test)):
            rows.append({"key": f"{m}|mr|{seed}", "method": m, "task": "mr", "seed": seed, "shots": 16,
                         "test_score": 10.0 * t, "dev_score": 10.0 * d, "best_step": 1,
                         "dev_correct": "1" * d + "0" * (10 - d), "test_correct": "1" * t + "0" * (10 - t)})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ag.main([str(tmp_path), "--pair", "a", "pt", "--split", "dev"]) == 0
    text = capsys.readouterr().out
    assert "a − pt: dev scores, 16-shot" in text and "test scores" not in text
    assert "| a − pt | +20.0 [" in text and "best baseline" not in text  # only A − B, though pt is a baseline
    assert "| a − pt | +20.0 [" in text  # ((80 - 50) + (60 - 50)) / 2
    assert ag.main([str(tmp_path), "--pair", "a", "pt"]) == 0
    assert "| a − pt | +0.0 [" in capsys.readouterr().out.split("test scores")[1]  # ((70 - 60) + (50 - 60)) / 2
    assert ag.main([str(tmp_path), "--pair", "a", "c"]) == 2
    assert "--pair: c ran no cell" in capsys.readouterr().err
