"""benchmarks/gpu_transfer.py: its projection arithmetic, its scaled config, and a tiny run on the CPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).parents[1]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(),
                                reason=f"benchmark files not found at {DATA} (see shared/data/MANIFEST.md)")


@pytest.fixture(scope="module")
def gt():
    """The script, loaded by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_gpu_transfer", ROOT / "benchmarks" / "gpu_transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_projection_matches_a_hand_computation(gt, tmp_path):
    config = {"name": "x", "out": str(tmp_path / "x"), "model": "m", "prompt_length": 2, "batch_size": 4,
              "max_train_examples": 50, "sources": ["synth-sentiment"],
              "source": {"steps": 10, "particles": 2, "batch_size": 4, "final_eval_examples": 8},
              "targets": ["synth-animal"],
              "target": {"steps": 5, "eval_every": 2, "max_dev_examples": 8, "max_eval_examples": 10,
                         "train_eval_examples": 3, "eval_batch_size": 4},
              "spot": {"steps": 3}, "methods": ["pt", "bmtpt", "spot"]}
    units = {"step_floor_s": 1.0, "train_token_s": 0.01, "eval_batch_floor_s": 2.0, "eval_token_s": 0.001,
             "tokenize_s": 0.01, "train_input_tokens": 6, "eval_input_tokens": 4, "extra_tokens": 2,
             "cell_overhead_s": 3.0, "stage_overhead_s": 5.0, "model_load_s": 7.0, "report_s": 11.0,
             "final_eval_batch": 4}
    p = gt.project(config, units)
    # by hand. The synth tasks have 2,000 / 200 / 400 train / dev / test examples. A training row is
    # 2 + 6 + 2 = 10 tokens, a scored one 2 + 4 + 2 = 8: a step of r rows costs 1 + 0.1 r; scoring n examples
    # in batches of b costs n x (0.01 + 0.008) + 2 ceil(n / b).
    # SVGD stage: 2 particles x 4 = 8 rows, 10 x 1.8 = 18; tokenising min(2000, 50) x 0.01 = 0.5; final dev of
    # (2 + 1) prompts on 8 examples in batches of 4: 3 x (0.144 + 4) = 12.432; + 5 = 35.932.
    # Independent stage (avg/spot, one prompt per source: M = 1): 10 x 1.4 = 14 + 0.5 + 2 x 4.144 + 5 = 27.788.
    stages = {s["kind"]: s for s in p["stages"]}
    assert set(stages) == {"svgd", "independent"}
    assert stages["svgd"]["total_s"] == pytest.approx(35.932)
    assert stages["independent"]["total_s"] == pytest.approx(27.788)
    # a cell: 3 + tokenising 50 x 0.01 + 5 steps x 1.4 + dev at steps 0, 2, 4, 5 (4 x (8 dev examples: 4.144,
    # 3 training examples: 2.054)) + test (10: 0.18 + 3 x 2 = 6.18) = 3 + 0.5 + 7 + 24.792 + 6.18 = 41.472
    assert p["cells"]["pt|synth-animal|seed=0|shots=full"]["total_s"] == pytest.approx(41.472)
    assert p["cells"]["bmtpt|synth-animal|seed=0|shots=full"]["total_s"] == pytest.approx(41.472)
    # SPoT: + its probe (3 steps x 1.4 + tokenising 0.5 = 4.7); its source embeddings once: one probe of the
    # same cost on the one source task (4.2 + 0.5)
    assert p["cells"]["spot|synth-animal|seed=0|shots=full"]["total_s"] == pytest.approx(46.172)
    assert p["spot_embeddings_s"] == pytest.approx(4.7)
    assert p["kinds"]["pt full"]["per_cell_s"] == pytest.approx(41.472)
    assert p["total_s"] == pytest.approx(7 + 35.932 + 27.788 + 4.7 + 2 * 41.472 + 46.172 + 11)
    assert "= 216 s = 3.6 min" in gt.format_projection(p)
    assert gt.project(config, units, model_load_s=0.0)["total_s"] == pytest.approx(p["total_s"] - 7)


def test_gpu_config_scales_the_cpu_design(gt, tmp_path):
    from bmtpt.expconfig import load_experiment
    from bmtpt.grid import plan_experiment

    cpu = yaml.safe_load((ROOT / "benchmarks" / "configs" / "cpu-transfer.yaml").read_text())
    cfg = gt.gpu_config(str(DATA), str(tmp_path / "gpu-transfer"))
    exp = load_experiment(cfg)
    plan = plan_experiment(exp)
    assert (exp.name, exp.model, exp.device) == ("gpu-transfer", "smollm2-135m", "cuda")
    later = [m for m in cpu["methods"] if isinstance(m, dict) and m["name"] in gt.LATER_METHODS]
    # ATTEMPT joined later; spot's extra CPU seeds (3-5) are not the GPU design's: every method on 0-2
    grid = lambda m: {k: v for k, v in m.items() if k != "seeds"} if isinstance(m, dict) and "seeds" in m \
        and set(m["seeds"]) > set(cpu["seeds"]) else m  # noqa: E731
    assert cfg["methods"] == [grid(m) for m in cpu["methods"] if m not in later] and later
    assert any(isinstance(m, dict) and set(m.get("seeds", [])) > set(cpu["seeds"]) for m in cpu["methods"])
    for key in ("sources", "targets", "seeds", "shots", "per_target"):
        assert cfg[key] == cpu[key], key
    cpu_plan = plan_experiment(load_experiment(ROOT / "benchmarks" / "configs" / "cpu-transfer.yaml"))
    # less later methods (ATTEMPT 9, the target posterior and ensemble 6, bmtpt-tw-task 18 and its no-prior
    # twin 9) and spot's seeds 3-5
    assert len(plan.cells) == 81 == len(cpu_plan.cells) - 9 - 6 - 18 - 9 - 9 and len(plan.stages) == 3
    assert exp.sources_dir is None  # the source stages live under the out folder
    assert all(Path(s.cfg.out).parent == tmp_path / "gpu-transfer" / "sources" for s in plan.stages.values())
    assert all(c.target.precision == "bf16" and c.target.max_eval_examples is None for c in plan.cells)
    assert all(s.cfg.precision == "bf16" for s in plan.stages.values())
    # longer training: more source steps and examples; more examples a target run, dev evaluated more often
    src, tgt = cpu["source"], cpu["target"]
    assert all(s.cfg.steps > src["steps"] and s.cfg.steps * s.cfg.batch_size > src["steps"] * src["batch_size"]
               for s in plan.stages.values())
    assert all(c.target.steps * c.target.batch_size > tgt["steps"] * cpu["batch_size"] for c in plan.cells)
    assert all(c.target.eval_every < tgt["eval_every"] for c in plan.cells)
    assert all(c.target.eval_batch_size >= 256 and 8 <= c.target.prompt_length <= 20 for c in plan.cells)
    # the full test sets
    tests = {k.split("|")[1]: c["test_examples"] for k, c in gt.project(cfg)["cells"].items()}
    assert tests == {"mr": 2000, "cr": 1999, "sick": 4906}


def test_default_projection_fits_eight_minutes(gt, capsys):
    p = gt.project(gt.gpu_config(), model_load_s=gt.MODEL_LOAD_S)  # a fresh machine: the slow model load
    assert p["n_cells"] == 81 and p["n_stages"] == 3
    assert p["total_min"] <= 8.0
    assert gt.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "total:" in out and "(81 cells, 3 source stages)" in out
    assert yaml.safe_load(out.split("# experiment config\n", 1)[1])["name"] == "gpu-transfer"


def test_errors_are_one_line_and_status_2(gt, capsys, tmp_path):
    assert gt.main(["--budget-min", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the projection") and "--force" in err and err.count("\n") == 1
    assert gt.main(["--budget-min", "-1"]) == 2
    assert "--budget-min must be a positive" in capsys.readouterr().err
    assert gt.main(["--data-dir", str(tmp_path / "missing"), "--budget-min", "100", "--out", str(tmp_path / "o")]) == 2
    assert "data folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the command would start the GPU run")
@needs_data
def test_refuses_to_run_without_cuda(gt, capsys, tmp_path):
    assert gt.main(["--data-dir", str(DATA), "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@needs_data
def test_tiny_run_end_to_end_on_the_cpu(gt, tmp_path, capsys):
    out, results = tmp_path / "run", tmp_path / "results"
    assert gt.main(["--tiny", "--data-dir", str(DATA), "--out", str(out), "--results", str(results)]) == 0
    assert {"results.md", "results.jsonl", "experiment.json", "timing.json"} <= {f.name for f in results.iterdir()}
    assert list(results.glob("*.png"))
    records = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert len(records) == 27  # 9 (method, shots) settings x 3 targets, one seed
    assert {r["method"] for r in records} == {"pt", "avg", "bmtpt", "spot", "mpt", "bmtpt-noprior", "bmtpt-rank1"}
    assert {r["task"] for r in records} == {"mr", "cr", "sick"}
    t = json.loads((results / "timing.json").read_text())
    assert t["command"].startswith("python benchmarks/gpu_transfer.py --tiny")
    assert t["machine"]["gpu"] is None and t["measured"]["ran"] == 27 and t["measured"]["wall_s"] > 0
    assert set(t["cells"]) == {r["key"] for r in records}
    assert all(c["wall_s"] is not None and c["projected_s"] > 0 for c in t["cells"].values())
    assert t["projected"]["total_s"] > 0 and len(t["units_logged"]["stages"]) == 3
    assert "# Experiment `gpu-transfer-tiny`" in (results / "results.md").read_text()


def test_a_power_run_selects_methods_shots_and_seeds(gt, capsys):
    """--methods / --shots / --seeds limit the design, and the projection counts exactly the selected cells:
    3 methods x 3 targets x 12 seeds, 16-shot only, and only the stages those methods read."""
    cfg = gt.select(gt.gpu_config(), "pt,spot,bmtpt", "16", 12)
    assert sorted(m if isinstance(m, str) else m["name"] for m in cfg["methods"]) == ["bmtpt", "pt", "spot"]
    assert cfg["shots"] == [16] and cfg["seeds"] == list(range(12))
    p = gt.project(cfg, model_load_s=gt.MODEL_LOAD_CACHED_S)
    assert p["n_cells"] == 3 * 3 * 12 and p["n_stages"] == 2  # svgd (bmtpt) and independent (spot)
    # a full-data-only selection keeps the methods that run there (pt, bmtpt), not the 16-shot-only ones
    full = gt.select(gt.gpu_config(), None, "full", None)
    assert gt.project(full, model_load_s=0)["n_cells"] == 2 * 3 * 3
    assert gt.main(["--methods", "pt,bmtpt", "--seeds", "2", "--dry-run"]) == 0
    assert "(24 cells, 1 source stages)" in capsys.readouterr().out  # 2 methods x 3 targets x 2 seeds x 2 shots


@pytest.mark.parametrize("args, message", [
    (["--methods", "pt,nope"], "unknown method(s) nope"),
    (["--shots", "8"], "8 is not in the design's shots"),
    (["--shots", "many"], "'many' is not a number"),
    (["--seeds", "0"], "--seeds must be a positive"),
    (["--methods", "spot", "--shots", "full"], "no method runs"),
])
def test_bad_selections_are_one_line_errors(gt, capsys, args, message):
    assert gt.main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_compare_keeps_only_the_methods_a_run_keeps(gt):
    """cpu-transfer.yaml's `compare:` names a later method the GPU run leaves out: the derived configs drop it
    from `compare` too, so they still load (a compare entry outside the methods is refused)."""
    from bmtpt.expconfig import load_experiment

    assert "bmtpt-tw-task" in gt.yaml.safe_load(gt.CPU_CONFIG.read_text())["compare"]
    assert gt.gpu_config()["compare"] == []
    cfg = gt.keep_methods({"methods": ["pt", {"name": "v", "base": "bmtpt"}], "compare": ["v", "w"]}, ["pt"])
    assert cfg == {"methods": ["pt"], "compare": []}
    load_experiment(gt.select(gt.gpu_config(), methods="pt,bmtpt", seeds=2))


def test_seeds_cut_the_methods_own_seeds(gt):
    """--seeds N gives every method seeds 0..N-1: a method's extra seeds go, a seed-0-only method keeps seed
    0, and a method whose seeds all lie beyond N drops out."""
    cfg = {"seeds": [0, 1, 2], "shots": [16], "methods": [
        "pt", {"name": "spot", "seeds": [0, 1, 2, 3, 4, 5]}, {"name": "post", "seeds": [0]},
        {"name": "late", "seeds": [4, 5]}]}
    out = gt.select(cfg, seeds=2)
    assert out["seeds"] == [0, 1] and out["methods"] == ["pt", {"name": "spot"}, {"name": "post", "seeds": [0]}]
    assert gt.select(cfg, seeds=6)["methods"][1] == {"name": "spot"}  # all six seeds: the grid's own
