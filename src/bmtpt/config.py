"""Typed configurations of the commands (PEFT-style dataclasses with help text).

Each field becomes a command-line option (`prompt_length` -> `--prompt-length`) and a YAML key; the
help text below is what `--help` prints. `validate()` turns bad values into one-line errors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .errors import BmtptError
from .methods import TARGET_KINDS


def opt(default, help: str, choices: tuple | None = None, **kw):  # noqa: A002 - mirrors argparse
    """A dataclass field carrying its command-line help text (and choices). `neutral=True` marks an option
    that never changes a run's numbers (where it runs, how it is chunked, logged or checkpointed): a resumed
    run may change it, and an experiment's cell hash leaves it out (`result_neutral_options`)."""
    return field(default=default, metadata={"help": help, "choices": choices, **kw})


@dataclass
class CommonConfig:
    """Options shared by the training commands."""

    model: str = opt("smollm2-135m", "backbone: hub id, local folder, .gguf file or the alias smollm2-135m")
    out: str = opt("", "output run folder (required)", neutral=True)
    data_dir: str | None = opt(None, "folder of local benchmark files (default: the Hugging Face hub)")
    prompt_length: int = opt(100, "soft prompt length l (number of virtual tokens)")
    batch_size: int = opt(32, "examples per step (split across source tasks by --mixing)")
    lr: float = opt(0.3, "learning rate of the prompt (the prompt-tuning literature uses 0.3 for T5)")
    optimizer: str = opt("adafactor", "optimizer of the prompt", ("adafactor", "adam", "sgd"))
    weight_decay: float = opt(1e-5, "weight decay of the optimizer")
    max_input_tokens: int = opt(256, "inputs are truncated to this many tokens")
    max_target_tokens: int = opt(32, "targets are truncated to this many tokens")
    max_train_examples: int | None = opt(None, "use at most this many training examples per task")
    verbalizers: str = opt("auto", "words of classification labels: auto (on causal LMs, one token per label where "
                           "the tokenizer allows: the labels or the task's one-word alternatives such as yes/no; "
                           "seq2seq models keep the labels) or labels (always the task's labels)", ("auto", "labels"))
    precision: str = opt("fp32", "autocast precision of the backbone (prompts stay fp32)", ("fp32", "bf16", "fp16"))
    device: str = opt("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:1, ...", neutral=True)
    particle_chunk: int | None = opt(None, "evaluate at most this many prompts per forward pass (caps memory)",
                                     neutral=True)
    gradient_checkpointing: bool = opt(False, "recompute the backbone's layers in the backward pass: less activation "
                                       "memory for about a third more compute (see benchmarks/README.md)",
                                       neutral=True)
    compile: bool = opt(False, "torch.compile the backbone's training forward (dynamic shapes; the first steps pay "
                        "the compilation; needs a C++ compiler on a CPU; see benchmarks/README.md for its effect)",
                        neutral=True)
    grad_accum: int = opt(1, "gradient accumulation: run each step's --batch-size examples as N micro-batches, one "
                          "after another, and sum their gradients (the same update; activations of 1/N of the batch)",
                          neutral=True)
    log_every: int = opt(10, "log losses every N steps to metrics.jsonl")
    seed: int = opt(0, "random seed (prompt init, data order)")
    trust_remote_code: bool = opt(False, "allow the backbone's own Python code from the hub to run")
    checkpoint_every: int = opt(100, "save a resumable checkpoint (prompts, optimiser, RNG and data position) "
                                "every N steps and at the end to --out/checkpoint.safetensors", neutral=True)
    resume: bool = opt(False, "continue the killed or interrupted run in --out from its checkpoint; options not "
                       "given are read from its config.yaml, and options that change results must not differ",
                       neutral=True)
    overwrite: bool = opt(False, "replace the results (and checkpoint) already in --out", neutral=True)
    progress: bool = opt(True, "show progress bars", neutral=True)

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        if not self.out:
            raise BmtptError("--out is required")
        for name in ("prompt_length", "batch_size", "max_input_tokens", "max_target_tokens", "log_every",
                     "checkpoint_every", "grad_accum"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:  # a target's length may be unset
                raise BmtptError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("max_train_examples", "particle_chunk"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise BmtptError(f"--{name.replace('_', '-')} must be positive, got {v}")
        if self.grad_accum > self.batch_size:
            raise BmtptError(f"--grad-accum {self.grad_accum} exceeds --batch-size {self.batch_size}: a micro-batch "
                             "needs at least one example")
        if not self.lr > 0 or self.lr == float("inf"):
            raise BmtptError(f"--lr must be positive and finite, got {self.lr}")
        if not self.weight_decay >= 0:
            raise BmtptError(f"--weight-decay must be non-negative, got {self.weight_decay}")

    def to_dict(self) -> dict:
        """Plain dict of the fields (for config.yaml and posterior.json)."""
        return asdict(self)


@dataclass
class MultiTaskConfig(CommonConfig):
    """Options of every stage that trains on all source tasks at once: SVGD, independent prompts, MPT."""

    tasks: str = opt("", "comma-separated source tasks (required), e.g. mnli,qnli,qqp,sst2,squad,record")
    steps: int = opt(1000, "optimisation steps")
    init: str = opt("vocab", "prompt init: vocab (an independent draw per particle) | vocab-shared:S (one draw "
                    "for all, plus noise of S x the embeddings' std) | uniform | text:WORDS | "
                    "file:PATH.safetensors | peft:ADAPTER_DIR (particle 0; the others vocab)")
    mixing: str = opt("proportional", "per-task share of each batch", ("proportional", "temperature", "equal"))
    mixing_temperature: float = opt(2.0, "T of temperature mixing: share proportional to N_k^(1/T)")

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        super().validate()
        if not self.tasks:
            raise BmtptError("--tasks is required (comma-separated task names; `bmtpt tasks` lists them)")
        if self.steps <= 0:
            raise BmtptError(f"--steps must be positive, got {self.steps}")
        if not self.mixing_temperature > 0:
            raise BmtptError(f"--mixing-temperature must be positive, got {self.mixing_temperature}")
        if self.mixing != "temperature" and self.mixing_temperature != _default(MultiTaskConfig, "mixing_temperature"):
            raise BmtptError(f"--mixing-temperature applies to --mixing temperature, not --mixing {self.mixing}")


@dataclass
class SourceConfig(MultiTaskConfig):
    """`bmtpt source`: SVGD over the global posterior of the prompt given all source tasks."""

    particles: int = opt(5, "number of SVGD particles M (whole prompts)")
    method: str = opt("svgd", "svgd: one posterior over all tasks; independent: particle k trained on task k "
                      "alone (the averaged-prompts baseline needs M = number of tasks)", ("svgd", "independent"))
    likelihood_scale: str = opt("mean", "how a task's minibatch mean loss becomes log p(D_k|theta): 'mean' "
                                "(x1: a tempered posterior where SVGD's repulsion stays visible), 'dataset' "
                                "(x N_k: the exact posterior, where repulsion is negligible) or a number")
    prior_std: float | None = opt(None, "std of the isotropic Gaussian prior log p(theta) (default: no prior)")
    bandwidth: float | None = opt(None, "RBF bandwidth h of exp(-d^2/h) (default: median heuristic each step; "
                                  "a one-particle run records none, so its target prior needs one stated)")
    kernel_view: str = opt("flat", "what SVGD's kernel compares: flat (the whole prompt), row-mean (each particle's "
                           "mean token vector: a d-dimensional view where distances concentrate less) or function "
                           "(the particles' predictions: each batch example's log-likelihood; prompts that predict "
                           "alike repel; one forward and two backward passes a step, all particles in one pass)",
                           ("flat", "row-mean", "function"))
    task_weights: str | None = opt(None, "comma-separated weights, one per source task, multiplying each task's "
                                   "log-likelihood in the posterior (e.g. 1,1,0.5 to halve the third's pull)")
    specialise: float | None = opt(None, "let the particles specialise (beyond the paper): particle m weighs source "
                                   "task m mod K's log-likelihood by 1 and every other task's by this number in "
                                   "[0, 1], so each particle leans to one task while the kernel still couples them "
                                   "(pair with the target's --particle-weights target); default: none, every "
                                   "particle follows the one global posterior (the paper's)")
    repulsion: float = opt(1.0, "weight of SVGD's repulsive (kernel-gradient) term: 1 is plain SVGD; above 1 the "
                           "particles spread further (the drive of many examples otherwise dwarfs it: 0.7 percent "
                           "of the drive in the first CPU grids); 0 leaves kernel-averaged, non-repelling particles")
    repulsion_schedule: str = opt("constant", "how the repulsion weight changes over the steps: constant; anneal "
                                  "(from 0 up to --repulsion: modes first, spread later); cyclic (that ramp 4 "
                                  "times); decay (from --repulsion down to ~0)",
                                  ("constant", "anneal", "cyclic", "decay"))
    final_eval_examples: int = opt(200, "dev examples of each source task on which the final particles and their "
                                   "mean are scored, into posterior.json (0: skip)")
    interference_every: int = opt(10, "log the K x K task-interference matrix (cosine similarity of the source "
                                  "tasks' score directions, per particle) every N steps (in that step's log record), "
                                  "for `bmtpt inspect`; costs K extra backward passes that step; 0: off (svgd only)",
                                  neutral=True)
    parallel: str = opt("data", "under torchrun, how processes share a step: data (each takes a shard of every "
                        "batch) or particle (each scores its block of the particles on the whole batch; for "
                        "many particles and small batches); one process ignores it", ("data", "particle"),
                        neutral=True)

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        super().validate()
        if self.particles <= 0:
            raise BmtptError(f"--particles must be positive, got {self.particles}")
        if self.prior_std is not None and not self.prior_std > 0:
            raise BmtptError(f"--prior-std must be positive, got {self.prior_std}")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise BmtptError(f"--bandwidth must be positive, got {self.bandwidth}")
        parse_task_weights(self.task_weights)
        if not 0 <= self.repulsion < float("inf"):
            raise BmtptError(f"--repulsion must be a non-negative number, got {self.repulsion}")
        if self.final_eval_examples < 0:
            raise BmtptError(f"--final-eval-examples must be >= 0, got {self.final_eval_examples}")
        parse_likelihood_scale(self.likelihood_scale)
        if self.kernel_view == "function" and (self.grad_accum > 1 or self.particle_chunk not in (None,
                                                                                                self.particles)):
            raise BmtptError("--kernel-view function needs every particle's predictions on the whole batch before its "
                             "backward passes: leave out --grad-accum and --particle-chunk")
        if self.interference_every < 0:
            raise BmtptError(f"--interference-every must be >= 0, got {self.interference_every}")
        if self.specialise is not None and not 0 <= self.specialise <= 1:
            raise BmtptError(f"--specialise must be a weight in [0, 1], got {self.specialise}")
        if self.method == "independent":  # no kernel: each prompt follows its own task's gradient
            given = [f"--{f.name.replace('_', '-')}" for f in fields(self)
                     if f.name in SVGD_KERNEL_OPTIONS and getattr(self, f.name) != f.default]
            if given:
                raise BmtptError(f"{', '.join(given)} concern{'s' * (len(given) == 1)} SVGD's particles; --method "
                                 "independent trains each prompt alone on its own task")


# options of SVGD's kernel, its task-interference diagnostic and its particles' task focus: a source stage of
# --method independent has none of them and refuses them
SVGD_KERNEL_OPTIONS = ("bandwidth", "kernel_view", "repulsion", "repulsion_schedule", "interference_every",
                       "specialise")


def parse_task_weights(spec: str | None, count: int | None = None) -> list[float] | None:
    """'1,1,0.5' -> [1.0, 1.0, 0.5] (non-negative, at least one positive; `count` of them when given)."""
    if spec is None or str(spec).strip() == "":
        return None
    try:
        w = [float(x) for x in str(spec).split(",")]
    except ValueError:
        raise BmtptError(f"--task-weights must be comma-separated numbers, got {spec!r}") from None
    if any(not 0 <= x < float("inf") for x in w) or not any(x > 0 for x in w):
        raise BmtptError(f"--task-weights must be non-negative numbers, at least one positive, got {spec!r}")
    if count is not None and len(w) != count:
        raise BmtptError(f"--task-weights gives {len(w)} weights for {count} source tasks")
    return w


def parse_likelihood_scale(spec: str | float) -> str | float:
    """'mean', 'dataset' or a positive number."""
    if str(spec) in ("mean", "dataset"):
        return str(spec)
    try:
        v = float(spec)
    except ValueError:
        raise BmtptError(f"--likelihood-scale must be mean, dataset or a number, got {spec!r}") from None
    if not v > 0:
        raise BmtptError(f"--likelihood-scale must be positive, got {v}")
    return v


PRIOR_OPTIONS = ("prior_weight", "prior", "prior_weight_rule", "prior_bandwidth", "prior_bandwidth_scale",
                 "prior_bandwidth_from")


@dataclass
class TargetConfig(CommonConfig):
    """`bmtpt target`: train a target prompt by MAP with the source posterior as prior."""

    task: str = opt("", "target task (required)")
    prompt_length: int | None = opt(None, "soft prompt length l (default: the posterior's; 100 for --method pt); "
                                    "a length other than the posterior's is refused")
    allow_other_backbone: bool = opt(False, "accept a posterior trained on another backbone of the same embedding "
                                     "width (its prompts mean something else there; refused by default)")
    posterior: str | None = opt(None, "output folder of `bmtpt source` (required unless --method pt)", neutral=True)
    method: str = opt("bmtpt", "bmtpt: init from the particles + prior; avg: init from the particle mean, no "
                      "prior; pt: prompt tuning from scratch (see bmtpt.methods)", tuple(TARGET_KINDS))
    steps: int = opt(500, "optimisation steps")
    init: str = opt("mean", "initial prompt: mean (of the particles), particle:K, vocab, uniform, text:WORDS, "
                    "file:PATH, peft:ADAPTER_DIR (a PEFT prompt-tuning adapter)")
    prior_weight: float = opt(1.0, "lambda: weight of -log p(theta | sources) against the mean token NLL (0: off)")
    prior: str = opt("kde", "source-posterior density: kde over the particles; gaussian (isotropic, at their mean); "
                     "diag (a Gaussian whose per-coordinate variance is the particles' spread); fisher (a diagonal "
                     "Laplace approximation from the source stage's squared scores); diag and fisher have the "
                     "gaussian's mean precision 2/h (see bmtpt.prior)", ("kde", "gaussian", "diag", "fisher"))
    prior_weight_rule: str = opt("fixed", "fixed: lambda as given, against the per-token mean NLL; bayes: lambda "
                                 "divided by the training set's target tokens (the prior enters once against the "
                                 "summed log-likelihood, so it weighs less as the target set grows)",
                                 ("fixed", "bayes"))
    prior_bandwidth: float | None = opt(None, "bandwidth h of the prior's kernel exp(-d^2/h) (gaussian: variance h/2) "
                                        "(default: the source stage's last bandwidth, from posterior.json)")
    prior_bandwidth_scale: float = opt(1.0, "multiply the prior's bandwidth (however it was found) by this: below 1 a "
                                       "peaked prior, above 1 a flatter one (the kernel width of SVGD and of the "
                                       "prior need not be the same)")
    prior_bandwidth_from: str | None = opt(None, "take the prior's bandwidth from this other source run's "
                                           "posterior.json (a one-particle posterior has none: an M = 1 ablation "
                                           "borrows its M-particle twin's, so that only M changes)")
    particle_weights: str = opt("uniform", "how the source particles count in the start (--init mean) and the prior: "
                                "uniform (the paper's), or target (each particle weighted by its likelihood of the "
                                "target training set, up to 256 examples: the posterior probability of each "
                                "particle given the target data; bmtpt and avg)", ("uniform", "target"))
    rank_one: bool = opt(False, "train a rank-one multiplicative factor theta0 * (u v^T) as well")
    lr_factor: float = opt(0.01, "learning rate of the rank-one factors u, v")
    shots: int | None = opt(None, "k-shot training: k training examples drawn with --seed, taking a classification "
                            "task's labels in turn (balanced); replaces --max-train-examples")
    eval_every: int = opt(50, "evaluate on the dev split every N steps and keep the best prompt (a tie goes to the "
                          "later step)")
    train_eval_examples: int = opt(128, "training examples (a fixed sample) also scored at every evaluation, logged "
                                   "as train/<metric> in metrics.jsonl (0: off)")
    max_eval_examples: int | None = opt(None, "test (and, without --max-dev-examples, dev) examples at most: a fixed "
                                        "sample, the same for every seed and method, so scores pair up")
    max_dev_examples: int | None = opt(None, "dev examples used to pick the best step (default: --max-eval-examples)")
    dev_sample: str = opt("random", "how the dev sample is drawn: random (a fixed sample of --max-dev-examples), or "
                          "test-mix (the largest sample of at most that many with the test sample's label "
                          "proportions: for a dev pool whose labels lean differently from the test's)",
                          ("random", "test-mix"))
    eval_mode: str = opt("rank", "rank: rank classification for classification tasks; generate: decode",
                         ("rank", "generate"))
    eval_batch_size: int = opt(32, "rows per forward pass when evaluating", neutral=True)
    attention_lr: float = opt(0.01, "--method attempt: learning rate of the attention module (its target prompt "
                              "takes --lr)")
    attention_rank: int = opt(32, "--method attempt: width r of the attention module's projection (d -> r -> d)")
    attention_temperature: float | None = opt(None, "--method attempt: softmax temperature of the attention "
                                              "(default: the embedding width d, as in the paper)")
    particles: int = opt(1, "target posterior: M > 1 target prompts, started from the source particles (cycled) "
                         "and moved by SVGD under the target likelihood plus the source prior; predictions average "
                         "their label probabilities (classification, rank mode; --method bmtpt or avg). 1: one "
                         "MAP prompt")
    ensemble: str = opt("svgd", "with --particles M: svgd (a target posterior) or independent (each prompt follows its "
                        "own gradient: an ensemble of M MAP prompts at the same compute)", ("svgd", "independent"))

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        super().validate()
        if not self.task:
            raise BmtptError("--task is required")
        kind = TARGET_KINDS[self.method]
        if kind.needs_posterior and not self.posterior:
            raise BmtptError(f"--posterior is required with --method {self.method}")
        if not 0 < self.prior_bandwidth_scale < float("inf"):
            raise BmtptError(f"--prior-bandwidth-scale must be a positive number, got {self.prior_bandwidth_scale}")
        if self.train_eval_examples < 0:
            raise BmtptError(f"--train-eval-examples must be >= 0, got {self.train_eval_examples}")
        if self.prior_bandwidth is not None and self.prior_bandwidth_from:
            raise BmtptError("give --prior-bandwidth or --prior-bandwidth-from, not both")
        for name in ("shots", "max_dev_examples", "prior_bandwidth"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise BmtptError(f"--{name.replace('_', '-')} must be positive, got {v}")
        for name in ("steps", "eval_every", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise BmtptError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.prior_weight >= 0:
            raise BmtptError(f"--prior-weight must be non-negative, got {self.prior_weight}")
        if not self.lr_factor > 0:
            raise BmtptError(f"--lr-factor must be positive, got {self.lr_factor}")
        if not kind.prior:  # its prior options would be accepted and ignored
            given = [f"--{f.name.replace('_', '-')}" for f in fields(self)
                     if f.name in PRIOR_OPTIONS and getattr(self, f.name) != f.default]
            if given:
                raise BmtptError(f"{', '.join(given)} set the prior of --method bmtpt; --method {self.method} has none")
        if self.particle_chunk is not None:
            raise BmtptError("--particle-chunk splits a source stage's particles; a target run trains one prompt")
        if not kind.needs_posterior:  # pt trains from scratch: a posterior would be read by nothing
            if self.posterior:
                raise BmtptError(f"--method {self.method} trains from scratch and reads no --posterior (use --method "
                                 "avg or bmtpt to start from it)")
            if self.allow_other_backbone:
                raise BmtptError(f"--allow-other-backbone concerns a posterior; --method {self.method} reads none")
        if self.particles < 1:
            raise BmtptError(f"--particles must be >= 1, got {self.particles}")
        if self.particles == 1 and self.ensemble != _default(TargetConfig, "ensemble"):
            raise BmtptError("--ensemble applies to --particles M > 1")
        if self.particles > 1:
            if not kind.needs_posterior:
                raise BmtptError(f"--particles {self.particles} starts from the source particles: --method "
                                 f"{self.method} has none (use bmtpt or avg)")
            if self.rank_one:
                raise BmtptError("--particles > 1 does not take the rank-one factor (--rank-one)")
            if self.eval_mode != "rank":
                raise BmtptError("--particles > 1 averages label probabilities: it needs --eval-mode rank")
        if self.method == "attempt":
            given = [f"--{n.replace('_', '-')}" for n in ("init", "rank_one", "particles")
                     if getattr(self, n) != _default(TargetConfig, n)]
            if given:
                raise BmtptError(f"{', '.join(given)}: --method attempt trains its own input-dependent prompt "
                                 "(a target prompt from zero and an attention over the source prompts)")
            if self.attention_rank <= 0 or not self.attention_lr > 0 or (
                    self.attention_temperature is not None and not self.attention_temperature > 0):
                raise BmtptError("--attention-rank, --attention-lr and --attention-temperature must be positive")
        else:
            given = [f"--{n.replace('_', '-')}" for n in ATTEMPT_OPTIONS
                     if getattr(self, n) != _default(TargetConfig, n)]
            if given:
                raise BmtptError(f"{', '.join(given)} concern{'s' * (len(given) == 1)} --method attempt's attention")
        if self.particle_weights == "target" and (self.method not in ("bmtpt", "avg") or self.init != "mean"
                                                  or self.particles > 1):
            raise BmtptError("--particle-weights target weighs the source particles of one prompt's start and prior: "
                             "it needs --method bmtpt or avg, --init mean and one target prompt")
        if not self.rank_one and self.lr_factor != _default(TargetConfig, "lr_factor"):
            raise BmtptError("--lr-factor is the learning rate of the rank-one factor: add --rank-one")


ATTEMPT_OPTIONS = ("attention_lr", "attention_rank", "attention_temperature")


def _default(cls, name: str):
    return next(f.default for f in fields(cls) if f.name == name)


def result_neutral_options() -> frozenset[str]:
    """The options of `bmtpt source` / `bmtpt target` declared `neutral`: one list for the resume check and
    the experiment cell hash."""
    return frozenset(f.name for cls in (SourceConfig, TargetConfig) for f in fields(cls) if f.metadata.get("neutral"))


def read_yaml_mapping(path: str | Path, what: str, shape: str, loader: type = yaml.SafeLoader) -> dict:
    """A YAML file that must hold a mapping (an empty file is an empty one): a missing file, invalid YAML or
    another type raises a one-line BmtptError that names `what` the file is and the `shape` expected."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BmtptError(f"{what} {path} does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a SafeLoader or a subclass of it
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BmtptError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BmtptError(f"{what} {path} must hold a mapping ({shape}), not a YAML {type(raw).__name__}")
    return raw
