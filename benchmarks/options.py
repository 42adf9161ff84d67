#!/usr/bin/env python
"""The measured effect of the options for big models on one SVGD step: --compile, --grad-accum,
--gradient-checkpointing and --precision bf16, against the plain fp32 step (or the first variant
listed), in one process.

    python benchmarks/options.py --backbone smollm2-135m --out benchmarks/results/options-smollm2-135m-cpu.json

Step times are medians over --repeats interleaved steps (each variant in turn), after a warm-up step
(for --compile the warm-up is the compilation, reported on its own). Peak memory is that of one step
above the level before it, measured as `bmtpt bench speed` does: on a GPU `max_memory_allocated`; on a
CPU the peak resident set of this process (`hwm`, the default) or of a fresh process per variant
(`subprocess`, whose figure includes loading the backbone and so says little about the options).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bmtpt.bench.memory import peak_bytes, peak_in_subprocess
from bmtpt.bench.report import describe_machine
from bmtpt.bench.steps import build_backbone, interleaved, make_workload, svgd_step, timed
from bmtpt.prompted import PromptedModel
from bmtpt.runs import resolve_device

# name -> (PromptedModel options, --grad-accum)
VARIANTS = {
    "fp32": ({}, 1),
    "compile": ({"compile": True}, 1),
    "grad_accum_2": ({}, 2),
    "grad_accum_4": ({}, 4),
    "checkpointing": ({"gradient_checkpointing": True}, 1),
    "bf16": ({"precision": "bf16"}, 1),
    "bf16_compile": ({"precision": "bf16", "compile": True}, 1),
    "bf16_grad_accum_2": ({"precision": "bf16"}, 2),
    "bf16_checkpointing": ({"precision": "bf16", "gradient_checkpointing": True}, 1),
}


def main(argv: list[str] | None = None) -> int:
    """Measure every variant and print a table of ratios to the plain fp32 step."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="smollm2-135m", help="hub id, .gguf, smollm2-135m or a shape preset")
    ap.add_argument("--particles", type=int, default=3, help="SVGD particles M")
    ap.add_argument("--batch-size", type=int, default=4, help="examples per step")
    ap.add_argument("--seq-len", type=int, default=48, help="input tokens per example")
    ap.add_argument("--target-len", type=int, default=4, help="target tokens per example")
    ap.add_argument("--prompt-length", type=int, default=8, help="soft prompt length")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per variant (median reported)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--reference", default="", help="the variant the ratios divide by (default: fp32 if listed, "
                    "else the first)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    ap.add_argument("--memory-method", choices=("hwm", "subprocess"), default="hwm",
                    help="CPU peak memory: this process's peak resident set, or a fresh process per variant")
    ap.add_argument("--out", default="", help="write the figures and the machine description to this JSON file")
    a = ap.parse_args(argv)
    names = [v for v in a.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if a.reference and a.reference not in names:
        print(f"error: --reference {a.reference} is not among the variants measured ({', '.join(names)})",
              file=sys.stderr)
        return 2
    if bad or a.repeats <= 0:
        print(f"error: unknown variant(s) {bad} (choose from {', '.join(VARIANTS)})" if bad
              else "error: --repeats must be positive", file=sys.stderr)
        return 2
    device = resolve_device(a.device)
    model, tok = build_backbone(a.backbone, device, 0, False)
    work = make_workload(model, a.batch_size, a.seq_len, a.target_len, a.prompt_length, a.particles, 2, 0)
    steps, first = {}, {}
    for name in names:
        kw, micro = VARIANTS[name]
        steps[name] = svgd_step(PromptedModel(model, tok, **kw), work, "adam", None, micro)
        first[name] = timed(steps[name], device)  # warm-up; for compile, the compilation
        print(f"  {name}: first step {first[name]:.2f} s", file=sys.stderr, flush=True)
    times = interleaved(steps, a.repeats, 0, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = a.reference or ("fp32" if "fp32" in names else names[0])
    base = med[ref]
    peaks = {}
    if not a.no_memory and (device.startswith("cuda") or a.memory_method == "hwm"):
        for name in names:  # in this process: every variant has run, so only the step itself is counted
            peaks[name] = peak_bytes(steps[name], device)[0] / 2**20
            print(f"  {name}: peak {peaks[name]:.0f} MiB", file=sys.stderr, flush=True)
    elif not a.no_memory:
        for name in names:
            kw, micro = VARIANTS[name]
            spec = {"backbone": a.backbone, "seed": 0, "trust_remote_code": False, "threads": None,
                    "precision": kw.get("precision", "fp32"),
                    "gradient_checkpointing": bool(kw.get("gradient_checkpointing")),
                    "full_logits": False, "compile": bool(kw.get("compile")), "micro_batches": micro,
                    "batch_size": a.batch_size, "seq_len": a.seq_len, "target_len": a.target_len,
                    "prompt_length": a.prompt_length, "particles": a.particles, "tasks": 2, "optimizer": "adam",
                    "chunk": None}
            peaks[name] = peak_in_subprocess(spec)[0] / 2**20
            print(f"  {name}: peak {peaks[name]:.0f} MiB", file=sys.stderr, flush=True)
    x = f"x {ref}"
    rows = [f"{'variant':<19}{'first step s':>13}{'step s':>9}{x:>9}{'peak MiB':>10}{x:>9}"]
    for name in names:
        r_t = f"{med[name] / base:.2f}" if base else "-"
        pk = peaks.get(name)
        r_m = f"{pk / peaks[ref]:.2f}" if pk is not None and peaks.get(ref) else "-"
        rows.append(f"{name:<19}{first[name]:>13.2f}{med[name]:>9.3f}{r_t:>9}"
                    f"{(f'{pk:.0f}' if pk is not None else '-'):>10}{r_m:>9}")
    print("\n".join(rows))
    if a.out:
        res = {"benchmark": "options", "machine": describe_machine(device), "args": vars(a), "first_step_s": first,
               "reference": ref, "step_s": med, "times_s": times, "peak_mib": peaks, "table": rows,
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
