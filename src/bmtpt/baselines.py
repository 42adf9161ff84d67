"""Baselines that need code of their own: MPT's multi-task source stage and SPoT's prompt retrieval.

The other baselines are settings of the two stages: prompt tuning (`run_target --method pt`) and the
averaged per-task prompts (`run_source --method independent`, then `run_target --method avg`).

- MPT (Wang et al. 2023; PEFT's `MULTITASK_PROMPT_TUNING`, without the distillation step): task k's
  prompt is P* o (u_k v_k^T), a shared prompt P* (l, d) times a rank-one task factor, trained on all
  sources at once. The result is written as a posterior folder with ONE particle, P*, so that
  `run_target --method avg --rank-one` starts the target from P* with a fresh rank-one factor.
- SPoT (Vu et al. 2022): train a target prompt briefly (the "probe"), then start the target run from
  the source prompt whose *task embedding* is most cosine-similar to it. Raw prompts are dominated by
  where they started (their cosines were all 0.10-0.15 whatever the task), and a fully trained source
  prompt's displacement is not comparable with a few probe steps' either (on the tiny test models it
  picked the wrong task in a third of the trials). So, as SPoT's task embeddings do, every task is
  embedded by the same procedure: a probe of the same steps and settings from one shared start (the
  source prompts' mean initial value), and the embedding is its displacement. The source tasks' probes
  are computed once per posterior folder and kept there. Source stages for SPoT should start their
  prompts together (`--init vocab-shared:S`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import __version__
from .backbone import load_backbone
from .checkpoint import Checkpoint
from .config import MultiTaskConfig, TargetConfig, opt
from .data import EpochSampler, select_rows
from .errors import BmtptError
from .prompted import PromptedModel, mean_loss_by_group
from .prompts import init_prompts
from .runfiles import atomic_save_tensors, load_initial_particles, read_json_object, save_posterior
from .runs import load_split, load_train, make_optimizer, seed_everything
from .session import RunSession
from .source import SourceResult, mixed_batch, mixing_sizes
from .target import prompt_step
from .tasks import get_task, parse_task_list

MPT_FACTORS_FILE = "mpt_factors.safetensors"
# The SPoT probe draws its vocab init from its own seed stream: with the run's seed it would start
# from exactly the rows of source prompt 0 (init_prompts draws prompt 0 first), and cosine similarity
# would then mostly measure the shared starting point.
PROBE_SEED_OFFSET = 1_000_003


@dataclass
class MptConfig(MultiTaskConfig):
    """Source stage of the MPT baseline: a shared prompt with rank-one multiplicative task factors (the
    multi-task options of every source stage, none of SVGD's)."""

    method: str = opt("mpt", "always mpt (the shared prompt is written as the posterior's single particle)")
    particles: int = opt(1, "always 1: the shared prompt")
    lr_factor: float = opt(0.01, "learning rate of the task factors u_k, v_k")
    factor_init: str = opt("ones", "task factors start at ones (task prompts start at P*, as the target's "
                           "rank-one factor does) or N(0, 0.02) as in PEFT", ("ones", "normal"))

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        super().validate()
        if not self.lr_factor > 0:
            raise BmtptError(f"mpt lr_factor must be positive, got {self.lr_factor}")
        if self.factor_init not in ("ones", "normal"):
            raise BmtptError(f"mpt factor_init must be ones or normal, got {self.factor_init!r}")
        if (self.method, self.particles) != ("mpt", 1):
            raise BmtptError("MPT's source stage trains one shared prompt (method mpt, particles 1)")


def task_prompts(shared: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """(K, l, d) task prompts P* o (u_k v_k^T) from the shared prompt (l, d) and factors u (K, l), v (K, d)."""
    return shared[None] * (u[:, :, None] * v[:, None, :])


def mpt_trainable_parameters(length: int, width: int, num_tasks: int) -> int:
    """Parameters the MPT source stage trains: the shared prompt plus a rank-one factor per task."""
    return length * width + num_tasks * (length + width)


def train_mpt_source(cfg: MptConfig, model=None, tokenizer=None) -> SourceResult:
    """Train MPT's shared prompt and task factors on all sources; write a 1-particle posterior to cfg.out.

    The objective is the token-mean NLL over each mixed batch (multi-task training on the concatenated
    data sets, --mixing deciding each task's share of a batch); every row uses its own task's prompt.
    """
    session = RunSession(cfg, "mpt-source")
    tasks = parse_task_list(cfg.tasks)
    session.seed()
    train = [load_split(task, "train", cfg, cfg.max_train_examples) for task in tasks]  # data errors first
    if model is None:
        model, tokenizer = load_backbone(cfg.model, cfg.trust_remote_code, device=session.device)
    pm = PromptedModel.for_run(model, tokenizer, cfg)
    pm.dist = session.dist

    # the same data pipeline as the SVGD source stage
    encoded = [pm.encode(task, examples, cfg.max_target_tokens) for task, examples in zip(tasks, train)]
    samplers = [EpochSampler(len(examples), cfg.seed * 1000 + k) for k, examples in enumerate(train)]
    sizes = [len(e) for e in encoded]
    per_task = mixing_sizes(sizes, cfg.batch_size, cfg.mixing, cfg.mixing_temperature)
    num = len(tasks)

    shared_init = init_prompts(model, tokenizer, 1, cfg.prompt_length, cfg.init, cfg.seed)[0]
    shared = torch.nn.Parameter(shared_init.clone().to(pm.device))
    length, width = shared.shape
    if cfg.factor_init == "ones":
        u0, v0 = torch.ones(num, length), torch.ones(num, width)
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        u0, v0 = torch.randn(num, length, generator=g) * 0.02, torch.randn(num, width, generator=g) * 0.02
    u, v = torch.nn.Parameter(u0.to(pm.device)), torch.nn.Parameter(v0.to(pm.device))
    opt_ = make_optimizer([{"params": [shared], "lr": cfg.lr}, {"params": [u, v], "lr": cfg.lr_factor}],
                          cfg.optimizer, cfg.weight_decay)
    groups = torch.tensor([k for k, n in enumerate(per_task) for _ in range(n)], device=pm.device)
    names = [t.name for t in tasks]
    live = {"shared_prompt": shared, "task_cols": u, "task_rows": v}

    def restore(ckpt: Checkpoint) -> None:
        """The shared prompt, task factors and data position of the checkpoint."""
        if ckpt.state["train_sizes"] != sizes or any(ckpt.tensors[k].shape != p.shape for k, p in live.items()):
            raise BmtptError(f"cannot resume {session.out}: the training data or the prompt shapes changed since "
                             f"the checkpoint (train sizes {ckpt.state['train_sizes']} then, {sizes} now)")
        with torch.no_grad():
            for k, p in live.items():
                p.copy_(ckpt.tensors[k].to(p.device))
        for sampler, state in zip(samplers, ckpt.state["samplers"], strict=True):
            sampler.load_state_dict(state)

    session.open(opt_, restore)
    for step in session.steps(f"source (mpt, {num} tasks)"):
        batch = mixed_batch(encoded, samplers, per_task, pm.pad_id, pm.is_seq2seq)
        ntok = batch.target_mask.sum(-1).to(pm.device)
        opt_.zero_grad(set_to_none=True)
        nll = torch.zeros(len(groups), device=pm.device)
        mine = torch.tensor(list(session.dist.block(len(groups))), dtype=torch.long)  # all rows in one process
        for rows in mine.tensor_split(cfg.grad_accum):  # gradient accumulation
            if len(rows):
                part, _ = pm.example_nll(task_prompts(shared, u, v), select_rows(batch, rows),
                                         prompt_index=groups[rows.to(groups.device)])
                (part.sum() / ntok.sum().clamp_min(1)).backward()  # the whole batch's token count
                nll[rows.to(nll.device)] = part.detach().to(nll.dtype)
        if session.dist.active:  # data-parallel: the other processes' rows and gradients
            for p in live.values():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            session.dist.sum_(nll, *(p.grad for p in live.values()))
        loss = nll.sum() / ntok.sum().clamp_min(1)
        if not torch.isfinite(loss):
            raise session.nonfinite("the loss", step, names)
        opt_.step()
        if not all(torch.isfinite(p).all() for p in live.values()):  # never into a checkpoint
            raise session.nonfinite("the prompt", step, names)
        session.show(loss=loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            per = mean_loss_by_group(nll.detach(), ntok, groups, num)
            # particle_loss has the SVGD stage's meaning (the one particle's summed task losses), so the
            # same plots read both folders
            session.log.write(step=step, loss=loss.item(), **{f"loss/{n}": float(x) for n, x in zip(names, per)},
                              particle_loss=[round(float(per.sum()), 6)])
        if session.checkpoint_due(step):
            session.save_checkpoint(step, dict(live), opt_, {"samplers": [s.state_dict() for s in samplers],
                                                             "train_sizes": sizes})

    final = shared.detach().float().cpu()
    if not session.dist.is_main:  # rank 0 writes the results
        session.finish()
        return SourceResult(final[None], {}, session.out)
    atomic_save_tensors({"shared_prompt": final, "task_cols": u.detach().float(), "task_rows": v.detach().float()},
                        session.out / MPT_FACTORS_FILE)
    info = {"backbone": cfg.model, "source_tasks": names, "method": "mpt",
            # one particle has no kernel width; the target stage needs one only for its prior (off for mpt)
            "bandwidth": None, "library_version": __version__, "steps": cfg.steps, "batch_per_task": per_task,
            "train_sizes": sizes, "compute": {"example_passes": sum(per_task) * cfg.steps},
            "trainable_parameters": mpt_trainable_parameters(length, width, num), "task_factors": MPT_FACTORS_FILE,
            "hyperparameters": cfg.to_dict()}
    save_posterior(session.out, final[None], info, initial=shared_init[None])
    session.finish()
    return SourceResult(final[None], info, session.out)


# ----------------------------------------------------------------------------- SPoT
def spot_similarities(sources: Tensor, target: Tensor, pool: str = "flat") -> Tensor:
    """Cosine similarity of each source prompt (K, l, d) with the target prompt (l, d), shape (K,).

    `flat` compares the flattened prompts; `mean` their average token vectors (SPoT's pooled variant).
    Pass displacements (trained minus initial prompts) to compare what training learnt.
    """
    sources, target = sources.double(), target.double()  # pooling in float32 would cost ~1e-7
    if pool == "flat":
        s, t = sources.reshape(sources.shape[0], -1), target.reshape(1, -1)
    elif pool == "mean":
        s, t = sources.mean(1), target.mean(0, keepdim=True)
    else:
        raise BmtptError(f"unknown spot pool {pool!r} (flat or mean)")
    return F.cosine_similarity(s, t.expand_as(s), dim=1)


def spot_select(sources: Tensor, target: Tensor, pool: str = "flat") -> tuple[int, Tensor]:
    """Index of the source prompt most cosine-similar to the target prompt, and all similarities."""
    sims = spot_similarities(sources, target, pool)
    return int(sims.argmax()), sims


def probe_start(posterior: str, length: int) -> Tensor | None:
    """Where SPoT's probe starts: the source prompts' mean initial value (None for a posterior that did not
    save its initial particles: then a vocab draw of the probe's own)."""
    initial = load_initial_particles(posterior)
    if initial is None:
        return None
    if initial.shape[1] != length:
        raise BmtptError(f"spot: the initial particles in {posterior} have length {initial.shape[1]}, not {length}")
    return initial.mean(0)


def train_probe(cfg: TargetConfig, steps: int, length: int, model, tokenizer, start: Tensor | None = None
                ) -> tuple[Tensor, int]:
    """SPoT's brief prompt tuning on the target: `steps` steps from `start` (else a vocab draw), no evaluation.

    Uses the target run's own training examples (same task, seed, cap and k-shot set) and its optimiser
    settings. Returns the prompt (length, d) and the example passes it cost.
    """
    if steps <= 0:
        raise BmtptError(f"spot steps must be positive, got {steps}")
    task = get_task(cfg.task)
    seed_everything(cfg.seed)
    pm = PromptedModel.for_run(model, tokenizer, cfg)
    examples = load_train(task, cfg)
    enc = pm.encode(task, examples, cfg.max_target_tokens)
    sampler = EpochSampler(len(enc), cfg.seed)
    if start is None:
        start = init_prompts(model, tokenizer, 1, length, "vocab", cfg.seed + PROBE_SEED_OFFSET)[0]
    prompt = torch.nn.Parameter(start.clone().float().to(pm.device))
    opt_ = make_optimizer([{"params": [prompt], "lr": cfg.lr}], cfg.optimizer, cfg.weight_decay)
    for step in range(1, steps + 1):  # the target run's step, without a run folder or evaluations
        prompt_step(pm, lambda: prompt, [prompt], opt_, None, 0.0, enc, sampler.take(cfg.batch_size), cfg.grad_accum,
                    lambda what, step=step: BmtptError(f"{what} became non-finite at step {step} of the SPoT probe "
                                                       f"on {task.name} (try a lower --lr)"))
    return prompt.detach().float().cpu(), steps * cfg.batch_size


def source_embeddings(posterior: str, names: list[str], cfg: TargetConfig, steps: int, start: Tensor, model,
                      tokenizer) -> tuple[Tensor, int]:
    """SPoT's task embeddings of the source tasks, (K, l, d): the displacement of a probe trained `steps` steps
    on each source task from the shared start, with the target probe's settings. Kept in the posterior folder
    (one file per probe setting), so every target of a grid pays for them once. Returns them and the passes."""
    import hashlib
    import json

    from .runfiles import load_tensors

    key = json.dumps({"steps": steps, "tasks": names, **{k: getattr(cfg, k) for k in PROBE_OPTIONS}}, sort_keys=True)
    path = Path(posterior) / f"spot-embeddings-{hashlib.sha1(key.encode()).hexdigest()[:10]}.safetensors"
    if path.is_file():
        return load_tensors(path)["embeddings"], 0
    moved = []
    for name in names:  # the stage's own seed, not the cell's: one set of embeddings per stage
        probe_cfg = dataclasses.replace(cfg, task=name, shots=None, posterior=None, method="pt", seed=0)
        moved.append(train_probe(probe_cfg, steps, start.shape[0], model, tokenizer, start)[0] - start)
    emb = torch.stack(moved)
    atomic_save_tensors({"embeddings": emb}, path)
    return emb, len(names) * steps * cfg.batch_size


# the target run's options that shape a probe (a change makes new source embeddings)
PROBE_OPTIONS = ("lr", "optimizer", "weight_decay", "batch_size", "max_train_examples", "max_input_tokens",
                 "max_target_tokens", "verbalizers", "data_dir", "model", "eval_mode")


def spot_choose(posterior: str, particles: Tensor, cfg: TargetConfig, steps: int, pool: str, model, tokenizer
                ) -> tuple[int, Tensor, Tensor, int]:
    """SPoT's retrieval: probe the target from the source prompts' shared start, then pick the source prompt
    whose task embedding (the same probe on its task) is most cosine-similar to the target probe's
    displacement. Returns (index, similarities, probe prompt, probe passes, source-probe passes included)."""
    start = probe_start(posterior, particles.shape[1])
    probe, passes = train_probe(cfg, steps, particles.shape[1], model, tokenizer, start)
    if start is None:  # an old posterior without its initial particles: compare the raw prompts
        k, sims = spot_select(particles, probe, pool)
        return k, sims, probe, passes
    names = list(read_json_object(Path(posterior) / "posterior.json").get("source_tasks") or [])
    if len(names) != particles.shape[0]:
        raise BmtptError(f"spot: {posterior} holds {particles.shape[0]} prompts for {len(names)} source tasks")
    emb, more = source_embeddings(posterior, names, cfg, steps, start, model, tokenizer)
    # centred on the source embeddings' mean: every task's probe learns the answer format first, a common
    # part that made all cosines ~0.98 on the tiny test models and hid which task is closest
    common = emb.mean(0) if len(emb) > 1 else torch.zeros_like(emb[0])
    k, sims = spot_select(emb - common, probe - start - common, pool)
    return k, sims, probe, passes + more
