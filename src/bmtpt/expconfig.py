"""The experiment YAML: parsing and validation (one-line BmtptError messages); `bmtpt.grid` plans its cells.

Every key is documented in configs/README.md. Layering of a target run's options, later wins:
TargetConfig defaults < top-level common hyperparameters < `target:` < `per_target:` (the cell's task)
< the method's `overrides.target`
< what the method's base fixes (e.g. avg: method avg, init mean) < the cell (task, seed, k-shot cap).
A source stage's options are layered the same way from `source:` (and `mpt:` for the MPT stage).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .baselines import MptConfig
from .config import CommonConfig, SourceConfig, TargetConfig, read_yaml_mapping, result_neutral_options
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
               "seeds", "shots", "methods", "spot", "mpt", "per_target", "compare")
COMMON_KEYS = {f.name for f in dataclasses.fields(CommonConfig)} - RUN_KEYS
SOURCE_KEYS = {f.name for f in dataclasses.fields(SourceConfig)} - RUN_KEYS - {"tasks", "method"}
# a method's overrides may also set "method" (base bmtpt only: its particles may be the per-task prompts)
OVERRIDE_SOURCE_KEYS = SOURCE_KEYS | {"method"}
TARGET_KEYS = {f.name for f in dataclasses.fields(TargetConfig)} - RUN_KEYS - {"task", "posterior", "method"}
MPT_KEYS = {"lr_factor", "factor_init"}
# what an MPT source stage reads of the `source:` options (the rest are SVGD's: a global `source:` sets them for
# the SVGD stages, a method's own overrides may not set them for MPT)
MPT_STAGE_KEYS = {f.name for f in dataclasses.fields(MptConfig)} - RUN_KEYS
SPOT_DEFAULTS = {"steps": 20, "pool": "flat"}
# options that do not change a run's numbers (declared once, in bmtpt.config; the resume check uses them too)
HASH_SKIP = result_neutral_options()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class MethodSpec:
    """One grid method: a name, the built-in base it runs, its overrides {source, target, spot, mpt}, the
    few-shot settings and seeds it runs in (None: all of the grid's `shots` / `seeds`; its seeds may go beyond
    the grid's, which then stay the main comparison's) and its own source
    tasks (None: the grid's `sources`; e.g. a leave-one-source-out ablation)."""

    name: str
    base: str
    overrides: dict = field(default_factory=dict)
    shots: list | None = None
    sources: list[str] | None = None
    seeds: list[int] | None = None


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
    per_target: dict = field(default_factory=dict)  # task -> target options for that task's cells only
    seeds: list[int] = field(default_factory=lambda: [0])
    shots: list[int | None] = field(default_factory=lambda: [None])
    spot: dict = field(default_factory=lambda: dict(SPOT_DEFAULTS))
    mpt: dict = field(default_factory=dict)
    compare: list[str] = field(default_factory=list)  # methods that also get the main paired differences

    @property
    def all_seeds(self) -> list[int]:
        """The grid's seeds and those a method adds (e.g. more seeds for the one comparison that needs them)."""
        return sorted(set(self.seeds).union(*(spec.seeds or () for spec in self.methods)))

    def as_dict(self) -> dict:
        """Plain dict (written to experiment.json of the output folder)."""
        return dataclasses.asdict(self)


def fail(where: str, msg: str) -> typing.NoReturn:
    """Raise the one-line error of a bad experiment config: 'WHERE: MESSAGE'."""
    raise BmtptError(f"{where}: {msg}")


def _check_value(where: str, key: str, value, hint, choices):
    """Type-check one option against its dataclass annotation; ints are accepted for floats."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        fail(where, f"{key} may not be null")
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          str: isinstance(value, str | int | float) and not isinstance(value, bool)}.get(base, True)
    if not ok:
        fail(where, f"{key} must be {getattr(base, '__name__', base)}, got {value!r}")
    value = float(value) if base is float else str(value) if base is str else value
    if choices and value not in choices:
        fail(where, f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def _section(where: str, raw, allowed: set[str], cls=SourceConfig) -> dict:
    """A mapping of options checked against `allowed` names and the types of `cls`'s fields."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail(where, f"must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    out = {}
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        if key not in allowed:
            hint = " (set by the runner or at the top level)" if key in RUN_KEYS | {"task", "tasks", "posterior",
                                                                                   "method"} else ""
            fail(where, f"unknown key {key!r}{hint}")
        out[key] = _check_value(where, key, value, hints.get(key, typing.Any), meta.get(key, {}).get("choices"))
    return out


def _task_list(where: str, raw, allow_split: bool = False) -> list[str]:
    if isinstance(raw, str):
        raw = [x.strip() for x in raw.split(",") if x.strip()]
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        fail(where, "must be a non-empty list of task names")
    if len(set(raw)) != len(raw):
        fail(where, "lists a task twice")
    if not allow_split and any("@" in x for x in raw):
        fail(where, "name@split is for sources only (a target always trains on train and is scored on test)")
    try:
        return [source_task(x) if "@" in x else get_task(x).name for x in raw]
    except BmtptError as e:
        fail(where, str(e))


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
        fail(where, "must be a non-empty list")
    for x in raw:
        if x is None and allow_null:
            continue
        if not isinstance(x, int) or isinstance(x, bool) or x < (1 if allow_null else 0):
            fail(where, f"entries must be {'positive integers or null' if allow_null else 'integers >= 0'}, "
                         f"got {x!r}")
    if len(set(raw)) != len(raw):
        fail(where, "lists a value twice")
    return list(raw)


def _methods(where: str, raw) -> list[MethodSpec]:
    if not isinstance(raw, list) or not raw:
        fail(where, f"must be a non-empty list of method names ({', '.join(BASES)}) or {{name, base, overrides}}")
    specs = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            fail(at, "must be a method name or a mapping {name, base, overrides}")
        extra = set(item) - {"name", "base", "overrides", "shots", "sources", "seeds"}
        if extra:
            fail(at, f"unknown key(s) {', '.join(sorted(map(str, extra)))} (expected name, base, overrides, shots, "
                 "seeds, sources)")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            fail(at, f"name must be a folder-safe string (letters, digits, _ . + -), got {name!r}")
        base = item.get("base", name)
        if base not in BASES:
            fail(at, f"unknown base {base!r} for method {name!r} (choose from {', '.join(BASES)})")
        ov = item.get("overrides") or {}
        if not isinstance(ov, dict) or set(ov) - {"source", "target", "spot", "mpt"}:
            fail(at, "overrides must be a mapping with keys among source, target, spot, mpt")
        parsed = {"source": _section(f"{at}.overrides.source", ov.get("source"), OVERRIDE_SOURCE_KEYS),
                  "target": _section(f"{at}.overrides.target", ov.get("target"), TARGET_KEYS, TargetConfig),
                  "spot": _spot(f"{at}.overrides.spot", ov.get("spot"), {}),
                  "mpt": _section(f"{at}.overrides.mpt", ov.get("mpt"), MPT_KEYS, MptConfig)}
        clash = {k for k, v in parsed["target"].items() if FIXED_TARGET[base].get(k, v) != v}
        if clash:
            fail(at, f"method {name!r} (base {base}) fixes target option(s) {', '.join(sorted(clash))}")
        if parsed["source"] and STAGE_KIND[base] is None:
            fail(at, f"method {name!r} (base {base}) has no source stage to override")
        if "method" in parsed["source"] and base != "bmtpt":  # (the choices svgd | independent: SourceConfig's)
            fail(at, f"method {name!r}: overrides.source.method is for base bmtpt only (independent: its particles "
                 "are one prompt per source task, the stage avg and spot train)")
        if "particles" in parsed["source"] and base != "bmtpt":
            fail(at, f"method {name!r} (base {base}) fixes the number of source prompts")
        svgd_only = sorted(set(parsed["source"]) - MPT_STAGE_KEYS) if STAGE_KIND[base] == "mpt" else []
        if svgd_only:
            fail(at, f"method {name!r} (base mpt): MPT's source stage has no {', '.join(svgd_only)} (SVGD options)")
        if (parsed["spot"] and base != "spot") or (parsed["mpt"] and base != "mpt"):
            fail(at, f"method {name!r} (base {base}): spot/mpt overrides apply only to those bases")
        only = _int_list(f"{at}.shots", item["shots"], True) if "shots" in item else None
        own = None
        if "sources" in item:
            if STAGE_KIND[base] is None:
                fail(at, f"method {name!r} (base {base}) has no source stage to give sources")
            own = _task_list(f"{at}.sources", item["sources"], allow_split=True)
        seeds = _int_list(f"{at}.seeds", item["seeds"], False) if "seeds" in item else None
        specs.append(MethodSpec(name, base, parsed, only, own, seeds))
    names = [s.name for s in specs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        fail(where, f"method name(s) used twice: {', '.join(dups)}")
    return specs


def _spot(where: str, raw, defaults: dict) -> dict:
    if raw is None:
        return dict(defaults)
    if not isinstance(raw, dict) or set(raw) - set(SPOT_DEFAULTS):
        fail(where, "must be a mapping with keys among steps, pool")
    out = {**defaults, **raw}
    if "steps" in raw and (not isinstance(raw["steps"], int) or isinstance(raw["steps"], bool) or raw["steps"] < 1):
        fail(where, f"steps must be a positive integer, got {raw['steps']!r}")
    if "pool" in raw and raw["pool"] not in ("flat", "mean"):
        fail(where, f"pool must be flat or mean, got {raw['pool']!r}")
    return out


def _per_target(where: str, raw, targets) -> dict:
    """`per_target:` a mapping of target tasks (of `targets:`) to target options for that task's cells."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail(where, f"must map target tasks to options, got {type(raw).__name__}")
    listed = set(_task_list(f"{where} (targets)", targets))
    out = {}
    for task, options in raw.items():
        if task not in listed:
            fail(where, f"{task!r} is not one of the targets ({', '.join(sorted(listed))})")
        out[task] = _section(f"{where}.{task}", options, TARGET_KEYS, TargetConfig)
    return out


def load_experiment(config: str | Path | dict) -> ExperimentConfig:
    """Read and validate an experiment YAML file (or an equivalent dict)."""
    if isinstance(config, dict):
        raw, where, stem = config, "experiment config", "experiment"
    else:
        path = Path(config).expanduser()
        where, stem = str(path), path.stem
        raw = read_yaml_mapping(path, "experiment config", "keys to values") or None  # empty: refused below
    if not isinstance(raw, dict):
        fail(where, "must hold a mapping of keys to values")
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = set(raw) - set(STRUCT_KEYS) - set(TOP_RUN_KEYS) - COMMON_KEYS
    if unknown:
        fail(where, f"unknown key(s) {', '.join(sorted(unknown))} (see configs/README.md)")
    if "model" in raw and "backbone" in raw:
        fail(where, "give model or backbone, not both")
    model = raw.get("model", raw.get("backbone"))
    if not isinstance(model, str) or not model:
        fail(where, "model (or backbone) is required: a hub id, local folder, .gguf file or smollm2-135m")
    for key in ("sources", "targets", "methods"):
        if key not in raw:
            fail(where, f"{key} is required")
    name = raw.get("name", stem)
    if not isinstance(name, str) or not _NAME.match(name):
        fail(where, f"name must be a folder-safe string, got {name!r}")
    top = _section(where, {k: raw[k] for k in ("data_dir", "device", "trust_remote_code") if k in raw},
                   {"data_dir", "device", "trust_remote_code"})
    source = dict(raw.get("source") or {})
    per_seed = source.pop("per_seed", False)
    if not isinstance(per_seed, bool):
        fail(f"{where}: source", f"per_seed must be true or false, got {per_seed!r}")
    progress = raw.get("progress", True)
    if not isinstance(progress, bool):
        fail(where, f"progress must be true or false, got {progress!r}")
    out = raw.get("out", f"runs/{name}")
    sources_dir = raw.get("sources_dir")
    for key, value in (("out", out), ("sources_dir", sources_dir or "x")):
        if not isinstance(value, str) or not value:
            fail(where, f"{key} must be a folder path, got {value!r}")
    exp = ExperimentConfig(
        name=name, out=out, model=model, progress=progress, sources_dir=sources_dir, **top,
        sources=_task_list(f"{where}: sources", raw["sources"], True),
        targets=_task_list(f"{where}: targets", raw["targets"]),
        methods=_methods(f"{where}: methods", raw["methods"]),
        common=_section(where, {k: v for k, v in raw.items() if k in COMMON_KEYS}, COMMON_KEYS),
        source=_section(f"{where}: source", source, SOURCE_KEYS), source_per_seed=per_seed,
        target=_section(f"{where}: target", raw.get("target"), TARGET_KEYS, TargetConfig),
        per_target=_per_target(f"{where}: per_target", raw.get("per_target"), raw["targets"]),
        seeds=_int_list(f"{where}: seeds", raw.get("seeds", [0]), False),
        shots=_int_list(f"{where}: shots", raw.get("shots", [None]), True),
        spot=_spot(f"{where}: spot", raw.get("spot"), SPOT_DEFAULTS),
        mpt=_section(f"{where}: mpt", raw.get("mpt"), MPT_KEYS, MptConfig))
    compare = raw.get("compare") or []
    names = [spec.name for spec in exp.methods]
    if not isinstance(compare, list) or any(c not in names for c in compare):
        fail(where, f"compare must list methods of this config (its methods: {', '.join(names)}), got {compare!r}")
    exp.compare = list(compare)
    for spec in exp.methods:
        if spec.shots is not None and set(spec.shots) - set(exp.shots):
            fail(f"{where}: methods", f"method {spec.name!r} lists shots {spec.shots} outside the grid's {exp.shots}")
    return exp
