"""What `bmtpt bench speed` times: the backbone, the workload and the step closures, and the timer.

Shape presets (random-weight models of a known architecture) and `build_backbone`; the random-token
`Workload`; one closure per measurement (an SVGD step, M sequential prompt-tuning steps, the backbone's
passes alone, the parts of a step outside the backbone); `timed` and `interleaved`, which call them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from ..backbone import load_backbone
from ..data import collate
from ..errors import BmtptError
from ..runs import make_optimizer
from ..source import particle_scores
from ..svgd import svgd_terms
from . import SHAPE_PRESETS

LR = 0.01  # the step's cost does not depend on it; small keeps random-weight runs finite


# ----------------------------------------------------------------------------- backbone and workload
class _ShapeTokenizer:
    """Stands in for a tokenizer with shape presets: PromptedModel only needs the pad id."""

    def __init__(self, pad_token_id: int, eos_token_id: int):
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id


def build_backbone(name: str, device: str = "cpu", seed: int = 0, trust_remote_code: bool = False):
    """(model, tokenizer) of a shape preset (random weights, stub tokenizer) or via `load_backbone`."""

    if name in SHAPE_PRESETS:

        arch, kw = SHAPE_PRESETS[name]
        torch.manual_seed(seed)
        if arch == "t5":
            model = T5ForConditionalGeneration(T5Config(**kw))
        else:
            model = LlamaForCausalLM(LlamaConfig(**kw))
        model.requires_grad_(False)
        model.eval()
        return model.to(device), _ShapeTokenizer(kw["pad_token_id"], kw["eos_token_id"])

    return load_backbone(name, trust_remote_code, device=device)


@dataclass
class Workload:
    """Token ids of B examples, their task of each example, and the particles' starting values."""

    inputs: list[list[int]]
    targets: list[list[int]]
    groups: object  # (B,) long tensor on the device
    weights: object  # (K,) tensor
    num_tasks: int
    init: object  # (M, l, d) tensor on the device

    @property
    def particles(self) -> int:
        return int(self.init.shape[0])


def make_workload(model, batch_size: int, seq_len: int, target_len: int, prompt_length: int, particles: int,
                  tasks: int, seed: int = 0) -> Workload:
    """Random token ids (avoiding the ids below 3, the usual specials) and prompts drawn from the vocabulary."""

    g = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings().weight
    vocab = emb.shape[0]
    inputs = torch.randint(3, vocab, (batch_size, seq_len), generator=g).tolist()
    targets = torch.randint(3, vocab, (batch_size, target_len), generator=g).tolist()
    k = min(tasks, batch_size)
    device = emb.device
    groups = torch.arange(batch_size, device=device) % k
    rows = torch.randint(3, vocab, (particles * prompt_length,), generator=g).to(device)
    init = emb.detach()[rows].float().reshape(particles, prompt_length, -1).clone()
    return Workload(inputs, targets, groups, torch.ones(k), k, init)


def tokens_per_row(work: Workload) -> int:
    """Tokens one (particle, example) row sends through the backbone: prompt + input + target."""
    return int(work.init.shape[1]) + len(work.inputs[0]) + len(work.targets[0])


# ----------------------------------------------------------------------------- steps
def svgd_step(pm, work: Workload, optimizer: str = "adafactor", chunk: int | None = None, micro_batches: int = 1):
    """A closure running one SVGD step of `bmtpt source` (collate, scores, kernel, optimiser) on its own
    particles and optimiser (`micro_batches`: --grad-accum)."""


    particles = torch.nn.Parameter(work.init.clone())
    opt = make_optimizer([{"params": [particles], "lr": LR}], optimizer, 1e-5)

    def step():
        batch = collate(work.inputs, work.targets, pm.pad_id, pm.is_seq2seq)
        scores, losses = particle_scores(pm, particles, batch, work.groups, work.num_tasks, work.weights, None,
                                         False, chunk, micro_batches)
        if not torch.isfinite(losses).all() or not torch.isfinite(scores).all():
            raise BmtptError("the benchmark's loss became non-finite")
        terms = svgd_terms(particles.detach(), scores, None)
        particles.grad = -terms.direction.to(particles.dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.particles, step.optimizer = particles, opt
    return step


def sequential_steps(pm, work: Workload, optimizer: str = "adafactor"):
    """A closure running M single-prompt prompt-tuning steps (the loop of `bmtpt target`), one per particle."""


    prompts = [torch.nn.Parameter(work.init[m:m + 1].clone()) for m in range(work.particles)]
    opts = [make_optimizer([{"params": [p], "lr": LR}], optimizer, 1e-5) for p in prompts]

    def steps():
        for prompt, optim in zip(prompts, opts):
            batch = collate(work.inputs, work.targets, pm.pad_id, pm.is_seq2seq)
            nll, ntok = pm.example_nll(prompt, batch)
            loss = nll.sum() / ntok.sum().clamp_min(1)
            if not torch.isfinite(loss):
                raise BmtptError("the benchmark's loss became non-finite")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()

    return steps


def backbone_passes(pm, work: Workload):
    """(forward+backward, forward with grad, forward under no_grad) of the backbone alone on the M*B rows.

    The input embeddings are a leaf that requires grad, so the backward computes input gradients only
    (the backbone is frozen); the backward starts from a fixed random gradient of the logits.
    """


    batch = collate(work.inputs, work.targets, pm.pad_id, pm.is_seq2seq)
    with torch.no_grad():
        x, mask, tgt, tmask = pm._rows(work.init, batch, None)
    x = x.detach()
    grad_out = {}

    def fwd_bwd():
        leaf = x.detach().requires_grad_(True)
        logits = pm.backbone_logits(leaf, mask, tgt, tmask)
        if "g" not in grad_out:
            grad_out["g"] = torch.randn(logits.shape, dtype=logits.dtype, device=logits.device) * 1e-3
        logits.backward(grad_out["g"])
        if leaf.grad is None:
            raise BmtptError("the backbone's backward gave the input no gradient")

    def fwd_grad():
        pm.backbone_logits(x.detach().requires_grad_(True), mask, tgt, tmask)

    def fwd():
        with torch.no_grad():
            pm.backbone_logits(x, mask, tgt, tmask)

    return fwd_bwd, fwd_grad, fwd


def attributed_step(pm, work: Workload, optimizer: str = "adafactor", device: str = "cpu"):
    """An SVGD step closure that also splits its own time: `closure.last` holds (step s, backbone s) of the
    latest call. The backbone's share is the time inside `PromptedModel.backbone_logits` plus, for each
    backward pass, the time from the moment the gradient reaches the backbone's logits (a tensor hook)
    to the end of that pass; everything else in the step (rows, loss, kernel, optimiser, autograd
    bookkeeping before the logits' gradient) is bmtpt's own overhead. One call measures both, so the
    split is not a difference of two medians taken over different calls. On a GPU every mark synchronises
    first, so the marks bound kernels that ran rather than kernels that were queued.
    """

    step = svgd_step(pm, work, optimizer)

    def now() -> float:
        _sync(device)
        return time.perf_counter()

    marks: list[float] = []
    inner = pm.backbone_logits
    orig_backward = torch.Tensor.backward

    def timed_logits(*args, **kwargs):
        t = now()
        logits = inner(*args, **kwargs)
        marks.append(now() - t)
        if logits.requires_grad:
            logits.register_hook(lambda g: marks.append(-now()) or g)  # backward reaches the backbone
        return logits

    def timed_backward(self, *args, **kwargs):
        orig_backward(self, *args, **kwargs)
        if marks and marks[-1] < 0:  # close the backbone part of this backward pass
            marks[-1] = now() + marks[-1]

    def run():
        marks.clear()
        pm.backbone_logits, torch.Tensor.backward = timed_logits, timed_backward
        try:
            t = now()
            step()
            total = now() - t
        finally:
            del pm.backbone_logits  # back to the class's method
            torch.Tensor.backward = orig_backward
        run.last = (total, sum(m for m in marks if m > 0))

    run.last = (0.0, 0.0)
    return run


def overhead_parts(pm, work: Workload, optimizer: str = "adafactor") -> dict:
    """Closures of the directly timeable parts of a step outside the backbone."""


    particles = torch.nn.Parameter(work.init.clone())
    opt = make_optimizer([{"params": [particles], "lr": LR}], optimizer, 1e-5)
    scores = torch.randn_like(particles) * 1e-3
    batch = collate(work.inputs, work.targets, pm.pad_id, pm.is_seq2seq)

    def rows():
        with torch.no_grad():
            pm._rows(particles, batch, None)

    def optim():
        particles.grad = scores.clone()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"collate": lambda: collate(work.inputs, work.targets, pm.pad_id, pm.is_seq2seq), "rows": rows,
            "svgd_kernel": lambda: svgd_terms(particles.detach(), scores, None), "optimizer": optim}


# ----------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):

        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    """Seconds of one call (the GPU synchronised before and after)."""
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def interleaved(fns: dict, repeats: int, warmup: int, device: str) -> dict[str, list[float]]:
    """Times of each closure, called in turn within each repeat after `warmup` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return times
