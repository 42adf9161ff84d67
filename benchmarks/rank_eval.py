#!/usr/bin/env python
"""Rank classification on a causal LM: the shared-prefix path (one prompt+input pass per example, its
key/value cache reused by every label) against one full pass per (example, label) row.

    python benchmarks/rank_eval.py --task mrpc --data-dir ../shared/data --examples 32

Prints each path's wall time over --repeats interleaved runs and the largest score difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bmtpt.backbone import load_backbone
from bmtpt.prompted import PromptedModel
from bmtpt.tasks import get_task


def main(argv: list[str] | None = None) -> int:
    """Time both paths on the first --examples dev examples of --task."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="a causal LM (hub id, .gguf, smollm2-135m)")
    ap.add_argument("--task", default="mrpc", help="a classification task (`bmtpt tasks`)")
    ap.add_argument("--data-dir", default=None, help="local benchmark files (default: the hub)")
    ap.add_argument("--examples", type=int, default=32, help="dev examples to score")
    ap.add_argument("--prompt-length", type=int, default=8, help="soft prompt length (a random prompt)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each path (median reported)")
    a = ap.parse_args(argv)
    task = get_task(a.task)
    if not task.is_classification:
        print(f"error: {a.task} is not a classification task", file=sys.stderr)
        return 2
    model, tok = load_backbone(a.model)
    pm = PromptedModel(model, tok, max_input_tokens=64)
    cache_arg = pm._cache_arg
    if pm.is_seq2seq or not cache_arg:
        print("error: the shared-prefix path applies to causal LMs with a key/value cache", file=sys.stderr)
        return 2
    examples = task.load("dev", a.data_dir, 0)[: a.examples]
    prompt = 0.1 * torch.randn(a.prompt_length, pm.embed_dim, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"shared prefix": [], "full pass per label": []}
    scores = {}
    for _ in range(a.repeats):
        for name, cached in (("shared prefix", True), ("full pass per label", False)):
            pm._cache_arg = cache_arg if cached else None
            t = time.perf_counter()
            scores[name] = pm.rank_classify(prompt, examples, task.verbalizers, 32)[1]
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<22}{v:8.2f} s")
    print(f"speed-up {med['full pass per label'] / med['shared prefix']:.2f}x on {len(examples)} {a.task} examples "
          f"x {len(task.verbalizers)} labels; max |score difference| "
          f"{(scores['shared prefix'] - scores['full pass per label']).abs().max().item():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
