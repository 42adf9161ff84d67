"""One home for the run-folder formats: how bmtpt writes and reads what its runs leave behind.

- every file is written atomically and durably (`atomic_write_bytes`: a temporary file in the same folder,
  fsync, then os.replace), so a killed process leaves the old file or the new one, never half of one;
- tensors are safetensors (nothing is unpickled), metadata is JSON;
- a source run's posterior: `particles.safetensors` (`particles` (M, l, d), and `initial`, `fisher` when
  written) + `posterior.json` (written last: its presence marks the run complete);
- a target run: `prompt.safetensors` (`prompt`, and `theta0`, `u`, `v` with the rank-one factor) +
  `target.json` (written last) + `predictions-test.json`; its effective prompt is theta0 * (u v^T);
- a PEFT prompt-tuning adapter: `adapter_config.json` + `adapter_model.safetensors` (`prompt_embeddings`),
  written by `bmtpt.interop`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from . import __version__
from .errors import BmtptError

POSTERIOR_FILE, PARTICLES_FILE = "posterior.json", "particles.safetensors"
TARGET_FILE, PROMPT_FILE, PREDICTIONS_FILE = "target.json", "prompt.safetensors", "predictions-test.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PROMPT_KEY = "prompt_embeddings"  # the key PEFT's get_peft_model_state_dict uses for prompt learning
TASK_TYPES = ("SEQ_2_SEQ_LM", "CAUSAL_LM")


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write bytes atomically and durably: temporary file in the same folder, fsync, then os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    """Write a safetensors file atomically and durably (`atomic_write_bytes`)."""
    atomic_write_bytes(save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata), path)


def atomic_write_json(obj, path: str | Path) -> None:
    """Write JSON atomically and durably (`atomic_write_bytes`)."""
    atomic_write_bytes((json.dumps(obj, indent=2, default=str) + "\n").encode(), path)


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


def effective_prompt(theta0: Tensor, u: Tensor | None, v: Tensor | None) -> Tensor:
    """theta0 * (u v^T) with the rank-one factor, else theta0."""
    return theta0 if u is None else theta0 * (u[:, None] * v[None, :])


@dataclass
class RunPrompt:
    """One prompt read from a bmtpt run folder, with where it came from."""

    prompt: Tensor  # (l, d) float32
    backbone: str | None
    what: str  # e.g. "target prompt of synth-product", "particle 2 of 5", "mean of 5 particles"


def read_jsonl_log(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL log (metrics.jsonl, results.jsonl) in file order; [] for a missing file. A
    line that does not parse (the torn last line of a killed write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def refuse_ensemble(meta: dict, run: Path) -> None:
    """A target run of --particles M > 1 holds M prompts whose predictions are averaged, and an ATTEMPT run an
    input-dependent prompt: commands that read one prompt refuse them rather than use a part of them."""
    if meta.get("ensemble"):
        raise BmtptError(f"{run} is a target ensemble of {meta['ensemble'].get('particles')} prompts (--particles); "
                         "this command reads a single prompt (its predictions are in predictions-test.json)")
    if meta.get("method") == "attempt":
        raise BmtptError(f"{run} is an ATTEMPT run: an input-dependent prompt (an attention mix of source prompts "
                         "per input) is not a single prompt or a PEFT prompt-tuning adapter (its predictions are in "
                         "predictions-test.json)")


def read_run_prompt(run_dir: str | Path, particle: int | None = None) -> RunPrompt:
    """The prompt of a target run (its effective prompt, rank-one factor included) or of a source run
    (particle `particle`, or the particles' mean when None)."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise BmtptError(f"run folder {run} does not exist")
    if (run / "target.json").is_file():
        if particle is not None:
            raise BmtptError(f"--particle applies to source runs, but {run} is a target run")
        meta = read_json_object(run / "target.json")
        refuse_ensemble(meta, run)
        tensors = load_tensors(run / "prompt.safetensors")
        prompt = tensors.get("prompt")
        if prompt is None and "theta0" in tensors:  # fold the rank-one factor: theta0 * (u v^T)
            prompt = effective_prompt(tensors["theta0"], tensors.get("u"), tensors.get("v"))
        if prompt is None:
            raise BmtptError(f"{run / 'prompt.safetensors'} holds no 'prompt' tensor (keys: {', '.join(tensors)})")
        expect = (meta.get("prompt_length", prompt.shape[0]), meta.get("embed_dim", prompt.shape[-1]))
        if prompt.dim() != 2 or tuple(prompt.shape) != tuple(expect):
            raise BmtptError(f"the prompt in {run} has shape {tuple(prompt.shape)} but target.json says {expect}")
        if not torch.isfinite(prompt).all():
            raise BmtptError(f"{run / 'prompt.safetensors'} holds non-finite values")
        return RunPrompt(prompt.float(), meta.get("backbone"), f"target prompt of {meta.get('task', '?')}")
    if (run / "posterior.json").is_file():
        particles, meta = load_posterior(run)
        m = particles.shape[0]
        if particle is None:
            return RunPrompt(particles.mean(0), meta.get("backbone"), f"mean of {m} particles")
        if not 0 <= particle < m:
            raise BmtptError(f"--particle {particle}: {run} holds particles 0..{m - 1}")
        return RunPrompt(particles[particle].clone(), meta.get("backbone"), f"particle {particle} of {m}")
    raise BmtptError(f"{run} holds neither target.json nor posterior.json (not a bmtpt run folder)")


def read_peft_adapter(adapter_dir: str | Path) -> tuple[Tensor, dict]:
    """(prompt (l, d) float32, adapter config) of a PEFT prompt-tuning adapter folder.

    Seq2seq adapters saved with PEFT's default num_transformer_submodules = 2 hold 2l rows; the first l
    are the encoder prompt, the only rows PEFT's prompt tuning prepends, and the ones returned.
    """
    folder = Path(adapter_dir).expanduser()
    if folder.is_file() and folder.name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        folder = folder.parent
    if not folder.is_dir():
        raise BmtptError(f"PEFT adapter folder {folder} does not exist")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise BmtptError(f"{folder} holds no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    cfg = read_json_object(folder / ADAPTER_CONFIG)
    kind = cfg.get("peft_type")
    if kind != "PROMPT_TUNING":
        raise BmtptError(f"{folder} is a PEFT {kind or 'unknown-type'} adapter; bmtpt imports only "
                         "PROMPT_TUNING adapters")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        hint = (" (only adapter_model.bin, a pickle bmtpt will not load: re-save it with safe_serialization=True)"
                if (folder / "adapter_model.bin").exists() else "")
        raise BmtptError(f"{folder} holds no {ADAPTER_WEIGHTS}{hint}")
    tensors = load_tensors(folder / ADAPTER_WEIGHTS)
    if PEFT_PROMPT_KEY not in tensors:
        raise BmtptError(f"{folder / ADAPTER_WEIGHTS} holds no '{PEFT_PROMPT_KEY}' tensor "
                         f"(keys: {', '.join(tensors) or 'none'})")
    emb = tensors[PEFT_PROMPT_KEY]
    length = cfg.get("num_virtual_tokens")
    subs = cfg.get("num_transformer_submodules") or 1
    if emb.dim() != 2 or not isinstance(length, int) or emb.shape[0] != length * subs:
        raise BmtptError(f"{folder}: '{PEFT_PROMPT_KEY}' has shape {tuple(emb.shape)}, but the config says "
                         f"{length} virtual tokens x {subs} submodule(s)")
    if cfg.get("token_dim") is not None and cfg["token_dim"] != emb.shape[1]:
        raise BmtptError(f"{folder}: '{PEFT_PROMPT_KEY}' is {emb.shape[1]} wide but the config says token_dim "
                         f"{cfg['token_dim']}")
    if not torch.isfinite(emb).all():
        raise BmtptError(f"{folder / ADAPTER_WEIGHTS} holds non-finite values")
    return emb[:length].float().clone(), cfg


def import_peft(adapter_dir: str | Path, width: int | None = None, length: int | None = None) -> Tensor:
    """The (l, d) prompt of a PEFT prompt-tuning adapter, checked against an expected width and length."""
    prompt, cfg = read_peft_adapter(adapter_dir)
    base = f" (base model {cfg['base_model_name_or_path']})" if cfg.get("base_model_name_or_path") else ""
    if width is not None and prompt.shape[1] != width:
        raise BmtptError(f"PEFT adapter {adapter_dir} holds prompts {prompt.shape[1]} wide{base}, but the "
                         f"backbone embeds in {width}")
    if length is not None and prompt.shape[0] != length:
        raise BmtptError(f"PEFT adapter {adapter_dir} holds {prompt.shape[0]} virtual tokens, but prompts of "
                         f"length {length} are needed here (--prompt-length, or the posterior's length)")
    return prompt
