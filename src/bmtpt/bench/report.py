"""What a `bmtpt bench speed` run reports around its figures: the machine, the checks against the targets, the table."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

# The figures the issue asks for; `checks` in the JSON holds each value against its target.
TARGETS = {
    "batched_vs_sequential": {"cpu": 0.95, "cuda": 0.6, "op": "<="},
    "outside_backbone_share": {"value": 0.02, "op": "<="},
    "fwd_bwd_vs_fwd": {"value": 2.1, "op": "<="},
    "chunk_peak_vs_single": {"value": 1.10, "op": "<="},
    "naive_speedup": {"value": 2.5, "op": ">="},
}


# ----------------------------------------------------------------------------- machine
def cpu_info() -> dict:
    """CPU model, core counts and the bf16-relevant instruction-set flags (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.processor() or platform.machine()):
                model = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"model": model, "logical_cores": os.cpu_count(), "usable_cores": usable,
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "bf16_native": bool({"avx512_bf16", "amx_bf16"} & flags)}


def describe_machine(device: str) -> dict:
    """Everything needed to compare two runs: CPU, GPU, library versions, threads, load."""
    import torch
    import transformers

    m = {"cpu": cpu_info(), "platform": platform.platform(), "python": platform.python_version(),
         "torch": torch.__version__, "transformers": transformers.__version__,
         "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
         "device": device, "gpu": None}
    try:
        m["load_average_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        m["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported(),
                    "cuda": torch.version.cuda, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    return m


def machine_description(device: str = "auto") -> dict:
    """The short form results files record (experiment.json, a demo's run.json): CPU model, cores, threads,
    GPU name, Python, torch, platform; drawn from `describe_machine`, the one place that reads the machine."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    m = describe_machine(device)
    return {"cpu": m["cpu"]["model"], "cores": m["cpu"]["logical_cores"], "torch_threads": m["torch_threads"],
            "gpu": m["gpu"]["name"] if m["gpu"] else None, "python": m["python"], "torch": m["torch"],
            "platform": m["platform"]}


def bf16_native(machine: dict) -> bool:
    """bf16 runs natively: a GPU that supports it, or a CPU with AVX512-BF16 or AMX-BF16."""
    if machine["gpu"] is not None:
        return bool(machine["gpu"]["bf16"])
    return machine["cpu"]["bf16_native"]


# ----------------------------------------------------------------------------- checks
def _check(value, target: float, op: str, note: str = "") -> dict:
    ok = None if value is None or not math.isfinite(value) else (value <= target if op == "<=" else value >= target)
    out = {"value": value, "target": target, "op": op, "pass": ok}
    if note:
        out["note"] = note
    return out


def make_checks(res: dict, device: str, bf16: bool) -> dict:
    """Each figure the issue sets a target for, with its pass/fail (None: not measured or not applicable)."""
    gpu = device.startswith("cuda")
    tg = TARGETS
    main = res["main"]
    checks = {
        "batched_vs_sequential": _check(main["batched_vs_sequential"], tg["batched_vs_sequential"]["cuda" if gpu
                                                                                                  else "cpu"], "<="),
        "outside_backbone_share": _check(main.get("outside_backbone_attributed_share", main["outside_backbone_share"]),
                                         tg["outside_backbone_share"]["value"], "<="),
        "fwd_bwd_vs_fwd": _check(main["fwd_bwd_vs_fwd"], tg["fwd_bwd_vs_fwd"]["value"], "<="),
        "no_backbone_grads": {"value": len(res["backbone_grads"]), "target": 0, "op": "==",
                              "pass": not res["backbone_grads"] and not main["backbone_grads"]},
    }
    if "memory" in res:
        checks["chunk_peak_vs_single"] = _check(res["memory"]["chunk"]["ratio"], tg["chunk_peak_vs_single"]["value"],
                                                "<=")
    if "naive" in res:
        sp = res["naive"]["speedup"]
        if "bf16" in sp and bf16:
            checks["naive_speedup"] = _check(sp["bf16"], tg["naive_speedup"]["value"], ">=", "bf16 vs naive fp32")
        else:
            best = max(sp, key=sp.get)
            why = "this machine has but was not measured" if bf16 else "this machine lacks"
            checks["naive_speedup"] = _check(sp[best], tg["naive_speedup"]["value"], ">=",
                                             f"{best} vs naive fp32; the target assumes native bf16, which {why}")
            if not bf16:
                checks["naive_speedup"]["pass"] = None
    return checks


# ----------------------------------------------------------------------------- report
def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v * 1000:.1f} ms" if unit == "s" and v < 10 else (f"{v:.2f} s" if unit == "s" else f"{v:.3g}{unit}")
    return f"{v}{unit}"


def format_table(res: dict) -> str:
    """The human-readable summary printed at the end of a run."""
    m, w = res["main"], res["workload"]
    cpu = res["machine"]["cpu"]
    gpu = res["machine"]["gpu"]
    lines = [f"bmtpt bench speed: {res['backbone']['name']} ({res['backbone']['architecture']}, "
             f"{res['backbone']['parameters'] / 1e6:.1f}M params) on {res['machine']['device']}",
             f"  machine: {cpu['model']}, {cpu['usable_cores']} cores, {res['machine']['torch_threads']} threads, "
             f"torch {res['machine']['torch']}, native bf16: {bf16_native(res['machine'])}"
             + (f", GPU {gpu['name']}" if gpu else ""),
             f"  workload: M={w['particles']} B={w['batch_size']} input={w['seq_len']} target={w['target_len']} "
             f"prompt={w['prompt_length']} -> {w['rows']} rows x {w['tokens_per_row']} tokens; "
             f"main precision {m['precision']}", ""]
    rows = [("SVGD step (batched, M particles)", _fmt(m["svgd_step_s"], "s")),
            ("M single-prompt steps (sequential)", _fmt(m["sequential_steps_s"], "s")),
            ("backbone fwd+bwd alone", _fmt(m["backbone_fwd_bwd_s"], "s")),
            ("backbone fwd (no_grad)", _fmt(m["backbone_fwd_s"], "s")),
            ("outside backbone, attributed in-step", _fmt(m.get("outside_backbone_attributed_share"))),
            ("outside backbone (step - fwd/bwd)", _fmt(m["outside_backbone_s"], "s")),
            ("  of which timed directly", ", ".join(f"{k} {_fmt(v, 's')}" for k, v in m["outside_parts_s"].items())),
            ("tokens / s (SVGD step)", _fmt(m["tokens_per_s"]))]
    for v in res["variants"]:
        name = f"{v['precision']}{' + checkpointing' if v['gradient_checkpointing'] else ''}"
        extra = f", peak {v['peak_mib']} MiB" if "peak_mib" in v else ""
        rows.append((f"variant {name}", f"step {_fmt(v['svgd_step_s'], 's')}, fwd+bwd/fwd "
                     f"{_fmt(v['fwd_bwd_vs_fwd'])}, {_fmt(v['tokens_per_s'])} tok/s{extra}"))
    if "memory" in res:
        mem = res["memory"]
        for g in mem["grid"]:
            rows.append((f"peak memory M={g['particles']} B={g['batch_size']}",
                         f"{g['peak_mib']} MiB ({mem['method']}), {_fmt(g['tokens_per_s'])} tok/s"))
        ch = mem["chunk"]
        rows.append((f"peak M={ch['particles']} chunk {ch['chunk']} / M={ch['chunk']}",
                     f"{ch['peak_chunked_mib']} / {ch['peak_single_mib']} MiB"))
    if "naive" in res:
        n = res["naive"]
        rows.append(("naive step (fp32, all logits)", _fmt(n["naive_step_s"], "s")
                     + (f", peak {n['naive_peak_mib']} MiB" if "naive_peak_mib" in n else "")))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {a.ljust(width)}  {b}" for a, b in rows]
    lines += ["", "  check                      value     target   result"]
    for name, ch in res["checks"].items():
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[ch["pass"]]
        lines.append(f"  {name.ljust(25)}  {_fmt(ch['value']).ljust(8)}  {ch['op']} {str(ch['target']).ljust(5)}  "
                     f"{verdict}" + (f"  ({ch['note']})" if ch.get("note") else ""))
    lines.append(f"\n  wall time {res['wall_s']:.0f} s")
    return "\n".join(lines)
