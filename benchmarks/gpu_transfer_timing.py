"""The measured side of `benchmarks/gpu_transfer.py`'s timing.json: the wall time of the run, in total,
per cell kind and per cell, and the step / evaluation times each run logged, next to the projection's.

Split from gpu_transfer.py (which projects, builds the config and runs) to keep both files short.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def _log_times(path: Path) -> dict | None:
    """gpu_smoke.log_times of a run's metrics.jsonl (median step time, each dev and test evaluation's time)."""
    if not path.is_file():
        return None
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from gpu_smoke import log_times

    return log_times(path)


def _median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def measured_units(plan, p: dict) -> dict:
    """The step and evaluation times the stages and cells logged, next to the projection's.

    From each run's metrics.jsonl (gpu_smoke.log_times): the median seconds of a training step between two
    logged steps with no evaluation between them, of a dev evaluation (dev + the training sample, after step
    0) and of the test pass; medians over the cells of each task."""
    stages = {}
    for s, proj in zip(plan.stages.values(), p["stages"]):
        t = _log_times(Path(s.cfg.out) / "metrics.jsonl") or {}
        stages[s.key] = {"step_s": t.get("step_s"), "projected_step_s": proj["step_s"],
                         "logged_s": _last_time(Path(s.cfg.out) / "metrics.jsonl")}
    by_task = defaultdict(lambda: {"step_s": [], "dev_eval_s": [], "test_eval_s": []})
    for cell in plan.cells:
        t = _log_times(Path(cell.target.out) / "metrics.jsonl")
        if t is None:
            continue
        d = by_task[cell.task]
        d["step_s"].append(t["step_s"])
        d["dev_eval_s"] += t["dev_eval_s"]
        d["test_eval_s"] += t["test_eval_s"]
    tasks = {}
    for task, d in by_task.items():
        proj = next(c for k, c in p["cells"].items() if k.split("|")[1] == task)
        tasks[task] = {"step_s": _median(d["step_s"]), "projected_step_s": proj["step_s"],
                       "dev_eval_s": _median(d["dev_eval_s"]),
                       "projected_dev_eval_s": proj["dev_s"] / proj["evaluations"],
                       "test_eval_s": _median(d["test_eval_s"]), "projected_test_eval_s": proj["test_s"]}
    return {"stages": stages, "targets": tasks}


def _last_time(log: Path) -> float | None:
    """The last time_s a run logged (a source stage: its training time), if any."""
    if not log.is_file():
        return None
    times = [json.loads(line).get("time_s") for line in log.read_text().splitlines() if line.strip()]
    times = [t for t in times if isinstance(t, (int, float))]
    return times[-1] if times else None


def timing(p: dict, result, wall_s: float, plan, command: str, machine: dict) -> dict:
    """timing.json: the projection next to the measured wall time, in total, per cell kind and per cell."""
    measured = {r["key"]: r.get("wall_s") for r in result.records}
    cells_wall = sum(v for v in measured.values() if v is not None)
    kinds = {}
    for name, k in p["kinds"].items():
        walls = [w for key, w in measured.items() if key in p["cells"] and p["cells"][key]["kind"] == name
                 and w is not None]
        kinds[name] = {"cells": k["cells"], "projected_per_cell_s": round(k["per_cell_s"], 3),
                       "measured_median_wall_s": _median(walls), "measured_total_wall_s": round(sum(walls), 2)}
    return {
        "command": command, "machine": machine,
        "projected": {"total_s": p["total_s"], "total_min": p["total_min"], "model_load_s": p["model_load_s"],
                      "sources_s": p["sources_s"], "spot_embeddings_s": p["spot_embeddings_s"],
                      "cells_s": p["cells_s"], "report_s": p["report_s"], "stages": p["stages"], "units": p["units"]},
        "measured": {"wall_s": round(wall_s, 2), "wall_min": round(wall_s / 60, 2),
                     "cells_wall_s": round(cells_wall, 2),
                     "outside_cells_s": round(wall_s - cells_wall, 2), "ran": result.ran, "skipped": result.skipped,
                     "note": "a cell's wall_s includes the source stage (and SPoT's source embeddings) trained by "
                             "the first cell that needed it; outside_cells_s is the backbone load and the report "
                             "(cells skipped as already finished keep the wall_s of the run that made them)"},
        "units_logged": measured_units(plan, p),
        "kinds": kinds,
        "cells": {k: {"projected_s": round(c["total_s"], 3), "wall_s": measured.get(k)} for k, c in p["cells"].items()},
    }
