#!/usr/bin/env python
"""Particle-chunk peak memory with glibc's default malloc and with a fixed mmap threshold.

    python benchmarks/chunk_memory.py smollm2-135m

Each figure is one SVGD step in a fresh process (ru_maxrss above the resident set before the step): M = 4
particles evaluated one at a time against a step on one particle. glibc raises its mmap threshold after
freeing a large block, so later blocks of that size come from the heap and stay resident; setting
MALLOC_MMAP_THRESHOLD_ fixes the threshold and shows how much of the chunked excess is that retention.
"""

import os
import sys

from bmtpt.bench.memory import peak_in_subprocess

spec = {"backbone": sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m", "seed": 0, "trust_remote_code": False,
        "threads": 2, "precision": "fp32", "gradient_checkpointing": False, "full_logits": False, "batch_size": 4,
        "seq_len": 48, "target_len": 4, "prompt_length": 16, "particles": 4, "tasks": 2, "optimizer": "adafactor",
        "chunk": 1}
for threshold in (None, "65536"):
    if threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = threshold  # inherited by the fresh processes
    chunked = peak_in_subprocess(spec)[0] / 2**20
    single = peak_in_subprocess({**spec, "particles": 1})[0] / 2**20
    print(f"mmap threshold {threshold or 'glibc default':<14} chunked {chunked:7.1f} MiB  single {single:7.1f} MiB"
          f"  ratio {chunked / single:.3f}")
