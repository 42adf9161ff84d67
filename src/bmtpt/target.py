"""Target stage: MAP training of a target prompt with the source posterior as its prior.

    loss = mean token NLL on the target task  -  lambda_eff * log p_hat(theta_T)

p_hat is the source posterior as a density (`bmtpt.prior`: the paper's kernel density over the particles
with the posterior's bandwidth, or a Gaussian shaped by the particles or by the source Fisher), and
lambda_eff is --prior-weight, optionally divided by the target set's size (--prior-weight-rule bayes).
theta_T = theta0 * (u v^T) when the rank-one factor is on; u and v start at ones, so training starts
exactly at theta0.

Every --checkpoint-every steps (and at the end) the run state, best-so-far dev prompt included, goes
to checkpoint.safetensors (`bmtpt.checkpoint`); --resume continues from it as if never interrupted.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import __version__
from .backbone import embedding_width
from .checkpoint import Checkpoint, file_digest
from .config import TargetConfig
from .data import EpochSampler, batch_of
from .distributed import Dist
from .errors import BmtptError
from .methods import TARGET_KINDS
from .prior import PriorTerm, effective_weight, particle_log_weights, prior_bandwidth, weighted_mean
from .prompted import PromptedModel
from .prompts import init_prompts
from .runfiles import (
    PREDICTIONS_FILE,
    atomic_save_tensors,
    atomic_write_json,
    effective_prompt,
    load_posterior,
    load_tensors,
)
from .runs import load_model, load_split, load_train, make_optimizer
from .session import RunSession
from .tasks import Task, get_task, scored

TARGET_FORMAT = 1
DEFAULT_PROMPT_LENGTH = 100  # pt's prompt length when --prompt-length is not given (the source stage's default)


@dataclass
class TargetResult:
    """The trained prompt (l, d), its dev/test metrics and the run folder."""

    prompt: Tensor
    metrics: dict
    out: Path


def initial_prompt(cfg: TargetConfig, model, tokenizer, particles: Tensor | None,
                   log_weights: Tensor | None = None) -> Tensor:
    """theta0 from --init: the particles' mean (weighted by `log_weights` when given), one particle, or a
    fresh init (vocab, uniform, text, file)."""
    init = TARGET_KINDS[cfg.method].default_init if cfg.init == "mean" else cfg.init  # pt has no particles
    if init == "mean" or init.startswith("particle:"):
        if particles is None:
            raise BmtptError(f"--init {init} needs --posterior")
        if init == "mean":
            return weighted_mean(particles, log_weights).clone()
        try:
            k = int(init.split(":", 1)[1])
        except ValueError:
            raise BmtptError(f"--init {init}: expected particle:K with an integer K") from None
        if not 0 <= k < particles.shape[0]:
            raise BmtptError(f"--init {init}: the posterior has particles 0..{particles.shape[0] - 1}")
        return particles[k].clone()
    length = particles.shape[1] if particles is not None else (cfg.prompt_length or DEFAULT_PROMPT_LENGTH)
    return init_prompts(model, tokenizer, 1, length, init, cfg.seed)[0]


def evaluate_prompt(pm: PromptedModel, prompt: Tensor, task: Task, examples, cfg: TargetConfig) -> dict:
    """The task's metrics plus their mean under the key 'score'."""
    return predict_and_score(pm, prompt, task, examples, cfg)[0]


# In-process memo of evaluations: a grid scores the same starting prompt (the particles' mean, a seed's vocab
# draw) on the same dev set in many cells; evaluation is deterministic, so the second time is a lookup.
_EVALUATED: dict[tuple, tuple[dict, list]] = {}
_EVALUATED_MAX = 512


def predict_and_score(pm: PromptedModel, prompt: Tensor, task: Task, examples, cfg: TargetConfig
                      ) -> tuple[dict, list]:
    """(the task's metrics plus their mean under 'score', the predictions example by example)."""
    return predict_score_calibrate(pm, prompt, task, examples, cfg)[:2]


def calibration_of(probs: Tensor, task: Task, examples) -> dict[str, float]:
    """`metrics.calibration` of (N, C) label probabilities (columns in `task.verbalizers` order)."""
    import numpy as np

    from .metrics import calibration

    gold = np.array([list(task.verbalizers).index(e.target) for e in examples])
    return {k: round(v, 6) for k, v in calibration(probs.numpy(), gold).items()}


def predict_score_calibrate(pm: PromptedModel, prompt: Tensor, task: Task, examples, cfg: TargetConfig
                            ) -> tuple[dict, list, dict | None]:
    """`predict_and_score` plus, for a rank-classified task, the calibration of its label probabilities
    (`calibration_of`; None otherwise)."""
    digest = hashlib.sha1(prompt.detach().float().cpu().numpy().tobytes()).hexdigest()
    key = (id(pm.model), getattr(pm.model.config, "_name_or_path", ""), digest, tuple(prompt.shape), task.name,
           hash(tuple((e.input, e.target) for e in examples)), cfg.eval_mode, cfg.eval_batch_size, pm.verbalizers,
           pm.max_input_tokens, pm.precision)
    if key not in _EVALUATED:
        calib = None
        if task.is_classification and cfg.eval_mode == "rank" and examples:
            preds, probs = pm.label_probabilities(prompt.detach(), task, examples, cfg.eval_batch_size)
            calib = calibration_of(probs, task, examples)
        else:
            preds = pm.predict(prompt.detach(), task, examples, cfg.eval_mode, cfg.eval_batch_size)
        if len(_EVALUATED) >= _EVALUATED_MAX:
            _EVALUATED.pop(next(iter(_EVALUATED)))
        _EVALUATED[key] = (scored(task, preds, examples), preds, calib)
    metrics, preds, calib = _EVALUATED[key]
    return dict(metrics), list(preds), dict(calib) if calib else None


def correct_field(key: str, task: Task, preds: list, examples) -> dict[str, list[int]]:
    """{key: 1/0 per example (prediction == gold)} for a classification task, {} otherwise: the example-level
    results a paired bootstrap resamples (as `correct` for test, `dev_correct` for the selected step's dev)."""
    return {key: [int(p == e.target) for p, e in zip(preds, examples)]} if task.is_classification else {}


def dev_correct(best: dict) -> dict[str, list[int]]:
    """The dev-selected step's example-level dev results as a predictions-file field ({} when not kept:
    a run resumed from a checkpoint of an older version, or a task scored by another metric)."""
    return {"dev_correct": best["dev_correct"]} if "dev_correct" in best else {}


def train_sample(train: list, n: int, seed: int) -> list:
    """The fixed sample of training examples scored at every evaluation (train accuracy)."""
    return train if len(train) <= n else random.Random(seed).sample(train, n)


@dataclass
class TargetSetup:
    """What every kind of target run starts from, checked and loaded (`prepare_target`)."""

    session: RunSession
    task: Task
    particles: Tensor | None  # the source posterior's particles (None for pt)
    meta: dict  # posterior.json
    digest: str | None  # of the posterior's files: a resume refuses a changed posterior
    train: list
    dev: list
    test: list
    pm: PromptedModel


def prepare_target(cfg: TargetConfig, model=None, tokenizer=None) -> TargetSetup:
    """Check the options, the posterior, the run folder and the data, then load the backbone: every input is
    checked (and the backbone and data loaded) before the run folder is touched."""
    session = RunSession(cfg, "target")
    task = get_task(cfg.task)
    particles, meta, digest = (None, {}, None)
    if cfg.posterior and TARGET_KINDS[cfg.method].needs_posterior:
        particles, meta = load_posterior(cfg.posterior)
        if meta.get("backbone") != cfg.model and not cfg.allow_other_backbone:
            raise BmtptError(f"the posterior in {cfg.posterior} was trained on backbone {meta.get('backbone')!r}, this "
                             f"run uses {cfg.model!r}: prompts do not carry over between models (pass "
                             "--allow-other-backbone if they are the same model under two names)")
        folder = Path(cfg.posterior).expanduser()  # the prior is the particles and posterior.json's bandwidth
        digest = file_digest(folder / "particles.safetensors", folder / "posterior.json")
    if particles is not None and cfg.prompt_length not in (None, particles.shape[1]):
        raise BmtptError(f"--prompt-length {cfg.prompt_length}: the posterior's prompts are {particles.shape[1]} long, "
                         "and a target run starting from them keeps their length (leave --prompt-length out)")
    if session.ckpt is not None and session.ckpt.state.get("posterior_sha256") != digest:
        raise BmtptError(f"cannot resume {cfg.out}: the posterior in {cfg.posterior} changed since the run started")
    session.seed()
    train = load_train(task, cfg)  # data errors before the slow model load
    test = load_split(task, "test", cfg, cfg.max_eval_examples)
    if cfg.dev_sample == "test-mix" and not task.is_classification:
        raise BmtptError(f"--dev-sample test-mix mirrors a label mix; task {task.name} has no labels")
    mix = [e.target for e in test] if cfg.dev_sample == "test-mix" else None
    dev = load_split(task, "dev", cfg, cfg.max_dev_examples or cfg.max_eval_examples, label_mix=mix)
    if model is None:
        model, tokenizer = load_model(cfg, session.device)
    width = embedding_width(model)
    if particles is not None and particles.shape[2] != width:
        raise BmtptError(f"the posterior's prompts are {particles.shape[2]} wide but backbone {cfg.model} embeds "
                         f"in {width}: was it trained on another backbone ({meta.get('backbone')})?")
    pm = PromptedModel.for_run(model, tokenizer, cfg)
    pm.progress = cfg.progress and session.dist.is_main
    pm.dist = session.dist
    return TargetSetup(session, task, particles, meta, digest, train, dev, test, pm)


def make_prior(cfg: TargetConfig, st: TargetSetup, enc, log_weights: Tensor | None = None
               ) -> tuple[PriorTerm | None, float, float, float | None]:
    """(prior term or None, lambda, effective lambda, the prior's bandwidth) of a run on the encoded training set;
    `log_weights` weigh the particles (--particle-weights target)."""
    lam = cfg.prior_weight if TARGET_KINDS[cfg.method].prior else 0.0
    lam_eff = effective_weight(lam, cfg.prior_weight_rule, sum(len(t) for t in enc.targets))
    if st.particles is None or lam <= 0:
        return None, lam, lam_eff, None
    bandwidth = prior_bandwidth(cfg, st.meta)
    fisher = load_tensors(Path(cfg.posterior).expanduser() / "particles.safetensors").get("fisher") \
        if cfg.prior == "fisher" else None
    return PriorTerm(st.particles.to(st.pm.device), bandwidth, cfg.prior, fisher, log_weights), lam, lam_eff, bandwidth


def run_target(cfg: TargetConfig, model=None, tokenizer=None) -> TargetResult:
    """Train and evaluate a target prompt; write prompt.safetensors + target.json to cfg.out.

    With cfg.resume the run continues from cfg.out's checkpoint and ends exactly as if never
    interrupted. Every input is checked (and the backbone and data loaded) before the run folder is touched.
    """
    if cfg.particles > 1:
        raise BmtptError("--particles > 1 trains a target ensemble: use bmtpt.train.train_target (the command "
                         "`bmtpt target` does)")
    if cfg.method == "attempt":
        raise BmtptError("--method attempt trains an input-dependent prompt: use bmtpt.train.train_target")
    st = prepare_target(cfg, model, tokenizer)
    session, task, particles, meta, digest, pm = st.session, st.task, st.particles, st.meta, st.digest, st.pm
    train, dev, test, device = st.train, st.dev, st.test, pm.device
    enc = pm.encode(task, train, cfg.max_target_tokens)
    # --particle-weights target: each particle's posterior probability given the target training set
    log_w = particle_log_weights(pm, particles, enc) if cfg.particle_weights == "target" else None
    theta0 = torch.nn.Parameter(initial_prompt(cfg, pm.model, pm.tokenizer, particles, log_w).to(device))
    groups = [{"params": [theta0], "lr": cfg.lr}]
    u = v = None
    if cfg.rank_one:
        u = torch.nn.Parameter(torch.ones(theta0.shape[0], device=device))
        v = torch.nn.Parameter(torch.ones(theta0.shape[1], device=device))
        groups.append({"params": [u, v], "lr": cfg.lr_factor})
    opt = make_optimizer(groups, cfg.optimizer, cfg.weight_decay)
    prior, lam, lam_eff, bandwidth = make_prior(cfg, st, enc, log_w)

    sampler = EpochSampler(len(enc), cfg.seed)
    seen = train_sample(train, cfg.train_eval_examples, cfg.seed)
    params = [p for g in groups for p in g["params"]]

    def current() -> Tensor:
        return effective_prompt(theta0, u, v)

    def evaluation(step: int) -> dict:
        """Score the current prompt on dev (and the training sample), log it and return the best-so-far
        candidate: the step, the dev metrics and (classification) the dev examples it got right."""
        dev_m, dev_preds = predict_and_score(pm, current(), task, dev, cfg)
        train_m = evaluate_prompt(pm, current(), task, seen, cfg) if seen else {}
        session.log.write(step=step, **{f"dev/{k}": v_ for k, v_ in dev_m.items()},
                          **{f"train/{k}": v_ for k, v_ in train_m.items()})
        return {"step": step, "dev": dev_m, **correct_field("dev_correct", task, dev_preds, dev)}

    run = {}  # the dev-best so far: step and metrics, its prompt and parameters

    def restore(ckpt: Checkpoint) -> None:
        """Parameters, best-so-far and data position of the checkpoint."""
        live = {"theta0": theta0, "u": u, "v": v}
        saved = {k[len("param/"):]: t for k, t in ckpt.tensors.items() if k.startswith("param/")}
        if set(saved) != {k for k, p in live.items() if p is not None} or saved["theta0"].shape != theta0.shape \
                or ckpt.state["train_size"] != len(enc):
            raise BmtptError(f"cannot resume {cfg.out}: the prompt shapes or the training data changed since the "
                             "checkpoint")
        with torch.no_grad():
            for k, t in saved.items():
                live[k].copy_(t.to(device))
        run.update(best=ckpt.state["best"], prompt=ckpt.tensors["best/prompt"].to(device),
                   state={k[len("best/"):]: t.to(device) for k, t in ckpt.tensors.items()
                          if k.startswith("best/") and k != "best/prompt"})
        sampler.load_state_dict(ckpt.state["sampler"])

    out = session.open(opt, restore)
    if session.ckpt is None:
        run.update(best=evaluation(0), prompt=current().detach().clone(), state=_params(theta0, u, v))
    for step in session.steps(f"target {task.name} ({cfg.method})"):
        nll_mean, log_prior, loss = prompt_step(pm, current, params, opt, prior, lam_eff, enc,
                                                sampler.take(cfg.batch_size), cfg.grad_accum,
                                                lambda what, step=step: session.nonfinite(what, step, [task.name]),
                                                session.dist)
        session.show(nll=nll_mean.item())
        if step % cfg.log_every == 0:
            session.log.write(step=step, nll=nll_mean.item(), log_prior=log_prior.item(), loss=loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            cand = evaluation(step)
            # >=: a tie goes to the later (trained) prompt; with `>` a small dev set kept the untrained one
            if cand["dev"]["score"] >= run["best"]["dev"]["score"]:
                run.update(best=cand, prompt=current().detach().clone(), state=_params(theta0, u, v))
        if session.checkpoint_due(step):
            tensors = {**{f"param/{k}": t for k, t in _params(theta0, u, v).items()}, "best/prompt": run["prompt"],
                       **{f"best/{k}": t for k, t in run["state"].items()}}
            session.save_checkpoint(step, tensors, opt, {"sampler": sampler.state_dict(), "train_size": len(enc),
                                                         "best": run["best"], "posterior_sha256": digest})

    best, best_prompt, best_state, log = run["best"], run["prompt"], run["state"], session.log
    test_m, preds, calib = predict_score_calibrate(pm, best_prompt, task, test, cfg)
    metrics = {"dev": best["dev"], "test": test_m, "best_step": best["step"], "dev_examples": len(dev),
               "test_examples": len(test), **({"test_calibration": calib} if calib else {})}
    if session.dist.is_main:  # rank 0 writes the results
        # example-level test results: what a paired bootstrap over test examples resamples
        atomic_write_json({"task": task.name, "split": "test", "predictions": preds,
                           **correct_field("correct", task, preds, test), **dev_correct(best)},
                          out / PREDICTIONS_FILE)
        log.write(step=cfg.steps, **{f"test/{k}": v_ for k, v_ in test_m.items()}, best_step=best["step"])
        tensors = {"prompt": best_prompt, **best_state}
        atomic_save_tensors(tensors, out / "prompt.safetensors")
        # target.json last: its presence marks the run complete
        atomic_write_json({"format": TARGET_FORMAT, "library_version": __version__, "backbone": cfg.model,
                           "task": task.name, "task_file": task.source_file, "method": cfg.method,
                           "posterior": cfg.posterior,
                           "source_tasks": meta.get("source_tasks"), "prompt_length": best_prompt.shape[0],
                           "embed_dim": best_prompt.shape[1], "prior_weight": lam, "prior_weight_effective": lam_eff,
                           "prior": cfg.prior if prior is not None else None,
                           "label_words": pm.words(task) if task.is_classification else None,
                           "prior_bandwidth": bandwidth if prior is not None else None,
                           "particle_weights": None if log_w is None else [round(float(x), 6) for x in log_w.exp()],
                           "trainable_parameters": sum(p.numel() for g in groups for p in g["params"]),
                           "metrics": metrics, "hyperparameters": cfg.to_dict()}, out / "target.json")
    session.finish()
    return TargetResult(best_prompt.cpu(), metrics, out)


def prompt_step(pm: PromptedModel, current: Callable[[], Tensor], params: list[Tensor], opt: torch.optim.Optimizer,
                prior: PriorTerm | None, lam: float, enc, ids: list[int], micro_batches: int,
                fail: Callable[[str], Exception], dist: Dist | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One optimiser step of a single prompt (the target run, SPoT's probe): (mean NLL, log prior, loss).

    `current()` builds the prompt from `params`; a non-finite loss, gradient or updated prompt raises
    `fail('the loss' | 'the gradient' | 'the prompt')` (checked before the update can reach a checkpoint).
    Data-parallel (`dist` of several processes): each process backpropagates its block of `ids` against the
    whole batch's token count (the prior on rank 0 only), and the gradients are summed across processes.
    """
    opt.zero_grad(set_to_none=True)
    if dist is None or not dist.active:
        nll_mean, log_prior = accumulate_backward(pm, current, prior, lam, enc, ids, micro_batches)
    else:
        mine = [ids[i] for i in dist.block(len(ids))]
        nll_mean, log_prior = accumulate_backward(pm, current, prior if dist.is_main else None, lam, enc, mine,
                                                  micro_batches, ntok=sum(len(enc.targets[i]) for i in ids))
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        nll_mean, log_prior = nll_mean.clone(), log_prior.clone()
        dist.sum_(*(p.grad for p in params), nll_mean, log_prior)
    loss = nll_mean - lam * log_prior
    if not torch.isfinite(loss):
        raise fail("the loss")
    if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
        raise fail("the gradient")
    opt.step()
    if not all(torch.isfinite(p).all() for p in params):
        raise fail("the prompt")
    return nll_mean, log_prior, loss


def accumulate_backward(pm: PromptedModel, current, prior, lam: float, enc, ids: list[int], micro_batches: int,
                        ntok: int | None = None) -> tuple[Tensor, Tensor]:
    """Backpropagate one step's loss (mean token NLL - lam * log prior) over `micro_batches` passes.

    Each pass divides its summed NLL by the token count of the whole batch (`ntok`: by default that of
    `ids`; a process's share of a distributed batch passes the whole batch's), so the accumulated gradient
    is the full batch's; the prior enters once. Returns the (detached) mean NLL and log prior.
    """
    parts = [p for p in torch.tensor(ids, dtype=torch.long).tensor_split(micro_batches) if len(p)]
    ntok = ntok if ntok is not None else sum(len(enc.targets[i]) for i in ids)
    nll_sum = torch.zeros((), device=pm.device)
    log_prior = torch.zeros((), device=pm.device)
    for n, part in enumerate(parts):
        theta = current()  # rebuilt per pass: backward frees the graph of the rank-one product
        nll, _ = pm.example_nll(theta[None], batch_of(enc, part.tolist(), pm.pad_id, pm.is_seq2seq))
        loss = nll.sum() / max(ntok, 1)
        if n == 0 and prior is not None:
            log_prior = prior(theta)
            loss = loss - lam * log_prior
        if torch.isfinite(loss):  # a non-finite loss is reported by the caller, before any update
            loss.backward()
        nll_sum = nll_sum + nll.detach().sum()
    return nll_sum / max(ntok, 1), log_prior.detach()


def _params(theta0: Tensor, u: Tensor | None, v: Tensor | None) -> dict[str, Tensor]:
    state = {"theta0": theta0.detach().clone()}
    if u is not None:
        state.update(u=u.detach().clone(), v=v.detach().clone())
    return state
