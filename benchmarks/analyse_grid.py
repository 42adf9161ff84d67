#!/usr/bin/env python
"""Diagnostics of a finished (or partial) `bmtpt experiment` folder, as markdown: what the averages hide.

    python benchmarks/analyse_grid.py runs/cpu-transfer --config benchmarks/configs/cpu-transfer.yaml
    python benchmarks/analyse_grid.py runs/cpu-smollm2 > benchmarks/results/cpu-smollm2/analysis.md
    python benchmarks/analyse_grid.py runs/cpu-method --pair tw-task-noprior tw-task --split dev

1. Paired differences: each method against `pt` (and `bmtpt` against `avg`) on the same (task, seed,
   shots) cells: mean difference, its standard error and a sign test (scipy's exact binomial test); and,
   where the cells kept their per-example test results, the 95 % bootstrap intervals over seeds and test
   examples of `bmtpt.stats` (the same tables as results.md).
2. How often the dev-selected prompt is the step-0 one (target training never beat its initialisation on
   the dev set): when that is the common case, the table compares initialisations, not training.
3. Each source stage's task losses at its first and last logged step, and for SVGD the kernel width,
   the particles' mean distance and the repulsion's size against the drive's (why M particles behave
   like M independent runs when the repulsion is a small fraction of the drive).
4. The prior's reach, for every cell that trained under a source prior (logged `log_prior`): how far the
   selected target prompt lies from the particles' mean against the particles' own spread and the kernel
   width sqrt(h), and how much log p(theta | sources) changed over training. A target prompt that stays
   inside the particle cloud meets a nearly flat kernel density: the prior cannot restrain it.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from scipy.stats import binomtest

from bmtpt.stats import comparison_lines


def _rows(out: Path, config: str | None = None) -> list[dict]:
    """The records of the grid's cells. With the experiment's `config`, each cell's latest record made with
    its current configuration (as results.md takes them: a record whose cell changed since, such as CR's
    before its dev sample mirrored the test's, is left out). Without, the latest record of each cell of
    the targets and methods the grid has now (experiment.json)."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    if config is not None:
        from bmtpt.expconfig import load_experiment
        from bmtpt.experiment import current_records
        from bmtpt.grid import plan_experiment

        return current_records(plan_experiment(load_experiment(config)), rows)
    spec = out / "experiment.json"
    if spec.is_file():
        exp = json.loads(spec.read_text())
        names = {m["name"] for m in exp["methods"]}
        rows = [r for r in rows if r["task"] in exp["targets"] and r["method"] in names]
    return list({r["key"]: r for r in rows}.values())


def paired(rows: list[dict], method: str, base: str) -> str | None:
    """One markdown table row: `method` - `base` over their common cells, per shots setting."""
    by = {(r["method"], r["task"], r["seed"], r["shots"]): r["test_score"] for r in rows}
    out = []
    for shots in sorted({r["shots"] for r in rows}, key=lambda s: s or 0):
        diffs = [by[(method, t, s, k)] - by[(base, t, s, k)] for (m, t, s, k) in by
                 if m == method and k == shots and (base, t, s, k) in by]
        if not diffs:
            continue
        n, mean = len(diffs), statistics.fmean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else float("nan")
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        p = binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
        label = f"k={shots}" if shots else "full"
        out.append(f"| {method} − {base} | {label} | {n} | {mean:+.1f} | {se:.1f} | {wins}/{n - wins - losses}/{losses}"
                   f" | {p:.2f} |")
    return "\n".join(out) or None


def pair_lines(rows: list[dict], a: str, b: str, splits: tuple[str, ...] = ("dev", "test")) -> list[str]:
    """Markdown: `a` − `b` on dev and on test scores, per few-shot setting: the bootstrap intervals of
    results.md over the seeds both finished (e.g. a variant against the variant it ablates, where results.md
    sets every variant against bmtpt)."""
    targets = list(dict.fromkeys(r["task"] for r in rows))
    out = []
    for shots in sorted({r["shots"] for r in rows if r["method"] in (a, b)}, key=lambda s: s or 0):
        for split in splits:
            lines = comparison_lines(rows, [b, a], targets, shots, reference=b, ablations=[a], split=split,
                                     baselines=())  # only A − B, even where B is a baseline
            if lines:
                out += [f"## {a} − {b}: {split} scores, {f'{shots}-shot' if shots else 'full training sets'}", "",
                        *lines, ""]
    return out


def main(argv: list[str]) -> int:
    """Print the diagnostics of an experiment folder (or, with --pair, only those differences)."""
    import argparse

    ap = argparse.ArgumentParser(prog="analyse_grid.py", description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="an experiment's output folder (holding results.jsonl)")
    ap.add_argument("--config", help="the experiment's YAML: keep only records of the cells' current settings")
    ap.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"), default=[],
                    help="print only A − B's intervals (repeatable)")
    ap.add_argument("--split", choices=["dev", "test", "both"], default="both",
                    help="--pair's scores: dev (what settings are chosen on), test, or both")
    args = ap.parse_args(argv)
    out = args.folder
    if not (out / "results.jsonl").is_file():
        print(f"analyse_grid.py: {out} holds no results.jsonl (not an experiment's output folder)", file=sys.stderr)
        return 2
    rows = _rows(out, args.config)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    unknown = [m for pair in args.pair for m in pair if m not in methods]
    if unknown:
        print(f"analyse_grid.py: --pair: {', '.join(unknown)} ran no cell in {out} (its methods: "
              f"{', '.join(methods)})", file=sys.stderr)
        return 2
    if args.pair:
        print("\n".join(line for a, b in args.pair for line in pair_lines(
            rows, a, b, ("dev", "test") if args.split == "both" else (args.split,))))
        return 0
    print(f"# Diagnostics of {out.name} ({len(rows)} cells)\n")
    print("## Paired differences of test scores (same task, seed and shots)\n")
    print("| comparison | setting | cells | mean diff | std err | wins/ties/losses | sign test p |")
    print("|---|---|---|---|---|---|---|")
    pairs = [(m, "pt") for m in methods if m != "pt"] + [("bmtpt", "avg"), ("bmtpt", "bmtpt-noprior")]
    for m, b in pairs:
        if m in methods and b in methods and (line := paired(rows, m, b)):
            print(line)
    targets = list(dict.fromkeys(r["task"] for r in rows))
    ablations = [m for m in methods if m.startswith("bmtpt") and m != "bmtpt"]
    for shots in sorted({r["shots"] for r in rows if r.get("test_correct")}, key=lambda s: s or 0):
        present = [m for m in methods if any(r["method"] == m and r["shots"] == shots for r in rows)]
        lines = comparison_lines(rows, present, targets, shots, ablations=ablations)
        if lines:
            print(f"\n### Bootstrap intervals, {f'{shots}-shot' if shots else 'full training sets'}\n")
            print("\n".join(lines))
    print("\n## How often the dev-selected prompt is the initial one (best step 0)\n")
    print("| method | setting | cells | best step 0 | mean test, best step 0 | mean test, trained |")
    print("|---|---|---|---|---|---|")
    groups: dict = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["shots"] or 0)].append(r)
    for (m, k), rs in sorted(groups.items(), key=lambda kv: (methods.index(kv[0][0]), kv[0][1])):
        init = [r["test_score"] for r in rs if r["best_step"] == 0]
        trained = [r["test_score"] for r in rs if r["best_step"] != 0]
        fmt = lambda xs: f"{statistics.fmean(xs):.1f}" if xs else "-"  # noqa: E731
        print(f"| {m} | {f'k={k}' if k else 'full'} | {len(rs)} | {len(init)} ({100 * len(init) / len(rs):.0f}%) "
              f"| {fmt(init)} | {fmt(trained)} |")
    print("\n## Source stages\n")
    print("| stage | step | " + " | ".join(["task losses (first → last)", "bandwidth", "mean distance",
                                           "repulsion / drive"]) + " |")
    print("|---|---|---|---|---|---|")
    for d in sorted((out / "sources").glob("*/metrics.jsonl")):
        recs = [json.loads(line) for line in d.read_text().splitlines() if line.strip()]
        recs = [r for r in recs if "loss" in r]
        if not recs:
            continue
        first, last = recs[0], recs[-1]
        tasks = [k[len("loss/"):] for k in last if k.startswith("loss/")]
        losses = ", ".join(f"{t} {first[f'loss/{t}']:.2f} → {last[f'loss/{t}']:.2f}" for t in tasks)
        svgd = last.get("drive_norm") and last.get("mean_distance")
        rep = f"{last['repulse_norm'] / last['drive_norm']:.3f}" if svgd else "-"
        bw = f"{last['bandwidth']:.1f}" if svgd else "-"
        dist = f"{last['mean_distance']:.2f}" if svgd else "-"
        print(f"| {d.parent.name} | {first['step']} → {last['step']} | {losses} | {bw} | {dist} | {rep} |")
    reach = [line for r in rows if (line := prior_reach(out, r))]
    if reach:
        print("\n## The prior's reach (cells trained under a source prior)\n")
        print("| cell | best step | selected prompt to the particles' mean | particles to their mean | sqrt(h) "
              "| log prior, first → last logged |")
        print("|---|---|---|---|---|---|")
        print("\n".join(reach))
    return 0


def prior_reach(out: Path, record: dict) -> str | None:
    """One row of section 4 for a cell whose log records a prior (None for the others)."""
    import yaml
    from safetensors.torch import load_file

    cell = out / record["run_dir"]
    if not (cell / "metrics.jsonl").is_file():
        return None
    logs = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines() if line.strip()]
    priors = [r["log_prior"] for r in logs if r.get("log_prior")]
    if not priors or not (cell / "prompt.safetensors").is_file():
        return None
    posterior = Path(yaml.safe_load((cell / "config.yaml").read_text())["posterior"])
    if not posterior.is_absolute():  # recorded relative to where the grid ran (the repository root)
        posterior = out.parent.parent / posterior if not posterior.exists() else posterior
    particles = load_file(str(posterior / "particles.safetensors"))["particles"].double()
    h = json.loads((posterior / "posterior.json").read_text())["bandwidth"]
    mean = particles.mean(0)
    prompt = load_file(str(cell / "prompt.safetensors"))["prompt"].double()
    spread = [float((p - mean).norm()) for p in particles]
    key = record["key"].replace("|", "\\|")  # a table cell
    return (f"| {key} | {record['best_step']} | {float((prompt - mean).norm()):.1f} | "
            f"{min(spread):.1f}-{max(spread):.1f} | {math.sqrt(h):.1f} | {priors[0]:.2f} → {priors[-1]:.2f} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
