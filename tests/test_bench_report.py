"""bench/report.py: the machine a result records (read independently here), the checks and the number format."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from bmtpt.bench.report import _check, _fmt, bf16_native, cpu_info, machine_description


def test_cpu_info_matches_the_operating_system():
    info = cpu_info()
    assert info["logical_cores"] == os.cpu_count()
    assert info["usable_cores"] == len(os.sched_getaffinity(0))
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    text = cpuinfo.read_text()
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    if names:
        assert info["model"] == names[0]
    assert info["avx2"] == ("avx2" in flags)
    assert info["bf16_native"] == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_machine_description_is_the_short_form_of_this_machine():
    m = machine_description("cpu")
    assert m["cores"] == os.cpu_count() and m["torch"] == torch.__version__ and m["gpu"] is None
    assert m["torch_threads"] == torch.get_num_threads() and m["cpu"] == cpu_info()["model"]


def test_bf16_native_prefers_the_gpu_flag():
    cpu = {"bf16_native": True}
    assert bf16_native({"gpu": None, "cpu": cpu}) is True
    assert bf16_native({"gpu": {"bf16": False}, "cpu": cpu}) is False


@pytest.mark.parametrize("value, target, op, verdict", [(0.5, 0.6, "<=", True), (0.7, 0.6, "<=", False),
                                                        (0.6, 0.6, "<=", True), (3.0, 2.5, ">=", True),
                                                        (2.0, 2.5, ">=", False), (None, 1.0, "<=", None),
                                                        (math.nan, 1.0, "<=", None)])
def test_check_verdicts(value, target, op, verdict):
    out = _check(value, target, op)
    assert out["pass"] is verdict and out["target"] == target and out["op"] == op


def test_number_format():
    assert _fmt(None) == "-" and _fmt(0.0123, "s") == "12.3 ms" and _fmt(12.345, "s") == "12.35 s"
    assert _fmt(0.71234) == "0.712" and _fmt(3) == "3" and _fmt(math.inf) == "inf"
