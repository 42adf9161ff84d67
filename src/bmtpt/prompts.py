"""Creating, saving and loading prompts and posteriors (safetensors + JSON; nothing is unpickled)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from . import __version__
from .errors import BmtptError

INIT_CHOICES = "vocab | vocab-shared:NOISE | uniform | text:SOME WORDS | file:PATH.safetensors | peft:ADAPTER_DIR"
VOCAB_ROWS = 5000  # prompt-tuning convention: sample rows of the first 5,000 vocabulary embeddings


def init_prompts(model, tokenizer, num: int, length: int, how: str = "vocab", seed: int = 0) -> Tensor:
    """(num, length, d) float32 initial prompts.

    `vocab`: rows drawn at random from the first 5,000 token embeddings (distinct per prompt);
    `vocab-shared:S`: one such draw shared by all prompts, each plus Gaussian noise of std S times the
    embeddings' std (particles that start close together have a mean that is itself a natural prompt);
    `uniform`: U(-0.5, 0.5); `text:...`: the embeddings of the text's tokens, repeated to fill the
    length; `file:PATH`: a saved prompt (l, d) or particles (M, l, d) file; `peft:DIR`: the prompt of a
    PEFT prompt-tuning adapter folder as prompt 0, the others (if num > 1) drawn as for `vocab`.
    """
    emb = model.get_input_embeddings().weight.detach().float().cpu()
    d = emb.shape[1]
    g = torch.Generator().manual_seed(seed)
    if how == "vocab":
        rows = min(VOCAB_ROWS, emb.shape[0])
        idx = torch.stack([torch.randint(0, rows, (length,), generator=g) for _ in range(num)])
        return emb[idx].clone()
    if how.startswith("vocab-shared:"):
        try:
            scale = float(how.split(":", 1)[1])
        except ValueError:
            raise BmtptError(f"--init {how}: expected vocab-shared:S with a number S >= 0") from None
        if not scale >= 0:
            raise BmtptError(f"--init {how}: the noise scale must be >= 0")
        base = init_prompts(model, tokenizer, 1, length, "vocab", seed)
        noise = torch.randn(num, length, d, generator=torch.Generator().manual_seed(seed + 1))
        return base + scale * emb[: min(VOCAB_ROWS, emb.shape[0])].std() * noise
    if how == "uniform":
        return torch.rand(num, length, d, generator=g) - 0.5
    if how.startswith("text:"):
        ids = tokenizer(how[5:], add_special_tokens=False).input_ids
        if not ids:
            raise BmtptError("prompt init text tokenises to nothing")
        ids = (ids * (length // len(ids) + 1))[:length]
        return emb[torch.tensor(ids)].unsqueeze(0).repeat(num, 1, 1).clone()
    if how.startswith("file:"):
        t = load_prompt_tensor(how[5:])
        t = t.unsqueeze(0) if t.dim() == 2 else t
        if t.shape[1:] != (length, d):
            raise BmtptError(f"prompt file {how[5:]} holds shape {tuple(t.shape[1:])}, expected ({length}, {d})")
        if t.shape[0] not in (1, num):
            raise BmtptError(f"prompt file {how[5:]} holds {t.shape[0]} prompts, expected 1 or {num}")
        return t.expand(num, -1, -1).clone().float()
    if how.startswith("peft:"):
        from .interop import import_peft  # interop imports this module

        first = import_peft(how[5:], width=d, length=length)[None]
        # One adapter is one particle. Copying it into all M would start SVGD with identical particles,
        # which get identical updates (zero kernel gradient between them) and never separate.
        rest = init_prompts(model, tokenizer, num - 1, length, "vocab", seed) if num > 1 else first[:0]
        return torch.cat([first, rest])
    raise BmtptError(f"unknown prompt init {how!r} (choose {INIT_CHOICES})")


def read_json_object(path: str | Path, what: str | None = None) -> dict:
    """A JSON file that must hold an object; unreadable JSON or another type raises BmtptError (naming
    the type found and, with `what`, the object expected)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BmtptError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise BmtptError(f"{path} holds a JSON {type(obj).__name__}, not {what}" if what
                         else f"{path} does not hold a JSON object")
    return obj


def atomic_save_tensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(obj, path: str | Path) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file; a missing, truncated or corrupted file raises BmtptError."""
    path = Path(path)
    if not path.is_file():
        raise BmtptError(f"file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BmtptError(f"{path} is not a readable safetensors file (truncated or corrupted?): {e}") from e


def load_prompt_tensor(path: str | Path) -> Tensor:
    """The prompt tensor of a file written by bmtpt (`prompt` or `particles` key) or by PEFT
    (`prompt_embeddings`)."""
    t = load_tensors(path)
    for key in ("prompt", "particles", "prompt_embeddings"):
        if key in t:
            return t[key].float()
    raise BmtptError(f"{path} holds no prompt tensor (keys: {', '.join(t) or 'none'})")


POSTERIOR_KEYS = ("format", "library_version", "backbone", "prompt_length", "embed_dim", "num_particles",
                  "source_tasks", "bandwidth", "method")
POSTERIOR_FORMAT = 1


def save_posterior(out: str | Path, particles: Tensor, info: dict, initial: Tensor | None = None,
                   extra: dict[str, Tensor] | None = None) -> None:
    """Write `particles.safetensors` ((M, l, d) under key `particles`, the particles' starting values under
    `initial` when given, and any `extra` tensors such as the source Fisher) and `posterior.json`."""
    out = Path(out)
    meta = {"format": POSTERIOR_FORMAT, "library_version": __version__, **info,
            "num_particles": particles.shape[0], "prompt_length": particles.shape[1], "embed_dim": particles.shape[2]}
    tensors = {"particles": particles.float(), **({"initial": initial.float()} if initial is not None else {}),
               **{k: v.float() for k, v in (extra or {}).items()}}
    atomic_save_tensors(tensors, out / "particles.safetensors")
    atomic_write_json(meta, out / "posterior.json")


def load_posterior(folder: str | Path) -> tuple[Tensor, dict]:
    """Read a posterior folder and check it is complete and consistent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BmtptError(f"posterior folder {folder} does not exist")
    meta_path = folder / "posterior.json"
    if not meta_path.is_file():
        raise BmtptError(f"{folder} holds no posterior.json (is it the output folder of `bmtpt source`?)")
    meta = read_json_object(meta_path, "a posterior's metadata object")
    missing = [k for k in POSTERIOR_KEYS if k not in meta]
    if missing:
        raise BmtptError(f"{meta_path} lacks key(s): {', '.join(missing)}")
    if meta["format"] != POSTERIOR_FORMAT:
        raise BmtptError(f"{meta_path} has format {meta['format']}; this bmtpt ({__version__}) reads format "
                         f"{POSTERIOR_FORMAT}")
    particles = load_tensors(folder / "particles.safetensors").get("particles")
    if particles is None:
        raise BmtptError(f"{folder / 'particles.safetensors'} holds no 'particles' tensor")
    expect = (meta["num_particles"], meta["prompt_length"], meta["embed_dim"])
    if tuple(particles.shape) != tuple(expect):
        raise BmtptError(f"particles have shape {tuple(particles.shape)} but posterior.json says {expect}")
    if not torch.isfinite(particles).all():
        raise BmtptError(f"{folder / 'particles.safetensors'} holds non-finite values")
    h = meta["bandwidth"]  # the target stage's prior divides by it; a single particle has none
    if h is None and meta["num_particles"] == 1:
        return particles.float(), meta
    if isinstance(h, bool) or not isinstance(h, int | float) or not 0 < h < float("inf"):
        raise BmtptError(f"{meta_path}: bandwidth must be a positive number, got {h!r}")
    return particles.float(), meta


def load_initial_particles(folder: str | Path) -> Tensor | None:
    """The particles' starting values saved by the source stage (None for runs that did not save them)."""
    t = load_tensors(Path(folder) / "particles.safetensors").get("initial")
    return None if t is None else t.float()
