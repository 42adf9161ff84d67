"""The demo a newcomer runs first: SmolLM2-135M, real short-text tasks, four methods side by side.

    pt             prompt tuning on the target from a vocabulary-sampled prompt (no source knowledge)
    avg            one prompt per source task (trained independently), averaged into the target's start
    bmtpt          the published recipe: M particles by SVGD over all source tasks; the target starts at
                   their mean with their density as prior
    bmtpt-tw-task-noprior
                   the settings chosen on dev (issue 13, benchmarks/configs/cpu-method.yaml): avg's per-task
                   prompts as the particles, each weighted by its likelihood of the target's training examples;
                   their weighted mean is the start, and no prior (no source stage of its own)

Sources SST-2 (sentiment), SUBJ and TREC; targets MR (movie-review sentiment: related to SST-2) and SICK
(entailment: related to no source), 16-shot, as in the powered benchmark (benchmarks/configs/
cpu-transfer.yaml). Every target is scored on at least 500 test examples and every score comes with its
95 % bootstrap interval over those examples, so a difference the table shows is one the data support.

Data: --data-dir when given, else `../shared/data` beside the project when it is there, else the Hugging
Face hub (the task loaders' own hub path, when the hub can be reached), else the generated `synth-*` suite,
which the output then says plainly. The sizes fit 2 CPU cores (15 minutes; --quick 3): an 8-token prompt,
3 particles, a few dozen steps: far below the paper's budget.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .bench.report import machine_description
from .config import opt
from .errors import BmtptError
from .synth import SOURCE_TASKS as SYNTH_SOURCES
from .synth import TARGET_TASKS as SYNTH_TARGETS

# the dev-chosen variant as a grid method (its name and settings as in benchmarks/configs/cpu-transfer.yaml)
TW_TASK = {"name": "bmtpt-tw-task-noprior", "base": "bmtpt",
           "overrides": {"source": {"method": "independent"},
                         "target": {"particle_weights": "target", "prior_weight": 0.0}}}
GRID_METHODS = ("pt", "avg", "bmtpt", TW_TASK)  # the grid's `methods:`
METHODS = tuple(m if isinstance(m, str) else m["name"] for m in GRID_METHODS)
EXPERIMENT_DIR = "experiment"  # the demo's grid: sources/, cells/, results.jsonl and the full results.md
SOURCES = ("sst2", "subj", "trec")
TARGETS = ("mr", "sick")
# where the benchmark files are looked for when --data-dir is not given: beside the current folder (the README
# runs the demo from the repository root) and beside the repository this module lives in
SHARED_DATA = (Path("..") / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data")
HUB_HOST = "huggingface.co"


@dataclass
class DemoConfig:
    """`bmtpt demo`: the whole method on SmolLM2-135M and real short-text tasks (generated ones without data)."""

    out: str = opt("./bmtpt-demo", "output folder (results.json, results.md, run.json and experiment/ with the runs; "
                   "a demo stopped half-way continues there)")
    quick: bool = opt(False, "a smaller run: one target task, fewer steps and test examples (at most 3 minutes on "
                      "2 CPU cores; its intervals are wide)")
    model: str = opt("smollm2-135m", "backbone (any causal or seq2seq LM works; the demo's sizes suit SmolLM2)")
    data_dir: str | None = opt(None, "folder of the benchmark files (default: ../shared/data when present, else "
                               "the Hugging Face hub, else the generated synth-* tasks)")
    seed: int = opt(0, "random seed (data order, prompt init, the 16-shot draw)")
    device: str = opt("auto", "torch device: auto (cuda if available), cpu, cuda")
    precision: str = opt("fp32", "autocast precision (bf16 is slow on CPUs without AVX-512 BF16)",
                         ("fp32", "bf16", "fp16"))
    overwrite: bool = opt(False, "replace results already in --out")
    progress: bool = opt(True, "show progress bars")

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        if not self.out:
            raise BmtptError("--out must not be empty")
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise BmtptError(f"--data-dir {self.data_dir} does not exist")


@dataclass(frozen=True)
class DemoSizes:
    """The budget of one demo run (see the module docstring for why it is this small)."""

    targets: tuple[str, ...]
    source_steps: int
    target_steps: int
    eval_every: int
    dev_examples: int  # dev is subsampled (fixed seed) to this many; it picks the best step
    test_examples: int  # the test sample every method is scored on
    sources: tuple[str, ...] = SOURCES
    shots: int | None = 16  # k training examples per target (labels taken in turn); None: the whole train split
    prompt_length: int = 8
    particles: int = 3
    per_task_batch: int = 2  # source examples per task and step (both source stages)
    target_batch: int = 8
    lr: float = 0.03  # Adam, as chosen on dev for the benchmark (benchmarks/results/cpu-transfer/README.md)
    train_eval_examples: int = 16
    # both source stages start every prompt from one shared vocabulary draw plus small noise, so that
    # the particles' (and the per-task prompts') mean is itself a natural prompt (see README)
    source_init: str = "vocab-shared:0.25"


FULL = DemoSizes(targets=TARGETS, source_steps=24, target_steps=16, eval_every=8, dev_examples=48,
                 test_examples=500)
QUICK = DemoSizes(targets=TARGETS[:1], source_steps=5, target_steps=6, eval_every=6, dev_examples=24,
                  test_examples=100)
# without real data: the generated suite (its splits are small, so all of a split is scored)
SYNTH_FULL = DemoSizes(targets=tuple(SYNTH_TARGETS), sources=tuple(SYNTH_SOURCES), source_steps=24,
                       target_steps=16, eval_every=16, dev_examples=32, test_examples=400, shots=None)
SYNTH_QUICK = DemoSizes(targets=tuple(SYNTH_TARGETS)[:1], sources=tuple(SYNTH_SOURCES), source_steps=4,
                        target_steps=4, eval_every=4, dev_examples=16, test_examples=100, shots=None)


def find_data(data_dir: str | None, tasks: tuple[str, ...]) -> tuple[str | None, str] | None:
    """Where the demo's real tasks come from: (data dir or None for the hub, a description), or None when
    neither local files nor the hub can be read (the caller falls back to the generated tasks)."""
    from .suites.readers import MissingDataFile
    from .tasks import get_task

    def readable(folder: Path) -> bool:
        try:
            for name in tasks:
                for split in ("train", "dev", "test"):
                    get_task(name).load(split, str(folder))
        except MissingDataFile:
            return False
        return True

    if data_dir is not None:  # given: it must hold the files
        folder = Path(data_dir).expanduser()
        if not readable(folder):
            raise BmtptError(f"--data-dir {data_dir} lacks the demo's files ({', '.join(tasks)}; see docs/tasks.md)")
        return str(folder), f"local files in {folder}"
    for folder in SHARED_DATA:
        if (folder / "MANIFEST.md").is_file() and readable(folder):
            return str(folder), f"local files in {folder}"
    if hub_reachable():
        return None, "the Hugging Face hub"
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub answers (or the datasets cache is to be used offline)."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def experiment_config(cfg: DemoConfig, sizes: DemoSizes, out: Path, data_dir: str | None) -> dict:
    """The demo as an experiment grid (`bmtpt.experiment`): one seed, the four methods, its sizes."""
    return {"name": "demo", "out": str(out), "model": cfg.model, "data_dir": data_dir, "device": cfg.device,
            "progress": cfg.progress, "prompt_length": sizes.prompt_length, "lr": sizes.lr, "optimizer": "adam",
            "weight_decay": 0.0, "max_input_tokens": 64, "max_target_tokens": 4, "precision": cfg.precision,
            "log_every": 1,
            "sources": list(sizes.sources),
            "source": {"steps": sizes.source_steps, "mixing": "equal", "init": sizes.source_init,
                       "batch_size": sizes.per_task_batch * len(sizes.sources), "particles": sizes.particles,
                       # a source stage sees steps x per-task batch examples of each task: tokenise no more
                       "final_eval_examples": 0, "max_train_examples": 2000},
            "targets": list(sizes.targets),
            "target": {"steps": sizes.target_steps, "batch_size": sizes.target_batch, "eval_every": sizes.eval_every,
                       "max_dev_examples": sizes.dev_examples, "max_eval_examples": sizes.test_examples,
                       "train_eval_examples": sizes.train_eval_examples, "eval_batch_size": 32},
            "seeds": [cfg.seed], "shots": [sizes.shots], "methods": list(GRID_METHODS)}


def _check_out(cfg: DemoConfig) -> Path:
    """Refuse a folder holding a finished demo unless --overwrite (nothing is touched yet); an unfinished one
    is continued (its finished runs are kept)."""
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise BmtptError(f"--out {out} exists and is not a folder")
    if (out / "results.json").exists() and not cfg.overwrite:
        raise BmtptError(f"{out} already holds demo results; pass --overwrite to replace them or choose another --out")
    return out


def choose_data(cfg: DemoConfig, sizes: DemoSizes | None) -> tuple[DemoSizes, str | None, str, bool]:
    """(sizes, data dir, where the data come from, real?): real tasks when they can be read, else synth-*."""
    real = sizes or (QUICK if cfg.quick else FULL)
    found = find_data(cfg.data_dir, (*real.sources, *real.targets))
    if found is not None:
        return real, found[0], found[1], True
    if sizes is not None:  # the same budget on the generated tasks
        synth = replace(sizes, sources=tuple(SYNTH_SOURCES), targets=tuple(SYNTH_TARGETS)[: len(sizes.targets)],
                        shots=None)
    else:
        synth = SYNTH_QUICK if cfg.quick else SYNTH_FULL
    return synth, None, (
        "the generated synth-* tasks: no benchmark files were found (--data-dir, ../shared/data) and the Hugging "
        "Face hub cannot be reached"), False


def run_demo(cfg: DemoConfig, sizes: DemoSizes | None = None) -> dict:
    """Run the demo; write results.json (keyed by method), results.md and run.json into cfg.out.

    The runs are an experiment grid in cfg.out/experiment (its own results.md has the full report); a
    demo stopped half-way continues there. `sizes` overrides the --quick / full budget (tests use a smaller one).
    """
    from .backbone import load_backbone  # torch-heavy imports stay out of `bmtpt --help`
    from .expconfig import load_experiment
    from .experiment import run_experiment
    from .runfiles import atomic_write_json
    from .runs import resolve_device

    cfg.validate()
    out = _check_out(cfg)
    sizes, data_dir, where, real = choose_data(cfg, sizes)
    grid = experiment_config(cfg, sizes, out / EXPERIMENT_DIR, data_dir)
    load_experiment(grid)  # a bad setting is reported before the slow model load
    print(f"[demo] data: {where}")
    device = resolve_device(cfg.device)
    t0 = time.time()
    print(f"[demo] loading {cfg.model} (the first load converts the GGUF file, ~1 min; later loads use a cache)")
    model, tokenizer = load_backbone(cfg.model, device=device)
    load_s = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md", "run.json"):  # --overwrite: never leave old and new mixed
        (out / name).unlink(missing_ok=True)
    if cfg.overwrite and (out / EXPERIMENT_DIR).is_dir():
        shutil.rmtree(out / EXPERIMENT_DIR)
    print(f"[demo] {sizes.particles} SVGD particles (bmtpt) and one prompt per task (avg) over "
          f"{', '.join(sizes.sources)}; then pt, avg, bmtpt and bmtpt-tw-task-noprior (avg's prompts weighted "
          f"by the target) on {', '.join(sizes.targets)}")
    exp = run_experiment(grid, model, tokenizer, plots=False, echo=lambda line: print(f"[demo] {line}"))
    by = {(r["method"], r["task"]): r for r in exp.records}

    results: dict = {m: {"tasks": {}} for m in METHODS}
    correct = {key: [int(c) for c in r["test_correct"]] for key, r in by.items()}
    for task in sizes.targets:
        for method in METHODS:
            r = by[(method, task)]
            results[method]["tasks"][task] = {"test": r["test_score"], "dev": r["dev_score"],
                                              "dev_at_start": _dev_at_start(exp.out / r["run_dir"]),
                                              "best_step": r["best_step"], "test_examples": r["test_examples"],
                                              "dev_examples": r["dev_examples"]}
    intervals = _intervals(correct, sizes.targets)
    for method in METHODS:
        r = results[method]
        for task in sizes.targets:
            r["tasks"][task]["test_ci95"] = intervals[method][task]
        r["average_test"] = sum(v["test"] for v in r["tasks"].values()) / len(r["tasks"])
        r["average_test_ci95"] = intervals[method]["average"]
        r["minus_pt_ci95"] = intervals.get(f"{method}-pt")
        first = by[(method, sizes.targets[0])]
        r["source_example_passes"] = first["source_passes"]
        r["trainable_parameters_per_target"] = first["trainable_parameters"]
    timings = {"load_s": load_s, **{f"{k[1]}_{k[0]}_s": r.get("wall_s", 0.0) for k, r in by.items()},
               "total_s": time.time() - t0}

    atomic_write_json(results, out / "results.json")
    run_info = {"config": asdict(cfg), "sizes": asdict(sizes), "source_tasks": list(sizes.sources),
                "data": where, "real_data": real, "timings_s": {k: round(v, 1) for k, v in timings.items()},
                "machine": machine_description()}
    atomic_write_json(run_info, out / "run.json")
    table = results_table(results, sizes, cfg.model, where, real, cfg.quick)
    (out / "results.md").write_text(table)
    print("\n" + table)
    print(f"[demo] done in {timings['total_s']:.0f} s; wrote {out / 'results.json'} and {out / 'results.md'} "
          f"(the full report: {out / EXPERIMENT_DIR / 'results.md'})")
    return results


def _intervals(correct: dict, targets: tuple[str, ...]) -> dict:
    """95 % bootstrap intervals over the test examples: each method per target and on the average, and each
    method's paired difference to pt ('avg-pt', 'bmtpt-pt', ...: per target and average)."""
    import numpy as np

    from .stats import bootstrap, intervals, point

    cells = {m: {t: {0: 100.0 * np.asarray(correct[(m, t)], dtype=float)} for t in targets} for m in METHODS}
    reps = bootstrap(cells, list(targets), n_boot=2000)
    est = {m: point(cells[m], list(targets)) for m in METHODS}
    out: dict = {}
    for m in METHODS:
        ivs = intervals(est[m], reps[m])
        out[m] = {**{t: [ivs[i].lo, ivs[i].hi] for i, t in enumerate(targets)}, "average": [ivs[-1].lo, ivs[-1].hi]}
        if m != "pt":
            d = intervals(est[m] - est["pt"], reps[m] - reps["pt"])
            out[f"{m}-pt"] = {**{t: [d[i].mean, d[i].lo, d[i].hi] for i, t in enumerate(targets)},
                              "average": [d[-1].mean, d[-1].lo, d[-1].hi]}
    return out


def _dev_at_start(run_dir: Path) -> float | None:
    """The dev score of the initial prompt (step 0 of metrics.jsonl): what transfer alone gives."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("step") == 0 and "dev/score" in rec:
            return rec["dev/score"]
    return None


def results_table(results: dict, sizes: DemoSizes, model: str = "smollm2-135m", where: str = "",
                  real: bool = True, quick: bool = False) -> str:
    """The markdown table: test accuracy [95 % interval] per target and method, the difference to pt, the
    dev score of the starting prompt (what transfer alone gives) and the source compute."""
    tasks = list(next(iter(results.values()))["tasks"])
    head = ["method", *[f"{t} test acc [95 % CI]" for t in tasks], "average", "minus pt (average)",
            *[f"{t} dev at step 0" for t in tasks], "source example passes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in results.items():
        ci = lambda v, c: f"{v:.1f} [{c[0]:.1f}, {c[1]:.1f}]"  # noqa: E731
        diff = r.get("minus_pt_ci95")
        cells = [f"`{method}`", *[ci(r["tasks"][t]["test"], r["tasks"][t]["test_ci95"]) for t in tasks],
                 ci(r["average_test"], r["average_test_ci95"]),
                 f"{diff['average'][0]:+.1f} [{diff['average'][1]:+.1f}, {diff['average'][2]:+.1f}]" if diff else "—",
                 *[_fmt(r["tasks"][t]["dev_at_start"]) for t in tasks], f"{r['source_example_passes']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    n_test = {r["tasks"][t]["test_examples"] for r in results.values() for t in tasks}
    note = [f"\nData: {where}." + ("" if real else " **These are generated toy tasks, not benchmark data.**"),
            f"Backbone {model} (frozen), prompt length {sizes.prompt_length}, {sizes.particles} SVGD particles over "
            f"{', '.join(sizes.sources)}, {sizes.source_steps} source steps ({sizes.per_task_batch} examples per task "
            f"and step), {sizes.target_steps} target steps of {sizes.target_batch} examples "
            f"({f'{sizes.shots}-shot' if sizes.shots else 'whole training splits'}), seed 0. Test accuracy on "
            f"{', '.join(map(str, sorted(n_test)))} examples per target (the same examples for every method), with "
            "its 95 % bootstrap interval over those examples; the best of the dev evaluations is tested.",
            "The interval is over test examples for this one seed: it does not cover the variation between seeds "
            "(benchmarks/configs/cpu-transfer.yaml measures that). A budget this small shows the pipeline on a real "
            "model, not the paper's numbers." + (" This is the quick run: few steps and test examples, so its "
                                                  "intervals are wide." if quick else "")]
    return "\n".join(lines) + "\n" + "\n".join(note) + "\n"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
