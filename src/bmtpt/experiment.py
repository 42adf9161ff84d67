"""`bmtpt experiment CONFIG.yaml`: methods x target tasks x seeds (x few-shot k) in one resumable runner.

A *cell* is one (method, target task, seed, shots) target run. Source stages are shared: every cell
whose method needs the same source configuration (same kind, hyperparameters and seed) reuses one
stage folder under `sources/`, named by a hash of that configuration, and a stage with a
posterior.json is never trained again. Finished cells are appended to `results.jsonl`, one JSON
line each, together with a hash of the cell's configuration: a rerun skips every cell whose key and
hash are recorded, and a cell killed half-way is simply run again (its folder is overwritten).
`results.md` and the PNG plots are rendered from results.jsonl (`--render-only` does only that).
The YAML schema is parsed in `bmtpt.expconfig` and documented in configs/README.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .baselines import spot_choose, train_mpt_source
from .checkpoint import CHECKPOINT_FILE, check_resume_options, file_digest, read_checkpoint_meta
from .errors import BmtptError
from .expconfig import ExperimentConfig, load_experiment
from .grid import Cell, Plan, Stage, plan_experiment
from .runfiles import (
    PARTICLES_FILE,
    POSTERIOR_FILE,
    PREDICTIONS_FILE,
    atomic_save_tensors,
    atomic_write_json,
    load_posterior,
    read_jsonl_log,
)
from .source import run_source
from .train import train_target as run_target  # a MAP run, or an ensemble with --particles M

__all__ = ["ExperimentConfig", "ExperimentResult", "append_record", "read_records", "run_experiment"]


@dataclass
class ExperimentResult:
    """The grid's output folder, the records of its cells (in grid order) and what this call ran."""

    out: Path
    records: list[dict]
    ran: int
    skipped: int


def read_records(path: Path) -> list[dict]:
    """The records of results.jsonl in file order; a torn last line (a killed write) is ignored."""
    return [rec for rec in read_jsonl_log(path) if "key" in rec]


def append_record(path: Path, record: dict) -> None:
    """Append one record as one line, flushed and fsynced before returning.

    A process killed mid-write leaves at most a torn last line: it is skipped by `read_records`, and
    the next append starts on a fresh line so it cannot glue itself onto the torn one.
    """
    data = (json.dumps(record, default=float) + "\n").encode()
    with path.open("ab") as f:
        if f.tell() > 0:
            with path.open("rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    data = b"\n" + data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def current_records(plan: Plan, records: list[dict]) -> list[dict]:
    """For each cell of the grid, its latest record made with the cell's current configuration."""
    latest = {(r["key"], r.get("config_hash")): r for r in records}
    return [latest[(c.key, c.config_hash)] for c in plan.cells if (c.key, c.config_hash) in latest]


class _Backbone:
    """Loads the backbone on first use only, once per process (a fully finished grid never loads it)."""

    def __init__(self, exp: ExperimentConfig, model=None, tokenizer=None):
        self.exp, self.model, self.tokenizer = exp, model, tokenizer

    def __call__(self):
        if self.model is None:
            from .backbone import load_backbone
            from .runs import resolve_device

            self.model, self.tokenizer = load_backbone(self.exp.model, self.exp.trust_remote_code,
                                                       device=resolve_device(self.exp.device))
        return self.model, self.tokenizer


def resume_or_restart(cfg, kind: str, marker: str):
    """`cfg` set to continue the half-finished run in cfg.out from its checkpoint (a killed grid loses
    at most --checkpoint-every steps of the cell it was in), or unchanged (start over) where there is no
    checkpoint, the run is already finished (`marker` exists), its options no longer match or the posterior
    it started from has changed (a cell folder left by an earlier version of the grid's sources)."""
    out = Path(cfg.out)
    if (out / marker).is_file() or not (out / CHECKPOINT_FILE).is_file():
        return cfg
    try:
        meta = read_checkpoint_meta(out)
        if meta.get("kind") != kind:
            return cfg
        check_resume_options(meta["config"], cfg.to_dict(), out)
        posterior = getattr(cfg, "posterior", None)
        if posterior and meta["state"].get("posterior_sha256") != file_digest(
                Path(posterior) / PARTICLES_FILE, Path(posterior) / POSTERIOR_FILE):
            return cfg
    except (BmtptError, KeyError, OSError):
        return cfg
    return dataclasses.replace(cfg, resume=True, overwrite=False)


def ensure_stage(stage: Stage, backbone: Callable, cache: dict) -> tuple:
    """(particles, posterior meta) of a source stage, training it unless its folder already holds it."""
    if stage.key in cache:
        return cache[stage.key]
    folder = Path(stage.cfg.out)
    if (folder / "posterior.json").is_file():
        try:
            cache[stage.key] = load_posterior(folder)
            return cache[stage.key]
        except BmtptError:
            pass  # a damaged stage is trained again (its folder is overwritten)
    model, tokenizer = backbone()
    if stage.kind == "mpt":
        train_mpt_source(resume_or_restart(stage.cfg, "mpt-source", "posterior.json"), model, tokenizer)
    else:
        run_source(resume_or_restart(stage.cfg, "source", "posterior.json"), model, tokenizer)
    cache[stage.key] = load_posterior(folder)
    return cache[stage.key]


def run_cell(cell: Cell, root: Path, backbone: Callable, cache: dict) -> dict:
    """Run one cell (its source stage if needed, SPoT's probe, the target run) and return its record."""
    particles, meta = ensure_stage(cell.stage, backbone, cache) if cell.stage else (None, {})
    if cell.bandwidth_stage is not None:  # --prior-bandwidth-from another stage: it must exist first
        ensure_stage(cell.bandwidth_stage, backbone, cache)
    model, tokenizer = backbone()
    cfg = dataclasses.replace(cell.target)
    spot, probe_passes, probe = None, 0, None
    if cell.base == "spot":
        k, sims, probe, probe_passes = spot_choose(cell.stage.cfg.out, particles, cfg, cell.spot["steps"],
                                                   cell.spot["pool"], model, tokenizer)
        cfg.init = f"particle:{k}"
        names = meta.get("source_tasks", [])
        spot = {"chosen": k, "chosen_task": names[k] if k < len(names) else None,
                "similarities": [round(float(s), 6) for s in sims]}
    res = run_target(resume_or_restart(cfg, "target", "target.json"), model, tokenizer)
    if spot is not None:  # written after run_target, which clears the folder's result files
        atomic_save_tensors({"prompt": probe}, res.out / "spot_probe.safetensors")
        atomic_write_json(spot, res.out / "spot.json")
    target = json.loads((res.out / "target.json").read_text())
    preds = json.loads((res.out / PREDICTIONS_FILE).read_text())
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731 - records stay valid when the folder moves
    return {"key": cell.key, "config_hash": cell.config_hash, "method": cell.method, "base": cell.base,
            "task": cell.task, "suite": cell.suite, "seed": cell.seed, "shots": cell.shots,
            "test_score": res.metrics["test"]["score"], "dev_score": res.metrics["dev"]["score"],
            "dev": res.metrics["dev"], "test": res.metrics["test"], "best_step": res.metrics["best_step"],
            "dev_examples": res.metrics["dev_examples"], "test_examples": res.metrics["test_examples"],
            # example-level test results (1 = correct), the same examples in every cell of the task, and the
            # dev-selected step's dev results: the paired bootstraps of the report resample them
            **{field: "".join(map(str, preds[key])) for field, key in (("test_correct", "correct"),
                                                                       ("dev_correct", "dev_correct")) if key in preds},
            "trainable_parameters": target["trainable_parameters"],
            **({"test_calibration": res.metrics["test_calibration"]} if "test_calibration" in res.metrics else {}),
            "source_passes": int(meta.get("compute", {}).get("example_passes", 0)), "probe_passes": probe_passes,
            "source_stage": rel(cell.stage.cfg.out) if cell.stage else None, "run_dir": rel(res.out),
            **({"spot": spot} if spot else {}), "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}


def _refuse_unknown(option: str, asked: Sequence | None, known: Sequence, noun: str, name: str,
                    label: Callable = str) -> None:
    """A one-line BmtptError when `asked` (a --methods / --shots / --seeds selection) is empty or names
    something the experiment `name` lacks; nothing when the option was not given."""
    bad = [k for k in asked or () if k not in known]
    if asked is not None and (bad or not asked):
        raise BmtptError(f"{option}: {', '.join(map(label, bad)) or 'nothing'} is not {noun} of {name} "
                         f"(its {option[2:]}: {', '.join(map(label, known))})")


def run_experiment(config: str | Path | dict, model=None, tokenizer=None, *, render_only: bool = False,
                   progress: bool | None = None, plots: bool = True, methods: Sequence[str] | None = None,
                   shots: Sequence[int | None] | None = None, seeds: Sequence[int] | None = None,
                   stages_only: bool = False,
                   echo: Callable[[str], None] | None = print) -> ExperimentResult:
    """Run (or continue) the grid of a YAML file or dict, then render results.md and the plots.

    `model`/`tokenizer` reuse an already loaded backbone; `progress` overrides the config's progress
    bars; `plots=False` writes results.md without PNGs; `methods` runs only the cells of these methods
    (the others wait for a later call; the report shows every finished cell), `shots` likewise only the
    cells of these few-shot settings (None in it: the full training sets), `seeds` of these seeds;
    `stages_only` trains (or finds) the source stages of the selected cells, finished or not, and runs no
    cell (e.g. to bring back the stages a copied results.jsonl came without, or to train the sources before
    the targets); `echo` receives one line per cell (None: silent).
    """
    if render_only and stages_only:
        raise BmtptError("--render-only and --stages-only exclude each other (--stages-only renders as well)")
    exp = load_experiment(config)
    if progress is not None:
        exp.progress = progress
    plan = plan_experiment(exp)
    full = lambda k: "full" if k is None else str(k)  # noqa: E731
    _refuse_unknown("--methods", methods, [spec.name for spec in exp.methods], "a method", exp.name)
    _refuse_unknown("--shots", shots, exp.shots, "a setting", exp.name, full)
    _refuse_unknown("--seeds", seeds, exp.all_seeds, "a seed", exp.name)

    def selected(c) -> bool:  # a cell of the --methods, --shots and --seeds asked for (all where not given)
        return ((methods is None or c.method in methods) and (shots is None or c.shots in shots)
                and (seeds is None or c.seed in seeds))

    say = echo or (lambda _msg: None)
    out = Path(exp.out).expanduser()
    results = out / "results.jsonl"
    ran = 0
    if render_only:
        if not results.is_file():
            raise BmtptError(f"{results} does not exist: nothing to render (run the grid first)")
    else:
        out.mkdir(parents=True, exist_ok=True)
        from .bench.report import machine_description

        atomic_write_json({**exp.as_dict(), "machine": machine_description()}, out / "experiment.json")
        finished = {(r["key"], r.get("config_hash")) for r in read_records(results)}
        todo = [c for c in plan.cells if (c.key, c.config_hash) not in finished]
        waiting = 0
        wanted = [c for c in todo if selected(c)]  # the other cells are left for a later call
        todo, waiting = wanted, len(todo) - len(wanted)
        say(f"{exp.name}: {len(plan.cells)} cells, {len(plan.cells) - len(todo) - waiting} already finished, "
            + ("source stages only, no cell runs" if stages_only else f"{len(todo)} to run" + (
                f", {waiting} of other methods, shots or seeds left for later" if waiting else ""))
            + f"; output in {out}")
        backbone, cache = _Backbone(exp, model, tokenizer), {}
        if stages_only:  # every stage the selected cells use, whether or not the cells finished
            stages = {c.stage.key: c.stage for c in plan.cells if c.stage and selected(c)}
            for i, stage in enumerate(stages.values(), 1):
                t0 = time.time()
                ensure_stage(stage, backbone, cache)
                say(f"[{i}/{len(stages)}] source stage {stage.key}: ready in {stage.cfg.out} "
                    f"({time.time() - t0:.0f} s)")
            todo = []
        for i, cell in enumerate(todo, 1):
            t0 = time.time()
            record = run_cell(cell, out, backbone, cache)
            record["wall_s"] = round(time.time() - t0, 2)
            append_record(results, record)
            ran += 1
            say(f"[{i}/{len(todo)}] {cell.key}: test score {record['test_score']:.2f} "
                f"(dev {record['dev_score']:.2f}, {record['wall_s']:.0f} s)")
    records = current_records(plan, read_records(results))
    from .plots import render_report

    report = render_report(out, plan, records, plots)
    say(f"wrote {report} ({len(records)} of {len(plan.cells)} cells)")
    return ExperimentResult(out, records, ran, len(plan.cells) - ran if not render_only else 0)
