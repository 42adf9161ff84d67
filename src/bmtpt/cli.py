"""The `bmtpt` command line: one function per command, options generated from the config dataclasses.

Every option can also come from a YAML file (`--config FILE`, keys as in config.yaml of a run);
options given on the command line win. Bad input prints one line `bmtpt: error: ...` and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path

import yaml

from . import __version__
from .config import EvalConfig, SourceConfig, TargetConfig, TinyConfig
from .errors import BmtptError


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage block) with exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _base_type(tp):
    """(python type, is_optional) of a field annotation like `int | None`."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing), {})  # annotations are strings under `from __future__ import annotations`
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def _number(kind):
    def parse(text: str):
        if text.lower() in ("none", "null"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_config_options(parser: argparse.ArgumentParser, cls) -> None:
    """One option per dataclass field (`--snake-case`), its help, default and choices."""
    for f in dataclasses.fields(cls):
        kind, optional = _base_type(f.type)
        meta = f.metadata
        helptext = meta.get("help", "")
        if meta.get("positional"):
            parser.add_argument(f.name, metavar=f.name.upper(), help=helptext)
            continue
        flag = "--" + f.name.replace("_", "-")
        default_txt = "" if f.default in (None, "") else f" (default: {f.default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=helptext + default_txt)
        else:
            parse = _number(kind) if optional and kind in (int, float) else kind
            parser.add_argument(flag, type=parse, choices=meta.get("choices"), default=argparse.SUPPRESS,
                                metavar=None if meta.get("choices") else f.name.upper(),
                                help=helptext + default_txt)


def build_config(cls, ns: argparse.Namespace):
    """Config = dataclass defaults < YAML file (--config) < command-line options."""
    values: dict = {}
    if getattr(ns, "config", None):
        path = Path(ns.config).expanduser()
        if not path.is_file():
            raise BmtptError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise BmtptError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(loaded, dict):
            raise BmtptError(f"config file {path} must hold a mapping of option names to values")
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in loaded.items():
            key = str(key).replace("-", "_")
            if key == "command":
                continue
            if key not in names:
                raise BmtptError(f"config file {path}: unknown option {key!r}")
            values[key] = value
    for f in dataclasses.fields(cls):
        if f.name in vars(ns) and not (f.metadata.get("positional") and getattr(ns, f.name) is None):
            values[f.name] = getattr(ns, f.name)
    if "tasks" in values and isinstance(values["tasks"], list):
        values["tasks"] = ",".join(values["tasks"])
    try:
        return cls(**values)
    except TypeError as e:
        raise BmtptError(str(e)) from e


# ----------------------------------------------------------------------------- commands
def cmd_source(cfg: SourceConfig) -> int:
    """Train the source posterior's particles."""
    from .source import run_source

    res = run_source(cfg)
    print(f"wrote {res.out / 'particles.safetensors'} ({tuple(res.particles.shape)}) and posterior.json; "
          f"bandwidth {res.info['bandwidth']:.4g}")
    return 0


def cmd_target(cfg: TargetConfig) -> int:
    """Train a target prompt."""
    from .target import run_target

    res = run_target(cfg)
    print(json.dumps({"task": cfg.task, "method": cfg.method, **res.metrics}, indent=2))
    print(f"wrote {res.out / 'prompt.safetensors'} and target.json")
    return 0


def cmd_eval(cfg: EvalConfig) -> int:
    """Evaluate a saved run."""
    from .evaluate import run_eval

    results = run_eval(cfg)
    print(json.dumps(results, indent=2))
    print(f"wrote {Path(cfg.run_dir) / f'eval-{cfg.split}.json'}")
    return 0


def cmd_tiny(cfg: TinyConfig) -> int:
    """Write a tiny random-weight model."""
    from .tiny import save_tiny

    cfg.validate()
    out = Path(cfg.dir)
    if (out / "config.json").exists() and not cfg.overwrite:
        raise BmtptError(f"{out} already holds a model; pass --overwrite to replace it")
    save_tiny(out, cfg.arch, cfg.seed)
    print(f"wrote a tiny {cfg.arch} model to {out}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """Print the registered tasks."""
    from .tasks import list_tasks

    rows = [(t.name, t.suite, ",".join(t.metrics), "/".join(t.verbalizers) if t.verbalizers else "(generate)",
             t.description) for t in list_tasks()]
    if args.suite:
        rows = [r for r in rows if r[1] == args.suite]
    head = ("task", "suite", "metrics", "labels", "description")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the offline demo."""
    from .demo import run_demo

    run_demo(out=args.out, quick=args.quick, seed=args.seed, overwrite=args.overwrite, progress=args.progress)
    return 0


CONFIG_COMMANDS = {"source": (SourceConfig, cmd_source), "target": (TargetConfig, cmd_target),
                   "eval": (EvalConfig, cmd_eval), "tiny-model": (TinyConfig, cmd_tiny)}


def make_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand."""
    p = _Parser(prog="bmtpt", description="Bayesian multi-task prompt transfer for frozen language models.")
    p.add_argument("--version", action="version", version=f"bmtpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (cls, _fn) in CONFIG_COMMANDS.items():
        sp = sub.add_parser(name, help=(cls.__doc__ or "").split(":", 1)[-1].strip(), description=cls.__doc__)
        sp.add_argument("--config", metavar="FILE", help="YAML file of options (command-line options win)")
        add_config_options(sp, cls)
    t = sub.add_parser("tasks", help="list the registered tasks")
    t.add_argument("--suite", help="only this suite (e.g. synth, glue)")
    d = sub.add_parser("demo", help="the offline demo: SmolLM2-135M on a generated multi-task suite")
    d.add_argument("--out", default="./bmtpt-demo", help="output folder (default: ./bmtpt-demo)")
    d.add_argument("--quick", action="store_true", help="a smaller run (at most 3 minutes on 2 CPU cores)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    d.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    d.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `bmtpt` and `python -m bmtpt`."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in CONFIG_COMMANDS:
            cls, fn = CONFIG_COMMANDS[args.command]
            return fn(build_config(cls, args))
        return {"tasks": cmd_tasks, "demo": cmd_demo}[args.command](args)
    except BmtptError as e:
        print(f"bmtpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bmtpt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line unless the user asks for the traceback
        if os.environ.get("BMTPT_DEBUG"):
            raise
        print(f"bmtpt {args.command}: internal error: {type(e).__name__}: {e} "
              "(set BMTPT_DEBUG=1 for the traceback; please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
