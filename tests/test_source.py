"""Source stage: batch mixing, particle scores against one-particle-at-a-time autograd, an end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bmtpt import __version__
from bmtpt.config import SourceConfig
from bmtpt.data import collate, encode_examples
from bmtpt.errors import BmtptError
from bmtpt.prompted import PromptedModel
from bmtpt.prompts import init_prompts
from bmtpt.runs import load_split
from bmtpt.source import function_space_step, mixing_sizes, particle_scores, run_source
from bmtpt.tasks import get_task

TASKS = ["synth-sentiment", "synth-animal", "synth-past"]


# ----------------------------------------------------------------------------- mixing
@pytest.mark.parametrize("sizes, batch, mixing, want", [
    ([100, 300], 8, "proportional", [2, 6]),
    ([1, 10_000], 10, "proportional", [1, 9]),  # the small task still gets one example
    ([1, 1, 1000], 6, "proportional", [1, 1, 4]),  # the minimum of one must not push the total past 6
    ([5, 1000, 7], 9, "equal", [3, 3, 3]),
    ([100, 400], 9, "temperature", [3, 6]),  # sqrt: 10 : 20
    ([1, 10_000], 10, "temperature", [1, 9]),  # 1 : 100 -> 0.099 : 9.9
])
def test_mixing_sizes_by_hand(sizes, batch, mixing, want):
    got = mixing_sizes(sizes, batch, mixing, temperature=2.0)
    assert got == want and sum(got) == batch


@pytest.mark.parametrize("mixing", ["proportional", "equal", "temperature"])
@pytest.mark.parametrize("sizes", [[1, 1, 1], [3, 50, 7, 1000], [10, 10, 10, 10, 9], [2, 2]])
@pytest.mark.parametrize("batch", [5, 8, 13, 32])
def test_mixing_sizes_sum_to_the_batch_with_at_least_one_each(sizes, batch, mixing):
    got = mixing_sizes(sizes, batch, mixing, temperature=3.0)
    assert len(got) == len(sizes) and min(got) >= 1
    assert sum(got) == max(batch, len(sizes))
    if mixing == "equal":
        assert max(got) - min(got) <= 1


def test_mixing_sizes_unknown_mode_raises():
    with pytest.raises(BmtptError):
        mixing_sizes([1, 2], 4, "random")


# ----------------------------------------------------------------------------- scores
def _task_batches(arch, tok, counts):
    """Examples of TASKS[k] (counts[k] of them) as id lists, the collated batch and the group ids."""
    is_s2s = arch == "t5"
    per_task = [encode_examples(tok, get_task(n).load("train")[: c], is_s2s) for n, c in zip(TASKS, counts)]
    inputs = [x for e in per_task for x in e.inputs]
    targets = [y for e in per_task for y in e.targets]
    groups = torch.tensor([k for k, c in enumerate(counts) for _ in range(c)])
    return per_task, collate(inputs, targets, tok.pad_token_id, is_s2s), groups


def _score_by_hand(pm, theta, per_task, weights, prior_std, tasks):
    """grad log p(theta | sources) for ONE prompt: each task's rows on their own, summed with the weights."""
    theta = theta.detach().clone().requires_grad_(True)
    log_post, losses = 0.0, []
    for k in tasks:
        e = per_task[k]
        nll, ntok = pm.example_nll(theta[None], collate(e.inputs, e.targets, pm.pad_id, pm.is_seq2seq))
        loss = nll.sum() / ntok.sum()
        losses.append(loss.item())
        log_post = log_post - weights[k] * loss
    if prior_std is not None:
        log_post = log_post - (theta**2).sum() / (2 * prior_std**2)
    (grad,) = torch.autograd.grad(log_post, theta)
    return grad, losses


@pytest.mark.parametrize("prior_std", [None, 2.0])
def test_svgd_scores_equal_per_particle_autograd(tiny, prior_std):
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    per_task, batch, groups = _task_batches(arch, tok, [2, 3, 1])
    weights = torch.tensor([1.0, 2.5, 0.5])
    parts = 0.5 * torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(0))
    scores, losses = particle_scores(pm, parts, batch, groups, 3, weights, prior_std)
    assert scores.shape == parts.shape and losses.shape == (4, 3)
    for m in range(4):
        grad, task_losses = _score_by_hand(pm, parts[m], per_task, weights.tolist(), prior_std, range(3))
        torch.testing.assert_close(scores[m], grad, atol=1e-5, rtol=1e-4)
        assert losses[m].tolist() == pytest.approx(task_losses, rel=1e-5)
    chunked, chunk_losses = particle_scores(pm, parts, batch, groups, 3, weights, prior_std, chunk=1)
    torch.testing.assert_close(chunked, scores, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunk_losses, losses, atol=1e-6, rtol=1e-5)
    for chunk, micro in ((None, 2), (3, 4), (1, 6)):  # gradient accumulation: the same scores and losses
        acc, acc_losses = particle_scores(pm, parts, batch, groups, 3, weights, prior_std, chunk=chunk,
                                          micro_batches=micro)
        torch.testing.assert_close(acc, scores, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(acc_losses, losses, atol=1e-6, rtol=1e-5)


def test_independent_scores_see_only_their_own_task(tiny):
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    per_task, batch, groups = _task_batches(arch, tok, [2, 3, 2])
    weights = torch.tensor([1.0, 2.0, 3.0])
    parts = 0.5 * torch.randn(3, 3, 32, generator=torch.Generator().manual_seed(1))
    scores, losses = particle_scores(pm, parts, batch, groups, 3, weights, 1.5, independent=True)
    for k in range(3):
        grad, (loss,) = _score_by_hand(pm, parts[k], per_task, weights.tolist(), 1.5, [k])
        torch.testing.assert_close(scores[k], grad, atol=1e-5, rtol=1e-4)
        assert losses[k, k].item() == pytest.approx(loss, rel=1e-5)
        assert [losses[k, j].item() for j in range(3) if j != k] == [0.0, 0.0]
    chunked, _ = particle_scores(pm, parts, batch, groups, 3, weights, 1.5, independent=True, chunk=1)
    torch.testing.assert_close(chunked, scores, atol=1e-6, rtol=1e-5)
    for chunk, micro in ((None, 3), (2, 7)):  # micro-batches that hold no row of some particle's task, too
        acc, acc_losses = particle_scores(pm, parts, batch, groups, 3, weights, 1.5, independent=True, chunk=chunk,
                                          micro_batches=micro)
        torch.testing.assert_close(acc, scores, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(acc_losses, losses, atol=1e-6, rtol=1e-5)
    # replace task 0's rows by other sentences: only particle 0 moves differently
    other = encode_examples(tok, get_task(TASKS[0]).load("dev")[:2], arch == "t5")
    ins = other.inputs + [x for e in per_task[1:] for x in e.inputs]
    tgts = other.targets + [y for e in per_task[1:] for y in e.targets]
    changed, _ = particle_scores(pm, parts, collate(ins, tgts, tok.pad_token_id, arch == "t5"), groups, 3,
                                 weights, 1.5, independent=True)
    torch.testing.assert_close(changed[1:], scores[1:], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(changed[0], scores[0], atol=1e-6)


# ----------------------------------------------------------------------------- end to end
def _median_h(parts: torch.Tensor) -> float:
    flat = parts.reshape(parts.shape[0], -1).double().numpy()
    m = flat.shape[0]
    sq = [((flat[i] - flat[j]) ** 2).sum() for i in range(m) for j in range(i + 1, m)]
    return float(np.median(sq)) / math.log(m + 1)


def _phi_by_hand(x: torch.Tensor, s: torch.Tensor, h: float, repulsion: float = 1.0) -> torch.Tensor:
    m = x.shape[0]
    out = torch.zeros_like(x, dtype=torch.float64)
    for i in range(m):
        for j in range(m):
            diff = (x[j] - x[i]).double()
            k = math.exp(-(diff**2).sum().item() / h)
            out[i] += k * s[j].double() - repulsion * 2.0 / h * diff * k
    return out / m


def test_run_source_writes_the_posterior_and_logs(tmp_path, tiny_llama):
    model, tok = tiny_llama
    cfg = SourceConfig(model="tiny-llama", out=str(tmp_path / "src"), tasks=",".join(TASKS), particles=3, steps=3,
                       batch_size=6, prompt_length=4, max_train_examples=24, log_every=1, progress=False,
                       device="cpu")
    res = run_source(cfg, model, tok)
    out = tmp_path / "src"
    parts = load_file(str(out / "particles.safetensors"))["particles"]
    assert parts.shape == (3, 4, 32) and torch.equal(parts, res.particles)
    meta = json.loads((out / "posterior.json").read_text())
    for key in ("backbone", "prompt_length", "embed_dim", "source_tasks", "hyperparameters", "bandwidth",
                "library_version", "num_particles", "method"):
        assert key in meta, key
    shape = (meta["num_particles"], meta["prompt_length"], meta["embed_dim"])
    assert meta["backbone"] == "tiny-llama" and shape == (3, 4, 32)
    assert meta["source_tasks"] == TASKS and meta["library_version"] == __version__
    assert meta["hyperparameters"]["particles"] == 3 and meta["hyperparameters"]["steps"] == 3
    assert meta["bandwidth"] == pytest.approx(_median_h(parts), rel=1e-6)  # of the final particles
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["bandwidth"] > 0 and r["mean_distance"] > 0 and r["drive_norm"] > 0 and r["repulse_norm"] > 0
        assert all(r[f"loss/{t}"] > 0 for t in TASKS)
        assert len(r["particle_loss"]) == 3 and all(x > 0 for x in r["particle_loss"])
        assert r["loss"] == pytest.approx(np.mean([r[f"loss/{t}"] for t in TASKS]), rel=1e-5)
    assert (out / "config.yaml").is_file()


@pytest.mark.parametrize("repulsion", [1.0, 4.0])
def test_one_sgd_step_moves_the_particles_along_phi(tmp_path, tiny_t5, repulsion):
    """With every example in the batch, one SGD step is theta + lr * phi(theta), phi built by hand (with
    --repulsion scaling the kernel-gradient term)."""
    model, tok = tiny_t5
    cfg = SourceConfig(model="tiny-t5", out=str(tmp_path / "src"), tasks=",".join(TASKS), particles=3, steps=1,
                       batch_size=6, prompt_length=2, max_train_examples=2, optimizer="sgd", weight_decay=0.0,
                       lr=0.5, prior_std=3.0, progress=False, device="cpu", repulsion=repulsion)
    res = run_source(cfg, model, tok)
    pm = PromptedModel(model, tok)
    theta0 = init_prompts(model, tok, 3, 2, "vocab", seed=0)
    per_task = [encode_examples(tok, load_split(get_task(n), "train", cfg, 2), True, eos=False)  # labels only
                for n in TASKS]
    scores = torch.stack([_score_by_hand(pm, theta0[m], per_task, [1.0] * 3, 3.0, range(3))[0] for m in range(3)])
    want = theta0.double() + 0.5 * _phi_by_hand(theta0, scores, _median_h(theta0), repulsion)
    torch.testing.assert_close(res.particles.double(), want, atol=1e-5, rtol=1e-4)


def test_independent_needs_one_particle_per_task(tmp_path, tiny_llama):
    cfg = SourceConfig(model="x", out=str(tmp_path / "ind"), tasks=",".join(TASKS), particles=2, steps=1,
                       method="independent", progress=False, device="cpu")
    with pytest.raises(BmtptError, match="--particles must be 3"):
        run_source(cfg, *tiny_llama)


def test_task_weights_scale_each_tasks_pull(tmp_path, tiny_t5):
    """--task-weights w: one SGD step of a single particle is theta + lr * sum_k w_k grad log p(D_k | theta),
    built by hand; a wrong count is refused."""
    model, tok = tiny_t5
    cfg = SourceConfig(model="tiny-t5", out=str(tmp_path / "src"), tasks=",".join(TASKS), particles=1, steps=1,
                       batch_size=6, prompt_length=2, max_train_examples=2, optimizer="sgd", weight_decay=0.0,
                       lr=0.5, progress=False, device="cpu", task_weights="1,0.5,2", final_eval_examples=0)
    res = run_source(cfg, model, tok)
    pm = PromptedModel(model, tok)
    theta0 = init_prompts(model, tok, 1, 2, "vocab", seed=0)
    per_task = [encode_examples(tok, load_split(get_task(n), "train", cfg, 2), True, eos=False) for n in TASKS]
    score = _score_by_hand(pm, theta0[0], per_task, [1.0, 0.5, 2.0], None, range(3))[0]
    torch.testing.assert_close(res.particles[0].double(), theta0[0].double() + 0.5 * score.double(),
                               atol=1e-5, rtol=1e-4)
    bad = SourceConfig(model="tiny-t5", out=str(tmp_path / "bad"), tasks=",".join(TASKS), task_weights="1,2",
                       progress=False, device="cpu")
    with pytest.raises(BmtptError, match="2 weights for 3 source tasks"):
        run_source(bad, model, tok)
    with pytest.raises(BmtptError, match="non-negative"):
        SourceConfig(out="x", tasks="a", task_weights="1,-1").validate()


def test_the_repulsion_schedule_scales_the_logged_repulsion(tmp_path, tiny_llama):
    import json

    from bmtpt.config import SourceConfig
    from bmtpt.source import run_source

    run_source(SourceConfig(model="tiny-llama", out=str(tmp_path), tasks="synth-sentiment,synth-animal", particles=2,
                            steps=4, batch_size=4, prompt_length=3, max_train_examples=8, repulsion=2.0,
                            repulsion_schedule="anneal", log_every=1, final_eval_examples=0, progress=False,
                            device="cpu"), *tiny_llama)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["repulsion"] for r in logged] == [2.0 * s / 4 for s in range(1, 5)]


# ----------------------------------------------------------------------------- function-space kernel
def test_function_space_step_against_one_particle_at_a_time(tiny):
    """Features = each example's log-likelihood under each particle, one forward per particle here; the
    kernel, drive and pulled-back repulsion built pair by pair; the scores equal particle_scores'."""
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    _, batch, groups = _task_batches(arch, tok, [2, 3, 1])
    weights = torch.tensor([1.0, 2.5, 0.5])
    parts = 0.5 * torch.randn(3, 3, 32, generator=torch.Generator().manual_seed(2))
    interference = torch.zeros(3, *parts.shape)
    scores, terms, losses = function_space_step(pm, parts, batch, groups, 3, weights, 2.0, None, interference)
    want_scores, want_losses = particle_scores(pm, parts, batch, groups, 3, weights, 2.0)
    torch.testing.assert_close(scores, want_scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(losses, want_losses, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(interference.sum(0) - parts / 4.0, scores, atol=1e-5, rtol=1e-4)  # + prior = score
    leaves = [p.clone().requires_grad_(True) for p in parts]
    feats = [-pm.example_nll(leaf[None], batch)[0] for leaf in leaves]  # (B,) each
    f = torch.stack([x.detach() for x in feats]).double()
    h = _median_h(f)
    assert terms.bandwidth == pytest.approx(h, rel=1e-6)
    for i in range(3):
        drive, r = torch.zeros_like(parts[0], dtype=torch.float64), torch.zeros(len(groups), dtype=torch.float64)
        for j in range(3):
            k = math.exp(-((f[j] - f[i]) ** 2).sum().item() / h)
            drive += k * want_scores[j].double()
            r += -2.0 / h * (f[j] - f[i]) * k  # grad_{f_j} k(f_j, f_i)
        (pulled,) = torch.autograd.grad((r.float() / 3 * feats[i]).sum(), leaves[i])
        torch.testing.assert_close(terms.drive[i].double(), drive / 3, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(terms.repulse[i], pulled, atol=1e-6, rtol=1e-4)


def test_a_function_space_source_run(tmp_path, tiny_llama):
    model, tok = tiny_llama
    base = dict(model="tiny-llama", tasks=",".join(TASKS), particles=3, steps=2, batch_size=6, prompt_length=4,
                max_train_examples=12, log_every=1, progress=False, device="cpu", final_eval_examples=0)
    flat = run_source(SourceConfig(**base, out=str(tmp_path / "flat")), model, tok)
    fn = run_source(SourceConfig(**base, out=str(tmp_path / "fn"), kernel_view="function", bandwidth=0.3),
                    model, tok)
    assert not torch.allclose(fn.particles, flat.particles)
    records = [json.loads(line) for line in (tmp_path / "fn" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["bandwidth"] == 0.3 and r["repulse_norm"] > 0 for r in records)
    # the stated --bandwidth is a width between predictions; the target prior's is the parameters' median
    assert fn.info["bandwidth"] == pytest.approx(_median_h(fn.particles), rel=1e-6)
    for extra, message in (({"grad_accum": 2}, "leave out --grad-accum"), ({"particle_chunk": 1}, "--particle-chunk")):
        with pytest.raises(BmtptError, match=message):
            SourceConfig(**base, out=str(tmp_path / "bad"), kernel_view="function", **extra).validate()


def test_specialised_particles_weigh_their_own_task_by_one(tiny):
    """--specialise alpha: particle m's score is grad of [own task's log-lik + alpha x the others'], built task
    by task by hand; alpha = 1 is the global posterior for every particle."""
    from bmtpt.source import task_focus

    np.testing.assert_allclose(task_focus(4, 3, 0.2).numpy(), [[1, .2, .2], [.2, 1, .2], [.2, .2, 1], [1, .2, .2]],
                               rtol=1e-7)
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    per_task, batch, groups = _task_batches(arch, tok, [2, 1, 2])
    base = torch.tensor([1.0, 2.0, 0.5])
    parts = 0.5 * torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(2))
    w = base * task_focus(4, 3, 0.25)
    for chunk in (None, 1, 3):
        scores, losses = particle_scores(pm, parts, batch, groups, 3, w, 2.0, chunk=chunk)
        for m in range(4):
            grad, _ = _score_by_hand(pm, parts[m], per_task, w[m].tolist(), 2.0, range(3))
            torch.testing.assert_close(scores[m], grad, atol=1e-5, rtol=1e-4)
    glob, _ = particle_scores(pm, parts, batch, groups, 3, base * task_focus(4, 3, 1.0), 2.0)
    torch.testing.assert_close(glob, particle_scores(pm, parts, batch, groups, 3, base, 2.0)[0])


def test_specialise_is_checked():
    with pytest.raises(BmtptError, match=r"--specialise must be a weight in \[0, 1\]"):
        SourceConfig(out="x", tasks="a", specialise=1.5).validate()
    with pytest.raises(BmtptError, match="--specialise concerns SVGD's particles"):
        SourceConfig(out="x", tasks="a", method="independent", particles=1, specialise=0.5).validate()
