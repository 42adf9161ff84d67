"""Does `bmtpt inspect --target`'s alignment predict which sources help? A check against leave-one-source-out runs.

    python benchmarks/loso_alignment.py [--transfer runs/cpu-transfer] [--loso runs/cpu-loso] [--examples 64]

help(s, t) = bmtpt's test score on target t with all sources (cpu-transfer.yaml) minus its score without source s
(cpu-loso.yaml), paired by seed and averaged over the seeds both grids finished; alignment(s, t) = the cosine of
t's score with s's at the full source posterior's mean prompt (`bmtpt.inspection.target_alignment`, which loads
the backbone). Prints and writes (benchmarks/results/loso-alignment.{md,json}) the table and the Spearman rank
correlation over the (source, target) pairs, with a bootstrap interval over the pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def help_table(full: list[dict], loso: list[dict], shots: int | None = 16) -> dict[tuple[str, str], dict]:
    """{(source, target): {"help": mean over seeds of full - without, "seeds": n}} from grid records; a
    leave-one-out method is named bmtpt-no-<source>."""
    base = {(r["task"], r["seed"]): r["test_score"] for r in full if r["method"] == "bmtpt" and r["shots"] == shots}
    out: dict = {}
    for r in loso:
        if not r["method"].startswith("bmtpt-no-") or r["shots"] != shots or (r["task"], r["seed"]) not in base:
            continue
        key = (r["method"][len("bmtpt-no-"):], r["task"])
        out.setdefault(key, []).append(base[(r["task"], r["seed"])] - r["test_score"])
    return {k: {"help": float(np.mean(v)), "seeds": len(v)} for k, v in sorted(out.items())}


def spearman_with_interval(x: list[float], y: list[float], n_boot: int = 2000, seed: int = 0
                           ) -> tuple[float, float, float]:
    """Spearman's rho of x and y and a 95 % percentile bootstrap interval over the pairs."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            reps.append(spearmanr(x[i], y[i]).statistic)
    lo, hi = np.percentile(reps, [2.5, 97.5]) if reps else (float("nan"), float("nan"))
    return rho, float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transfer", default="runs/cpu-transfer", help="cpu-transfer.yaml's output folder")
    ap.add_argument("--loso", default="runs/cpu-loso", help="cpu-loso.yaml's output folder")
    ap.add_argument("--examples", type=int, default=64, help="training examples per task for the scores")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the results files")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from bmtpt.experiment import read_records
    from bmtpt.inspection import target_alignment
    from bmtpt.runfiles import load_posterior
    from bmtpt.toolconfig import InspectConfig

    full, loso = (read_records(Path(d) / "results.jsonl") for d in (a.transfer, a.loso))
    helps = help_table(full, loso)
    if len(helps) < 3:
        sys.exit(f"loso_alignment: only {len(helps)} (source, target) pairs finished in both grids; run "
                 "benchmarks/configs/cpu-transfer.yaml and cpu-loso.yaml first")
    stage = next(Path(r["source_stage"]) for r in full if r["method"] == "bmtpt")
    stage = stage if stage.is_absolute() else Path(a.transfer) / stage
    particles, meta = load_posterior(stage)
    align = {}
    for target in sorted({t for _, t in helps}):
        cfg = InspectConfig(run_dir=str(stage), target=target, examples=a.examples, plots=False, progress=False)
        for source, value in target_alignment(cfg, stage, particles, meta, None, None).items():
            align[(source, target)] = value
    pairs = [k for k in helps if k in align]
    rho, lo, hi = spearman_with_interval([align[k] for k in pairs], [helps[k]["help"] for k in pairs])
    result = {"pairs": [{"source": s, "target": t, "alignment": align[(s, t)], **helps[(s, t)]} for s, t in pairs],
              "spearman": rho, "spearman_ci95": [lo, hi], "stage": str(stage)}
    lines = ["# Alignment estimate vs leave-one-source-out help", "",
             "| source | target | alignment | help (points; full - without) | seeds |", "|---|---|---|---|---|"]
    lines += [f"| {p['source']} | {p['target']} | {p['alignment']:+.3f} | {p['help']:+.2f} | {p['seeds']} |"
              for p in result["pairs"]]
    lines += ["", f"Spearman rank correlation over {len(pairs)} pairs: {rho:+.2f} (95 % bootstrap interval over the "
              f"pairs [{lo:+.2f}, {hi:+.2f}]).", ""]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loso-alignment.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "loso-alignment.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
