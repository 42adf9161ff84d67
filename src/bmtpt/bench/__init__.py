"""`bmtpt bench`: where the time and memory of bmtpt's steps go (`bmtpt bench speed`, `benchmarks/*.py`).

This module is what the command line needs to build its options (`SpeedConfig`, the shape presets) and
nothing heavy; the measurements live in the submodules, imported when a benchmark runs:

- `speed`: the sections of `bmtpt bench speed` and `run_speed` (see its docstring for what is measured);
- `steps`: backbones (shape presets with random weights), workloads and timed step closures;
- `memory`: peak memory of a step (VmHWM in this process, or ru_maxrss of a fresh one);
- `report`: the machine description, the targets and checks, and the table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..config import opt
from ..errors import BmtptError

T5_IDS = {"decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
LLAMA_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
SHAPE_PRESETS = {
    "t5-base-shape": ("t5", {"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12,
                             "num_decoder_layers": 12, "num_heads": 12, **T5_IDS}),
    "t5-small-shape": ("t5", {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
                              "num_decoder_layers": 6, "num_heads": 8, **T5_IDS}),
    "smollm2-135m-shape": ("llama", {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                                     "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                                     "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
                                     "tie_word_embeddings": True, **LLAMA_IDS}),
    "tiny-t5-shape": ("t5", {"vocab_size": 128, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2,
                             "num_decoder_layers": 2, "num_heads": 2, **T5_IDS}),
    "tiny-llama-shape": ("llama", {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                                   "max_position_embeddings": 512, "tie_word_embeddings": True, **LLAMA_IDS}),
}


@dataclass
class SpeedConfig:
    """`bmtpt bench speed`: time and memory of bmtpt's SVGD step, batched vs sequential, overheads, peak memory."""

    benchmark: str = opt("speed", "which benchmark: speed", positional=True)
    backbone: str = opt("t5-base-shape", "hub id, local folder, .gguf file, the alias smollm2-135m, or a random-weight "
                        "shape preset: " + ", ".join(SHAPE_PRESETS))
    device: str = opt("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    batch_size: int = opt(4, "examples B per step (every particle sees all of them)")
    seq_len: int = opt(48, "input tokens per example (random ids; the prompt and the target come on top)")
    target_len: int = opt(4, "target tokens per example")
    prompt_length: int = opt(16, "soft prompt length l")
    particles: int = opt(4, "SVGD particles M")
    tasks: int = opt(2, "source tasks the batch is split into (per-task losses, as in `bmtpt source`)")
    repeats: int = opt(3, "timed steps per measurement (the median is reported)")
    warmup: int = opt(1, "untimed steps before each measurement")
    precision: str = opt("", "comma-separated autocast precisions (fp32, bf16, fp16); the first is the main one "
                         "(default: bf16,fp32 on a GPU; fp32 on a CPU, plus bf16 if the CPU has native bf16)")
    gradient_checkpointing: bool = opt(True, "also measure the main precision with gradient checkpointing")
    memory: bool = opt(True, "measure peak memory (the M x batch grid and the particle chunk)")
    memory_particles: str = opt("", "comma-separated M of the memory grid (default: 1, M/2, M)")
    memory_batch_sizes: str = opt("", "comma-separated batch sizes of the memory grid (default: B/2, B)")
    chunk: int = opt(1, "particle chunk c: peak of M particles in chunks of c vs a step on c particles")
    memory_method: str = opt("auto", "CPU peak memory: hwm (VmHWM reset in this process, Linux), subprocess "
                             "(ru_maxrss of a fresh process per setting) or auto (hwm where possible)",
                             ("auto", "hwm", "subprocess"))
    naive: bool = opt(True, "causal LMs: also time the naive step (fp32, LM head at every position)")
    optimizer: str = opt("adafactor", "optimizer of the prompts", ("adafactor", "adam", "sgd"))
    threads: int | None = opt(None, "torch intra-op threads (default: torch's choice)")
    seed: int = opt(0, "random seed (weights of shape presets, token ids, prompts)")
    trust_remote_code: bool = opt(False, "allow the backbone's own Python code from the hub to run")
    out: str = opt("", "write every figure, the targets and the machine description to this JSON file")

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        if self.benchmark != "speed":
            raise BmtptError(f"unknown benchmark {self.benchmark!r} (available: speed)")
        for name in ("batch_size", "seq_len", "target_len", "prompt_length", "particles", "tasks", "repeats",
                     "chunk"):
            if getattr(self, name) <= 0:
                raise BmtptError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.warmup < 0:
            raise BmtptError(f"--warmup must be non-negative, got {self.warmup}")
        if self.threads is not None and self.threads <= 0:
            raise BmtptError(f"--threads must be positive, got {self.threads}")
        for p in _split(self.precision):
            if p not in ("fp32", "bf16", "fp16"):
                raise BmtptError(f"--precision: unknown precision {p!r} (fp32, bf16, fp16)")
        for name in ("memory_particles", "memory_batch_sizes"):
            _ints(getattr(self, name), name)


def _split(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _ints(text: str, name: str) -> list[int]:
    try:
        vals = [int(t) for t in _split(text)]
    except ValueError as e:
        raise BmtptError(f"--{name.replace('_', '-')} must be comma-separated integers, got {text!r}") from e
    if any(v <= 0 for v in vals):
        raise BmtptError(f"--{name.replace('_', '-')} must be positive, got {text!r}")
    return vals


def cmd_bench(cfg: SpeedConfig) -> int:
    """`bmtpt bench speed`: run, print the table, write the JSON."""
    from .report import format_table
    from .speed import run_speed

    res = run_speed(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(res))
    if cfg.out:
        print(f"wrote {cfg.out}")
    return 0
