"""`bmtpt bench speed` (also `benchmarks/speed.py`): where the time and memory of an SVGD step go.

One process, one backbone, one workload of random token ids (B examples of `--seq-len` input tokens and
`--target-len` target tokens, `--prompt-length` virtual tokens, M particles). Every time is the median
over `--repeats` steps after `--warmup` steps; the measurements of a repeat are interleaved so that a
machine that slows down mid-run slows all of them alike. What is measured:

1. batched vs sequential: one SVGD step on M particles through bmtpt's own code (collate,
   `source.particle_scores`, `svgd.svgd_terms`, optimiser step) against M single-prompt prompt-tuning
   steps (the loop of `bmtpt target`) on the same examples;
2. outside-backbone share, attributed within the same steps (the checked figure): the time inside
   `PromptedModel.backbone_logits` and inside each backward pass from the logits' gradient on is the
   backbone's, the rest of the step is bmtpt's. Also reported: (SVGD step - backbone forward/backward
   alone) / SVGD step, a difference of medians over separate calls, and the directly timed pieces
   (collate, rows, kernel, optimiser);
3. forward+backward vs forward-only (no_grad) of the frozen backbone; the backward computes the
   gradient of the input embeddings only, and no backbone parameter may hold a .grad afterwards;
4. peak memory of one SVGD step against M and the batch size, tokens per second, and the particle
   chunk: peak with M particles in chunks of c against a step on c particles;
5. the same with gradient checkpointing and in every precision of `--precision` (bf16 on a GPU);
6. causal LMs: a naive step (fp32, LM head at every position) against bmtpt's step.

Memory: on a GPU `torch.cuda.max_memory_allocated` above the memory allocated before the step. On a
CPU (`--memory-method hwm`, Linux) the process's peak resident set (VmHWM) above its resident set before
the step, with the peak reset through /proc/self/clear_refs and freed heap returned by malloc_trim
first; `subprocess` runs each setting in a fresh process and uses getrusage's ru_maxrss instead
(portable, but slower, and it includes the first step's one-time allocations).

Shape presets (`t5-base-shape`, `t5-small-shape`, `smollm2-135m-shape`, `tiny-t5-shape`,
`tiny-llama-shape`) build a random-weight model of that architecture: no download and no tokenizer,
and the same time and memory per step as the trained model.

This module holds the measurement sections of a run and `run_speed`; the options (`SpeedConfig`) and
`cmd_bench` are in `bmtpt.bench`, the pieces in `steps` (backbone, workload, timed step closures),
`memory` (peak memory) and `report` (machine description, checks, table).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from . import SHAPE_PRESETS, SpeedConfig, _ints, _split
from .memory import hwm_supported, peak_bytes, peak_in_subprocess
from .report import bf16_native, describe_machine, make_checks
from .steps import (
    Workload,
    attributed_step,
    backbone_passes,
    build_backbone,
    interleaved,
    make_workload,
    overhead_parts,
    sequential_steps,
    svgd_step,
    tokens_per_row,
)


# ----------------------------------------------------------------------------- the benchmark
def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _mib(b: float) -> float:
    return round(b / 2**20, 2)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


class _Run:
    """The state shared by the measurements of one run."""

    def __init__(self, cfg: SpeedConfig, model, tok, device: str, machine: dict, log):
        self.cfg, self.model, self.tok, self.device, self.machine, self.log = cfg, model, tok, device, machine, log
        self.work = make_workload(model, cfg.batch_size, cfg.seq_len, cfg.target_len, cfg.prompt_length,
                                  cfg.particles, cfg.tasks, cfg.seed)
        self.method = self._memory_method()

    def _memory_method(self) -> str:
        if self.device.startswith("cuda"):
            return "cuda"
        m = self.cfg.memory_method
        if m == "auto":
            return "hwm" if hwm_supported() else "subprocess"
        return m

    def pm(self, precision: str, ckpt: bool = False, full_logits: bool = False):
        from ..prompted import PromptedModel

        return PromptedModel(self.model, self.tok, precision, gradient_checkpointing=ckpt, full_logits=full_logits)

    def workload(self, particles: int, batch_size: int) -> Workload:
        c = self.cfg
        if (particles, batch_size) == (c.particles, c.batch_size):
            return self.work
        return make_workload(self.model, batch_size, c.seq_len, c.target_len, c.prompt_length, particles, c.tasks,
                             c.seed)

    def peak(self, precision: str, ckpt: bool, particles: int, batch_size: int, chunk: int | None,
             full_logits: bool = False) -> dict:
        """Peak memory and time of one SVGD step in this setting (after a warm-up step on a GPU)."""
        c = self.cfg
        if self.method == "subprocess":
            spec = {"backbone": c.backbone, "seed": c.seed, "trust_remote_code": c.trust_remote_code,
                    "threads": c.threads, "precision": precision, "gradient_checkpointing": ckpt,
                    "full_logits": full_logits, "batch_size": batch_size, "seq_len": c.seq_len,
                    "target_len": c.target_len, "prompt_length": c.prompt_length, "particles": particles,
                    "tasks": c.tasks, "optimizer": c.optimizer, "chunk": chunk}
            peak, secs = peak_in_subprocess(spec)
        else:
            work = self.workload(particles, batch_size)
            step = svgd_step(self.pm(precision, ckpt, full_logits), work, c.optimizer, chunk)
            if self.method == "cuda":
                step()
            peak, secs = peak_bytes(step, self.device)
            del step
        work_tokens = particles * batch_size * (c.prompt_length + c.seq_len + c.target_len)
        return {"particles": particles, "batch_size": batch_size, "chunk": chunk, "precision": precision,
                "gradient_checkpointing": ckpt, "peak_mib": _mib(peak), "step_s": secs,
                "tokens_per_s": work_tokens / secs if secs > 0 else None}

    # ------------------------------------------------------------------ sections
    def main(self, precision: str) -> dict:
        """Items 1-3 at the main precision."""
        from ..backbone import backbone_grads

        c, work = self.cfg, self.work
        pm = self.pm(precision)
        fb, fg, f = backbone_passes(pm, work)
        fns = {"svgd_step": svgd_step(pm, work, c.optimizer), "sequential": sequential_steps(pm, work, c.optimizer),
               "backbone_fwd_bwd": fb, "backbone_fwd_grad": fg, "backbone_fwd": f}
        self.log(f"  main ({precision}): {c.repeats} repeats of {len(fns)} measurements ...")
        t = interleaved(fns, c.repeats, c.warmup, self.device)
        parts = interleaved(overhead_parts(pm, work, c.optimizer), max(c.repeats, 5), 1, self.device)
        attributed = attributed_step(pm, work, c.optimizer, self.device)
        splits = []
        for i in range(c.warmup + c.repeats):
            attributed()
            if i >= c.warmup:
                splits.append(attributed.last)
        inside = [(tot - bb) / tot for tot, bb in splits if tot > 0]
        step, seq = _median(t["svgd_step"]), _median(t["sequential"])
        fwd_bwd, fwd = _median(t["backbone_fwd_bwd"]), _median(t["backbone_fwd"])
        outside = _median([a - b for a, b in zip(t["svgd_step"], t["backbone_fwd_bwd"])])
        rows = work.particles * len(work.inputs)
        tokens = rows * tokens_per_row(work)
        return {
            "precision": precision, "rows": rows, "tokens_per_step": tokens,
            "svgd_step_s": step, "sequential_steps_s": seq, "single_step_s": seq / work.particles,
            "batched_vs_sequential": _ratio(step, seq),
            "backbone_fwd_bwd_s": fwd_bwd, "backbone_fwd_s": fwd,
            "backbone_fwd_grad_s": _median(t["backbone_fwd_grad"]),
            "fwd_bwd_vs_fwd": _ratio(fwd_bwd, fwd),
            "outside_backbone_s": outside, "outside_backbone_share": outside / step if step > 0 else math.inf,
            "outside_backbone_attributed_share": _median(inside) if inside else math.inf,
            "outside_parts_s": {k: _median(v) for k, v in parts.items()},
            "outside_parts_share": sum(_median(v) for v in parts.values()) / step if step > 0 else math.inf,
            "tokens_per_s": tokens / step if step > 0 else None,
            "backbone_grads": backbone_grads(self.model),
            "times_s": t,
        }

    def variant(self, precision: str, ckpt: bool) -> dict:
        """Step time, forward/backward ratio and peak memory in another precision or with checkpointing."""
        c, work = self.cfg, self.work
        pm = self.pm(precision, ckpt)
        fb, _, f = backbone_passes(pm, work)
        self.log(f"  variant {precision}{' + checkpointing' if ckpt else ''} ...")
        t = interleaved({"svgd_step": svgd_step(pm, work, c.optimizer), "backbone_fwd_bwd": fb, "backbone_fwd": f},
                        c.repeats, c.warmup, self.device)
        step = _median(t["svgd_step"])
        out = {"precision": precision, "gradient_checkpointing": ckpt, "svgd_step_s": step,
               "backbone_fwd_bwd_s": _median(t["backbone_fwd_bwd"]), "backbone_fwd_s": _median(t["backbone_fwd"]),
               "fwd_bwd_vs_fwd": _ratio(_median(t["backbone_fwd_bwd"]), _median(t["backbone_fwd"])),
               "tokens_per_s": work.particles * len(work.inputs) * tokens_per_row(work) / step if step > 0 else None}
        if c.memory:
            out["peak_mib"] = self.peak(precision, ckpt, c.particles, c.batch_size, None)["peak_mib"]
        return out

    def memory(self, precision: str) -> dict:
        """Item 4: the M x batch grid and the chunk comparison."""
        c = self.cfg
        ms = _ints(c.memory_particles, "memory_particles") or sorted({1, max(1, c.particles // 2), c.particles})
        bs = _ints(c.memory_batch_sizes, "memory_batch_sizes") or sorted({max(1, c.batch_size // 2), c.batch_size})
        grid = []
        for m in ms:
            for b in bs:
                self.log(f"  memory: M={m} B={b} ...")
                grid.append(self.peak(precision, False, m, b, None))
        ch = min(c.chunk, c.particles)
        self.log(f"  memory: M={c.particles} in chunks of {ch} vs M={ch} ...")
        chunked = self.peak(precision, False, c.particles, c.batch_size, ch)
        single = self.peak(precision, False, ch, c.batch_size, ch)
        return {"method": self.method, "unit": "MiB above the level before the step", "grid": grid,
                "chunk": {"chunk": ch, "particles": c.particles, "peak_chunked_mib": chunked["peak_mib"],
                          "peak_single_mib": single["peak_mib"],
                          "ratio": _ratio(chunked["peak_mib"], single["peak_mib"]),
                          "chunked_step_s": chunked["step_s"], "single_step_s": single["step_s"]}}

    def naive(self, steps: dict[str, float]) -> dict:
        """Item 6: fp32 with logits at every position against bmtpt's step (causal LMs)."""
        c = self.cfg
        self.log("  naive baseline (fp32, logits at every position) ...")
        pm = self.pm("fp32", full_logits=True)
        t = interleaved({"naive": svgd_step(pm, self.work, c.optimizer)}, c.repeats, c.warmup, self.device)
        naive = _median(t["naive"])
        out = {"naive_step_s": naive, "bmtpt_step_s": steps,
               "speedup": {p: _ratio(naive, s) for p, s in steps.items()}}
        if c.memory:
            out["naive_peak_mib"] = self.peak("fp32", False, c.particles, c.batch_size, None, True)["peak_mib"]
        return out


def default_precisions(device: str, machine: dict) -> list[str]:
    """bf16 then fp32 on a GPU; fp32 on a CPU, then bf16 where the CPU runs it natively."""
    if device.startswith("cuda"):
        return ["bf16", "fp32"] if bf16_native(machine) else ["fp32"]
    return ["fp32", "bf16"] if bf16_native(machine) else ["fp32"]


def run_speed(cfg: SpeedConfig, model=None, tokenizer=None, log=print) -> dict:
    """Run every measurement and return the results (also written to cfg.out as JSON when set)."""
    import torch

    from ..backbone import backbone_grads
    from ..runs import resolve_device

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    if model is None:
        log(f"building {cfg.backbone} on {device} ...")
        model, tokenizer = build_backbone(cfg.backbone, device, cfg.seed, cfg.trust_remote_code)
    machine = describe_machine(device)
    precisions = _split(cfg.precision) or default_precisions(device, machine)
    run = _Run(cfg, model, tokenizer, device, machine, log)
    from ..prompted import PromptedModel

    causal = not PromptedModel(model, tokenizer).is_seq2seq
    res: dict = {
        "benchmark": "speed", "machine": machine, "config": asdict(cfg),
        "backbone": {"name": cfg.backbone, "shape_preset": cfg.backbone in SHAPE_PRESETS,
                     "architecture": type(model).__name__, "kind": "causal" if causal else "seq2seq",
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "attention": getattr(model.config, "_attn_implementation", None)},
        "workload": {"particles": cfg.particles, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
                     "target_len": cfg.target_len, "prompt_length": cfg.prompt_length,
                     "rows": cfg.particles * cfg.batch_size, "tokens_per_row": tokens_per_row(run.work)},
        "precisions": precisions,
    }
    log(f"measuring on {device} ({machine['cpu']['model']}, {machine['torch_threads']} threads) ...")
    main = run.main(precisions[0])
    res["main"] = main
    variants = [(p, False) for p in precisions[1:]]
    if cfg.gradient_checkpointing:
        variants.append((precisions[0], True))
    res["variants"] = [run.variant(p, ck) for p, ck in variants]
    if cfg.memory:
        res["memory"] = run.memory(precisions[0])
        at_main = [g["peak_mib"] for g in res["memory"]["grid"]
                   if (g["particles"], g["batch_size"]) == (cfg.particles, cfg.batch_size)]
        res["memory"]["main_peak_mib"] = at_main[0] if at_main else None
    steps = {precisions[0]: main["svgd_step_s"]}
    steps.update({v["precision"]: v["svgd_step_s"] for v in res["variants"] if not v["gradient_checkpointing"]})
    if causal and cfg.naive:
        res["naive"] = run.naive(steps)
    res["backbone_grads"] = backbone_grads(model)
    res["checks"] = make_checks(res, device, bf16_native(machine))
    res["all_pass"] = all(ch["pass"] is not False for ch in res["checks"].values())
    res["wall_s"] = time.perf_counter() - t0
    if cfg.out:
        out = Path(cfg.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res
