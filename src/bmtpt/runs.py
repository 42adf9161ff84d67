"""What every training command shares: run folders, devices, optimisers, data loading, logging."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import torch
import yaml

from .config import CommonConfig
from .errors import BmtptError
from .tasks import Example, Task

RESULT_FILES = ("posterior.json", "particles.safetensors", "target.json", "prompt.safetensors", "metrics.jsonl")


def resolve_device(spec: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; other values are checked."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise BmtptError(f"--device {spec} asked for, but no CUDA device is available")
    return spec


def prepare_run_dir(cfg: CommonConfig) -> Path:
    """Create the run folder; refuse one that already holds results unless --overwrite.

    With --overwrite only our own result files are removed; anything else the user put there stays.
    """
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise BmtptError(f"--out {out} exists and is not a folder")
    found = [f for f in RESULT_FILES if (out / f).exists()]
    if found and not cfg.overwrite:
        raise BmtptError(f"{out} already holds results ({', '.join(found)}); pass --overwrite to replace them "
                         "or choose another --out")
    for f in found:
        (out / f).unlink()
    if (out / "checkpoints").is_dir() and cfg.overwrite:
        shutil.rmtree(out / "checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_config(out: Path, command: str, cfg: CommonConfig) -> None:
    """config.yaml: the exact options of the run (re-runnable with --config)."""
    (out / "config.yaml").write_text(yaml.safe_dump({"command": command, **cfg.to_dict()}, sort_keys=False))


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


def load_split(task: Task, split: str, cfg: CommonConfig, limit: int | None = None) -> list[Example]:
    """A task's split, optionally subsampled (seeded) to `limit` examples."""
    examples = task.load(split, cfg.data_dir, cfg.seed)
    if limit is not None and len(examples) > limit:
        rng = random.Random(cfg.seed * 7919 + len(examples))
        examples = [examples[i] for i in sorted(rng.sample(range(len(examples)), limit))]
    return examples


class JsonlLog:
    """Append-only metrics log (one JSON object a line), flushed on every write."""

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.time()

    def write(self, **record) -> None:
        """Append one record with the elapsed seconds."""
        record = {"time_s": round(time.time() - self.t0, 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def to_float_dict(d: dict) -> dict:
    """Round floats for logs."""
    return {k: (round(float(v), 6) if isinstance(v, float | int) and not isinstance(v, bool) else v)
            for k, v in d.items()}
