"""The plan of an experiment: its distinct source stages and its cells (target runs), each with a hash.

A stage folder is named by a hash of its configuration, so stages with the same settings are trained
once and experiments may share a `sources_dir`; a cell's hash covers every option that changes its
numbers (not those marked result-neutral in bmtpt.config), so a rerun skips exactly the finished cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .baselines import MptConfig
from .config import ATTEMPT_OPTIONS, PRIOR_OPTIONS, SVGD_KERNEL_OPTIONS, SourceConfig, TargetConfig
from .errors import BmtptError
from .expconfig import FIXED_TARGET, HASH_SKIP, STAGE_KIND, ExperimentConfig, MethodSpec, fail
from .methods import METHODS
from .tasks import get_task

MPT_FIELDS = {f.name for f in dataclasses.fields(MptConfig)}


@dataclass
class Stage:
    """A source stage: kind (svgd, independent, mpt), its config (cfg.out is its folder), its seed."""

    key: str
    kind: str
    seed: int
    cfg: SourceConfig


@dataclass
class Cell:
    """One target run of the grid."""

    method: str
    base: str
    task: str
    suite: str
    seed: int
    shots: int | None
    target: TargetConfig
    stage: Stage | None
    spot: dict | None
    config_hash: str
    bandwidth_stage: Stage | None = None  # the stage --prior-bandwidth-from reads (trained before the cell)

    @property
    def key(self) -> str:
        """'method|task|seed=S|shots=K' (shots=full without a k-shot cap)."""
        return f"{self.method}|{self.task}|seed={self.seed}|shots={self.shots or 'full'}"


@dataclass
class Plan:
    """The experiment, its distinct source stages and its cells in run order."""

    exp: ExperimentConfig
    stages: dict[str, Stage]
    cells: list[Cell]


def config_hash(values: dict, **extra) -> str:
    """Short hash of a run's options (minus those that do not change its numbers) and extra context."""
    kept = {k: v for k, v in values.items() if k not in HASH_SKIP}
    return hashlib.sha1(json.dumps({**kept, **extra}, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _build(cls, values: dict, where: str):
    try:
        cfg = cls(**values)
        cfg.validate()
    except (BmtptError, TypeError) as e:
        fail(where, str(e))
    return cfg


def _stage(exp: ExperimentConfig, spec: MethodSpec, seed: int, run: dict, source_root: Path,
           stages: dict[str, Stage]) -> Stage | None:
    """The source stage of one method for one seed (None for pt), added to `stages` when new."""
    # a bmtpt variant may take one prompt per source task as its particles (overrides.source.method)
    kind = spec.overrides["source"].get("method", STAGE_KIND[spec.base])
    if kind is None:
        return None
    s_seed = seed if exp.source_per_seed else exp.seeds[0]
    sources = spec.sources or exp.sources
    values = {**run, **exp.common, **exp.source, **spec.overrides["source"], "tasks": ",".join(sources),
              "seed": s_seed}
    cls = SourceConfig
    if kind == "independent":
        values.update(method="independent", particles=len(sources))
        for key in SVGD_KERNEL_OPTIONS:  # a global `source:` kernel setting is for the SVGD stages
            values.pop(key, None)
    elif kind == "svgd":
        values["method"] = "svgd"
    else:
        cls = MptConfig
        values.update(method="mpt", particles=1, **exp.mpt, **spec.overrides["mpt"])
    key = f"{kind}-s{s_seed}-{config_hash(values, kind=kind)}"
    if cls is MptConfig:  # the global `source:` section's SVGD options are not MPT's (they stay in the hash)
        values = {k: v for k, v in values.items() if k in MPT_FIELDS}
    if key not in stages:
        values["out"] = str(source_root / key)
        stages[key] = Stage(key, kind, s_seed, _build(cls, values, f"method {spec.name}: source"))
    return stages[key]


def plan_experiment(exp: ExperimentConfig) -> Plan:
    """Every distinct source stage and every cell (seed, shots, method, task order), all validated."""
    root = Path(exp.out).expanduser()
    # stage folders are named by a hash of their configuration, so experiments may share a sources_dir
    source_root = Path(exp.sources_dir).expanduser() if exp.sources_dir else root / "sources"
    run = {"model": exp.model, "data_dir": exp.data_dir, "device": exp.device,
           "trust_remote_code": exp.trust_remote_code, "progress": exp.progress, "overwrite": True}
    stages: dict[str, Stage] = {}
    cells: list[Cell] = []
    names = {spec.name: spec for spec in exp.methods}
    for seed in exp.all_seeds:
        # each method's source stage for this seed (stages with the same configuration are shared)
        runs_here = [spec for spec in exp.methods if seed in (exp.seeds if spec.seeds is None else spec.seeds)]
        stage_of = {spec.name: _stage(exp, spec, seed, run, source_root, stages) for spec in runs_here}
        for shots in exp.shots:
            for spec in runs_here:
                if spec.shots is not None and shots not in spec.shots:
                    continue  # the method runs in other few-shot settings only
                stage = stage_of[spec.name]
                for task in exp.targets:
                    # options of the global sections that this method does not use (a target run trains one
                    # prompt; only bmtpt has a prior) are left out; in a method's own overrides they are refused
                    unused = {"particle_chunk", *(PRIOR_OPTIONS if not METHODS[spec.base].kind.prior else ()),
                              *(ATTEMPT_OPTIONS if spec.base != "attempt" else ())}
                    shared = {k: v for k, v in {**exp.common, **exp.target}.items() if k not in unused}
                    shared.update({k: v for k, v in exp.per_target.get(task, {}).items() if k not in unused})
                    values = {**run, **shared, **spec.overrides["target"], **FIXED_TARGET[spec.base], "task": task,
                              "seed": seed, "posterior": str(stage.cfg.out) if stage else None}
                    borrowed = None
                    if values.get("prior_bandwidth_from") in names:  # a method of the grid: its stage's folder
                        borrowed = stage_of.get(values["prior_bandwidth_from"])
                        if borrowed is None:
                            fail(f"method {spec.name}", f"prior_bandwidth_from names method "
                                  f"{values['prior_bandwidth_from']!r}, which has no source stage")
                        values["prior_bandwidth_from"] = str(borrowed.cfg.out)
                    if shots:
                        values["shots"] = shots  # k label-balanced examples drawn with the cell's seed
                    label = f"k{shots}" if shots else "full"
                    values["out"] = str(root / "cells" / spec.name / task / f"{label}-seed{seed}")
                    spot = {**exp.spot, **spec.overrides["spot"]} if spec.base == "spot" else None
                    cfg = _build(TargetConfig, values, f"method {spec.name}, target {task}")
                    h = config_hash(values, base=spec.base, stage=stage.key if stage else None, spot=spot)
                    cells.append(Cell(spec.name, spec.base, task, get_task(task).suite, seed, shots, cfg, stage,
                                      spot, h, borrowed))
    return Plan(exp, stages, cells)
