"""Peak memory of one call for `bmtpt bench speed`: on a GPU, in this process (Linux), or in a fresh one.

`peak_bytes` measures in this process: `torch.cuda.max_memory_allocated` on a GPU, the peak resident
set (VmHWM, reset through /proc/self/clear_refs) on a CPU. `peak_in_subprocess` runs `_memory_child` in a
fresh interpreter (`python -m bmtpt.bench.memory SPEC`) and reads getrusage's ru_maxrss.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from ..errors import BmtptError
from .steps import _sync, build_backbone, make_workload, svgd_step, timed


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    """Reset this process's peak resident set (VmHWM) to the current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc), so it is not counted as in use."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def hwm_supported() -> bool:
    """Whether the in-process peak-RSS method works here."""
    return _status_kib("VmHWM") is not None and _reset_hwm()


def peak_bytes(fn, device: str) -> tuple[int, float]:
    """(peak memory above the level before the call, seconds) of one call of `fn` in this process."""
    import torch

    if device.startswith("cuda"):
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        secs = timed(fn, device)
        return torch.cuda.max_memory_allocated() - base, secs
    _trim_heap()
    base = _status_kib("VmRSS")
    if base is None or not _reset_hwm():
        raise BmtptError("--memory-method hwm needs Linux's /proc/self/status and clear_refs; "
                         "use --memory-method subprocess")
    secs = timed(fn, device)
    return max(0, _status_kib("VmHWM") - base) * 1024, secs


def _maxrss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _memory_child(spec: dict) -> dict:
    """One memory setting in a fresh process: build, one step, peak ru_maxrss above the RSS before it."""
    import torch

    from ..prompted import PromptedModel

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, tok = build_backbone(spec["backbone"], "cpu", spec["seed"], spec["trust_remote_code"])
    pm = PromptedModel(model, tok, spec["precision"], gradient_checkpointing=spec["gradient_checkpointing"],
                       full_logits=spec["full_logits"], compile=spec.get("compile", False))
    work = make_workload(model, spec["batch_size"], spec["seq_len"], spec["target_len"], spec["prompt_length"],
                         spec["particles"], spec["tasks"], spec["seed"])
    step = svgd_step(pm, work, spec["optimizer"], spec["chunk"], spec.get("micro_batches", 1))
    _trim_heap()
    base = (_status_kib("VmRSS") or 0) * 1024 or _maxrss_bytes()
    secs = timed(step, "cpu")
    return {"peak_bytes": max(0, _maxrss_bytes() - base), "step_s": secs}


def peak_in_subprocess(spec: dict) -> tuple[int, float]:
    """Run `_memory_child` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-m", "bmtpt.bench.memory", json.dumps(spec)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise BmtptError(f"memory subprocess failed: {tail[0]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return int(res["peak_bytes"]), float(res["step_s"])


if __name__ == "__main__":  # the fresh process of --memory-method subprocess
    print(json.dumps(_memory_child(json.loads(sys.argv[1]))))
