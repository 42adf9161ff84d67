"""Target posterior ensembles: `bmtpt target --particles M`.

The MAP target run keeps one prompt. Here M target prompts start from the source particles (cycled when M
exceeds them) and move by SVGD under the target's posterior, log p(theta | target) = -(mean token NLL) +
lambda_eff * log p_hat(theta) (the source posterior as prior, as in the MAP run), with the source stage's
median-bandwidth RBF kernel and repulsion: each step is one batched forward/backward over (particle,
example) rows, then `bmtpt.svgd` turns the particles' scores into the update. `--ensemble independent`
drops the kernel (each prompt follows its own gradient): M MAP prompts at the same compute, the baseline a
posterior ensemble has to beat.

Predictions average the M prompts' label probabilities (rank classification; one evaluation pass per
prompt). The run reports accuracy, NLL, expected calibration error (15 bins) and the accuracy at 80 %
coverage of the ensemble and of each prompt alone (`metrics.calibration`); the MAP run reports the same
for its prompt (target.json `test_calibration`). The best step is picked on the ensemble's dev score.
prompt.safetensors holds the M prompts under `particles`: `bmtpt eval`, `predict` and `export` read
single prompts and refuse it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import __version__
from .checkpoint import Checkpoint
from .config import TargetConfig
from .data import EpochSampler, batch_of
from .errors import BmtptError
from .runfiles import PREDICTIONS_FILE, atomic_save_tensors, atomic_write_json
from .runs import make_optimizer
from .svgd import svgd_terms
from .target import TARGET_FORMAT, TargetResult, calibration_of, correct_field, dev_correct, make_prior, prepare_target
from .tasks import scored

__all__ = ["ensemble_probabilities", "run_target_ensemble"]


def ensemble_probabilities(pm, particles: Tensor, task, examples, batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """((N, C) mean of the M prompts' label probabilities, (M, N, C) each prompt's)."""
    each = torch.stack([pm.label_probabilities(p.detach(), task, examples, batch_size)[1] for p in particles])
    return each.mean(0), each


def _scores(probs: Tensor, task, examples) -> dict:
    """The task's metrics (and 'score') of the most probable labels, plus their calibration."""
    labels = list(task.verbalizers)
    preds = [labels[j] for j in probs.argmax(-1).tolist()]
    return {**scored(task, preds, examples), "calibration": calibration_of(probs, task, examples)}, preds


def run_target_ensemble(cfg: TargetConfig, model=None, tokenizer=None) -> TargetResult:
    """Train M target prompts by SVGD (or independently) and evaluate their ensemble; write prompt.safetensors
    (`particles`), target.json and predictions-test.json to cfg.out. Resumable like the MAP run."""
    if cfg.particles < 2:
        raise BmtptError("run_target_ensemble needs --particles >= 2 (one prompt: target.run_target)")
    st = prepare_target(cfg, model, tokenizer)
    session, task, pm = st.session, st.task, st.pm
    if session.dist.active:
        raise BmtptError("--particles > 1 runs in one process (target ensembles are not distributed yet)")
    if not task.is_classification:
        raise BmtptError(f"--particles > 1 averages label probabilities: {task.name} is not a classification task")
    m = cfg.particles
    start = st.particles[torch.arange(m) % len(st.particles)].clone()
    particles = torch.nn.Parameter(start.to(pm.device))
    opt = make_optimizer([{"params": [particles], "lr": cfg.lr}], cfg.optimizer, cfg.weight_decay)
    enc = pm.encode(task, st.train, cfg.max_target_tokens)
    prior, lam, lam_eff, bandwidth = make_prior(cfg, st, enc)
    sampler = EpochSampler(len(enc), cfg.seed)
    run: dict = {}

    def evaluation(step: int) -> dict:
        dev_m, preds = _scores(ensemble_probabilities(pm, particles, task, st.dev, cfg.eval_batch_size)[0], task,
                               st.dev)
        session.log.write(step=step, **{f"dev/{k}": v for k, v in dev_m.items() if k != "calibration"},
                          **{f"dev/calibration/{k}": v for k, v in dev_m["calibration"].items()})
        return {"step": step, "dev": dev_m, **correct_field("dev_correct", task, preds, st.dev)}

    def restore(ckpt: Checkpoint) -> None:
        if ckpt.tensors["particles"].shape != particles.shape or ckpt.state["train_size"] != len(enc):
            raise BmtptError(f"cannot resume {cfg.out}: the prompt shapes or the training data changed since the "
                             "checkpoint")
        with torch.no_grad():
            particles.copy_(ckpt.tensors["particles"].to(pm.device))
        run.update(best=ckpt.state["best"], particles=ckpt.tensors["best/particles"].to(pm.device))
        sampler.load_state_dict(ckpt.state["sampler"])

    out = session.open(opt, restore)
    if session.ckpt is None:
        run.update(best=evaluation(0), particles=particles.detach().clone())
    for step in session.steps(f"target {task.name} ({cfg.method}, {m} {cfg.ensemble} particles)"):
        ids = sampler.take(cfg.batch_size)
        opt.zero_grad(set_to_none=True)
        nll, _ = pm.example_nll(particles, batch_of(enc, ids, pm.pad_id, pm.is_seq2seq))  # rows particle-major
        per = nll.view(m, len(ids)).sum(1) / max(sum(len(enc.targets[i]) for i in ids), 1)  # mean NLL each
        log_prior = torch.stack([prior(p) for p in particles]) if prior is not None else torch.zeros(m)
        loss = per - lam_eff * log_prior.to(per.device)
        if not torch.isfinite(loss).all():
            raise session.nonfinite("the loss", step, [task.name])
        loss.sum().backward()  # each prompt's loss depends on it alone: the grad rows are the M scores' negatives
        scores = -particles.grad.detach()
        if not torch.isfinite(scores).all():
            raise session.nonfinite("the gradient", step, [task.name])
        phi, record = scores, {}
        if cfg.ensemble == "svgd":
            terms = svgd_terms(particles.detach(), scores)
            phi = terms.drive + terms.repulse
            record = {"bandwidth": terms.bandwidth}
        particles.grad = -phi.to(particles.dtype)
        opt.step()
        if not torch.isfinite(particles).all():
            raise session.nonfinite("the prompt", step, [task.name])
        session.show(nll=per.mean().item())
        if step % cfg.log_every == 0:
            session.log.write(step=step, nll=per.mean().item(), particle_nll=[round(float(x), 6) for x in per.detach()],
                              log_prior=log_prior.mean().item(), **record)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            cand = evaluation(step)
            if cand["dev"]["score"] >= run["best"]["dev"]["score"]:  # a tie goes to the later step
                run.update(best=cand, particles=particles.detach().clone())
        if session.checkpoint_due(step):
            session.save_checkpoint(step, {"particles": particles, "best/particles": run["particles"]}, opt,
                                    {"sampler": sampler.state_dict(), "train_size": len(enc), "best": run["best"],
                                     "posterior_sha256": st.digest})

    best = run["particles"]
    mean_probs, each = ensemble_probabilities(pm, best, task, st.test, cfg.eval_batch_size)
    test_m, preds = _scores(mean_probs, task, st.test)
    members = [_scores(p, task, st.test)[0] for p in each]
    metrics = {"dev": run["best"]["dev"], "test": {k: v for k, v in test_m.items() if k != "calibration"},
               "test_calibration": test_m["calibration"], "members_test": members,
               "best_step": run["best"]["step"], "dev_examples": len(st.dev), "test_examples": len(st.test)}
    atomic_write_json({"task": task.name, "split": "test", "predictions": preds,
                       **correct_field("correct", task, preds, st.test),
                       "probabilities": [[round(float(x), 6) for x in row] for row in mean_probs],
                       "labels": list(task.verbalizers), **dev_correct(run["best"])}, out / PREDICTIONS_FILE)
    session.log.write(step=cfg.steps, **{f"test/{k}": v for k, v in metrics["test"].items()},
                      best_step=run["best"]["step"])
    atomic_save_tensors({"particles": best}, out / "prompt.safetensors")
    atomic_write_json({"format": TARGET_FORMAT, "library_version": __version__, "backbone": cfg.model,
                       "task": task.name, "task_file": task.source_file, "method": cfg.method,
                       "posterior": cfg.posterior, "source_tasks": st.meta.get("source_tasks"),
                       "ensemble": {"particles": m, "rule": cfg.ensemble}, "prompt_length": best.shape[1],
                       "embed_dim": best.shape[2], "prior_weight": lam, "prior_weight_effective": lam_eff,
                       "prior": cfg.prior if prior is not None else None, "prior_bandwidth": bandwidth,
                       "label_words": pm.words(task), "trainable_parameters": best.numel(),
                       "metrics": metrics, "hyperparameters": cfg.to_dict()}, out / "target.json")
    session.finish()
    return TargetResult(best.mean(0).cpu(), metrics, out)
