"""The offline demo: SmolLM2-135M, the generated synth suite, and the three methods side by side.

    pt     prompt tuning on the target from a vocabulary-sampled prompt (no source knowledge)
    avg    one prompt per source task (trained independently), averaged into the target's start
    bmtpt  M particles by SVGD over all source tasks; the target starts at their mean with their
           kernel density as prior

Every method sees the same target data and steps, and the two source stages see the same source
examples per task. The sizes are chosen to fit 2 CPU cores (a 135M-parameter model runs only about
80 tokens/s forward+backward in fp32 there): an 8-token prompt, 3 particles and a few dozen steps.
That is far below the paper's budget, so the scores are a smoke test of the whole pipeline on a real
pretrained model, not a replication; `results.md` says so next to the numbers.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import SourceConfig, TargetConfig, opt
from .errors import BmtptError
from .synth import SOURCE_TASKS, TARGET_TASKS

METHODS = ("pt", "avg", "bmtpt")
RUN_DIRS = ("source-svgd", "source-independent", "target")


@dataclass
class DemoConfig:
    """`bmtpt demo`: the whole method offline on SmolLM2-135M and the generated synth-* tasks."""

    out: str = opt("./bmtpt-demo", "output folder (results.json, results.md and one folder per run)")
    quick: bool = opt(False, "a smaller run: one target task, fewer steps (at most 3 minutes on 2 CPU cores)")
    model: str = opt("smollm2-135m", "backbone (any causal or seq2seq LM works; the demo's sizes suit SmolLM2)")
    seed: int = opt(0, "random seed (data order, prompt init)")
    device: str = opt("auto", "torch device: auto (cuda if available), cpu, cuda")
    precision: str = opt("fp32", "autocast precision (bf16 is slow on CPUs without AVX-512 BF16)",
                         ("fp32", "bf16", "fp16"))
    overwrite: bool = opt(False, "replace results already in --out")
    progress: bool = opt(True, "show progress bars")

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        if not self.out:
            raise BmtptError("--out must not be empty")


@dataclass(frozen=True)
class DemoSizes:
    """The budget of one demo run (see the module docstring for why it is this small)."""

    targets: tuple[str, ...]
    source_steps: int
    target_steps: int
    eval_every: int
    eval_examples: int  # dev and test are each subsampled (seeded) to this many
    prompt_length: int = 8
    particles: int = 3
    per_task_batch: int = 2  # source examples per task and step (both source stages)
    target_batch: int = 8
    lr: float = 0.03  # Adam; SmolLM2's embeddings have std ~0.13, so T5's 0.3 would overshoot
    prior_weight: float = 1.0
    # both source stages start every prompt from one shared vocabulary draw plus small noise, so that
    # the particles' (and the per-task prompts') mean is itself a natural prompt (see README)
    source_init: str = "vocab-shared:0.25"


FULL = DemoSizes(targets=tuple(TARGET_TASKS), source_steps=24, target_steps=16, eval_every=16,
                 eval_examples=32)
QUICK = DemoSizes(targets=tuple(TARGET_TASKS)[:1], source_steps=4, target_steps=4, eval_every=4,
                  eval_examples=16)


def _common(cfg: DemoConfig, sizes: DemoSizes, out: Path) -> dict:
    return {"model": cfg.model, "out": str(out), "prompt_length": sizes.prompt_length, "lr": sizes.lr,
            "optimizer": "adam", "weight_decay": 0.0, "max_input_tokens": 64, "max_target_tokens": 4,
            "precision": cfg.precision, "device": cfg.device, "seed": cfg.seed, "overwrite": cfg.overwrite,
            "progress": cfg.progress, "log_every": 1}


def _check_out(cfg: DemoConfig) -> Path:
    """Refuse a folder holding a finished or unfinished demo unless --overwrite (nothing is touched yet)."""
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise BmtptError(f"--out {out} exists and is not a folder")
    if cfg.overwrite:
        return out
    if (out / "results.json").exists():
        raise BmtptError(f"{out} already holds demo results; pass --overwrite to replace them or choose another --out")
    if any((out / d).exists() for d in RUN_DIRS):
        raise BmtptError(f"{out} holds an unfinished demo (its runs but no results.json); pass --overwrite to start "
                         "again or choose another --out")
    return out


def run_demo(cfg: DemoConfig, sizes: DemoSizes | None = None) -> dict:
    """Run the demo; write results.json (keyed by method), results.md and run.json into cfg.out.

    `sizes` overrides the --quick / full budget (tests use a smaller one).
    """
    from .backbone import load_backbone  # torch-heavy imports stay out of `bmtpt --help`
    from .prompts import atomic_write_json
    from .runs import resolve_device
    from .source import run_source
    from .target import run_target

    cfg.validate()
    sizes = sizes or (QUICK if cfg.quick else FULL)
    out = _check_out(cfg)
    device = resolve_device(cfg.device)
    t0 = time.time()
    print(f"[demo] loading {cfg.model} (the first load converts the GGUF file, ~1 min; later loads use a cache)")
    model, tokenizer = load_backbone(cfg.model, device=device)
    timings = {"load_s": time.time() - t0}
    out.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md", "run.json"):  # --overwrite: never leave old and new mixed
        (out / name).unlink(missing_ok=True)

    sources = ",".join(SOURCE_TASKS)
    src_common = {"tasks": sources, "steps": sizes.source_steps, "mixing": "equal", "init": sizes.source_init,
                  "batch_size": sizes.per_task_batch * len(SOURCE_TASKS)}
    t = time.time()
    print(f"[demo] source stage, bmtpt: SVGD with {sizes.particles} particles over {sources}")
    svgd = run_source(SourceConfig(**_common(cfg, sizes, out / "source-svgd"), **src_common, method="svgd",
                                   particles=sizes.particles), model, tokenizer)
    timings["source_svgd_s"] = time.time() - t
    t = time.time()
    print("[demo] source stage, avg: one prompt per source task, trained independently")
    indep = run_source(SourceConfig(**_common(cfg, sizes, out / "source-independent"), **src_common,
                                    method="independent", particles=len(SOURCE_TASKS)), model, tokenizer)
    timings["source_independent_s"] = time.time() - t
    posterior = {"pt": None, "avg": indep, "bmtpt": svgd}

    results: dict = {m: {"tasks": {}} for m in METHODS}
    for task in sizes.targets:
        for method in METHODS:
            t = time.time()
            print(f"[demo] target {task}, method {method}")
            src = posterior[method]
            tcfg = TargetConfig(**_common(cfg, sizes, out / "target" / f"{task}-{method}"), task=task,
                                method=method, posterior=str(src.out) if src else None, steps=sizes.target_steps,
                                batch_size=sizes.target_batch, eval_every=sizes.eval_every,
                                max_eval_examples=sizes.eval_examples, prior_weight=sizes.prior_weight,
                                eval_batch_size=32)
            res = run_target(tcfg, model, tokenizer)
            results[method]["tasks"][task] = {"test": res.metrics["test"]["score"],
                                              "dev": res.metrics["dev"]["score"],
                                              "dev_at_start": _dev_at_start(res.out),
                                              "best_step": res.metrics["best_step"]}
            timings[f"target_{task}_{method}_s"] = time.time() - t
    for method in METHODS:
        r = results[method]
        r["average_test"] = sum(v["test"] for v in r["tasks"].values()) / len(r["tasks"])
        r["source_example_passes"] = posterior[method].info["compute"]["example_passes"] if posterior[method] else 0
        r["trainable_parameters_per_target"] = sizes.prompt_length * svgd.particles.shape[2]
    timings["total_s"] = time.time() - t0

    atomic_write_json(results, out / "results.json")
    run_info = {"config": asdict(cfg), "sizes": asdict(sizes), "source_tasks": list(SOURCE_TASKS),
                "timings_s": {k: round(v, 1) for k, v in timings.items()}, "machine": machine_description()}
    atomic_write_json(run_info, out / "run.json")
    table = results_table(results, sizes, cfg.model)
    (out / "results.md").write_text(table)
    print("\n" + table)
    print(f"[demo] done in {timings['total_s']:.0f} s; wrote {out / 'results.json'} and {out / 'results.md'}")
    return results


def _dev_at_start(run_dir: Path) -> float | None:
    """The dev score of the initial prompt (step 0 of metrics.jsonl): what transfer alone gives."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("step") == 0 and "dev/score" in rec:
            return rec["dev/score"]
    return None


def results_table(results: dict, sizes: DemoSizes, model: str = "smollm2-135m") -> str:
    """The markdown table of target test scores per method (plus dev at step 0 and source compute)."""
    tasks = list(next(iter(results.values()))["tasks"])
    head = ["method", *[f"{t} (test acc)" for t in tasks], "average", *[f"{t} dev at step 0" for t in tasks],
            "source example passes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in results.items():
        cells = [f"`{method}`", *[f"{r['tasks'][t]['test']:.1f}" for t in tasks], f"{r['average_test']:.1f}",
                 *[_fmt(r["tasks"][t]["dev_at_start"]) for t in tasks], f"{r['source_example_passes']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nBackbone {model} (frozen), prompt length {sizes.prompt_length}, {sizes.particles} SVGD particles, "
            f"{sizes.source_steps} source steps ({sizes.per_task_batch} examples per task and step), "
            f"{sizes.target_steps} target steps of {sizes.target_batch} examples, accuracy on "
            f"{sizes.eval_examples} test and {sizes.eval_examples} dev examples (best dev step kept). A budget this "
            "small is a smoke test of the pipeline on a real model, not a replication of the paper: with "
            f"{sizes.eval_examples} test examples one example is {100 / sizes.eval_examples:.1f} points.\n")
    return "\n".join(lines) + "\n" + note


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def machine_description() -> dict:
    """CPU, cores, Python and torch versions (results files record where they were measured)."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
