"""What every training command shares: run folders, devices, optimisers, data loading, logging."""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from .checkpoint import CHECKPOINT_FILE, read_checkpoint_meta, remove_stale_temporaries
from .config import CommonConfig, read_yaml_mapping
from .errors import BmtptError
from .runfiles import atomic_write_bytes
from .tasks import Example, Task

RESULT_FILES = ("posterior.json", "particles.safetensors", "target.json", "prompt.safetensors", "metrics.jsonl",
                "predictions-test.json")
FINISHED_FILES = ("posterior.json", "target.json")  # written last: their presence means the run completed


def resolve_device(spec: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; other values are checked."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise BmtptError(f"--device {spec} asked for, but no CUDA device is available")
    return spec


def _final_marker(out: Path) -> str | None:
    """The file a finished run writes last (posterior.json or target.json), if present."""
    return next((f for f in FINISHED_FILES if (out / f).exists()), None)


def check_run_dir(cfg: CommonConfig) -> Path:
    """Refuse a run folder that cannot be used as asked, before anything is loaded or written.

    Without --resume or --overwrite a folder holding results, a checkpoint or a metrics log is refused;
    --resume needs a checkpoint of an unfinished run; --overwrite accepts anything.
    """
    out = Path(cfg.out).expanduser()
    resume = getattr(cfg, "resume", False)
    if out.exists() and not out.is_dir():
        raise BmtptError(f"--out {out} exists and is not a folder")
    if resume and cfg.overwrite:
        raise BmtptError("--resume continues the run in --out and --overwrite starts it over: give only one")
    ckpt = out / CHECKPOINT_FILE
    finished = _final_marker(out)
    if resume:
        if finished:
            raise BmtptError(f"the run in {out} is already complete ({finished}); there is nothing to resume")
        if not ckpt.is_file():
            raise BmtptError(f"{out} holds no checkpoint to resume from ({CHECKPOINT_FILE}; a run writes one every "
                             "--checkpoint-every steps): start the run without --resume")
        return out
    if cfg.overwrite:
        return out
    found = [f for f in RESULT_FILES if (out / f).exists()]
    if finished:
        raise BmtptError(f"{out} already holds results ({', '.join(found)}); pass --overwrite to replace them "
                         "or choose another --out")
    if ckpt.is_file():
        raise BmtptError(f"{out} holds an unfinished run ({_checkpoint_step(out)}); pass --resume to continue it, "
                         "--overwrite to start over, or choose another --out")
    if found:
        raise BmtptError(f"{out} already holds results ({', '.join(found)}) of a run that stopped before its first "
                         "checkpoint; pass --overwrite to replace them or choose another --out")
    return out


def _checkpoint_step(out: Path) -> str:
    try:
        meta = read_checkpoint_meta(out)
        return f"checkpoint at step {meta['step']} of {meta['config'].get('steps', '?')}"
    except (BmtptError, KeyError, TypeError, AttributeError):
        return f"an unreadable {CHECKPOINT_FILE}"


def prepare_run_dir(cfg: CommonConfig, resumable: bool = False) -> Path:
    """Create the run folder after `check_run_dir`'s checks; with --overwrite remove the old results.

    Only our own result files (and the checkpoint) are removed; anything else the user put there
    stays. Stages that cannot resume (resumable=False) refuse --resume.
    """
    if getattr(cfg, "resume", False) and not resumable:
        raise BmtptError("this command cannot resume a run; start it without --resume")
    out = check_run_dir(cfg)
    if cfg.overwrite:
        for f in (*RESULT_FILES, CHECKPOINT_FILE):
            (out / f).unlink(missing_ok=True)
        if (out / "checkpoints").is_dir():
            shutil.rmtree(out / "checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    return out


def saved_options(out: str | Path, command: str) -> dict:
    """The options of the run in `out` (its config.yaml, else its checkpoint's copy), for --resume.

    The run-control flags (resume, overwrite) are left out: they belong to this invocation.
    """
    out = Path(out).expanduser()
    path = out / "config.yaml"
    if path.is_file():
        saved = read_yaml_mapping(path, "the run's options file", "option names to values")
    elif (out / CHECKPOINT_FILE).is_file():
        meta = read_checkpoint_meta(out)
        saved = {"command": meta.get("kind"), **meta.get("config", {})}
    else:
        raise BmtptError(f"{out} holds no checkpoint to resume from ({CHECKPOINT_FILE}; a run writes one every "
                         "--checkpoint-every steps): start the run without --resume")
    ran = saved.pop("command", command)
    if ran != command:
        raise BmtptError(f"{out} is a `bmtpt {ran}` run; resume it with `bmtpt {ran} --resume --out {out}`")
    return {k: v for k, v in saved.items() if k not in ("resume", "overwrite")}


def save_config(out: Path, command: str, cfg: CommonConfig) -> None:
    """config.yaml: the exact options of the run (re-runnable with --config), written atomically."""
    text = yaml.safe_dump({"command": command, **cfg.to_dict()}, sort_keys=False)
    atomic_write_bytes(text.encode(), out / "config.yaml")


def load_model(cfg: CommonConfig, device: str):
    """(model, tokenizer) of cfg.model; with --no-progress transformers' own loading bar stays off too,
    so that a run's stderr holds nothing but real messages."""
    from transformers.utils import logging as hf_logging

    from .backbone import load_backbone

    was_on = hf_logging.is_progress_bar_enabled()
    if not cfg.progress:
        hf_logging.disable_progress_bar()
    try:
        return load_backbone(cfg.model, cfg.trust_remote_code, device=device)
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(groups: list[dict], name: str, weight_decay: float) -> torch.optim.Optimizer:
    """Adafactor (transformers' implementation, fixed lr as in prompt tuning), Adam or SGD."""
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=weight_decay)
    raise BmtptError(f"unknown optimizer {name!r} (adafactor, adam, sgd)")


def check_data_dir(data_dir: str | None) -> None:
    """A given --data-dir must exist."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise BmtptError(f"data folder {data_dir} does not exist")


EVAL_SAMPLE_SEED = 0  # the seed of every dev/test sample (--max-eval-examples, --max-dev-examples)


def load_split(task: Task, split: str, cfg: CommonConfig, limit: int | None = None,
               balanced: bool = False, label_mix: Sequence[str] | None = None) -> list[Example]:
    """A task's split, optionally subsampled (seeded) to `limit` examples; never empty.

    `balanced` (k-shot training sets): a classification task's sample takes the labels in turn, so their
    counts differ by at most one (unless a label runs out); a plain random 16 of a skewed task such as
    CoLA (70% acceptable) can miss a label altogether.
    `label_mix` (dev samples, `--dev-sample test-mix`): the largest sample of at most `limit` examples whose
    label proportions are those of `label_mix` (the test sample's labels), so that model selection on dev
    rewards what the test rewards even when the dev pool leans to one label (CR's is 80 % positive, its
    test balanced).
    """
    # dev/test examples do not depend on the run's seed: every method and seed is scored on the same
    # examples, so their scores pair up example by example (the benchmark's bootstrap needs that)
    seed = cfg.seed if split == "train" else EVAL_SAMPLE_SEED
    examples = task.load(split, cfg.data_dir, seed)
    rng = random.Random(seed * 7919 + len(examples))
    if label_mix is not None:
        picked = _mixed_sample([e.target for e in examples], limit, label_mix, rng, f"task {task.name}: {split}")
        examples = [examples[i] for i in sorted(picked)]
    elif limit is not None and len(examples) > limit:
        if balanced and task.is_classification:
            picked = _balanced_sample([e.target for e in examples], limit, rng)
        else:
            picked = rng.sample(range(len(examples)), limit)
        examples = [examples[i] for i in sorted(picked)]
    if not examples:  # Task.load refuses empty splits; this guards loaders and limits that filter further
        raise BmtptError(f"task {task.name}: no {split} examples left" + (f" (data folder {cfg.data_dir})"
                                                                           if cfg.data_dir else ""))
    return examples


def _balanced_sample(labels: list[str], limit: int, rng: random.Random) -> list[int]:
    """`limit` indices taking the labels round-robin (in a seeded order), each label's rows shuffled."""
    by_label: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    queues = [rng.sample(rows, len(rows)) for _, rows in sorted(by_label.items())]
    rng.shuffle(queues)  # which labels get the remainder when limit is not a multiple of their number
    picked: list[int] = []
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop())
    return picked


def _mixed_sample(labels: list[str], limit: int | None, mix: Sequence[str], rng: random.Random,
                  where: str) -> list[int]:
    """Indices of the largest sample (at most `limit`) of `labels` with the label proportions of `mix`.

    Counts follow the largest-remainder rule (floor of n * p, the leftover to the largest fractions); n is
    the most that every label's rows can supply, so no label is short.
    """
    share = {y: c / len(mix) for y, c in Counter(mix).items()}
    by_label: dict[str, list[int]] = {y: [] for y in share}
    for i, y in enumerate(labels):
        if y in by_label:
            by_label[y].append(i)
    empty = sorted(y for y, rows in by_label.items() if not rows)
    if empty:
        raise BmtptError(f"{where} has no examples of label(s) {', '.join(empty)}, which the test sample holds: "
                         "it cannot mirror the test's label mix (use --dev-sample random)")
    n = min([limit or len(labels), *(math.floor(len(rows) / share[y] + 1e-9) for y, rows in by_label.items())])
    exact = {y: n * p for y, p in share.items()}
    counts = {y: math.floor(v + 1e-9) for y, v in exact.items()}
    for y in sorted(exact, key=lambda y: (counts[y] - exact[y], y))[: n - sum(counts.values())]:
        counts[y] += 1
    return [i for y in sorted(by_label) for i in rng.sample(by_label[y], counts[y])]


def load_train(task: Task, cfg: CommonConfig) -> list[Example]:
    """The training examples of a run: k-shot (`shots`, label-balanced) or capped at max_train_examples."""
    shots = getattr(cfg, "shots", None)
    return load_split(task, "train", cfg, shots or cfg.max_train_examples, balanced=shots is not None)


class JsonlLog:
    """Append-only metrics log (one JSON object a line), flushed on every write.

    A checkpoint stores `position()` (the byte size after its step's records) and `elapsed()`; a
    resumed run cuts the file back to that position, so steps logged after the checkpoint by the
    killed process are not duplicated, and continues the clock from `elapsed`.
    """

    def __init__(self, path: Path, elapsed: float = 0.0, enabled: bool = True):
        self.path = path
        self.t0 = time.time() - elapsed
        self.enabled = enabled  # off in the other processes of a distributed run: rank 0 writes the log

    def write(self, **record) -> None:
        """Append one record with the elapsed seconds."""
        if not self.enabled:
            return
        record = {"time_s": round(time.time() - self.t0, 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def position(self) -> int:
        """Bytes written so far (0 when the file does not exist yet)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def elapsed(self) -> float:
        """Seconds since the run started, counting the time before a resume."""
        return time.time() - self.t0

    def truncate(self, position: int) -> None:
        """Cut the log back to `position` bytes (a checkpoint's); refuse a log shorter than that."""
        if not self.enabled:
            return
        if self.position() < position:
            raise BmtptError(f"{self.path} is shorter than when the checkpoint was written ({self.position()} < "
                             f"{position} bytes): it was edited or replaced, so the run cannot resume consistently")
        if not self.path.exists():
            return
        with self.path.open("r+b") as f:
            f.truncate(position)


