"""results.md's pieces: mean ± sample std over seeds and the score table, checked against hand-made records."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from bmtpt.expconfig import load_experiment
from bmtpt.grid import plan_experiment
from bmtpt.plots import mean_std, render_report, score_table, shots_label


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([]) == "—" and mean_std([61.25]) == "61.2"
    # 60, 62, 67: mean 63, sample variance ((-3)^2 + (-1)^2 + 4^2) / 2 = 13
    assert mean_std([60.0, 62.0, 67.0]) == f"63.0 ± {13 ** 0.5:.1f}" == "63.0 ± 3.6"
    assert shots_label(16) == "k16" and shots_label(None) == "full"


def _plan(tmp_path):
    cfg = {"name": "t", "out": str(tmp_path / "exp"), "model": "tiny-llama", "device": "cpu", "progress": False,
           "sources": ["synth-sentiment", "synth-animal"], "source": {"steps": 1, "particles": 2},
           "targets": ["synth-product", "synth-tense"], "target": {"steps": 1}, "seeds": [0, 1],
           "methods": ["pt", "bmtpt"]}
    return plan_experiment(load_experiment(cfg))


def _record(method, task, seed, test, dev=50.0):
    return {"method": method, "task": task, "seed": seed, "shots": None, "test_score": test, "dev_score": dev,
            "trainable_parameters": 300, "source_passes": 0 if method == "pt" else 40, "probe_passes": 0,
            "best_step": 1, "test_correct": "1" * round(test / 10) + "0" * (10 - round(test / 10)), "test_examples": 10}


def test_score_table_by_hand(tmp_path):
    plan = _plan(tmp_path)
    records = [_record("pt", "synth-product", 0, 60.0), _record("pt", "synth-product", 1, 70.0),
               _record("pt", "synth-tense", 0, 80.0),  # seed 1 of synth-tense missing: not in the average
               _record("bmtpt", "synth-product", 0, 65.0), _record("bmtpt", "synth-tense", 0, 75.0)]
    lines = score_table(plan, records, None)
    assert lines[0] == "| Method | synth-product | synth-tense | Avg | Params/task | Source passes |"
    pt = lines[2].split(" | ")
    sd = statistics.stdev([60.0, 70.0])
    assert pt[1] == f"65.0 ± {sd:.1f}" and pt[2] == "80.0"
    assert pt[3] == "70.0"  # only seed 0 has both targets: (60 + 80) / 2
    assert lines[3].split(" | ")[1:4] == ["65.0", "75.0", "70.0"] and lines[3].endswith("| 300 | 40 |")
    dev = score_table(plan, records, None, key="dev_score")
    assert dev[2].split(" | ")[1] == "50.0 ± 0.0"


def test_render_report_without_plots_names_the_missing_cells(tmp_path):
    plan = _plan(tmp_path)
    out = tmp_path / "exp"
    out.mkdir()
    records = [_record("pt", "synth-product", 0, 60.0)]
    path = render_report(out, plan, records, plots=False)
    text = path.read_text()
    assert path.name == "results.md" and "| pt |" in text and not list(out.glob("*.png"))
    assert "1 of 8 cells finished" in text


def test_report_names_the_cell_folders_and_stages_it_could_not_read(tmp_path):
    """A results.jsonl copied without its runs renders its tables, and says what it left out and why."""
    import os

    from bmtpt.plots import missing_lines

    plan = _plan(tmp_path)
    out = tmp_path / "exp"
    stage = next(s for s in plan.stages.values() if s.seed == 0)
    records = [{**_record(m, "synth-product", 0, 60.0), "run_dir": f"cells/{m}",
                "source_stage": os.path.relpath(stage.cfg.out, out) if m == "bmtpt" else None}
               for m in ("pt", "bmtpt")]
    note = "".join(missing_lines(out, plan, records))
    assert "2 of 2 cell folders" in note and f"1 source stage(s) ({stage.key})" in note
    for m in ("pt", "bmtpt"):  # the cells' logs and the stage's posterior are back: nothing to say
        (out / "cells" / m).mkdir(parents=True)
        (out / "cells" / m / "metrics.jsonl").write_text("{}\n")
    Path(stage.cfg.out).mkdir(parents=True)
    (Path(stage.cfg.out) / "posterior.json").write_text("{}")
    assert missing_lines(out, plan, records) == []
    assert "Not found" not in render_report(out, plan, records, plots=False).read_text()


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0], [10.0, 10.0]])
def test_mean_std_matches_statistics(values):
    m, s = mean_std(values).split(" ± ")
    assert float(m) == pytest.approx(statistics.mean(values), abs=0.05)
    assert float(s) == pytest.approx(statistics.stdev(values), abs=0.05)


def test_calibration_table_averages_the_cells_that_recorded_it(tmp_path):
    from bmtpt.plots import calibration_lines

    plan = _plan(tmp_path)
    records = [{**_record("pt", "synth-product", s, 60.0),
                "test_calibration": {"accuracy": 60.0 + s, "nll": 0.5 + s, "ece": 10.0 * (s + 1), "acc_at_80": 70.0}}
               for s in (0, 1)] + [_record("bmtpt", "synth-product", 0, 65.0)]  # bmtpt recorded none
    lines = calibration_lines(plan.exp, records)
    assert lines[0].startswith("## Calibration") and len([x for x in lines if x.startswith("| pt |")]) == 1
    assert "| pt | full | 2 | 60.5 | 1.000 | 15.0 | 70.0 |" in lines and not any("| bmtpt |" in x for x in lines)
    assert calibration_lines(plan.exp, records[2:]) == []
    assert not any(x.startswith("On the cells") for x in lines)  # one calibrated method: nothing to pair
    # bmtpt calibrated on seed 0 only: the second table compares both on that seed's cell
    records[2]["test_calibration"] = {"accuracy": 65.0, "nll": 0.4, "ece": 4.0, "acc_at_80": 75.0}
    lines = calibration_lines(plan.exp, records)
    shared = lines[lines.index("On the cells every method above shares (the same targets and seeds):"):]
    assert "| pt | full | 1 | 60.0 | 0.500 | 10.0 | 70.0 |" in shared
    assert "| bmtpt | full | 1 | 65.0 | 0.400 | 4.0 | 75.0 |" in shared


def test_methods_on_more_seeds_get_their_own_comparison_and_leave_the_main_one_alone(tmp_path):
    """spot and a variant run on seeds 0-3 where the grid has 0-1: the main tables stay on seeds 0-1, and a
    section compares the two on all four seeds (its point estimate: the mean of the per-seed differences)."""
    cfg = {"name": "t", "out": str(tmp_path / "exp"), "model": "tiny-llama", "device": "cpu", "progress": False,
           "sources": ["synth-sentiment", "synth-animal"], "source": {"steps": 1, "particles": 2},
           "targets": ["synth-product"], "target": {"steps": 1}, "seeds": [0, 1], "compare": ["tw"],
           "methods": ["pt", "bmtpt", {"name": "spot", "seeds": [0, 1, 2, 3]},
                       {"name": "tw", "base": "bmtpt", "seeds": [0, 1, 2, 3]}]}
    plan = plan_experiment(load_experiment(cfg))
    score = {("pt", 0): 50, ("pt", 1): 50, ("bmtpt", 0): 50, ("bmtpt", 1): 60,
             ("spot", 0): 60, ("spot", 1): 60, ("spot", 2): 60, ("spot", 3): 70,
             ("tw", 0): 80, ("tw", 1): 70, ("tw", 2): 60, ("tw", 3): 50}
    records = [_record(m, "synth-product", s, float(v)) for (m, s), v in score.items()]
    out = tmp_path / "exp"
    out.mkdir()
    text = render_report(out, plan, records, plots=False).read_text()
    assert "seeds 0, 1 (and 2, 3 for spot, tw)" in text and "12 of 12 cells finished" in text
    main, more = text.split("Methods run on more seeds")
    assert "over seeds 0, 1 (" in main and "| spot | 60.0 ± 0.0 |" in main  # the grid's seeds only
    assert "| tw − best baseline (spot) | +15.0" in main  # (80 - 60 + 70 - 60) / 2
    assert "over seeds 0, 1, 2, 3 (" in more
    assert "| tw − best baseline (spot) | +2.5" in more  # (20 + 10 + 0 - 20) / 4
    assert "bmtpt" not in more.split("Model selection")[0]
