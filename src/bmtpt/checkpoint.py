"""Resumable checkpoints of the training stages, as one safetensors file per run folder.

RUN/checkpoint.safetensors holds every tensor of the run's state: the trained parameters, the
optimiser's state tensors (`optim/<param index>/<name>`), torch's RNG states (`rng/...`) and the
stage's extras (the target stage's best-so-far prompt). Everything else (step, data position, Python's
RNG state, the optimiser's scalars and param groups, the metrics log's byte offset, the run's options)
is one JSON object in the file's safetensors metadata. Nothing is pickled.

It is one file rather than tensors plus a JSON sidecar so that a kill can never pair the tensors of
one step with the state of another: the file is written to a temporary name in the same folder,
fsynced and then renamed over the old one, so the last complete checkpoint is always readable.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from .config import result_neutral_options
from .errors import BmtptError
from .runfiles import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_FORMAT = 1
META_KEY = "bmtpt_checkpoint"
# Options that may change between an interrupted run and its resumption: they decide where and how
# fast the run computes (or how it reports), not what it computes (declared `neutral` in bmtpt.config, the
# one list the experiment's cell hash uses too). The run folder and the posterior may be spelled
# differently or moved (the target stage checks the posterior's content by its digest).
RESUME_FREE_OPTIONS = result_neutral_options()


@dataclass
class Checkpoint:
    """A loaded checkpoint: the stage's tensors (no optimiser or RNG entries) and its JSON state."""

    path: Path
    kind: str  # "source" or "target"
    step: int
    config: dict  # the run's options when the checkpoint was written
    tensors: dict[str, Tensor]
    state: dict  # the stage's own state (data position, log offset, best dev score, ...)
    _optim: tuple[dict[str, Tensor], dict]
    _rng: tuple[dict[str, Tensor], dict]

    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        """Load the optimiser state and the Python/torch RNG states saved with the checkpoint."""
        load_optimizer_state(optimizer, *self._optim)
        set_rng_state(*self._rng)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files a killed writer left behind (`.NAME.XXXX.tmp`); they are never valid."""
    for p in folder.glob(".*.tmp"):
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- optimiser and RNG state
def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """An optimiser's state_dict split into tensors (`optim/<index>/<name>`) and a JSON-able rest.

    Works for any torch optimiser whose per-parameter state holds tensors and plain numbers
    (Adafactor's int step and RMS, AdamW's tensor step, SGD's momentum buffer).
    """
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        scalars[str(idx)] = {}
        for name, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{idx}/{name}"] = value.detach()
            else:
                scalars[str(idx)][name] = value
    # tuples (Adam's betas, Adafactor's eps) become JSON lists; load_optimizer_state turns them back
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"state": scalars, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    """Inverse of `optimizer_state`: restore the state into an optimiser built over the same parameters."""
    current = optimizer.state_dict()["param_groups"]
    saved = meta["param_groups"]
    if [len(g["params"]) for g in current] != [len(g["params"]) for g in saved]:
        raise BmtptError("the checkpoint's optimiser has other parameter groups than this run's")
    state: dict[int, dict] = {int(idx): dict(values) for idx, values in meta["state"].items()}
    for key, t in tensors.items():
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = t
    groups = [{k: tuple(v) if isinstance(cur.get(k), tuple) else v for k, v in g.items()}
              for g, cur in zip(saved, current)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, Tensor], dict]:
    """Torch's CPU (and CUDA) generator states as tensors, Python's `random` state as JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, Tensor], meta: dict) -> None:
    """Restore what `rng_state` saved (CUDA states only where the same devices exist)."""
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(out: str | Path, kind: str, step: int, config: dict, tensors: dict[str, Tensor],
                    optimizer: torch.optim.Optimizer, state: dict) -> Path:
    """Write RUN/checkpoint.safetensors atomically; returns its path."""
    path = Path(out) / CHECKPOINT_FILE
    opt_tensors, opt_meta = optimizer_state(optimizer)
    rng_tensors, rng_meta = rng_state()
    clash = [k for k in tensors if k.startswith(("optim/", "rng/"))]
    if clash:
        raise ValueError(f"checkpoint tensor names {clash} use a reserved prefix")
    meta = {"format": CHECKPOINT_FORMAT, "kind": kind, "step": step, "config": config, "state": state,
            "optimizer": opt_meta, "rng": rng_meta}
    everything = {**tensors, **opt_tensors, **rng_tensors}
    blob = save({k: v.detach().contiguous().cpu() for k, v in everything.items()},
                metadata={META_KEY: json.dumps(meta, allow_nan=True)})
    atomic_write_bytes(blob, path)
    return path


def read_checkpoint_meta(out: str | Path) -> dict:
    """The JSON part of RUN/checkpoint.safetensors (cheap: reads only the header)."""
    path = Path(out) / CHECKPOINT_FILE
    if not path.is_file():
        raise BmtptError(f"{Path(out)} holds no checkpoint ({CHECKPOINT_FILE})")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
        meta = json.loads(raw) if raw is not None else None
    except (SafetensorError, OSError, ValueError) as e:
        raise BmtptError(f"checkpoint {path} is unreadable (truncated or corrupted?): {e}") from e
    if not isinstance(meta, dict) or "format" not in meta:
        raise BmtptError(f"{path} is not a bmtpt checkpoint")
    if meta["format"] != CHECKPOINT_FORMAT:
        raise BmtptError(f"checkpoint {path} has format {meta['format']}; this bmtpt reads format "
                         f"{CHECKPOINT_FORMAT}")
    return meta


def load_checkpoint(out: str | Path, kind: str) -> Checkpoint:
    """Read and check RUN/checkpoint.safetensors of a `kind` ('source' or 'target') run."""
    path = Path(out) / CHECKPOINT_FILE
    meta = read_checkpoint_meta(out)
    if meta.get("kind") != kind:
        raise BmtptError(f"the checkpoint in {Path(out)} is of a `bmtpt {meta.get('kind')}` run, not `bmtpt {kind}`")
    try:
        with safe_open(str(path), "pt") as f:
            everything = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BmtptError(f"checkpoint {path} is unreadable (truncated or corrupted?): {e}") from e
    try:
        optim = {k: v for k, v in everything.items() if k.startswith("optim/")}
        rng = {k: v for k, v in everything.items() if k.startswith("rng/")}
        own = {k: v for k, v in everything.items() if not k.startswith(("optim/", "rng/"))}
        return Checkpoint(path, kind, int(meta["step"]), meta["config"], own, meta["state"],
                          (optim, meta["optimizer"]), (rng, meta["rng"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BmtptError(f"checkpoint {path} is incomplete ({type(e).__name__}: {e})") from e


def check_resume_options(saved: dict, now: dict, out: str | Path) -> None:
    """Refuse to resume when an option that changes the computation differs from the checkpoint's run."""
    diff = [k for k in now if k in saved and k not in RESUME_FREE_OPTIONS and saved[k] != now[k]]
    if diff:
        shown = ", ".join(f"--{k.replace('_', '-')} {now[k]} (the run's: {saved[k]})" for k in diff)
        raise BmtptError(f"cannot resume {out}: options differ from the interrupted run's: {shown}; leave them out "
                         "to continue with the run's own options, or start over with --overwrite")


def file_digest(*paths: str | Path) -> str:
    """SHA-256 over files (to notice that an input such as the posterior changed before a resume)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
