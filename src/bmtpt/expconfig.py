"""The experiment YAML: parsing, validation (one-line BmtptError messages) and the plan of stages and cells.

Every key is documented in configs/README.md. Layering of a target run's options, later wins:
TargetConfig defaults < top-level common hyperparameters < `target:` < the method's `overrides.target`
< what the method's base fixes (e.g. avg: method avg, init mean) < the cell (task, seed, k-shot cap).
A source stage's options are layered the same way from `source:` (and `mpt:` for the MPT stage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .baselines import MptConfig
from .config import PRIOR_OPTIONS, CommonConfig, SourceConfig, TargetConfig, result_neutral_options
from .errors import BmtptError
from .methods import METHODS
from .tasks import Task, get_task, register

# the built-in methods (bmtpt.methods): a method's overrides may not change what its base fixes
BASES = tuple(METHODS)
STAGE_KIND = {name: m.source for name, m in METHODS.items()}
FIXED_TARGET = {name: m.target for name, m in METHODS.items()}
# set by the runner (a half-finished run is started over, not resumed) or at the top level
RUN_KEYS = {"out", "seed", "overwrite", "resume", "progress", "model", "data_dir", "device", "trust_remote_code"}
TOP_RUN_KEYS = ("model", "data_dir", "device", "trust_remote_code")
STRUCT_KEYS = ("name", "out", "sources_dir", "backbone", "progress", "sources", "source", "targets", "target",
               "seeds", "shots", "methods", "spot", "mpt")
COMMON_KEYS = {f.name for f in dataclasses.fields(CommonConfig)} - RUN_KEYS
SOURCE_KEYS = {f.name for f in dataclasses.fields(SourceConfig)} - RUN_KEYS - {"tasks", "method"}
TARGET_KEYS = {f.name for f in dataclasses.fields(TargetConfig)} - RUN_KEYS - {"task", "posterior", "method"}
MPT_KEYS = {"lr_factor", "factor_init"}
SPOT_DEFAULTS = {"steps": 20, "pool": "flat"}
# options that do not change a run's numbers (declared once, in bmtpt.config; the resume check uses them too)
HASH_SKIP = result_neutral_options()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class MethodSpec:
    """One grid method: a name, the built-in base it runs, its overrides {source, target, spot, mpt} and the
    few-shot settings it runs in (None: all of the grid's `shots`)."""

    name: str
    base: str
    overrides: dict = field(default_factory=dict)
    shots: list | None = None


@dataclass
class ExperimentConfig:
    """A validated experiment YAML (see configs/README.md for every key)."""

    name: str
    out: str
    model: str
    sources: list[str]
    targets: list[str]
    methods: list[MethodSpec]
    data_dir: str | None = None
    sources_dir: str | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    progress: bool = True
    common: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    source_per_seed: bool = False
    target: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    shots: list[int | None] = field(default_factory=lambda: [None])
    spot: dict = field(default_factory=lambda: dict(SPOT_DEFAULTS))
    mpt: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain dict (written to experiment.json of the output folder)."""
        return dataclasses.asdict(self)


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


def _fail(where: str, msg: str) -> typing.NoReturn:
    raise BmtptError(f"{where}: {msg}")


def _check_value(where: str, key: str, value, hint, choices):
    """Type-check one option against its dataclass annotation; ints are accepted for floats."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        _fail(where, f"{key} may not be null")
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          str: isinstance(value, str | int | float) and not isinstance(value, bool)}.get(base, True)
    if not ok:
        _fail(where, f"{key} must be {getattr(base, '__name__', base)}, got {value!r}")
    value = float(value) if base is float else str(value) if base is str else value
    if choices and value not in choices:
        _fail(where, f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def _section(where: str, raw, allowed: set[str], cls=MptConfig) -> dict:
    """A mapping of options checked against `allowed` names and the types of `cls`'s fields."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _fail(where, f"must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    out = {}
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        if key not in allowed:
            hint = " (set by the runner or at the top level)" if key in RUN_KEYS | {"task", "tasks", "posterior",
                                                                                   "method"} else ""
            _fail(where, f"unknown key {key!r}{hint}")
        out[key] = _check_value(where, key, value, hints.get(key, typing.Any), meta.get(key, {}).get("choices"))
    return out


def _task_list(where: str, raw, allow_split: bool = False) -> list[str]:
    if isinstance(raw, str):
        raw = [x.strip() for x in raw.split(",") if x.strip()]
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        _fail(where, "must be a non-empty list of task names")
    if len(set(raw)) != len(raw):
        _fail(where, "lists a task twice")
    if not allow_split and any("@" in x for x in raw):
        _fail(where, "name@split is for sources only (a target always trains on train and is scored on test)")
    try:
        return [source_task(x) if "@" in x else get_task(x).name for x in raw]
    except BmtptError as e:
        _fail(where, str(e))


def source_task(spec: str) -> str:
    """'name@split' (split dev or test): register a task that trains on `name`'s dev/test split.

    For source tasks whose training file is missing locally (the shared data has QNLI's and SQuAD's
    validation sets but not their train sets); sources are never evaluated, so this is not leakage
    into the targets. The registered name keeps the '@split' so posterior.json shows what was used.
    """
    name, _, split = spec.partition("@")
    if split not in ("dev", "test"):
        raise BmtptError(f"source {spec!r}: the part after @ must be dev or test")
    base = get_task(name)
    full = f"{base.name}@{split}"
    try:
        return get_task(full).name
    except BmtptError:
        pass

    def loader(s: str, data_dir: str | None, seed: int = 0, _base: Task = base, _split: str = split):
        return _base.loader(_split if s == "train" else s, data_dir, seed)

    # a suite of its own: listings of the base's suite (`bmtpt tasks --suite glue`) stay as they were
    register(dataclasses.replace(base, name=full, loader=loader, suite=f"{base.suite}@{split}",
                                 description=f"{base.description} [trained on its {split} split]"))
    return full


def _int_list(where: str, raw, allow_null: bool) -> list:
    if not isinstance(raw, list) or not raw:
        _fail(where, "must be a non-empty list")
    for x in raw:
        if x is None and allow_null:
            continue
        if not isinstance(x, int) or isinstance(x, bool) or x < (1 if allow_null else 0):
            _fail(where, f"entries must be {'positive integers or null' if allow_null else 'integers >= 0'}, "
                         f"got {x!r}")
    if len(set(raw)) != len(raw):
        _fail(where, "lists a value twice")
    return list(raw)


def _methods(where: str, raw) -> list[MethodSpec]:
    if not isinstance(raw, list) or not raw:
        _fail(where, f"must be a non-empty list of method names ({', '.join(BASES)}) or {{name, base, overrides}}")
    specs = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            _fail(at, "must be a method name or a mapping {name, base, overrides}")
        extra = set(item) - {"name", "base", "overrides", "shots"}
        if extra:
            _fail(at, f"unknown key(s) {', '.join(sorted(map(str, extra)))} (expected name, base, overrides, shots)")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            _fail(at, f"name must be a folder-safe string (letters, digits, _ . + -), got {name!r}")
        base = item.get("base", name)
        if base not in BASES:
            _fail(at, f"unknown base {base!r} for method {name!r} (choose from {', '.join(BASES)})")
        ov = item.get("overrides") or {}
        if not isinstance(ov, dict) or set(ov) - {"source", "target", "spot", "mpt"}:
            _fail(at, "overrides must be a mapping with keys among source, target, spot, mpt")
        parsed = {"source": _section(f"{at}.overrides.source", ov.get("source"), SOURCE_KEYS),
                  "target": _section(f"{at}.overrides.target", ov.get("target"), TARGET_KEYS, TargetConfig),
                  "spot": _spot(f"{at}.overrides.spot", ov.get("spot"), {}),
                  "mpt": _section(f"{at}.overrides.mpt", ov.get("mpt"), MPT_KEYS)}
        clash = {k for k, v in parsed["target"].items() if FIXED_TARGET[base].get(k, v) != v}
        if clash:
            _fail(at, f"method {name!r} (base {base}) fixes target option(s) {', '.join(sorted(clash))}")
        if parsed["source"] and STAGE_KIND[base] is None:
            _fail(at, f"method {name!r} (base {base}) has no source stage to override")
        if "particles" in parsed["source"] and base != "bmtpt":
            _fail(at, f"method {name!r} (base {base}) fixes the number of source prompts")
        if (parsed["spot"] and base != "spot") or (parsed["mpt"] and base != "mpt"):
            _fail(at, f"method {name!r} (base {base}): spot/mpt overrides apply only to those bases")
        only = _int_list(f"{at}.shots", item["shots"], True) if "shots" in item else None
        specs.append(MethodSpec(name, base, parsed, only))
    names = [s.name for s in specs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        _fail(where, f"method name(s) used twice: {', '.join(dups)}")
    return specs


def _spot(where: str, raw, defaults: dict) -> dict:
    if raw is None:
        return dict(defaults)
    if not isinstance(raw, dict) or set(raw) - set(SPOT_DEFAULTS):
        _fail(where, "must be a mapping with keys among steps, pool")
    out = {**defaults, **raw}
    if "steps" in raw and (not isinstance(raw["steps"], int) or isinstance(raw["steps"], bool) or raw["steps"] < 1):
        _fail(where, f"steps must be a positive integer, got {raw['steps']!r}")
    if "pool" in raw and raw["pool"] not in ("flat", "mean"):
        _fail(where, f"pool must be flat or mean, got {raw['pool']!r}")
    return out


def load_experiment(config: str | Path | dict) -> ExperimentConfig:
    """Read and validate an experiment YAML file (or an equivalent dict)."""
    if isinstance(config, dict):
        raw, where, stem = config, "experiment config", "experiment"
    else:
        path = Path(config).expanduser()
        where, stem = str(path), path.stem
        if not path.is_file():
            raise BmtptError(f"experiment config {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise BmtptError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        _fail(where, "must hold a mapping of keys to values")
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = set(raw) - set(STRUCT_KEYS) - set(TOP_RUN_KEYS) - COMMON_KEYS
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(sorted(unknown))} (see configs/README.md)")
    if "model" in raw and "backbone" in raw:
        _fail(where, "give model or backbone, not both")
    model = raw.get("model", raw.get("backbone"))
    if not isinstance(model, str) or not model:
        _fail(where, "model (or backbone) is required: a hub id, local folder, .gguf file or smollm2-135m")
    for key in ("sources", "targets", "methods"):
        if key not in raw:
            _fail(where, f"{key} is required")
    name = raw.get("name", stem)
    if not isinstance(name, str) or not _NAME.match(name):
        _fail(where, f"name must be a folder-safe string, got {name!r}")
    top = _section(where, {k: raw[k] for k in ("data_dir", "device", "trust_remote_code") if k in raw},
                   {"data_dir", "device", "trust_remote_code"})
    source = dict(raw.get("source") or {})
    per_seed = source.pop("per_seed", False)
    if not isinstance(per_seed, bool):
        _fail(f"{where}: source", f"per_seed must be true or false, got {per_seed!r}")
    progress = raw.get("progress", True)
    if not isinstance(progress, bool):
        _fail(where, f"progress must be true or false, got {progress!r}")
    out = raw.get("out", f"runs/{name}")
    sources_dir = raw.get("sources_dir")
    for key, value in (("out", out), ("sources_dir", sources_dir or "x")):
        if not isinstance(value, str) or not value:
            _fail(where, f"{key} must be a folder path, got {value!r}")
    exp = ExperimentConfig(
        name=name, out=out, model=model, progress=progress, sources_dir=sources_dir, **top,
        sources=_task_list(f"{where}: sources", raw["sources"], True),
        targets=_task_list(f"{where}: targets", raw["targets"]),
        methods=_methods(f"{where}: methods", raw["methods"]),
        common=_section(where, {k: v for k, v in raw.items() if k in COMMON_KEYS}, COMMON_KEYS),
        source=_section(f"{where}: source", source, SOURCE_KEYS), source_per_seed=per_seed,
        target=_section(f"{where}: target", raw.get("target"), TARGET_KEYS, TargetConfig),
        seeds=_int_list(f"{where}: seeds", raw.get("seeds", [0]), False),
        shots=_int_list(f"{where}: shots", raw.get("shots", [None]), True),
        spot=_spot(f"{where}: spot", raw.get("spot"), SPOT_DEFAULTS),
        mpt=_section(f"{where}: mpt", raw.get("mpt"), MPT_KEYS))
    for spec in exp.methods:
        if spec.shots is not None and set(spec.shots) - set(exp.shots):
            _fail(f"{where}: methods", f"method {spec.name!r} lists shots {spec.shots} outside the grid's {exp.shots}")
    return exp


def config_hash(values: dict, **extra) -> str:
    """Short hash of a run's options (minus those that do not change its numbers) and extra context."""
    kept = {k: v for k, v in values.items() if k not in HASH_SKIP}
    return hashlib.sha1(json.dumps({**kept, **extra}, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _build(cls, values: dict, where: str):
    try:
        cfg = cls(**values)
        cfg.validate()
    except (BmtptError, TypeError) as e:
        _fail(where, str(e))
    return cfg


def _stage(exp: ExperimentConfig, spec: MethodSpec, seed: int, run: dict, source_root: Path,
           stages: dict[str, Stage]) -> Stage | None:
    """The source stage of one method for one seed (None for pt), added to `stages` when new."""
    kind = STAGE_KIND[spec.base]
    if kind is None:
        return None
    s_seed = seed if exp.source_per_seed else exp.seeds[0]
    values = {**run, **exp.common, **exp.source, **spec.overrides["source"], "tasks": ",".join(exp.sources),
              "seed": s_seed}
    cls = SourceConfig
    if kind == "independent":
        values.update(method="independent", particles=len(exp.sources))
    elif kind == "svgd":
        values["method"] = "svgd"
    else:
        cls = MptConfig
        values.update(method="mpt", particles=1, **exp.mpt, **spec.overrides["mpt"])
    key = f"{kind}-s{s_seed}-{config_hash(values, kind=kind)}"
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
    for seed in exp.seeds:
        # each method's source stage for this seed (stages with the same configuration are shared)
        stage_of = {spec.name: _stage(exp, spec, seed, run, source_root, stages) for spec in exp.methods}
        for shots in exp.shots:
            for spec in exp.methods:
                if spec.shots is not None and shots not in spec.shots:
                    continue  # the method runs in other few-shot settings only
                stage = stage_of[spec.name]
                for task in exp.targets:
                    # options of the global sections that this method does not use (a target run trains one
                    # prompt; only bmtpt has a prior) are left out; in a method's own overrides they are refused
                    unused = {"particle_chunk", *(PRIOR_OPTIONS if not METHODS[spec.base].kind.prior else ())}
                    shared = {k: v for k, v in {**exp.common, **exp.target}.items() if k not in unused}
                    values = {**run, **shared, **spec.overrides["target"], **FIXED_TARGET[spec.base], "task": task,
                              "seed": seed, "posterior": str(stage.cfg.out) if stage else None}
                    borrowed = None
                    if values.get("prior_bandwidth_from") in names:  # a method of the grid: its stage's folder
                        borrowed = stage_of[values["prior_bandwidth_from"]]
                        if borrowed is None:
                            _fail(f"method {spec.name}", f"prior_bandwidth_from names method "
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
