"""The experiment report: results.md (a paper-style table per few-shot setting) and PNG plots.

Plots are drawn with matplotlib's object API on the Agg canvas (no pyplot, so no global backend is
switched in the caller's process): dev-score learning curves per method, the source prompts and
particles projected to 2-D by PCA, and per-particle / per-task source losses. Without matplotlib the
report is written without plots and says how to get them.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import torch

from .grid import Plan
from .runfiles import load_tensors, read_jsonl_log
from .stats import comparison_lines, selection_lines, split_by_seeds

SUITE_TITLES = {"glue": "GLUE", "superglue": "SuperGLUE", "qa": "QA", "mrqa": "MRQA", "other": "Other",
                "synth": "Synth"}


def mean_std(values: list[float]) -> str:
    """'m ± s' with the sample standard deviation over seeds ('m' alone for one value, '—' for none)."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def shots_label(shots: int | None) -> str:
    """'full' or 'k16' (file names); the headings say '16-shot'."""
    return f"k{shots}" if shots else "full"


def _span(values: set) -> str:
    vals = sorted(values)
    if not vals:
        return "—"
    return f"{vals[0]:,}" if len(vals) == 1 else f"{vals[0]:,}–{vals[-1]:,}"


def score_table(plan: Plan, records: list[dict], shots: int | None, key: str = "test_score") -> list[str]:
    """Markdown lines: rows = methods; columns = per-task test scores (or `key`: dev_score), suite averages,
    the overall average, trainable parameters per task and source-stage compute (example passes)."""
    exp = plan.exp
    suites = defaultdict(list)
    for c in plan.cells:
        if c.task not in suites[c.suite]:
            suites[c.suite].append(c.task)
    groups = [(f"{SUITE_TITLES.get(s, s)} avg", tasks) for s, tasks in suites.items()] if len(suites) > 1 else []
    groups.append(("Avg", list(exp.targets)))
    head = ["Method", *exp.targets, *(g for g, _ in groups), "Params/task", "Source passes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec in exp.methods:
        recs = [r for r in records if r["method"] == spec.name and r["shots"] == shots]
        by = {(r["task"], r["seed"]): r[key] for r in recs}
        row = [spec.name if spec.name == spec.base else f"{spec.name} ({spec.base})"]
        row += [mean_std([by[(t, s)] for s in exp.seeds if (t, s) in by]) for t in exp.targets]
        for _, tasks in groups:  # a seed counts only when all of the group's tasks finished for it
            per_seed = [statistics.mean(by[(t, s)] for t in tasks) for s in exp.seeds
                        if all((t, s) in by for t in tasks)]
            row.append(mean_std(per_seed))
        row.append(_span({r["trainable_parameters"] for r in recs}))
        passes = _span({r["source_passes"] for r in recs})
        probe = {r["probe_passes"] for r in recs if r.get("probe_passes")}
        row.append(passes + (f" + {_span(probe)} probe/run" if probe else ""))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _figure(rows: int, cols: int, w: float = 4.2, h: float = 3.2):
    from matplotlib.figure import Figure

    # fixed margins: matplotlib's constrained/tight layouts measure every text box and cost seconds per figure
    fig = Figure(figsize=(w * cols, h * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.09 / cols ** 0.5, right=0.98, bottom=0.5 / (h * rows + 0.5) + 0.04,
                        top=1 - 0.5 / (h * rows + 0.5), wspace=0.3, hspace=0.5)
    return fig, [ax for row in axes for ax in row]


def learning_curves(out: Path, plan: Plan, records: list[dict], shots: int | None) -> Path | None:
    """curves-<shots>.png: dev score against step, one panel per target, one line per method (mean over seeds)."""
    recs = [r for r in records if r["shots"] == shots]
    if not recs:
        return None
    targets = plan.exp.targets
    cols = min(4, len(targets))
    fig, axes = _figure((len(targets) + cols - 1) // cols, cols)
    for ax, task in zip(axes, targets):
        for spec in plan.exp.methods:
            points = defaultdict(list)
            for r in recs:
                if r["method"] == spec.name and r["task"] == task:
                    for m in read_jsonl_log(out / r["run_dir"] / "metrics.jsonl"):
                        if "dev/score" in m:
                            points[m["step"]].append(m["dev/score"])
            if points:
                steps = sorted(points)
                ax.plot(steps, [statistics.mean(points[s]) for s in steps], marker="o", ms=3, label=spec.name)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("dev score")
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{plan.exp.name}: dev score ({'full' if not shots else f'{shots}-shot'}, mean over seeds)")
    path = out / f"curves-{shots_label(shots)}.png"
    fig.savefig(path, dpi=90)
    return path


def _stage_users(plan: Plan) -> dict[str, list[str]]:
    users = defaultdict(list)
    for c in plan.cells:
        if c.stage and c.method not in users[c.stage.key]:
            users[c.stage.key].append(c.method)
    return users


def _first_seed_stages(plan: Plan):
    seed = min(s.seed for s in plan.stages.values()) if plan.stages else None
    return [s for s in plan.stages.values() if s.seed == seed]


def prompt_pca(out: Path, plan: Plan) -> Path | None:
    """prompts-pca.png: every source stage's prompts (first seed) projected on their first two principal axes.

    The PCA is an exact SVD of the centred (N, l*d) matrix: N is a few dozen prompts at most, so the
    randomised torch.pca_lowrank would only add run-to-run jitter.
    """
    users, sets = _stage_users(plan), []
    for stage in _first_seed_stages(plan):
        folder = Path(stage.cfg.out)
        if not (folder / "particles.safetensors").is_file():
            continue
        parts = load_tensors(folder / "particles.safetensors")["particles"].float()
        meta = json.loads((folder / "posterior.json").read_text()) if (folder / "posterior.json").is_file() else {}
        names = meta.get("source_tasks", []) if stage.kind == "independent" else []
        names = names if len(names) == len(parts) else [f"p{i}" for i in range(len(parts))]
        if stage.kind == "mpt":
            names = ["shared"]
        sets.append((f"{stage.kind} ({', '.join(users[stage.key])})", parts, names))
    if not sets:
        return None
    # stages whose prompts have another shape (a method overriding prompt_length) cannot share the axes
    shape = Counter(tuple(p.shape[1:]) for _, p, _ in sets).most_common(1)[0][0]
    sets = [x for x in sets if tuple(x[1].shape[1:]) == shape]
    x = torch.cat([p.reshape(len(p), -1) for _, p, _ in sets]).double()
    x = x - x.mean(0)
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(2, vh.shape[0])
    coords = x @ vh[:k].T
    if k < 2:
        coords = torch.cat([coords, torch.zeros(len(coords), 2 - k, dtype=coords.dtype)], 1)
    var = (sv**2 / (sv**2).sum().clamp_min(1e-30)).tolist() + [0.0, 0.0]
    fig, (ax,) = _figure(1, 1, 6.0, 4.8)
    i = 0
    for label, parts, names in sets:
        xy = coords[i: i + len(parts)]
        i += len(parts)
        ax.scatter(xy[:, 0], xy[:, 1], label=label, s=36)
        for (px, py), name in zip(xy.tolist(), names):
            ax.annotate(name, (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"PC1 ({100 * var[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * var[1]:.0f}% of variance)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"source prompts, seed {_first_seed_stages(plan)[0].seed} (prompt {shape[0]} x {shape[1]})")
    path = out / "prompts-pca.png"
    fig.savefig(path, dpi=90)
    return path


def source_losses(out: Path, plan: Plan) -> Path | None:
    """source-losses.png: per source stage (first seed), each particle's summed task loss and each task's
    loss (mean over particles) against the step, from the stage's metrics.jsonl."""
    users = _stage_users(plan)
    logs = [(s, read_jsonl_log(Path(s.cfg.out) / "metrics.jsonl")) for s in _first_seed_stages(plan)]
    logs = [(s, [m for m in log if "particle_loss" in m]) for s, log in logs]
    logs = [(s, log) for s, log in logs if log]
    if not logs:
        return None
    fig, axes = _figure(len(logs), 2)
    for row, (stage, log) in enumerate(logs):
        steps = [m["step"] for m in log]
        left, right = axes[2 * row], axes[2 * row + 1]
        for p in range(len(log[0]["particle_loss"])):
            left.plot(steps, [m["particle_loss"][p] for m in log], marker="o", ms=3, label=f"particle {p}")
        for key in [k for k in log[0] if k.startswith("loss/")]:
            right.plot(steps, [m.get(key) for m in log], linestyle="--", marker="o", ms=3, label=key[5:])
        title = f"{stage.kind} ({', '.join(users[stage.key])})"
        left.set_title(f"{title}: loss per particle (sum over tasks)", fontsize=9)
        right.set_title(f"{title}: loss per task", fontsize=9)
        for ax in (left, right):
            ax.set_xlabel("step")
            ax.legend(fontsize=7, loc="upper right")
    path = out / "source-losses.png"
    fig.savefig(path, dpi=90)
    return path


def source_dev_lines(plan: Plan) -> list[str]:
    """Markdown: each finished source stage's dev score per source task, under the particles' mean and the
    best / worst particle (is every source learnt above chance, and do the particles differ?)."""
    rows = []
    for stage in plan.stages.values():
        try:
            final = json.loads((Path(stage.cfg.out) / "posterior.json").read_text()).get("final_dev") or {}
        except (OSError, ValueError):
            continue
        for task, d in final.items():
            parts = d.get("particles") or []
            rows.append(f"| {stage.key} | {task} | {d['mean']:.1f} | "
                        f"{min(parts):.1f} – {max(parts):.1f} | {d.get('examples', '?')} |" if parts else "")
    if not rows:
        return []
    return ["## Source stages: dev scores of the final prompts", "",
            "| stage | source task | particles' mean | particles (min – max) | dev examples |", "|---|---|---|---|---|",
            *filter(None, rows), ""]


def calibration_lines(exp, records: list[dict]) -> list[str]:
    """Markdown: per method and few-shot setting, the test calibration (accuracy, NLL, ECE, accuracy at 80 %
    coverage) averaged over its cells (those that recorded it: rank-classified targets). Where the methods
    ran on different cells (one limited to some seeds), a second table compares them on the cells (task,
    seed) that all of them share, so that no method's average gains or loses from its own seeds."""
    def row(name: str, shots, cal: list[dict]) -> str:
        mean = {k: statistics.mean(c[k] for c in cal) for k in ("accuracy", "nll", "ece", "acc_at_80")}
        return (f"| {name} | {shots_label(shots)} | {len(cal)} | {mean['accuracy']:.1f} | {mean['nll']:.3f} | "
                f"{mean['ece']:.1f} | {mean['acc_at_80']:.1f} |")

    rows, shared = [], []
    for shots in exp.shots:
        cells = {spec.name: {(r["task"], r["seed"]): r["test_calibration"] for r in records
                             if r["method"] == spec.name and r["shots"] == shots and r.get("test_calibration")}
                 for spec in exp.methods}
        cells = {name: c for name, c in cells.items() if c}
        rows += [row(name, shots, list(c.values())) for name, c in cells.items()]
        common = set.intersection(*(set(c) for c in cells.values())) if cells else set()
        if common and any(set(c) != common for c in cells.values()):
            shared += [row(name, shots, [c[k] for k in sorted(common)]) for name, c in cells.items()]
    if not rows:
        return []
    head = ["| method | shots | cells | accuracy | NLL | ECE | acc @ 80 % |", "|---|---|---|---|---|---|---|"]
    paired = ["On the cells every method above shares (the same targets and seeds):", "", *head, *shared, ""]
    return ["## Calibration of the test predictions (mean over cells)", "",
            "NLL of the gold label under the label-word softmax; ECE over 15 confidence bins; accuracy on the 80 % "
            "most confident predictions.", "", *head, *rows, "", *(paired if shared else [])]


def _machine(out: Path) -> str:
    """The machine line from experiment.json (written when the grid ran), or ''."""
    try:
        m = json.loads((out / "experiment.json").read_text()).get("machine") or {}
    except (OSError, ValueError):
        return ""
    return ", ".join(str(x) for x in (m.get("cpu"), m.get("cores") and f"{m['cores']} cores", m.get("gpu"),
                                      m.get("torch") and f"torch {m['torch']}") if x)


def missing_lines(out: Path, plan: Plan, records: list[dict]) -> list[str]:
    """Markdown: a note naming what a render could not read (cell folders, source stages), e.g. when
    results.jsonl was copied without the runs: their learning curves, dev table and plots are left out."""
    cells = sum(not (out / r["run_dir"] / "metrics.jsonl").is_file() for r in records if r.get("run_dir"))
    used = {r.get("source_stage") for r in records} - {None}
    stages = [s.key for s in plan.stages.values()
              if not (Path(s.cfg.out) / "posterior.json").is_file() and os.path.relpath(s.cfg.out, out) in used]
    if not cells and not stages:
        return []
    return [f"Not found in {out}: {cells} of {len(records)} cell folders (left out of the learning curves) and "
            f"{len(stages)} source stage(s){' (' + ', '.join(stages) + ')' if stages else ''} (left out of the "
            "source dev table and plots); the tables above come from results.jsonl alone.", ""]


def _more_seeds(exp) -> list[str]:
    """The methods that run on seeds beyond the grid's."""
    return [m.name for m in exp.methods if m.seeds and set(m.seeds) - set(exp.seeds)]


def more_seeds_lines(exp, records: list[dict], shots: int | None) -> list[str]:
    """Markdown: the methods given seeds beyond the grid's, compared on every seed they all finished (the
    first of `compare:` among them, else the last, against the baselines among them); [] when under two."""
    more = _more_seeds(exp)
    if len(more) < 2:
        return []
    ref = next((c for c in exp.compare if c in more), more[-1])
    lines = comparison_lines(records, more, list(exp.targets), shots, reference=ref)
    return ["", f"Methods run on more seeds than the grid's ({', '.join(more)}), on every seed they all "
            "finished:", "", *lines] if lines else []


def render_report(out: Path, plan: Plan, records: list[dict], plots: bool = True) -> Path:
    """Write results.md (tables, SPoT's choices and, with `plots`, the PNGs) into `out`; return its path."""
    exp = plan.exp
    grid = [r for r in records if r["seed"] in exp.seeds]  # tables and the main comparison: the grid's seeds
    extra = sorted(set(exp.all_seeds) - set(exp.seeds))
    more = f" (and {', '.join(map(str, extra))} for {', '.join(_more_seeds(exp))})" if extra else ""
    lines = [f"# Experiment `{exp.name}`", "",
             f"Backbone `{exp.model}`; sources {', '.join(exp.sources)}; seeds {', '.join(map(str, exp.seeds))}"
             f"{more}; {len(records)} of {len(plan.cells)} cells finished.", "",
             "Scores: the test split's score of the best-dev prompt (the mean of the task's metrics, 0-100), "
             "mean ± sample std over seeds; an average counts a seed only when all its tasks finished. "
             "The confidence intervals below are 95 % bootstrap intervals over seeds and test examples. "
             "Params/task: trainable parameters of each target run. Source passes: forward/backward example "
             "passes of the source stage the method used (shared by all its target runs); SPoT's probe passes "
             "are per target run.", ""]
    machine = _machine(out)
    if machine:
        lines += [f"Measured on: {machine}; total cell time {sum(r.get('wall_s', 0) for r in records) / 60:.1f} min.",
                  ""]
    try:
        import matplotlib  # noqa: F401
        have_mpl = plots
    except ImportError:
        have_mpl = False
    pngs: list[Path | None] = []
    for shots in exp.shots:
        cap = exp.target.get("max_train_examples", exp.common.get("max_train_examples"))
        title = f"{shots}-shot" if shots else "Full training sets" + (f" (at most {cap} examples)" if cap else "")
        lines += [f"## {title}", "", *score_table(plan, records, shots), ""]
        names = [m.name for m in exp.methods]
        ablations = [m.name for m in exp.methods if m.base == "bmtpt" and m.name != "bmtpt"]
        main, fewer = split_by_seeds(grid, names, list(exp.targets), shots)
        ci = comparison_lines(grid, main, list(exp.targets), shots, ablations=ablations, challengers=exp.compare)
        if fewer and "bmtpt" in main:  # e.g. seed-0-only ensembles: against bmtpt on their own seeds
            ci += ["", "Methods run on fewer seeds, against bmtpt on the seeds they share:", "",
                   *comparison_lines(grid, ["bmtpt", *fewer], list(exp.targets), shots, ablations=fewer)]
        ci += more_seeds_lines(exp, records, shots)
        if ci:
            lines += ["### Confidence intervals", "", *ci, ""]
        lines += ["### Model selection", "", *selection_lines(records, names, shots), "",
                  "Dev scores of the selected prompts (what settings are chosen on; mean ± std over seeds):", "",
                  *score_table(plan, records, shots, "dev_score"), ""]
        if any(r.get("dev_correct") for r in records if r["shots"] == shots):  # kept since 2026-12-02
            dev_ci = comparison_lines(grid, main, list(exp.targets), shots, ablations=ablations, split="dev")
            lines += ["The same comparison on the dev scores settings are chosen on (a bootstrap over seeds and "
                      "dev examples where every cell kept its dev results, over seeds only otherwise):", "",
                      *dev_ci, ""] if dev_ci else []
        if have_mpl:
            pngs.append(learning_curves(out, plan, records, shots))
    lines += calibration_lines(exp, records)
    lines += source_dev_lines(plan)
    lines += missing_lines(out, plan, records)
    spot = [r for r in records if "spot" in r]
    if spot:
        lines += ["## SPoT: chosen source prompt", "", "| method | target | shots | seed | chosen | cosine |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['task']} | {r['shots'] or 'full'} | {r['seed']} | {r['spot']['chosen_task']} "
                  f"| {max(r['spot']['similarities']):.3f} |" for r in spot]
        lines.append("")
    if have_mpl:
        pngs += [prompt_pca(out, plan), source_losses(out, plan)]
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs if p is not None] + [""]
    elif plots:
        lines += ["Plots skipped: matplotlib is not installed (pip install matplotlib).", ""]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path
