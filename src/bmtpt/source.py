"""Source stage: M prompt particles approximate the global posterior p(theta | all source tasks) by SVGD.

    log p(theta | sources) = log p(theta) + sum_k c_k * (-mean token NLL of task k's minibatch)

c_k comes from --likelihood-scale: 1 ('mean', a tempered posterior: every task weighs the same and
SVGD's repulsion stays comparable to the drive), N_k ('dataset', the exact posterior: the drive grows
with N and the particles become near-independent MAP runs), or a given number. --mixing only decides
how many of each task's examples a step sees, not the objective's task weights.

Each step: one batched forward/backward over (particle, example) rows gives every particle's score
s_m = grad log p(theta_m | sources); `bmtpt.svgd` turns the scores into phi; the optimiser takes
-phi as the gradient (phi is an ascent direction).

Every --checkpoint-every steps (and at the end) the whole run state goes to checkpoint.safetensors
(`bmtpt.checkpoint`); --resume continues from it and ends with the particles an uninterrupted run has.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import Checkpoint
from .config import SourceConfig, parse_likelihood_scale, parse_task_weights
from .data import Batch, EpochSampler, collate, select_rows
from .distributed import Dist
from .errors import BmtptError
from .prompted import PromptedModel
from .prompts import init_prompts
from .runfiles import save_posterior
from .runs import load_model, load_split, make_optimizer
from .session import RunSession
from .svgd import (
    SVGDTerms,
    function_terms,
    mean_pairwise_distance,
    median_bandwidth,
    pairwise_sq_dists,
    repulsion_weight,
    svgd_terms,
    task_interference,
)
from .tasks import parse_task_list, score_of


@dataclass
class SourceResult:
    """What `run_source` returns: the final particles, the posterior metadata and the run folder."""

    particles: Tensor
    info: dict
    out: Path


def mixing_sizes(sizes: list[int], batch: int, mixing: str, temperature: float = 2.0) -> list[int]:
    """Examples per task in a batch of `batch`: proportional to N_k, N_k^(1/T) or equal; at least 1 each."""
    if mixing == "equal":
        w = [1.0] * len(sizes)
    elif mixing == "proportional":
        w = [float(n) for n in sizes]
    elif mixing == "temperature":
        w = [n ** (1.0 / temperature) for n in sizes]
    else:
        raise BmtptError(f"unknown mixing {mixing!r}")
    raw = [batch * x / sum(w) for x in w]
    out = [max(1, math.floor(r)) for r in raw]
    # raising tiny shares to 1 can overshoot: take the excess back from the shares above 1 that exceed
    # their raw share the most
    while sum(out) > batch and max(out) > 1:
        i = max((i for i in range(len(out)) if out[i] > 1), key=lambda i: out[i] - raw[i])
        out[i] -= 1
    # hand out the remainder by largest fractional part, so the total is exactly `batch` when possible
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True):
        if sum(out) >= batch:
            break
        out[i] += 1
    return out


def mixed_batch(encoded: list, samplers: list, per_task: list[int], pad_id: int, is_seq2seq: bool) -> Batch:
    """One multi-task batch: the next per_task[k] examples of each task k, task-major (groups follow)."""
    ins, tgts = [], []
    for k, n in enumerate(per_task):
        for i in samplers[k].take(n):
            ins.append(encoded[k].inputs[i])
            tgts.append(encoded[k].targets[i])
    return collate(ins, tgts, pad_id, is_seq2seq)


def task_focus(particles: int, num_tasks: int, alpha: float) -> Tensor:
    """(M, K) likelihood weights of --specialise: 1 on particle m's own task (m mod K), alpha elsewhere.

    alpha = 1 is the paper's global posterior for every particle; alpha = 0 gives each particle one task's
    posterior (coupled only through the kernel). Between, each particle leans to one task and still sees the
    others, so the target stage can weigh the particles by how well they fit the target (--particle-weights).
    """
    focus = torch.full((particles, num_tasks), float(alpha))
    focus[torch.arange(particles), torch.arange(particles) % num_tasks] = 1.0
    return focus


def task_token_counts(batch, groups: Tensor, num_tasks: int) -> Tensor:
    """Target tokens of each task in the whole batch (at least 1): the denominators of the per-task losses."""
    dev = groups.device
    return torch.zeros(num_tasks, device=dev).index_add(0, groups, batch.target_mask.to(dev).sum(-1).float()
                                                        ).clamp_min(1)


def per_task_losses(nll: Tensor, groups: Tensor, particles: int, num_tasks: int, counts: Tensor) -> Tensor:
    """(particles, K) token-mean losses from per-row NLL sums of particle-major rows (each particle sees
    every row of `groups`)."""
    flat = torch.arange(particles, device=groups.device).repeat_interleave(len(groups)) * num_tasks + \
        groups.repeat(particles)
    tot = torch.zeros(particles * num_tasks, device=nll.device).index_add(0, flat, nll.float())
    return tot.view(particles, num_tasks) / counts


def particle_scores(pm: PromptedModel, particles: Tensor, batch, groups: Tensor, num_tasks: int,
                    weights: Tensor, prior_std: float | None, independent: bool = False,
                    chunk: int | None = None, micro_batches: int = 1, rows: Tensor | None = None,
                    owned: range | None = None, with_prior: bool = True, task_scores: Tensor | None = None
                    ) -> tuple[Tensor, Tensor]:
    """Scores grad log p(theta_m | sources), (M, l, d), and per-particle per-task mean losses, (M, K).

    svgd: every particle sees every example (M*B rows). independent: particle k sees only the rows of
    task k (B rows). `chunk` caps the particles per forward pass and `micro_batches` splits the examples
    into that many passes (gradient accumulation); either way the gradients accumulate into the same
    scores, because each pass divides its summed NLL by the token count of the *whole* batch.

    One process's share of a distributed step: `rows` (batch rows, data-parallel) or `owned` (a block of
    particles, particle-parallel) restrict the work, and the prior enters only `with_prior`; the shares
    of all processes sum to the whole step's scores and losses (the others' entries are zero here).

    `weights` are the tasks' log-likelihood weights, (K,), or one row per particle, (M, K) (--specialise).

    `task_scores` (K, M, l, d), when given, receives each task's part of the scores (its weighted
    log-likelihood's gradient; the K parts sum to the scores less the prior's), at the cost of K extra
    backward passes: what the task-interference matrix compares.
    """
    m = particles.shape[0]
    leaf = particles.detach().requires_grad_(True)
    losses = torch.zeros(m, num_tasks)
    dev = groups.device
    owned = owned if owned is not None else range(m)
    # target tokens of each task in the whole batch: the denominators of the per-task mean losses
    counts = task_token_counts(batch, groups, num_tasks)
    w = weights.to(dev).expand(m, num_tasks)  # (K,) or already (M, K): one row of task weights per particle
    chunk = chunk or m
    rows = torch.arange(len(groups), device=dev) if rows is None else rows.to(dev)
    parts = [r for r in rows.tensor_split(max(1, micro_batches)) if len(r)]
    for a in range(owned.start, owned.stop, chunk):
        b = min(owned.stop, a + chunk)
        log_post = torch.zeros((), device=dev)
        if prior_std is not None and with_prior:  # once per particle, not once per micro-batch
            log_post = -(leaf[a:b].float() ** 2).sum() / (2 * prior_std**2)
            if not parts:  # no rows in this share: the prior alone
                (-log_post).backward()
        for rows in parts:
            g = groups[rows]
            if independent:  # particle k sees only the rows of task k
                mine = (g >= a) & (g < b)
                if not mine.any():
                    continue
                rows, g = rows[mine], g[mine]
                nll, _ = pm.example_nll(leaf[a:b], select_rows(batch, rows), prompt_index=g - a)
                flat = g * num_tasks + g  # (particle g, task g): the diagonal of the (M, K) loss matrix
                tot = torch.zeros(m * num_tasks, device=nll.device).index_add(0, flat, nll.float())
                per = tot.view(m, num_tasks)[a:b] / counts
            else:  # rows particle-major: (b-a) * len(rows)
                nll, _ = pm.example_nll(leaf[a:b], select_rows(batch, rows))
                per = per_task_losses(nll, g, b - a, num_tasks, counts)
            if task_scores is not None:
                for k in range(num_tasks):
                    (g_k,) = torch.autograd.grad((per[:, k] * w[a:b, k]).sum(), leaf, retain_graph=True,
                                                 allow_unused=True)
                    if g_k is not None:
                        task_scores[k] -= g_k.detach().to(task_scores.dtype)
            (-(log_post - (per * w[a:b]).sum())).backward()
            log_post = torch.zeros((), device=dev)
            losses[a:b] += per.detach().float().cpu()
    grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)  # a share without work
    return -grad.detach(), losses


def function_space_step(pm: PromptedModel, particles: Tensor, batch, groups: Tensor, num_tasks: int,
                        weights: Tensor, prior_std: float | None, bandwidth: float | None,
                        task_scores: Tensor | None = None) -> tuple[Tensor, SVGDTerms, Tensor]:
    """(scores, SVGD terms with the kernel on the particles' predictions, per-particle per-task losses).

    The features are each example's log-likelihood of its target under each particle (M, B): two prompts
    that score the batch alike are close, however far apart their parameters. One forward pass over every
    (particle, example) row, then two backward passes through it: the scores, and the feature-space
    repulsion pulled back to the parameters (`svgd.function_terms`); the returned terms' `repulse` is in
    parameter space. `task_scores` as in `particle_scores`.
    """
    m, b = particles.shape[0], len(groups)
    leaf = particles.detach().requires_grad_(True)
    nll, _ = pm.example_nll(leaf, batch)  # particle-major rows
    per = per_task_losses(nll, groups, m, num_tasks, task_token_counts(batch, groups, num_tasks))
    w = weights.to(per.device).expand(m, num_tasks)  # (K,) or (M, K), as in particle_scores
    log_post = -(per * w).sum()
    if prior_std is not None:
        log_post = log_post - (leaf.float() ** 2).sum() / (2 * prior_std**2)
    if task_scores is not None:
        for k in range(num_tasks):
            (g_k,) = torch.autograd.grad(-(per[:, k] * w[:, k]).sum(), leaf, retain_graph=True)
            task_scores[k] += g_k.detach().to(task_scores.dtype)
    (scores,) = torch.autograd.grad(log_post, leaf, retain_graph=True)
    features = -nll.view(m, b)
    terms = function_terms(features.detach(), scores.detach(), bandwidth)
    (pulled,) = torch.autograd.grad((terms.repulse.to(features.dtype) * features).sum(), leaf)
    return scores.detach(), dataclasses.replace(terms, repulse=pulled.detach()), per.detach().float().cpu()


def run_source(cfg: SourceConfig, model=None, tokenizer=None) -> SourceResult:
    """Train M particles on the source tasks and write particles.safetensors + posterior.json to cfg.out.

    Pass `model`/`tokenizer` to reuse an already loaded backbone (cfg.model then only names it). With
    cfg.resume the run continues from cfg.out's checkpoint and ends exactly as if never interrupted.
    Every input is checked (and the backbone and data loaded) before the run folder is touched.
    """
    session = RunSession(cfg, "source")
    tasks = parse_task_list(cfg.tasks)
    scale = parse_likelihood_scale(cfg.likelihood_scale)
    independent = cfg.method == "independent"
    if independent and cfg.particles != len(tasks):
        raise BmtptError(f"--method independent trains one prompt per task: --particles must be {len(tasks)}")
    session.seed()
    train = [load_split(task, "train", cfg, cfg.max_train_examples) for task in tasks]  # data errors before the model
    dev = [load_split(task, "dev", cfg, cfg.final_eval_examples) for task in tasks] if cfg.final_eval_examples else []
    if model is None:
        model, tokenizer = load_model(cfg, session.device)
    pm = PromptedModel.for_run(model, tokenizer, cfg)
    pm.dist = session.dist

    # tokenise each data set once; steps only cut batches from the ids
    encoded = [pm.encode(task, examples, cfg.max_target_tokens) for task, examples in zip(tasks, train)]
    samplers = [EpochSampler(len(examples), cfg.seed * 1000 + k) for k, examples in enumerate(train)]
    sizes = [len(e) for e in encoded]
    per_task = mixing_sizes(sizes, cfg.batch_size, cfg.mixing, cfg.mixing_temperature)
    weights = torch.tensor([float(n) if scale == "dataset" else (1.0 if scale == "mean" else scale) for n in sizes])
    weights = weights * torch.tensor(parse_task_weights(cfg.task_weights, len(tasks)) or [1.0] * len(tasks))
    if cfg.specialise is not None:  # (M, K): particle m weighs its own task m mod K by 1, the others by alpha
        weights = weights * task_focus(cfg.particles, len(tasks), cfg.specialise)

    initial = init_prompts(model, tokenizer, cfg.particles, cfg.prompt_length, cfg.init, cfg.seed)
    particles = torch.nn.Parameter(initial.clone().to(session.device))
    opt = make_optimizer([{"params": [particles], "lr": cfg.lr}], cfg.optimizer, cfg.weight_decay)
    groups = torch.tensor([k for k, n in enumerate(per_task) for _ in range(n)], device=session.device)
    names = [t.name for t in tasks]
    run = {"bandwidth": cfg.bandwidth or 1.0}
    rows_per_step = len(groups) * (1 if independent else cfg.particles)
    # the empirical Fisher of the source posterior (mean squared score over the second half of the steps, all
    # particles): the target's `--prior fisher` shapes its precision with it
    fisher = {"sum": torch.zeros_like(particles.detach()[0]), "n": 0}

    def restore(ckpt: Checkpoint) -> None:
        """The particles, data position, kernel width and Fisher sums of the checkpoint (a checkpoint written
        before the Fisher estimate existed has none: the estimate then starts at the resume)."""
        saved = ckpt.tensors["particles"]
        if ckpt.state["train_sizes"] != sizes or saved.shape != particles.shape:
            raise BmtptError(f"cannot resume {session.out}: the training data or the prompt shapes changed since "
                             f"the checkpoint (train sizes {ckpt.state['train_sizes']} then, {sizes} now)")
        with torch.no_grad():
            particles.copy_(saved.to(particles.device))
        for sampler, state in zip(samplers, ckpt.state["samplers"], strict=True):
            sampler.load_state_dict(state)
        run["bandwidth"] = float(ckpt.state["bandwidth"])
        if "fisher_sum" in ckpt.tensors:
            fisher["sum"].copy_(ckpt.tensors["fisher_sum"].to(fisher["sum"].device))
            fisher["n"] = int(ckpt.state.get("fisher_n", 0))

    if cfg.kernel_view == "function" and session.dist.active:
        raise BmtptError("--kernel-view function compares every particle's predictions on the whole batch in one "
                         "process; run it without torchrun")
    out = session.open(opt, restore)
    share = _share(session.dist, cfg.parallel, len(groups), cfg.particles)
    for step in session.steps(f"source ({cfg.method}, M={cfg.particles})"):
        batch = mixed_batch(encoded, samplers, per_task, pm.pad_id, pm.is_seq2seq)
        probe = not independent and len(tasks) > 1 and cfg.interference_every and step % cfg.interference_every == 0
        parts = torch.zeros(len(tasks), *particles.shape, device=particles.device) if probe else None
        if cfg.kernel_view == "function":  # the kernel needs every particle's predictions before the backward
            scores, fterms, losses = function_space_step(pm, particles, batch, groups, len(tasks), weights,
                                                         cfg.prior_std, cfg.bandwidth, parts)
        else:
            scores, losses = particle_scores(pm, particles, batch, groups, len(tasks), weights, cfg.prior_std,
                                             independent, cfg.particle_chunk, cfg.grad_accum, task_scores=parts,
                                             **share)
        session.dist.sum_(scores, losses, *([parts] if probe else []))  # every process: the whole step's scores
        # which source tasks pull the particles the same way, and which conflict (logged with the step's record)
        interference = ([[round(float(x), 6) for x in row] for row in task_interference(parts)] if probe else None)
        bad = [names[k] for k in range(len(tasks)) if not torch.isfinite(losses[:, k]).all()]
        if bad:
            raise session.nonfinite("the loss", step, bad)
        if not torch.isfinite(scores).all():  # finite losses, overflowing gradient: every task contributes
            raise session.nonfinite("the gradient", step, names)
        if independent:
            phi, record = scores, {}
        else:
            terms = fterms if cfg.kernel_view == "function" else svgd_terms(particles.detach(), scores,
                                                                             cfg.bandwidth, cfg.kernel_view)
            gamma = cfg.repulsion * repulsion_weight(cfg.repulsion_schedule, step, cfg.steps)
            phi, run["bandwidth"] = terms.drive + gamma * terms.repulse, terms.bandwidth
            record = {"bandwidth": terms.bandwidth, "repulsion": gamma,
                      "mean_distance": mean_pairwise_distance(terms.sq_dists),
                      "drive_norm": _mean_norm(terms.drive), "repulse_norm": _mean_norm(terms.repulse)}
        if step > cfg.steps // 2:
            fisher["sum"] += scores.detach().to(fisher["sum"].dtype).pow(2).sum(0)
            fisher["n"] += len(scores)
        particles.grad = -phi.to(particles.dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(particles).all():  # never let a non-finite prompt into a checkpoint
            raise session.nonfinite("the particles", step, names)
        mean_loss = losses.mean().item() if not independent else losses.sum(1).mean().item()
        session.show(loss=mean_loss)
        if step % cfg.log_every == 0 or step == cfg.steps or probe:
            task_loss = losses.mean(0) if not independent else losses.sum(0)
            session.log.write(step=step, loss=mean_loss, **{f"loss/{n}": float(v) for n, v in zip(names, task_loss)},
                              particle_loss=[round(float(x), 6) for x in losses.sum(1)],
                              particle_task_loss=[[round(float(x), 6) for x in row] for row in losses], **record,
                              **({"interference": interference} if probe else {}))
        if session.checkpoint_due(step):
            session.save_checkpoint(step, {"particles": particles, "fisher_sum": fisher["sum"]}, opt,
                                    {"samplers": [s.state_dict() for s in samplers], "train_sizes": sizes,
                                     "bandwidth": run["bandwidth"], "fisher_n": fisher["n"]})

    info = {"backbone": cfg.model, "source_tasks": names, "source_task_files": [t.source_file for t in tasks],
            "method": cfg.method, "bandwidth": run["bandwidth"],
            "library_version": __version__, "steps": cfg.steps, "batch_per_task": per_task,
            "train_sizes": sizes, "compute": {"example_passes": rows_per_step * cfg.steps},
            "hyperparameters": cfg.to_dict()}
    final = particles.detach().float().cpu()
    # The prior of the target stage uses the kernel width of the *final* particles. One particle has no
    # spread to measure, so its posterior records none (the median heuristic's fallback h = 1 is arbitrary
    # and would make the prior of an M = 1 ablation ~100x stronger than the M-particle run's).
    # (a function-space kernel's --bandwidth is a width in prediction space: the prior's is the parameters')
    stated = cfg.bandwidth if cfg.kernel_view != "function" else None
    info["bandwidth"] = stated or (median_bandwidth(pairwise_sq_dists(final)) if len(final) > 1 else None)
    if dev:
        info["final_dev"] = final_dev_scores(pm, final.to(pm.device), tasks, dev, cfg.progress)
    # the initial particles go with the final ones: SPoT compares what training *moved* (final - initial)
    extra = {"fisher": (fisher["sum"] / fisher["n"]).float().cpu()} if fisher["n"] else {}
    if session.dist.is_main:  # posterior.json last: it marks the run complete
        save_posterior(out, final, info, initial=initial, extra=extra)
    session.finish()
    return SourceResult(final, info, out)


def _share(dist: Dist, parallel: str, rows: int, particles: int) -> dict:
    """particle_scores' arguments for this process's share of a step (none in a one-process run)."""
    if not dist.active:
        return {}
    if parallel == "particle":  # a block of the particles, every row; each particle's prior with its owner
        return {"owned": dist.block(particles)}
    return {"rows": torch.tensor(list(dist.block(rows)), dtype=torch.long), "with_prior": dist.is_main}


def final_dev_scores(pm: PromptedModel, particles: Tensor, tasks: list, dev: list[list], progress: bool = True
                     ) -> dict[str, dict]:
    """Each source task's dev score under the particles' mean and under each particle (is every source
    task learnt well above chance? the evidence that the posterior holds something to transfer)."""
    out = {}
    mean = particles.mean(0)
    for task, examples in tqdm(list(zip(tasks, dev)), desc="source dev scores", disable=not progress, leave=False):
        def score(prompt: Tensor, task=task, examples=examples) -> float:
            return round(score_of(pm.evaluate(prompt, task, examples)), 6)

        out[task.name] = {"mean": score(mean), "particles": [score(p) for p in particles], "examples": len(examples)}
    return out


def _mean_norm(x: Tensor) -> float:
    return x.reshape(x.shape[0], -1).float().norm(dim=1).mean().item()
