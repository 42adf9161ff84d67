"""Options of the tool commands (`bmtpt eval`, `export`, `tiny-model`, `inspect`): each a dataclass whose fields
become command-line options and YAML keys, as in `bmtpt.config` (which holds the training stages' options)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .config import opt
from .errors import BmtptError


@dataclass
class EvalConfig:
    """`bmtpt eval`: evaluate a saved run's prompt on a split and write eval-SPLIT.json into the run."""

    run_dir: str = opt("", "run folder of `bmtpt target` (or `bmtpt source`: the particles' mean on each "
                       "source task)", positional=True)
    split: str = opt("test", "split to evaluate", ("dev", "test"))
    data_dir: str | None = opt(None, "folder of local benchmark files (default: the run's own --data-dir)")
    model: str | None = opt(None, "backbone (default: the one the run was trained with)")
    eval_mode: str = opt("rank", "rank: rank classification; generate: decode", ("rank", "generate"))
    eval_batch_size: int = opt(32, "rows per forward pass")
    max_eval_examples: int | None = opt(None, "evaluate on at most this many examples")
    precision: str = opt("fp32", "autocast precision of the backbone", ("fp32", "bf16", "fp16"))
    device: str = opt("auto", "torch device")
    trust_remote_code: bool = opt(False, "allow the backbone's own Python code from the hub to run")
    progress: bool = opt(True, "show progress bars")

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        if not self.run_dir:
            raise BmtptError("a run folder is required")
        if self.eval_batch_size <= 0:
            raise BmtptError(f"--eval-batch-size must be positive, got {self.eval_batch_size}")
        if self.max_eval_examples is not None and self.max_eval_examples <= 0:
            raise BmtptError(f"--max-eval-examples must be positive, got {self.max_eval_examples}")


@dataclass
class TinyConfig:
    """`bmtpt tiny-model`: write a tiny random-weight model with a working tokenizer (for smoke runs)."""

    dir: str = opt("", "output folder", positional=True)
    arch: str = opt("t5", "architecture", ("t5", "llama"))
    seed: int = opt(0, "random seed of the weights")
    overwrite: bool = opt(False, "write into a folder that already holds a model")

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        if not self.dir:
            raise BmtptError("an output folder is required")


@dataclass
class ExportConfig:
    """`bmtpt export`: write a run's prompt as a PEFT prompt-tuning adapter (adapter_config.json +
    adapter_model.safetensors) that peft.PeftModel.from_pretrained loads."""

    run_dir: str = opt("", "run folder of `bmtpt target` (its prompt, rank-one factor folded in) or `bmtpt source`",
                       positional=True)
    out_dir: str = opt("", "output folder of the adapter", positional=True)
    to: str = opt("peft", "output format", ("peft",))
    particle: int | None = opt(None, "source runs: export particle K (default: the particles' mean)")
    task_type: str = opt("auto", "PEFT task type (auto: from the backbone's config)",
                         ("auto", "SEQ_2_SEQ_LM", "CAUSAL_LM"))
    trust_remote_code: bool = opt(False, "allow the backbone's own Python code when reading its config")
    overwrite: bool = opt(False, "replace an adapter already in OUT_DIR")

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        if not self.run_dir or not self.out_dir:
            raise BmtptError("a run folder and an output folder are required")
        if self.particle is not None and self.particle < 0:
            raise BmtptError(f"--particle must be non-negative, got {self.particle}")


@dataclass
class InspectConfig:
    """`bmtpt inspect`: a source run's task interference, per-particle task losses and the sources each particle
    favours (printed and drawn); with --target, how well each source's score aligns with a target task's."""

    run_dir: str = opt("", "run folder of `bmtpt source`", positional=True)
    target: str | None = opt(None, "a target task: estimate how much each source helps it from the cosine of its "
                             "score with each source's, at the particles' mean (loads the backbone)")
    examples: int = opt(64, "with --target: training examples of each task the scores are taken on")
    png: str | None = opt(None, "where to draw the picture (default: RUN_DIR/inspect.png)")
    plots: bool = opt(True, "draw the PNG (needs matplotlib)")
    model: str | None = opt(None, "with --target: backbone (default: the run's)")
    data_dir: str | None = opt(None, "with --target: folder of the benchmark files (default: the run's)")
    device: str = opt("auto", "torch device")
    trust_remote_code: bool = opt(False, "allow the backbone's own Python code from the hub to run")
    progress: bool = opt(True, "show the backbone's loading bar")

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        if not self.run_dir:
            raise BmtptError("a run folder is required")
        if self.examples <= 0:
            raise BmtptError(f"--examples must be positive, got {self.examples}")
        if self.target is None:  # nothing is loaded: the options of the backbone run would be ignored
            given = [f"--{f.name.replace('_', '-')}" for f in fields(self) if f.name in TARGET_ONLY_INSPECT
                     and getattr(self, f.name) != f.default]
            if given:
                raise BmtptError(f"{', '.join(given)} only act{'s' * (len(given) == 1)} with --target")


TARGET_ONLY_INSPECT = ("examples", "model", "data_dir", "device", "trust_remote_code")
