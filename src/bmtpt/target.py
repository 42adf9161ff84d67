"""Target stage: MAP training of a target prompt with the source posterior as its prior.

    loss = mean token NLL on the target task  -  lambda * log p_hat(theta_T)

p_hat is a kernel density over the source particles with the posterior's bandwidth (or an isotropic
Gaussian at their mean with the same kernel width, variance h/2). theta_T = theta0 * (u v^T) when the
rank-one factor is on; u and v start at ones, so training starts exactly at theta0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import __version__
from .backbone import embedding_width, load_backbone
from .config import TargetConfig
from .data import EpochSampler, batch_of, encode_examples
from .errors import BmtptError
from .prompted import PromptedModel
from .prompts import atomic_save_tensors, atomic_write_json, init_prompts, load_posterior
from .runs import (
    JsonlLog,
    check_data_dir,
    load_split,
    make_optimizer,
    prepare_run_dir,
    resolve_device,
    save_config,
    seed_everything,
)
from .svgd import gaussian_log_density, kde_log_density
from .tasks import Task, get_task

TARGET_FORMAT = 1


@dataclass
class TargetResult:
    """The trained prompt (l, d), its dev/test metrics and the run folder."""

    prompt: Tensor
    metrics: dict
    out: Path


class PriorTerm:
    """log p_hat(theta) of the source posterior: a KDE over the particles or a Gaussian at their mean."""

    def __init__(self, particles: Tensor, bandwidth: float, kind: str = "kde"):
        self.particles, self.bandwidth, self.kind = particles, float(bandwidth), kind
        self.mean = particles.mean(0)

    def __call__(self, theta: Tensor) -> Tensor:
        """Differentiable log density (up to a constant) at theta, shape (l, d)."""
        if self.kind == "kde":
            return kde_log_density(theta, self.particles, self.bandwidth)
        return gaussian_log_density(theta, self.mean, self.bandwidth / 2)


def effective_prompt(theta0: Tensor, u: Tensor | None, v: Tensor | None) -> Tensor:
    """theta0 * (u v^T) with the rank-one factor, else theta0."""
    return theta0 if u is None else theta0 * (u[:, None] * v[None, :])


def initial_prompt(cfg: TargetConfig, model, tokenizer, particles: Tensor | None) -> Tensor:
    """theta0 from --init: the particles' mean, one particle, or a fresh init (vocab, uniform, text, file)."""
    init = "vocab" if cfg.method == "pt" and cfg.init == "mean" else cfg.init  # pt has no particles
    if init == "mean" or init.startswith("particle:"):
        if particles is None:
            raise BmtptError(f"--init {init} needs --posterior")
        if init == "mean":
            return particles.mean(0).clone()
        try:
            k = int(init.split(":", 1)[1])
        except ValueError:
            raise BmtptError(f"--init {init}: expected particle:K with an integer K") from None
        if not 0 <= k < particles.shape[0]:
            raise BmtptError(f"--init {init}: the posterior has particles 0..{particles.shape[0] - 1}")
        return particles[k].clone()
    length = particles.shape[1] if particles is not None else cfg.prompt_length
    return init_prompts(model, tokenizer, 1, length, init, cfg.seed)[0]


def score_of(metrics: dict) -> float:
    """One number per evaluation: the mean of the task's metrics (as GLUE averages F1 and accuracy)."""
    return sum(metrics.values()) / len(metrics)


def evaluate_prompt(pm: PromptedModel, prompt: Tensor, task: Task, examples, cfg: TargetConfig) -> dict:
    """The task's metrics plus their mean under the key 'score'."""
    m = pm.evaluate(prompt.detach(), task, examples, cfg.eval_mode, cfg.eval_batch_size)
    return {**m, "score": score_of(m)}


def run_target(cfg: TargetConfig, model=None, tokenizer=None) -> TargetResult:
    """Train and evaluate a target prompt; write prompt.safetensors + target.json to cfg.out."""
    cfg.validate()
    task = get_task(cfg.task)
    check_data_dir(cfg.data_dir)
    device = resolve_device(cfg.device)
    particles, meta = (None, {})
    if cfg.posterior and cfg.method != "pt":
        particles, meta = load_posterior(cfg.posterior)
    out = prepare_run_dir(cfg)
    save_config(out, "target", cfg)
    seed_everything(cfg.seed)
    if model is None:
        model, tokenizer = load_backbone(cfg.model, cfg.trust_remote_code, device=device)
    width = embedding_width(model)
    if particles is not None and particles.shape[2] != width:
        raise BmtptError(f"the posterior's prompts are {particles.shape[2]} wide but backbone {cfg.model} embeds "
                         f"in {width}: was it trained on another backbone ({meta.get('backbone')})?")
    pm = PromptedModel(model, tokenizer, cfg.precision, cfg.max_input_tokens)
    device = pm.device

    theta0 = torch.nn.Parameter(initial_prompt(cfg, model, tokenizer, particles).to(device))
    groups = [{"params": [theta0], "lr": cfg.lr}]
    u = v = None
    if cfg.rank_one:
        u = torch.nn.Parameter(torch.ones(theta0.shape[0], device=device))
        v = torch.nn.Parameter(torch.ones(theta0.shape[1], device=device))
        groups.append({"params": [u, v], "lr": cfg.lr_factor})
    opt = make_optimizer(groups, cfg.optimizer, cfg.weight_decay)
    lam = cfg.prior_weight if cfg.method == "bmtpt" else 0.0
    prior = PriorTerm(particles.to(device), meta["bandwidth"], cfg.prior) if particles is not None and lam > 0 else None

    train = load_split(task, "train", cfg, cfg.max_train_examples)
    dev = load_split(task, "dev", cfg, cfg.max_eval_examples)
    enc = encode_examples(tokenizer, train, pm.is_seq2seq, cfg.max_input_tokens, cfg.max_target_tokens)
    sampler = EpochSampler(len(enc), cfg.seed)
    log = JsonlLog(out / "metrics.jsonl")

    def current() -> Tensor:
        return effective_prompt(theta0, u, v)

    best = {"step": 0, "dev": evaluate_prompt(pm, current(), task, dev, cfg)}
    best_prompt = current().detach().clone()
    best_state = _params(theta0, u, v)
    log.write(step=0, **{f"dev/{k}": v_ for k, v_ in best["dev"].items()})
    bar = tqdm(range(1, cfg.steps + 1), desc=f"target {task.name} ({cfg.method})", disable=not cfg.progress)
    for step in bar:
        batch = batch_of(enc, sampler.take(cfg.batch_size), pm.pad_id, pm.is_seq2seq)
        theta = current()
        nll, ntok = pm.example_nll(theta[None], batch)
        nll_mean = nll.sum() / ntok.sum().clamp_min(1)
        log_prior = prior(theta) if prior is not None else torch.zeros((), device=device)
        loss = nll_mean - lam * log_prior
        if not torch.isfinite(loss):
            raise BmtptError(f"loss became non-finite at step {step} on task {task.name} (try a lower --lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(nll=f"{nll_mean.item():.4f}")
        if step % cfg.log_every == 0:
            log.write(step=step, nll=nll_mean.item(), log_prior=log_prior.item(), loss=loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            dev_m = evaluate_prompt(pm, current(), task, dev, cfg)
            log.write(step=step, **{f"dev/{k}": v_ for k, v_ in dev_m.items()})
            if dev_m["score"] > best["dev"]["score"]:
                best = {"step": step, "dev": dev_m}
                best_prompt, best_state = current().detach().clone(), _params(theta0, u, v)

    test = load_split(task, "test", cfg, cfg.max_eval_examples)
    test_m = evaluate_prompt(pm, best_prompt, task, test, cfg)
    metrics = {"dev": best["dev"], "test": test_m, "best_step": best["step"]}
    tensors = {"prompt": best_prompt, **best_state}
    atomic_save_tensors(tensors, out / "prompt.safetensors")
    atomic_write_json({"format": TARGET_FORMAT, "library_version": __version__, "backbone": cfg.model,
                       "task": task.name, "method": cfg.method, "posterior": cfg.posterior,
                       "source_tasks": meta.get("source_tasks"), "prompt_length": best_prompt.shape[0],
                       "embed_dim": best_prompt.shape[1], "prior_weight": lam,
                       "trainable_parameters": sum(p.numel() for g in groups for p in g["params"]),
                       "metrics": metrics, "hyperparameters": cfg.to_dict()}, out / "target.json")
    log.write(step=cfg.steps, **{f"test/{k}": v_ for k, v_ in test_m.items()}, best_step=best["step"])
    return TargetResult(best_prompt.cpu(), metrics, out)


def _params(theta0: Tensor, u: Tensor | None, v: Tensor | None) -> dict[str, Tensor]:
    state = {"theta0": theta0.detach().clone()}
    if u is not None:
        state.update(u=u.detach().clone(), v=v.detach().clone())
    return state
