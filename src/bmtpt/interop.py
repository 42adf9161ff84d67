"""PEFT interoperability: export bmtpt prompts as PEFT prompt-tuning adapters and import them back.

A PEFT prompt-tuning adapter is a folder of two files:

- `adapter_config.json`: the `PromptTuningConfig` fields (peft_type PROMPT_TUNING, task_type,
  num_virtual_tokens, token_dim, num_transformer_submodules, base_model_name_or_path, ...);
- `adapter_model.safetensors`: one tensor `prompt_embeddings`, (num_virtual_tokens *
  num_transformer_submodules, token_dim).

Both libraries prepend the prompt to the input embeddings (the encoder's for seq2seq backbones) with an
all-ones attention mask, so `peft.PeftModel.from_pretrained(backbone, OUT_DIR)` reproduces bmtpt's
logits. We write num_transformer_submodules = 1: PEFT's default for seq2seq is 2, which stores a second,
decoder-side block of l rows. PEFT's prompt tuning prepends only the first l rows, to the encoder
(checked for peft 0.21; the decoder block is used by other prompt-learning types such as
MULTITASK_PROMPT_TUNING), so that block would be untrained dead weight: with 1 the adapter holds exactly
the encoder prompt bmtpt trained, and any reader of the file sees an encoder-only prompt.

One known difference, for causal LMs with padded batches: bmtpt left-pads and derives position ids from
the attention mask, so padding never shifts positions; PEFT's prompt tuning drops `position_ids` (with
a warning) and the backbone counts positions from 0 over the padding too. Logits therefore agree on
unpadded inputs, equal-length batches and right-padded batches (at the non-padding positions), but
not on left-padded rows, e.g. of a batched `PeftModel.generate`. Seq2seq backbones agree with padding.

Writing and reading adapters needs no `peft` install: the files are plain JSON and safetensors.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from . import __version__
from .errors import BmtptError
from .runfiles import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_PROMPT_KEY,
    TASK_TYPES,
    atomic_save_tensors,
    atomic_write_json,
    read_json_object,
    read_run_prompt,
)
from .toolconfig import ExportConfig


def backbone_task_type(backbone: str, trust_remote_code: bool = False) -> str:
    """'SEQ_2_SEQ_LM' or 'CAUSAL_LM', from the backbone's config (only config.json is read)."""
    from transformers import AutoConfig

    from .backbone import is_seq2seq_config, resolve

    hint = "pass --task-type SEQ_2_SEQ_LM or CAUSAL_LM"
    if backbone.startswith((".", "/", "~")) and not Path(backbone).expanduser().exists():
        raise BmtptError(f"backbone folder {backbone} (named by the run) does not exist; {hint}")
    try:
        path, gguf = resolve(backbone)
        kw = {"gguf_file": gguf} if gguf else {}
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError, BmtptError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BmtptError(f"cannot read the config of backbone {backbone!r} to choose the PEFT task type "
                         f"({hint}): {first}") from e
    return "SEQ_2_SEQ_LM" if is_seq2seq_config(config) else "CAUSAL_LM"


def peft_adapter_config(prompt_length: int, embed_dim: int, task_type: str, backbone: str | None) -> dict:
    """adapter_config.json of a prompt-tuning adapter, with the fields `PromptTuningConfig.to_dict()` writes.

    num_attention_heads and num_layers stay None: PEFT fills them from the backbone's config on loading.
    """
    if task_type not in TASK_TYPES:
        raise BmtptError(f"unknown PEFT task type {task_type!r} (choose {' or '.join(TASK_TYPES)})")
    return {"peft_type": "PROMPT_TUNING", "task_type": task_type, "base_model_name_or_path": backbone,
            "revision": None, "auto_mapping": None, "inference_mode": True,
            "num_virtual_tokens": int(prompt_length), "token_dim": int(embed_dim),
            "num_transformer_submodules": 1,  # encoder-only for seq2seq, as bmtpt trains it (see module doc)
            "num_attention_heads": None, "num_layers": None, "modules_to_save": None,
            "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
            "tokenizer_kwargs": None}


def existing_adapter_files(folder: Path) -> list[str]:
    """Names of PEFT adapter files already in `folder`."""
    names = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "adapter_model.bin")
    return [n for n in names if (folder / n).exists()]


def write_peft_adapter(prompt: Tensor, out_dir: str | Path, task_type: str, backbone: str | None,
                       overwrite: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Write an (l, d) prompt as a PEFT prompt-tuning adapter folder; returns the folder."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise BmtptError(f"output {out} exists and is not a folder")
    found = existing_adapter_files(out) if out.is_dir() else []
    if found and not overwrite:
        raise BmtptError(f"{out} already holds an adapter ({', '.join(found)}); pass --overwrite to replace it")
    if prompt.dim() != 2:
        raise BmtptError(f"a prompt must be (length, width), got shape {tuple(prompt.shape)}")
    config = peft_adapter_config(prompt.shape[0], prompt.shape[1], task_type, backbone)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "adapter_model.bin").exists():  # PEFT prefers safetensors, but a stale pickle would confuse people
        (out / "adapter_model.bin").unlink()
    # Weights first, config last: an interrupted export leaves no adapter_config.json, so nothing loads it.
    atomic_save_tensors({PEFT_PROMPT_KEY: prompt.float()}, out / ADAPTER_WEIGHTS,
                        metadata={"format": "pt", **(metadata or {})})
    atomic_write_json(config, out / ADAPTER_CONFIG)
    return out


def export_peft(run_dir: str | Path, out_dir: str | Path, particle: int | None = None, overwrite: bool = False,
                task_type: str = "auto", trust_remote_code: bool = False) -> Path:
    """Write a run's prompt as a PEFT prompt-tuning adapter that `PeftModel.from_pretrained` loads.

    A target run exports its effective prompt (theta0 * (u v^T) when trained with the rank-one factor);
    a source run exports particle `particle`, or the particles' mean when None. `task_type` 'auto'
    reads the backbone's config to choose SEQ_2_SEQ_LM or CAUSAL_LM.
    """
    out = Path(out_dir).expanduser()
    if out.is_dir() and existing_adapter_files(out) and not overwrite:  # before reading the backbone's config
        raise BmtptError(f"{out} already holds an adapter ({', '.join(existing_adapter_files(out))}); "
                         "pass --overwrite to replace it")
    rp = read_run_prompt(run_dir, particle)
    if task_type == "auto":
        if not rp.backbone:
            raise BmtptError(f"{run_dir} does not name its backbone; pass --task-type SEQ_2_SEQ_LM or CAUSAL_LM")
        task_type = backbone_task_type(rp.backbone, trust_remote_code)
    meta = {"bmtpt_version": __version__, "bmtpt_run": str(Path(run_dir).expanduser().resolve()),
            "bmtpt_prompt": rp.what}
    folder = write_peft_adapter(rp.prompt, out, task_type, rp.backbone, overwrite, meta)
    run = Path(run_dir).expanduser()
    if (run / "target.json").is_file():  # what `bmtpt predict ADAPTER` needs to read inputs as the run did
        target = read_json_object(run / "target.json")
        hp = target.get("hyperparameters", {})
        atomic_write_json({"task": target.get("task"), "task_file": target.get("task_file"),
                           "backbone": target.get("backbone"), "max_input_tokens": hp.get("max_input_tokens", 256),
                           "verbalizers": hp.get("verbalizers", "auto")}, folder / "bmtpt.json")
    return folder


def run_export(cfg: ExportConfig) -> Path:
    """`bmtpt export`: dispatch on --to (only 'peft' so far)."""
    cfg.validate()
    if cfg.to != "peft":
        raise BmtptError(f"unknown export format {cfg.to!r} (choose peft)")
    return export_peft(cfg.run_dir, cfg.out_dir, cfg.particle, cfg.overwrite, cfg.task_type, cfg.trust_remote_code)


__all__ = ["backbone_task_type", "export_peft", "peft_adapter_config", "run_export", "write_peft_adapter"]
