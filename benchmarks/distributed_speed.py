"""Time per SVGD source step on 1 and 2 processes (torchrun, gloo on CPU), for `bmtpt.distributed`.

    python benchmarks/distributed_speed.py [--model smollm2-135m] [--steps 8] [--out benchmarks/results]

Runs the same `bmtpt source` four ways and reads each run's metrics.jsonl clock (logged every step; the
first step, which pays for warm-up, is left out): one process with 1 thread, one process with 2 threads
(all the cores of a 2-core machine in one process), and two processes with 1 thread each, data-parallel
and particle-parallel. It also checks that the three ways of splitting the step end with the same
particles (to 1e-4; with a small SGD step, as the timing does not depend on it: Adam's normalised update
turns the rounding differences of another summation order into steps of the learning rate's size).
Writes distributed-<model>-cpu.json and .md (with the machine) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"distributed_speed: {' '.join(cmd[:6])} ... failed:\n{res.stderr[-2000:]}")


def step_seconds(out: Path) -> float:
    """Mean seconds per step after the first, from the run's metrics.jsonl clock."""
    times = {r["step"]: r["time_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    steps = sorted(times)
    return (times[steps[-1]] - times[steps[0]]) / (steps[-1] - steps[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="backbone (default: smollm2-135m)")
    ap.add_argument("--steps", type=int, default=8, help="source steps per run (default 8)")
    ap.add_argument("--particles", type=int, default=2, help="SVGD particles M (default 2)")
    ap.add_argument("--batch-size", type=int, default=8, help="examples per step, all tasks (default 8)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the results files")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from safetensors.torch import load_file

    from bmtpt.bench.report import machine_description

    common = ["source", "--model", a.model, "--tasks", "synth-sentiment,synth-animal", "--particles",
              str(a.particles), "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--prompt-length", "8",
              "--optimizer", "sgd", "--lr", "0.001", "--max-input-tokens", "64", "--final-eval-examples", "0",
              "--log-every", "1", "--checkpoint-every", str(a.steps), "--device", "cpu", "--no-progress"]
    bmtpt = [sys.executable, "-m", "bmtpt"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "bmtpt"]
    ways = {"1 process, 1 thread": (bmtpt, [], 1), "1 process, 2 threads": (bmtpt, [], 2),
            "2 processes x 1 thread, data-parallel": (torchrun, ["--parallel", "data"], 1),
            "2 processes x 1 thread, particle-parallel": (torchrun, ["--parallel", "particle"], 1)}
    result = {"model": a.model, "particles": a.particles, "batch_size": a.batch_size, "steps": a.steps,
              "machine": machine_description("cpu"), "seconds_per_step": {}}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for i, (name, (launcher, extra, threads)) in enumerate(ways.items()):
            outs[name] = Path(tmp) / f"run{i}"
            print(f"{name} ...", flush=True)
            _run([*launcher, *common, *extra, "--out", str(outs[name])], threads)
            result["seconds_per_step"][name] = round(step_seconds(outs[name]), 3)
        parts = {n: load_file(str(o / "particles.safetensors"))["particles"] for n, o in outs.items()}
        ref = parts["1 process, 1 thread"]
        result["particle_difference"] = {n: float((p - ref).abs().max()) for n, p in parts.items()}
        result["max_particle_difference"] = max(result["particle_difference"].values())
    base = result["seconds_per_step"]["1 process, 1 thread"]
    result["speedup_vs_1_thread"] = {n: round(base / s, 2) for n, s in result["seconds_per_step"].items()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"distributed-{a.model}-cpu"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [f"# `bmtpt source` on 1 and 2 processes: {a.model}, CPU", "",
             f"Measured on {m['cpu']} ({m['cores']} cores), torch {m['torch']}, by `python "
             f"benchmarks/distributed_speed.py --model {a.model} --steps {a.steps}`: M = {a.particles} particles, "
             f"{a.batch_size} examples per step, prompt 8, inputs <= 64 tokens; seconds per step after the first.", "",
             "| how | s / step | speed-up vs 1 process, 1 thread |", "|---|---|---|"]
    lines += [f"| {n} | {s} | {result['speedup_vs_1_thread'][n]}x |" for n, s in result["seconds_per_step"].items()]
    lines += ["", f"The four runs end with the same particles (largest difference "
              f"{result['max_particle_difference']:.1e}).", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if result["max_particle_difference"] >= 1e-4:
        sys.exit(f"distributed_speed: the runs disagree by {result['max_particle_difference']:.1e} (> 1e-4)")


if __name__ == "__main__":
    main()
