"""The benchmark's bootstrap against a plain loop and the normal approximation."""

from __future__ import annotations

import numpy as np
import pytest

from bmtpt.stats import Interval, bootstrap, cells_of, comparison_lines, intervals, point


def _cells(rng, p, seeds=(0, 1, 2), n=400):
    return {s: 100.0 * (rng.random(n) < p) for s in seeds}


def test_one_seed_paired_difference_matches_the_normal_approximation():
    """One task, one seed: the paired bootstrap interval of a difference of accuracies is mean(d) +- 1.96
    std(d)/sqrt(n) to within a few percent (n = 2,000 examples)."""
    rng = np.random.default_rng(1)
    n = 2000
    a = 100.0 * (rng.random(n) < 0.8)
    flip = rng.random(n) < 0.1  # b disagrees with a on ~10 % of the examples
    b = np.where(flip, 100.0 - a, a)
    reps = bootstrap({"a": {"t": {0: a}}, "b": {"t": {0: b}}}, ["t"], n_boot=4000)
    iv = intervals(point({"t": {0: a}}, ["t"]) - point({"t": {0: b}}, ["t"]), reps["a"] - reps["b"])[0]
    d = a - b
    half = 1.96 * d.std(ddof=1) / np.sqrt(n)
    assert iv.mean == pytest.approx(d.mean())
    assert (iv.hi - iv.lo) / 2 == pytest.approx(half, rel=0.08)


def test_two_level_bootstrap_matches_an_explicit_loop():
    """Seeds and examples redrawn per replicate: percentiles agree with a slow loop written out plainly."""
    rng = np.random.default_rng(2)
    cells = {"m": {"t1": _cells(rng, 0.7), "t2": _cells(rng, 0.5, n=300)}}
    reps = bootstrap(cells, ["t1", "t2"], n_boot=4000, seed=3)["m"]
    loop = np.empty((4000, 3))
    r2 = np.random.default_rng(4)
    for b in range(4000):
        for j, t in enumerate(("t1", "t2")):
            x = np.stack([cells["m"][t][s] for s in (0, 1, 2)])
            idx = r2.integers(0, x.shape[1], x.shape[1])
            seeds = r2.integers(0, 3, 3)
            loop[b, j] = np.mean([x[s, idx].mean() for s in seeds])
        loop[b, 2] = loop[b, :2].mean()
    for j in range(3):
        assert np.percentile(reps[:, j], [2.5, 97.5]) == pytest.approx(np.percentile(loop[:, j], [2.5, 97.5]), abs=0.5)


def test_records_to_cells_and_the_markdown_tables():
    rng = np.random.default_rng(5)
    records = []
    for method, p in (("pt", 0.6), ("avg", 0.62), ("bmtpt", 0.7), ("bmtpt-noprior", 0.7)):
        for task in ("mr", "sick"):
            for seed in (0, 1, 2):
                x = (rng.random(500) < p).astype(int)
                records.append({"method": method, "task": task, "seed": seed, "shots": 16,
                                "test_score": 100 * x.mean(), "test_correct": "".join(map(str, x))})
    cells = cells_of(records, "bmtpt", 16)
    assert cells["mr"][1].mean() == pytest.approx(records[[r["method"] for r in records].index("bmtpt") + 1]
                                                  ["test_score"])
    lines = comparison_lines(records, ["pt", "avg", "bmtpt", "bmtpt-noprior"], ["mr", "sick"], 16,
                             ablations=["bmtpt-noprior"], n_boot=500)
    text = "\n".join(lines)
    assert "| bmtpt − pt | **+" in text and "| bmtpt − avg (best baseline) |" in text
    assert "| bmtpt-noprior − bmtpt |" in text
    assert "bmtpt − best baseline" not in text  # the best baseline's row is not repeated
    assert comparison_lines(records, ["pt"], ["mr"], None) == []  # no cells in that setting


def test_unequal_example_counts_are_refused():
    with pytest.raises(ValueError, match="different numbers"):
        bootstrap({"a": {"t": {0: np.ones(5)}}, "b": {"t": {0: np.ones(6)}}}, ["t"], n_boot=10)


def test_interval_formatting():
    iv = Interval(1.234, -0.5, 2.0)
    assert str(iv) == "1.2 [-0.5, 2.0]" and iv.signed() == "+1.2 [-0.5, +2.0]" and not iv.excludes_zero


def test_a_partial_grid_compares_the_methods_and_seeds_it_has():
    from bmtpt.stats import complete

    recs = [{"method": m, "task": t, "seed": s, "shots": 16} for m in ("pt", "bmtpt") for t in ("a", "b")
            for s in (0, 1)] + [{"method": "avg", "task": "a", "seed": 0, "shots": 16}]
    recs = [r for r in recs if not (r["method"] == "bmtpt" and r["seed"] == 1 and r["task"] == "b")]
    assert complete(recs, ["pt", "avg", "bmtpt"], ["a", "b"], 16) == (["pt", "bmtpt"], [0])
    assert complete(recs, ["pt"], ["a", "b"], 16) == (["pt"], [0, 1])
    assert complete(recs, ["pt"], ["a", "b"], None) == ([], [])


def test_dev_intervals_resample_dev_results_and_fall_back_to_scores_when_some_cells_lack_them():
    """split="dev" bootstraps the dev-selected steps' dev results; a grid where some cells finished before
    dev results were kept uses every cell's dev score alone (seeds only) rather than mixing the two."""
    rng = np.random.default_rng(6)
    records = []
    for method, p in (("bmtpt", 0.6), ("lam10", 0.75)):
        for seed in (0, 1, 2):
            x = (rng.random(300) < p).astype(int)
            records.append({"method": method, "task": "mr", "seed": seed, "shots": 16, "test_score": 50.0,
                            "dev_score": 100 * x.mean(), "dev_correct": "".join(map(str, x))})
    text = "\n".join(comparison_lines(records, ["bmtpt", "lam10"], ["mr"], 16, ablations=["lam10"], n_boot=500,
                                       split="dev"))
    assert "Mean dev score" in text and "seeds and dev examples" in text and "| lam10 − bmtpt | **+" in text
    # the dev point estimate: the mean of the per-example results, i.e. of the cells' dev scores
    dev = cells_of(records, "lam10", 16, "dev")
    assert np.mean([dev["mr"][s].mean() for s in (0, 1, 2)]) == pytest.approx(
        np.mean([r["dev_score"] for r in records if r["method"] == "lam10"]))
    del records[0]["dev_correct"]  # an older cell
    assert all(len(a) == 1 for a in cells_of(records, "lam10", 16, "dev", per_example=False)["mr"].values())
    coarse = "\n".join(comparison_lines(records, ["bmtpt", "lam10"], ["mr"], 16, ablations=["lam10"], n_boot=200,
                                         split="dev"))
    assert "seeds only" in coarse and "| lam10 − bmtpt | +" in coarse  # said so, and not marked significant


def test_variance_parts_by_hand():
    """Two seeds, two examples, one task: d = [[100, 0], [0, 0]]; per-seed means 50, 0 (sample variance
    1250); per-example means over seeds 50, 0 (sample variance 1250, / 2 examples = 625)."""
    from bmtpt.stats import seeds_for, variance_parts

    a = {"t": {0: np.array([100.0, 0.0]), 1: np.array([0.0, 0.0])}}
    b = {"t": {0: np.zeros(2), 1: np.zeros(2)}}
    assert variance_parts(a, b, ["t"]) == (pytest.approx(1250.0), pytest.approx(625.0), 2)
    # two tasks with the same differences: the average's parts are a quarter of the sum, i.e. half of one
    two = variance_parts({"t": a["t"], "u": a["t"]}, {"t": b["t"], "u": b["t"]}, ["t", "u"])
    assert two[:2] == (pytest.approx(625.0), pytest.approx(312.5))
    # seeds for +-h: the smallest S with 1.96^2 (sp / S + tp) <= h^2
    sp, tp = 40.0, 0.2
    s = seeds_for(sp, tp, 1.5)
    assert 1.96 * np.sqrt(sp / s + tp) <= 1.5 < 1.96 * np.sqrt(sp / (s - 1) + tp)
    assert seeds_for(sp, 0.6, 1.5) is None  # the test sets alone exceed +-1.5


def test_power_half_width_agrees_with_the_bootstrap_interval():
    """With many seeds (so the bootstrap's ddof-0 seed variance is close to ddof 1), the normal
    approximation's half-width of the average difference matches the two-level bootstrap's to ~10 %."""
    from bmtpt.stats import variance_parts

    rng = np.random.default_rng(7)
    seeds = tuple(range(25))
    cells = {"a": {}, "b": {}}
    for t in ("t1", "t2"):
        cells["a"][t], cells["b"][t] = {}, {}
        for s in seeds:
            base = rng.random(300)
            shift = rng.normal(0, 0.08)  # seed-to-seed variation of the difference
            cells["a"][t][s] = 100.0 * (base < 0.7 + shift)
            cells["b"][t][s] = 100.0 * (base < 0.65)
    reps = bootstrap(cells, ["t1", "t2"], n_boot=4000, seed=1)
    lo, hi = np.percentile(reps["a"][:, -1] - reps["b"][:, -1], [2.5, 97.5])
    sp, tp, n = variance_parts(cells["a"], cells["b"], ["t1", "t2"])
    assert n == 25 and sp > 0 and tp > 0
    assert 1.96 * np.sqrt(sp / n + tp) == pytest.approx((hi - lo) / 2, rel=0.1)


def test_comparison_lines_report_power():
    rng = np.random.default_rng(8)
    records = []
    for method, p in (("pt", 0.6), ("bmtpt", 0.62)):
        for seed in (0, 1, 2):
            x = (rng.random(1000) < p + rng.normal(0, 0.03)).astype(int)
            records.append({"method": method, "task": "mr", "seed": seed, "shots": 16,
                            "test_score": 100 * x.mean(), "test_correct": "".join(map(str, x))})
    text = "\n".join(comparison_lines(records, ["pt", "bmtpt"], ["mr"], 16, n_boot=200))
    assert "Power:" in text and "| bmtpt − pt (best baseline) | ±" in text


def test_a_method_on_fewer_seeds_does_not_shrink_the_main_comparison():
    from bmtpt.stats import split_by_seeds

    recs = [{"method": m, "task": t, "seed": s, "shots": 16} for m in ("pt", "bmtpt") for t in ("a", "b")
            for s in (0, 1, 2)]
    recs += [{"method": "post3", "task": t, "seed": 0, "shots": 16} for t in ("a", "b")]
    recs += [{"method": "ens3", "task": "a", "seed": 0, "shots": 16}]  # unfinished: in neither list
    assert split_by_seeds(recs, ["pt", "bmtpt", "post3", "ens3"], ["a", "b"], 16) == (["pt", "bmtpt"], ["post3"])
    assert split_by_seeds(recs, ["pt"], ["a", "b"], None) == ([], [])


def test_a_challenger_gets_the_baseline_differences_with_the_same_point_estimates():
    """compare: a dev-chosen variant is set against pt, avg and the best baseline like bmtpt; each point
    estimate is the mean over tasks of the per-task mean differences, computed here by hand."""
    rng = np.random.default_rng(11)
    records = []
    for method, p in (("pt", 0.6), ("avg", 0.62), ("spot", 0.68), ("bmtpt", 0.6), ("tw", 0.7)):
        for task in ("mr", "sick"):
            for seed in (0, 1):
                x = (rng.random(400) < p).astype(int)
                records.append({"method": method, "task": task, "seed": seed, "shots": 16,
                                "test_score": 100 * x.mean(), "test_correct": "".join(map(str, x))})
    text = "\n".join(comparison_lines(records, ["pt", "avg", "spot", "bmtpt", "tw"], ["mr", "sick"], 16,
                                      ablations=["tw"], challengers=["tw"], n_boot=200))
    score = {(r["method"], r["task"], r["seed"]): r["test_score"] for r in records}

    def avg_diff(a, b):
        return np.mean([score[(a, t, s)] - score[(b, t, s)] for t in ("mr", "sick") for s in (0, 1)])

    for label, a, b in (("tw − pt", "tw", "pt"), ("tw − avg", "tw", "avg"),
                        ("tw − best baseline (spot)", "tw", "spot"), ("bmtpt − best baseline (spot)", "bmtpt", "spot"),
                        ("tw − bmtpt", "tw", "bmtpt")):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert float(row.split(" | ")[-1].split(" [")[0].strip("* ")) == pytest.approx(avg_diff(a, b), abs=0.051)
    paired = text.split("Power:")[0]  # the power table repeats each pair once
    assert paired.count("| tw − pt |") == 1 and "| bmtpt − tw" not in paired
