"""The `bmtpt` command line: one function per command, options generated from the config dataclasses.

Every option can also come from a YAML file (`--config FILE`, keys as in config.yaml of a run);
options given on the command line win. With `--resume --out RUN` the run's own config.yaml fills in
every option not given. Bad input prints one line `bmtpt: error: ...` and exits 2.
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

from . import __version__
from .bench import SpeedConfig, cmd_bench
from .config import SourceConfig, TargetConfig, read_yaml_mapping
from .demo import DemoConfig
from .errors import BmtptError
from .predict import PredictConfig
from .toolconfig import EvalConfig, ExportConfig, InspectConfig, TinyConfig


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


def _shots_list(text: str) -> list[int | None]:
    """'16,full' -> [16, None] (the argparse type of `bmtpt experiment --shots`)."""
    out: list[int | None] = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if item == "full":
            out.append(None)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"{item!r} is not a positive number or full")
    return out


def _seed_list(text: str) -> list[int]:
    """'0,2' -> [0, 2] (the argparse type of `bmtpt experiment --seeds`)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if not x.isdigit()]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]!r} is not a seed (a whole number >= 0)")
    return [int(x) for x in items]


def _name_list(text: str) -> list[str]:
    """'pt,avg, bmtpt' -> ['pt', 'avg', 'bmtpt'] (empty items dropped)."""
    return [name.strip() for name in text.split(",") if name.strip()]


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
        loaded = read_yaml_mapping(ns.config, "config file", "option names to values")
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in loaded.items():
            key = str(key).replace("-", "_")
            if key == "command":
                continue
            if key not in names:
                raise BmtptError(f"config file {Path(ns.config).expanduser()}: unknown option {key!r}")
            values[key] = value
    for f in dataclasses.fields(cls):
        if f.name in vars(ns) and not (f.metadata.get("positional") and getattr(ns, f.name) is None):
            values[f.name] = getattr(ns, f.name)
    if values.get("resume") and values.get("out"):  # --resume: the run's own options, under those given here
        from .runs import saved_options

        names = {f.name for f in dataclasses.fields(cls)}
        saved = saved_options(values["out"], getattr(ns, "command", ""))
        values = {**{k: v for k, v in saved.items() if k in names}, **values}
    if "tasks" in values and isinstance(values["tasks"], list):
        values["tasks"] = ",".join(values["tasks"])
    try:
        return cls(**values)
    except TypeError as e:
        raise BmtptError(str(e)) from e


# ----------------------------------------------------------------------------- commands
# the commands that run under torchrun (`bmtpt.distributed`); the others refuse to run in several processes
DISTRIBUTED_COMMANDS = ("source", "target")


def _main_process() -> bool:
    """Rank 0 of a torchrun launch, or the only process: the one that prints results."""
    return os.environ.get("RANK", "0") == "0"


def cmd_source(cfg: SourceConfig) -> int:
    """Train the source posterior's particles."""
    from .source import run_source

    res = run_source(cfg)
    if _main_process():
        h = res.info["bandwidth"]
        print(f"wrote {res.out / 'particles.safetensors'} ({tuple(res.particles.shape)}) and posterior.json; "
              f"bandwidth {f'{h:.4g}' if h is not None else 'none (one particle)'}")
    return 0


def cmd_target(cfg: TargetConfig) -> int:
    """Train a target prompt."""
    from .train import train_target

    res = train_target(cfg)
    if _main_process():
        print(json.dumps({"task": cfg.task, "method": cfg.method, **res.metrics}, indent=2))
        print(f"wrote {res.out / 'prompt.safetensors'} and target.json")
    return 0


def cmd_inspect(cfg: InspectConfig) -> int:
    """Print (and draw) a source run's task interference and per-particle task losses."""
    from .inspection import run_inspect

    run_inspect(cfg)
    return 0


def cmd_eval(cfg: EvalConfig) -> int:
    """Evaluate a saved run."""
    from .evaluate import run_eval

    results = run_eval(cfg)
    print(json.dumps(results, indent=2))
    print(f"wrote {Path(cfg.run_dir) / f'eval-{cfg.split}.json'}")
    return 0


def cmd_predict(cfg: PredictConfig) -> int:
    """Predict with a trained prompt: one JSONL line per input."""
    from .predict import run_predict

    results = run_predict(cfg)
    if cfg.output != "-":
        print(f"wrote {len(results)} predictions to {cfg.output}", file=sys.stderr)
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


def cmd_export(cfg: ExportConfig) -> int:
    """Write a run's prompt as a PEFT prompt-tuning adapter."""
    from .interop import run_export

    out = run_export(cfg)
    print(f"wrote {out / 'adapter_config.json'} and adapter_model.safetensors (PEFT prompt tuning)")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run (or continue) an experiment grid, or only re-render its report."""
    from .experiment import run_experiment

    run_experiment(args.config, render_only=args.render_only, progress=args.progress, plots=args.plots,
                   methods=args.methods, shots=args.shots, seeds=args.seeds, stages_only=args.stages_only)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """Print the registered tasks: split convention, official and train/dev/test sizes, metrics."""
    from .tasks import get_task, list_tasks
    from .tasktable import count_all, task_table

    for f in args.files:  # task YAML files join the registry (suite "custom")
        if not f.lower().endswith((".yaml", ".yml")):
            raise BmtptError(f"{f} is not a task file (a task YAML ends in .yaml or .yml; see README, your own data)")
        get_task(f)
    tasks = list_tasks()
    if args.suite:
        suites = sorted({t.suite for t in tasks})
        if args.suite not in suites:
            raise BmtptError(f"unknown suite {args.suite!r} (choose from {', '.join(suites)})")
        tasks = [t for t in tasks if t.suite == args.suite]
    counts, data_dir = None, None
    tty = sys.stderr.isatty()

    def progress(i, n, task):
        if tty:
            print(f"\r\033[K[{i}/{n}] {task.name}", end="", file=sys.stderr, flush=True)

    if args.data_dir:
        data_dir = Path(args.data_dir).expanduser()
        if not data_dir.is_dir():
            raise BmtptError(f"data dir {data_dir} does not exist")
    if args.max_input_tokens is not None and not (args.model and args.data_dir):
        raise BmtptError("--max-input-tokens counts truncated inputs: give --model and --data-dir with it")
    if args.max_input_tokens is not None and args.max_input_tokens <= 0:
        raise BmtptError(f"--max-input-tokens must be positive, got {args.max_input_tokens}")
    args.max_input_tokens = args.max_input_tokens or 256

    if args.model:  # the label words and input truncation of one backbone instead of the size table
        from .backbone import load_tokenizer
        from .taskfit import fit_table

        tokenizer, is_seq2seq = load_tokenizer(args.model, args.trust_remote_code)
        if args.data_dir:
            print(f"tokenising the inputs of {len(tasks)} tasks from {data_dir} ...", file=sys.stderr, flush=True)
        print(fit_table(tasks, tokenizer, is_seq2seq, args.model, args.verbalizers,
                        str(data_dir) if args.data_dir else None, args.max_input_tokens, progress))
        _clear(tty)
        return 0
    if args.data_dir:
        print(f"reading the split sizes of {len(tasks)} tasks from {data_dir} ...", file=sys.stderr, flush=True)
        counts = count_all(tasks, str(data_dir), progress)
        _clear(tty)
    print(task_table(tasks, args.format, counts))
    return 0


def _clear(tty: bool) -> None:
    if tty:
        print("\r\033[K", end="", file=sys.stderr, flush=True)


def cmd_demo(cfg) -> int:
    """Run the offline demo."""
    from .demo import run_demo

    run_demo(cfg)
    return 0


CONFIG_COMMANDS = {"source": (SourceConfig, cmd_source), "target": (TargetConfig, cmd_target),
                   "eval": (EvalConfig, cmd_eval), "predict": (PredictConfig, cmd_predict),
                   "tiny-model": (TinyConfig, cmd_tiny),
                   "export": (ExportConfig, cmd_export),
                   "demo": (DemoConfig, cmd_demo), "bench": (SpeedConfig, cmd_bench),
                   "inspect": (InspectConfig, cmd_inspect)}


def make_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand."""
    p = _Parser(prog="bmtpt", description="Bayesian multi-task prompt transfer for frozen language models.")
    p.add_argument("--version", action="version", version=f"bmtpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (cls, _fn) in CONFIG_COMMANDS.items():
        sp = sub.add_parser(name, help=(cls.__doc__ or "").split(":", 1)[-1].strip(), description=cls.__doc__)
        sp.add_argument("--config", metavar="FILE", help="YAML file of options (command-line options win)")
        add_config_options(sp, cls)
    t = sub.add_parser("tasks", help="list the registered tasks: split convention, sizes, metrics",
                       description="List the registered tasks with their split convention, the official sizes "
                       "of their original splits, the train/dev/test sizes bmtpt cuts from them, and metrics. "
                       "No data is read unless --data-dir is given (see docs/tasks.md).")
    t.add_argument("files", nargs="*", metavar="TASK_FILE", help="task YAML files to list too (suite custom)")
    t.add_argument("--suite", help="only this suite (e.g. synth, glue, superglue, qa, mrqa, other, sentences, "
                   "custom)")
    t.add_argument("--format", choices=("text", "md"), default="text",
                   help="aligned text columns (default) or a markdown table")
    t.add_argument("--data-dir", metavar="DIR",
                   help="read the train/dev/test sizes from the local files under DIR ('missing' where absent)")
    t.add_argument("--model", metavar="BACKBONE",
                   help="instead of the sizes, show what each task becomes on this backbone (its tokenizer only): "
                   "the label words classification is trained and scored on, and with --data-dir how many inputs "
                   "exceed --max-input-tokens (a markdown table)")
    t.add_argument("--max-input-tokens", type=int, metavar="N",
                   help="with --model and --data-dir: count the inputs longer than N tokens (default 256)")
    t.add_argument("--verbalizers", choices=("auto", "labels"), default="auto",
                   help="with --model: the label-word rule to show (see `bmtpt target --help`)")
    t.add_argument("--trust-remote-code", action="store_true",
                   help="with --model: allow the backbone's own tokenizer code from the hub to run")
    x = sub.add_parser("experiment", help="run a grid of methods x target tasks x seeds (x k-shot) from a YAML file",
                       description="Run (or continue: finished cells are skipped) the grid of CONFIG.yaml, then "
                       "write results.jsonl, results.md and plots to its out folder (see configs/README.md).")
    x.add_argument("config", metavar="CONFIG", help="experiment YAML file")
    x.add_argument("--render-only", action="store_true", help="only re-render results.md and plots from results.jsonl")
    x.add_argument("--stages-only", action="store_true",
                   help="train (or find) the source stages that the selected methods' cells use, finished or not, "
                   "run no cell, then render (e.g. to bring back the stages of a results.jsonl copied without its "
                   "runs, or to train the sources first)")
    x.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars of the stages (default: the config's progress key)")
    x.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the PNG plots (default: yes; needs matplotlib)")
    x.add_argument("--methods", type=_name_list, metavar="M[,M...]",
                   help="run only the cells of these methods of the config (e.g. the main comparison first); "
                   "the others wait for a later call, and the report shows every finished cell")
    x.add_argument("--shots", type=_shots_list, metavar="K[,K...]",
                   help="run only the cells of these few-shot settings of the config (numbers, or full for the "
                   "full training sets), e.g. --shots 16 before the slower full-data cells")
    x.add_argument("--seeds", type=_seed_list, metavar="S[,S...]",
                   help="run only the cells of these seeds of the config, e.g. --seeds 0 for a first look at every "
                   "method; the others wait for a later call")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `bmtpt` and `python -m bmtpt`."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise BmtptError(f"bmtpt {args.command} runs in one process; under torchrun only "
                             f"{' and '.join(DISTRIBUTED_COMMANDS)} runs are distributed (launch it without torchrun)")
        if args.command in CONFIG_COMMANDS:
            cls, fn = CONFIG_COMMANDS[args.command]
            return fn(build_config(cls, args))
        return {"tasks": cmd_tasks, "experiment": cmd_experiment}[args.command](args)
    except BmtptError as e:
        print(f"bmtpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bmtpt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug, not bad input: one line unless the user asks for the traceback
        if os.environ.get("BMTPT_DEBUG"):
            raise
        print(f"bmtpt {args.command}: internal error: {type(e).__name__}: {e} "
              "(set BMTPT_DEBUG=1 for the traceback; please report it)", file=sys.stderr)
        return 1
    finally:
        dist = sys.modules.get("torch.distributed")  # a torchrun launch: leave the process group cleanly
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
