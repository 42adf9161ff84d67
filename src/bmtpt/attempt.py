"""ATTEMPT (Asai et al., EMNLP 2022) as a baseline: `bmtpt target --method attempt`.

The target prompt is input-dependent: for an input x,

    P(x) = P_target + sum_j a_j(x) P_j,   j over the K frozen source prompts and P_target itself
    a(x) = softmax_j( h(x) . k_j / T ),   h(x) = LayerNorm(W_up SiLU(W_down x_hat))

where x_hat is the max-pool of the input's (frozen) token embeddings, k_j the max-pool of prompt j's rows,
and T the softmax temperature (default: the embedding width d, as in the paper). P_target (starting at zero,
so training starts from the attention-weighted mix of the source prompts) and the attention module
(W_down: d x r, W_up: r x d, the norm) are trained on the target; the source prompts (an independent source
stage's, one per task) stay frozen. The attention module has its own learning rate (--attention-lr).

It is the one method whose trainable parameters exceed one prompt's (l*d + 2*d*r + r + 3*d). An
input-dependent prompt is not a PEFT prompt-tuning adapter, so `bmtpt export` refuses the run, as do `eval`
and `predict`, which read one prompt; its predictions are in predictions-test.json.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from .checkpoint import Checkpoint
from .config import TargetConfig
from .data import EpochSampler, batch_of
from .errors import BmtptError
from .runfiles import PREDICTIONS_FILE, atomic_save_tensors, atomic_write_json
from .runs import make_optimizer
from .target import TARGET_FORMAT, TargetResult, calibration_of, correct_field, dev_correct, prepare_target
from .tasks import scored


class AttemptPrompt(nn.Module):
    """P(x) = P_target + attention-weighted mix of [source prompts..., P_target] (see the module docstring)."""

    def __init__(self, sources: Tensor, rank: int = 32, temperature: float | None = None):
        super().__init__()
        k, length, d = sources.shape
        self.register_buffer("sources", sources.detach().float().clone())
        self.target = nn.Parameter(torch.zeros(length, d))
        self.down, self.up, self.norm = nn.Linear(d, rank), nn.Linear(rank, d), nn.LayerNorm(d)
        self.temperature = float(temperature or d)

    def candidates(self) -> Tensor:
        """(K + 1, l, d): the source prompts, then the target prompt."""
        return torch.cat([self.sources, self.target[None]], dim=0)

    def attention(self, emb: Tensor, mask: Tensor) -> Tensor:
        """(E, K + 1) attention of each input over the candidates, from its max-pooled token embeddings."""
        x_hat = emb.float().masked_fill(mask[..., None] == 0, float("-inf")).amax(1)  # padding never wins
        h = self.norm(self.up(F.silu(self.down(x_hat))))
        keys = self.candidates().amax(1)  # (K + 1, d)
        return torch.softmax(h @ keys.T / self.temperature, dim=-1)

    def instance_prompts(self, emb: Tensor, mask: Tensor) -> Tensor:
        """(E, l, d): each input's prompt (the hook `PromptedModel` calls for input-dependent prompts)."""
        a = self.attention(emb, mask)
        return self.target[None] + torch.einsum("ej,jld->eld", a, self.candidates())

    def trainable_parameters(self) -> int:
        """Parameters the target run trains (the source prompts are frozen buffers)."""
        return sum(p.numel() for p in self.parameters())


def run_target_attempt(cfg: TargetConfig, model=None, tokenizer=None) -> TargetResult:
    """Train ATTEMPT's target prompt and attention on the target task; write prompt.safetensors (the module's
    state: target prompt, attention weights, the frozen source prompts), target.json, predictions-test.json."""
    st = prepare_target(cfg, model, tokenizer)
    session, task, pm = st.session, st.task, st.pm
    if session.dist.active:
        raise BmtptError("--method attempt runs in one process (not distributed yet)")
    if cfg.eval_mode != "rank" or not task.is_classification:
        raise BmtptError(f"--method attempt is scored by rank classification: {task.name} needs --eval-mode rank "
                         "and a classification task")
    module = AttemptPrompt(st.particles, cfg.attention_rank, cfg.attention_temperature).to(pm.device)
    opt = make_optimizer([{"params": [module.target], "lr": cfg.lr},
                          {"params": [p for n, p in module.named_parameters() if n != "target"],
                           "lr": cfg.attention_lr}], cfg.optimizer, cfg.weight_decay)
    enc = pm.encode(task, st.train, cfg.max_target_tokens)
    sampler = EpochSampler(len(enc), cfg.seed)
    trainable = {n: p for n, p in module.named_parameters()}
    run: dict = {}

    def scores(examples) -> tuple[dict, list, Tensor]:
        with torch.no_grad():
            preds, probs = pm.label_probabilities(module, task, examples, cfg.eval_batch_size)
        return scored(task, preds, examples), preds, probs

    def evaluation(step: int) -> dict:
        dev_m, preds, _ = scores(st.dev)
        session.log.write(step=step, **{f"dev/{k}": v for k, v in dev_m.items()})
        return {"step": step, "dev": dev_m, **correct_field("dev_correct", task, preds, st.dev)}

    def snapshot() -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in trainable.items()}

    def restore(ckpt: Checkpoint) -> None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(ckpt.tensors[f"param/{n}"].to(p.device))
        run.update(best=ckpt.state["best"], state={n: ckpt.tensors[f"best/{n}"].to(pm.device) for n in trainable})
        sampler.load_state_dict(ckpt.state["sampler"])

    out = session.open(opt, restore)
    if session.ckpt is None:
        run.update(best=evaluation(0), state=snapshot())
    for step in session.steps(f"target {task.name} (attempt)"):
        ids = sampler.take(cfg.batch_size)
        opt.zero_grad(set_to_none=True)
        nll, _ = pm.example_nll(module, batch_of(enc, ids, pm.pad_id, pm.is_seq2seq))
        loss = nll.sum() / max(sum(len(enc.targets[i]) for i in ids), 1)
        if not torch.isfinite(loss):
            raise session.nonfinite("the loss", step, [task.name])
        loss.backward()
        opt.step()
        if not all(torch.isfinite(p).all() for p in trainable.values()):
            raise session.nonfinite("the prompt", step, [task.name])
        session.show(nll=loss.item())
        if step % cfg.log_every == 0:
            session.log.write(step=step, nll=loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            cand = evaluation(step)
            if cand["dev"]["score"] >= run["best"]["dev"]["score"]:  # a tie goes to the later step
                run.update(best=cand, state=snapshot())
        if session.checkpoint_due(step):
            session.save_checkpoint(step, {**{f"param/{n}": p for n, p in trainable.items()},
                                           **{f"best/{n}": t for n, t in run["state"].items()}}, opt,
                                    {"sampler": sampler.state_dict(), "train_size": len(enc), "best": run["best"],
                                     "posterior_sha256": st.digest})

    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(run["state"][n])
    test_m, preds, probs = scores(st.test)
    metrics = {"dev": run["best"]["dev"], "test": test_m, "test_calibration": calibration_of(probs, task, st.test),
               "best_step": run["best"]["step"], "dev_examples": len(st.dev), "test_examples": len(st.test)}
    atomic_write_json({"task": task.name, "split": "test", "predictions": preds,
                       **correct_field("correct", task, preds, st.test), **dev_correct(run["best"])},
                      out / PREDICTIONS_FILE)
    session.log.write(step=cfg.steps, **{f"test/{k}": v for k, v in test_m.items()}, best_step=run["best"]["step"])
    atomic_save_tensors({**{n: t for n, t in run["state"].items()}, "sources": module.sources},
                        out / "prompt.safetensors")
    atomic_write_json({"format": TARGET_FORMAT, "library_version": __version__, "backbone": cfg.model,
                       "task": task.name, "task_file": task.source_file, "method": "attempt",
                       "posterior": cfg.posterior, "source_tasks": st.meta.get("source_tasks"),
                       "attempt": {"rank": cfg.attention_rank, "temperature": module.temperature},
                       "prompt_length": module.target.shape[0], "embed_dim": module.target.shape[1],
                       "label_words": pm.words(task), "trainable_parameters": module.trainable_parameters(),
                       "metrics": metrics, "hyperparameters": cfg.to_dict()}, out / "target.json")
    session.finish()
    return TargetResult(module.target.detach().cpu(), metrics, out)
