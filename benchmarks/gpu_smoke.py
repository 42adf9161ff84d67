#!/usr/bin/env python
"""GPU smoke run of the paper recipe's shapes, and the GPU-hours of configs/paper/ worked out from it.

It runs `bmtpt experiment` on one source and two targets (a classification task and a generation task)
with a T5-base-shaped backbone, a few hundred steps each, then reads the stages' own logs for the step and
evaluation times, and prices every source stage and cell of each configs/paper/*.yaml with them.

No T5 weights can be had offline, so the backbone has T5-base's shape with *random* weights and a
word-level tokenizer learnt from the tasks' own text (capped at T5's vocabulary size). Its scores mean
nothing; its times are those of T5-base at the same token counts (a word-level tokenizer gives fewer
tokens per sentence than T5's SentencePiece, so inputs truncated at 256 tokens are the closest match).

    python benchmarks/gpu_smoke.py --data-dir ../shared/data --out runs/gpu-smoke \\
        --json benchmarks/results/gpu-smoke-t5-base-h100.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def corpus(tasks: list[str], data_dir: str | None) -> list[str]:
    """The inputs and targets of every split of the tasks (what the tokenizer's vocabulary is learnt from)."""
    from bmtpt.tasks import get_task

    lines = []
    for name in tasks:
        for split in ("train", "dev", "test"):
            lines += [f"{e.input} {e.target}" for e in get_task(name).load(split, data_dir)]
    return lines


def build_random_t5(shape: str, texts: list[str], device: str, seed: int = 0):
    """(model, tokenizer): a random-weight T5 of a bench shape preset, with a word-level tokenizer."""
    from bmtpt.bench import SHAPE_PRESETS
    from bmtpt.bench.steps import build_backbone
    from bmtpt.tiny import build_tokenizer

    arch, kw = SHAPE_PRESETS[shape]
    if arch != "t5":
        raise SystemExit(f"error: {shape} is not a T5 shape (the smoke run prices the T5 paper configs)")
    model, _ = build_backbone(shape, device, seed)
    return model, build_tokenizer("t5", texts, vocab_size=kw["vocab_size"])


def log_times(path: Path) -> dict:
    """Median seconds per training step, and the seconds of each dev / test evaluation, from metrics.jsonl.

    A training interval is two consecutive training records with no evaluation between them; an
    evaluation's time is its record's time minus the record before it (the evaluation at step 0, which
    also pays for start-up, is left out)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps, dev, test = [], [], []
    for prev, rec in zip(records, records[1:]):
        dt = rec["time_s"] - prev["time_s"]
        if "loss" in rec and "loss" in prev and rec["step"] > prev["step"]:
            steps.append(dt / (rec["step"] - prev["step"]))
        elif "dev/score" in rec and rec["step"] > 0:
            dev.append(dt)
        elif "test/score" in rec:
            test.append(dt)
    return {"step_s": statistics.median(steps) if steps else None, "step_samples": len(steps),
            "dev_eval_s": dev, "test_eval_s": test}


def stage_rows(stage) -> int:
    """Rows a source stage's step sends through the backbone: SVGD shows every particle the whole batch;
    the independent and MPT stages split one batch between their prompts."""
    return stage.cfg.batch_size * (stage.cfg.particles if stage.kind == "svgd" else 1)


def eval_counts(cfg, dev_size: int, test_size: int) -> tuple[int, int]:
    """Examples a target cell evaluates on dev (capped by --max-dev-examples, else --max-eval-examples) and test."""
    dev_cap = cfg.max_dev_examples or cfg.max_eval_examples
    return (min(dev_size, dev_cap) if dev_cap else dev_size,
            min(test_size, cfg.max_eval_examples) if cfg.max_eval_examples else test_size)


def measure(plan, data_dir: str | None) -> dict:
    """Per-row training times and per-example evaluation times of the smoke experiment."""
    from bmtpt.tasks import get_task

    out = {"source": {}, "cells": {}}
    for stage in plan.stages.values():
        t = log_times(Path(stage.cfg.out) / "metrics.jsonl")
        rows = stage_rows(stage)
        out["source"][stage.key] = {**t, "kind": stage.kind, "rows": rows, "row_s": t["step_s"] / rows}
    for cell in plan.cells:
        cfg, task = cell.target, get_task(cell.task)
        t = log_times(Path(cfg.out) / "metrics.jsonl")
        n_dev, n_test = eval_counts(cfg, len(task.load("dev", data_dir)), len(task.load("test", data_dir)))
        out["cells"][cell.key] = {
            **t, "task": cell.task, "classification": task.is_classification,
            "labels": len(task.verbalizers or ()), "rows": cfg.batch_size, "row_s": t["step_s"] / cfg.batch_size,
            "dev_examples": n_dev, "test_examples": n_test,
            "eval_example_s": statistics.median([s / n_dev for s in t["dev_eval_s"]] + [s / n_test for s in
                                                                                        t["test_eval_s"]])}
    return out


def rates(m: dict) -> dict:
    """The four unit costs the estimate multiplies: seconds per source row, target row, and per evaluated
    example of a classification task (per label) and of a generation task."""
    src = [s["row_s"] for s in m["source"].values() if s["kind"] == "svgd"]
    tgt = [c["row_s"] for c in m["cells"].values()]
    cls = [c["eval_example_s"] / c["labels"] for c in m["cells"].values() if c["classification"]]
    gen = [c["eval_example_s"] for c in m["cells"].values() if not c["classification"]]
    return {"source_row_s": statistics.median(src), "target_row_s": statistics.median(tgt),
            "cls_example_label_s": statistics.median(cls), "gen_example_s": statistics.median(gen)}


def estimate(config: Path, r: dict) -> dict:
    """GPU-hours of every source stage and cell of an experiment config at the measured unit costs.

    Evaluations: dev at step 0 and every eval_every steps (and the last step), then one test pass, each on
    min(split size, cap) examples; split sizes are the tasks' official ones (`bmtpt.tasktable.split_sizes`)."""
    from bmtpt.expconfig import load_experiment
    from bmtpt.grid import plan_experiment
    from bmtpt.tasks import get_task
    from bmtpt.tasktable import split_sizes

    plan = plan_experiment(load_experiment(config))
    sources = sum(s.cfg.steps * stage_rows(s) * r["source_row_s"] for s in plan.stages.values())
    train = evals = probes = 0.0
    for cell in plan.cells:
        cfg, task = cell.target, get_task(cell.task)
        sizes = split_sizes(task) or {"dev": 1000, "test": 1000}
        n_dev, n_test = eval_counts(cfg, sizes["dev"], sizes["test"])
        per_example = (r["cls_example_label_s"] * len(task.verbalizers) if task.is_classification
                       else r["gen_example_s"])
        n_evals = cfg.steps // cfg.eval_every + 1 + (cfg.steps % cfg.eval_every > 0)
        train += cfg.steps * cfg.batch_size * r["target_row_s"]
        evals += (n_evals * n_dev + n_test) * per_example
        if cell.spot:
            probes += cell.spot["steps"] * cfg.batch_size * r["target_row_s"]
    seconds = {"sources": sources, "target_training": train, "evaluation": evals, "spot_probes": probes}
    hours = {k: v / 3600 for k, v in seconds.items()}
    return {**hours, "total": sum(hours.values()), "stages": len(plan.stages), "cells": len(plan.cells)}


def _where(machine: dict) -> str:
    return (machine.get("gpu") or {}).get("name") or f"{machine['device']} ({machine['cpu']['model']})"


def report(r: dict, where: str) -> dict:
    """Print the unit costs and the GPU-hours of each configs/paper/*.yaml at those costs; return the latter."""
    est = {p.name: estimate(p, r) for p in sorted((ROOT / "configs" / "paper").glob("*.yaml"))}
    print(f"\nunit costs on {where}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in r.items()))
    print("expected GPU-hours at these costs:")
    for name, e in est.items():
        print(f"  {name}: {e['total']:.1f} h (sources {e['sources']:.1f}, training {e['target_training']:.1f}, "
              f"evaluation {e['evaluation']:.1f}, probes {e['spot_probes']:.2f}; {e['stages']} stages, "
              f"{e['cells']} cells)")
    return est


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run; a bad option or task is one line on stderr and exit status 2."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data", help="folder of the official benchmark files")
    p.add_argument("--out", default="runs/gpu-smoke", help="experiment output folder (overwritten)")
    p.add_argument("--json", help="write the measured times, the estimates and the machine to this JSON file")
    p.add_argument("--shape", default="t5-base-shape", help="T5 shape preset of `bmtpt bench speed`")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.add_argument("--precision", default="bf16", help="autocast precision of both stages")
    p.add_argument("--source", default="sst2", help="the source task")
    p.add_argument("--targets", default="rte,stsb", help="a classification and a generation target")
    p.add_argument("--methods", default="pt,bmtpt", help="methods (bmtpt trains the SVGD source stage)")
    p.add_argument("--source-steps", type=int, default=200, help="SVGD steps of the source stage")
    p.add_argument("--target-steps", type=int, default=200, help="steps of each target cell")
    p.add_argument("--eval-every", type=int, default=100, help="dev evaluation interval of the target cells")
    p.add_argument("--particles", type=int, default=5, help="SVGD particles M")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (each particle sees all)")
    p.add_argument("--prompt-length", type=int, default=100, help="soft prompt length")
    p.add_argument("--max-eval-examples", type=int, default=256, help="dev / test examples per evaluation")
    p.add_argument("--log-every", type=int, default=10, help="steps between the logged records timed")
    p.add_argument("--price", metavar="JSON", help="run nothing: re-price configs/paper/*.yaml with the unit costs "
                   "of an earlier --json file")
    a = p.parse_args(argv)
    from bmtpt.errors import BmtptError

    try:
        if a.price:
            saved = json.loads(Path(a.price).read_text())
            report(saved["unit_costs"], _where(saved["machine"]))
            return 0
        return run(a)
    except BmtptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(a: argparse.Namespace) -> int:
    """The smoke experiment, its measured unit costs, and the estimates; see `main` for the options."""
    from bmtpt.bench.report import describe_machine
    from bmtpt.expconfig import load_experiment
    from bmtpt.experiment import run_experiment
    from bmtpt.grid import plan_experiment
    from bmtpt.runs import resolve_device
    from bmtpt.tasks import get_task

    device = resolve_device(a.device)
    targets = a.targets.split(",")
    if {get_task(t).is_classification for t in targets} != {True, False}:
        print("error: --targets needs a classification task and a generation task (their evaluation costs "
              "differ)", file=sys.stderr)
        return 2
    exp = {"name": f"gpu-smoke-{a.shape}", "out": a.out, "model": f"random-{a.shape}", "data_dir": a.data_dir,
           "device": device, "prompt_length": a.prompt_length, "optimizer": "adafactor", "lr": 0.3,
           "weight_decay": 1e-5, "batch_size": a.batch_size, "max_input_tokens": 256, "max_target_tokens": 32,
           "precision": a.precision, "log_every": a.log_every, "progress": False,
           "sources": [a.source], "source": {"steps": a.source_steps, "particles": a.particles,
                                             "likelihood_scale": "mean"},
           "targets": targets, "target": {"steps": a.target_steps, "eval_every": a.eval_every,
                                          "max_eval_examples": a.max_eval_examples},
           "seeds": [0], "methods": a.methods.split(",")}
    print(f"building a random {a.shape} with a word-level tokenizer on {device} ...", flush=True)
    model, tokenizer = build_random_t5(a.shape, corpus([a.source, *targets], a.data_dir), device)
    result = run_experiment(exp, model, tokenizer, plots=False)
    m = measure(plan_experiment(load_experiment(exp)), a.data_dir)  # the runner's own plan: same folders
    r = rates(m)
    for s in m["source"].values():
        print(f"  source {s['kind']}: {s['step_s']:.3f} s/step ({s['rows']} rows)")
    for k, c in m["cells"].items():
        print(f"  {k}: {c['step_s']:.3f} s/step ({c['rows']} rows), "
              f"{c['eval_example_s'] * 1e3:.2f} ms per evaluated example")
    machine = describe_machine(device)
    est = report(r, _where(machine))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"settings": vars(a), "experiment": exp, "measured": m, "unit_costs": r,
                                            "gpu_hours": est, "scores": [{k: rec[k] for k in ("key", "test_score")}
                                                                         for rec in result.records],
                                            "machine": machine}, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
