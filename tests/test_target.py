"""Target stage: the prior term by hand, the rank-one factor, lambda = 0, init choices and a source -> target run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.special import logsumexp

from bmtpt.backbone import backbone_grads
from bmtpt.config import SourceConfig, TargetConfig
from bmtpt.data import collate, encode_examples
from bmtpt.errors import BmtptError
from bmtpt.prompted import PromptedModel
from bmtpt.runfiles import effective_prompt, save_posterior
from bmtpt.runs import load_split
from bmtpt.source import run_source
from bmtpt.target import PriorTerm, initial_prompt, run_target
from bmtpt.tasks import Example, get_task


def _parts(m=4, length=3, d=5, seed=0):
    return torch.randn(m, length, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_kde_prior_by_hand():
    parts, theta = _parts(), _parts(1, seed=1)[0]
    h = 4.2
    sq = ((theta.numpy()[None] - parts.numpy()) ** 2).reshape(4, -1).sum(-1)
    assert PriorTerm(parts, h, "kde")(theta).item() == pytest.approx(logsumexp(-sq / h) - math.log(4), abs=1e-10)


def test_gaussian_prior_by_hand():
    parts, theta = _parts(), _parts(1, seed=2)[0]
    h = 3.0
    mean = parts.numpy().mean(0)
    want = -((theta.numpy() - mean) ** 2).sum() / h  # variance h / 2
    assert PriorTerm(parts, h, "gaussian")(theta).item() == pytest.approx(want, abs=1e-10)


def test_rank_one_factor_starts_at_theta0_and_one_step_moves_only_u_v():
    theta0 = _parts(1, length=4, d=6, seed=3)[0]
    u = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    v = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
    assert torch.equal(effective_prompt(theta0, u, v), theta0)
    assert effective_prompt(theta0, None, None) is theta0
    prior = PriorTerm(_parts(seed=4, length=4, d=6), 5.0)
    # dL/dtheta at theta0, by autograd on theta itself; the chain rule then gives u's and v's gradients
    t = theta0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(-prior(t), t)
    lr = 0.1
    u_want = 1.0 - lr * (g * theta0).sum(1).numpy()
    v_want = 1.0 - lr * (g * theta0).sum(0).numpy()
    opt = torch.optim.SGD([u, v], lr=lr)
    (-prior(effective_prompt(theta0, u, v))).backward()
    opt.step()
    np.testing.assert_allclose(u.detach().numpy(), u_want, atol=1e-12)
    np.testing.assert_allclose(v.detach().numpy(), v_want, atol=1e-12)
    np.testing.assert_allclose(effective_prompt(theta0, u, v).detach().numpy(),
                               theta0.numpy() * np.outer(u_want, v_want), atol=1e-12)


def _cfg(tmp_path, name, posterior, **kw):
    base = dict(model="tiny-llama", out=str(tmp_path / name), task="synth-product",
                posterior=str(posterior) if posterior is not None else None,
                steps=4, eval_every=2, log_every=1, batch_size=4, max_train_examples=16, max_eval_examples=12,
                progress=False, device="cpu")
    return TargetConfig(**{**base, **kw})


def test_initial_prompt_choices(tmp_path, tiny_llama):
    model, tok = tiny_llama
    parts = _parts(3, length=4, d=32, seed=5).float()
    cfg = _cfg(tmp_path, "t", "unused")
    torch.testing.assert_close(initial_prompt(cfg, model, tok, parts), torch.tensor(parts.numpy().mean(0)))
    cfg.init = "particle:2"
    assert torch.equal(initial_prompt(cfg, model, tok, parts), parts[2])
    for bad in ("particle:3", "particle:-1", "particle:x"):
        cfg.init = bad
        with pytest.raises(BmtptError):
            initial_prompt(cfg, model, tok, parts)
    cfg.init = "mean"
    with pytest.raises(BmtptError, match="needs --posterior"):
        initial_prompt(cfg, model, tok, None)
    cfg.method, cfg.prompt_length = "pt", 5  # prompt tuning from scratch ignores --init mean: a vocab init
    assert initial_prompt(cfg, model, tok, None).shape == (5, 32)


@pytest.fixture(scope="module")
def posterior(tmp_path_factory, tiny_llama):
    """A 3-particle source posterior on the tiny Llama (2 steps on 3 synth tasks)."""
    out = tmp_path_factory.mktemp("source") / "post"
    cfg = SourceConfig(model="tiny-llama", out=str(out), tasks="synth-sentiment,synth-animal,synth-past",
                       particles=3, steps=2, batch_size=6, prompt_length=4, max_train_examples=12,
                       progress=False, device="cpu")
    res = run_source(cfg, *tiny_llama)
    return out, res.particles, res.info["bandwidth"]


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_source_to_target_run(tmp_path, tiny_llama, posterior):
    model, tok = tiny_llama
    folder, parts, h = posterior
    cfg = _cfg(tmp_path, "tgt", folder, rank_one=True, prior_weight=0.5)
    res = run_target(cfg, model, tok)
    out = tmp_path / "tgt"
    saved = load_file(str(out / "prompt.safetensors"))
    assert set(saved) == {"prompt", "theta0", "u", "v"} and saved["prompt"].shape == (4, 32)
    torch.testing.assert_close(saved["prompt"], saved["theta0"] * torch.outer(saved["u"], saved["v"]))
    meta = json.loads((out / "target.json").read_text())
    assert meta["task"] == "synth-product" and meta["source_tasks"] == ["synth-sentiment", "synth-animal", "synth-past"]
    assert meta["trainable_parameters"] == 4 * 32 + 4 + 32
    metrics = meta["metrics"]
    assert metrics["best_step"] in (0, 2, 4) and metrics == res.metrics
    for split in ("dev", "test"):
        acc = metrics[split]["accuracy"]  # a percentage of 12 examples
        assert acc * 12 / 100 == pytest.approx(round(acc * 12 / 100)) and metrics[split]["score"] == acc
    # the test accuracy is that of the saved prompt, by comparing the two labels' likelihoods by hand
    pm = PromptedModel(model, tok)
    test = load_split(get_task("synth-product"), "test", cfg, 12)
    correct = 0
    for ex in test:
        nll = {}
        for label in ("yes", "no"):
            enc = encode_examples(tok, [Example(ex.input, label)], False, eos=False)  # the label's tokens only
            nll[label] = pm.example_nll(saved["prompt"][None], collate(enc.inputs, enc.targets, 0, False))[0].item()
        correct += min(nll, key=nll.get) == ex.target
    assert metrics["test"]["accuracy"] == pytest.approx(100 * correct / 12)
    # the logged objective is NLL - lambda * log p_hat, and p_hat at step 1 is the KDE at the particles' mean
    recs = [r for r in _records(out) if "nll" in r]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert r["loss"] == pytest.approx(r["nll"] - 0.5 * r["log_prior"], rel=1e-5, abs=1e-6)
    p = parts.double().numpy()
    sq = ((p.mean(0)[None] - p) ** 2).reshape(3, -1).sum(-1)
    assert recs[0]["log_prior"] == pytest.approx(logsumexp(-sq / h) - math.log(3), rel=1e-4, abs=1e-5)
    assert backbone_grads(model) == []


def test_prior_bandwidth_overrides_the_posteriors(tmp_path, tiny_llama, posterior):
    folder, parts, h = posterior
    cfg = _cfg(tmp_path, "bw", folder, prior_bandwidth=h / 7, steps=1, eval_every=1)
    run_target(cfg, *tiny_llama)
    assert json.loads((tmp_path / "bw" / "target.json").read_text())["prior_bandwidth"] == pytest.approx(h / 7)
    rec = next(r for r in _records(tmp_path / "bw") if "nll" in r)
    p = parts.double().numpy()
    sq = ((p.mean(0)[None] - p) ** 2).reshape(3, -1).sum(-1)  # the KDE at the particles' mean, by hand
    assert rec["log_prior"] == pytest.approx(logsumexp(-sq / (h / 7)) - math.log(3), rel=1e-4, abs=1e-5)
    with pytest.raises(BmtptError, match="prior-bandwidth must be positive"):
        _cfg(tmp_path, "bad", folder, prior_bandwidth=0.0).validate()


def test_zero_prior_weight_leaves_the_plain_nll(tmp_path, tiny_llama, posterior):
    cfg = _cfg(tmp_path, "lam0", posterior[0], prior_weight=0.0, steps=3, eval_every=3, init="particle:1")
    run_target(cfg, *tiny_llama)
    meta = json.loads((tmp_path / "lam0" / "target.json").read_text())
    assert meta["prior_weight"] == 0.0
    recs = [r for r in _records(tmp_path / "lam0") if "nll" in r]
    assert len(recs) == 3
    for r in recs:
        assert r["log_prior"] == 0.0 and r["loss"] == r["nll"]


def test_init_particle_k_starts_at_that_particle(tmp_path, tiny_llama, posterior):
    folder, parts, _ = posterior
    for init, want in (("particle:2", parts[2]), ("mean", parts.mean(0))):
        cfg = _cfg(tmp_path, init.replace(":", ""), folder, init=init, steps=1, eval_every=1, optimizer="sgd",
                   lr=1e-9, weight_decay=0.0)
        res = run_target(cfg, *tiny_llama)
        torch.testing.assert_close(res.prompt, want, atol=1e-6, rtol=0)


def test_posterior_of_another_width_is_refused(tmp_path, tiny_llama):
    save_posterior(tmp_path, torch.randn(2, 4, 16), {"backbone": "other", "source_tasks": ["synth-animal"],
                                                      "bandwidth": 1.0, "method": "svgd"})
    with pytest.raises(BmtptError, match="trained on backbone 'other'"):
        run_target(_cfg(tmp_path, "bad", tmp_path), *tiny_llama)
    with pytest.raises(BmtptError, match="16 wide"):  # even when told it is the same model under another name
        run_target(_cfg(tmp_path, "bad", tmp_path, allow_other_backbone=True), *tiny_llama)


@pytest.mark.parametrize("rank_one", [False, True])
def test_gradient_accumulation_gives_the_same_run(tmp_path, tiny_llama, posterior, rank_one):
    """--grad-accum splits each batch into micro-batches; the updates (and so the prompts) stay the same."""
    runs = {}
    for accum in (1, 3):
        cfg = _cfg(tmp_path, f"acc{accum}-{rank_one}", posterior[0], grad_accum=accum, prior_weight=0.5,
                   rank_one=rank_one, batch_size=5, optimizer="sgd", lr=0.5)
        runs[accum] = run_target(cfg, *tiny_llama)
        runs[accum].logs = [r for r in _records(tmp_path / f"acc{accum}-{rank_one}") if "nll" in r]
    torch.testing.assert_close(runs[3].prompt, runs[1].prompt, atol=1e-5, rtol=1e-4)
    final = {a: load_file(str(tmp_path / f"acc{a}-{rank_one}" / "checkpoint.safetensors")) for a in runs}
    for key in final[1]:
        if key.startswith("param/"):  # the last step's parameters, not only the dev-selected prompt
            torch.testing.assert_close(final[3][key], final[1][key], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(final[1]["param/theta0"], posterior[1].mean(0), atol=1e-3)  # training moved it
    for a, b in zip(runs[1].logs, runs[3].logs, strict=True):
        assert b["nll"] == pytest.approx(a["nll"], rel=1e-5) and b["loss"] == pytest.approx(a["loss"], rel=1e-5)


# --- model selection, train accuracy, example-level results ------------------------------------------------

def test_a_dev_tie_goes_to_the_later_step(tmp_path, tiny_llama, posterior, monkeypatch):
    """With `>` a small dev set kept the untrained prompt on every tie; the later step must win instead."""
    import bmtpt.target as target

    monkeypatch.setattr(target, "predict_and_score",  # every evaluation scores the same
                        lambda pm, prompt, task, ex, cfg: ({"accuracy": 50.0, "score": 50.0}, [e.target for e in ex]))
    res = run_target(_cfg(tmp_path, "tie", posterior[0], steps=4, eval_every=2, train_eval_examples=0), *tiny_llama)
    assert res.metrics["best_step"] == 4


def test_train_accuracy_is_logged_and_test_results_are_kept_per_example(tmp_path, tiny_llama):
    """train/accuracy at step 0 is the untrained prompt's accuracy on the fixed training sample, checked by
    comparing the label words' likelihoods by hand; predictions-test.json holds one 0/1 per test example whose
    mean is the test accuracy."""
    from bmtpt.prompts import init_prompts
    from bmtpt.target import train_sample

    model, tok = tiny_llama
    cfg = _cfg(tmp_path, "pt", None, method="pt", prompt_length=4, steps=2, eval_every=2,
               train_eval_examples=6)
    run_target(cfg, model, tok)
    step0 = next(r for r in _records(tmp_path / "pt") if r["step"] == 0 and "dev/score" in r)
    task = get_task("synth-product")
    sample = train_sample(load_split(task, "train", cfg, cfg.max_train_examples), 6, cfg.seed)
    prompt = init_prompts(model, tok, 1, 4, "vocab", cfg.seed)[0]
    pm = PromptedModel(model, tok)
    correct = 0
    for ex in sample:
        nll = {}
        for label in ("yes", "no"):
            enc = encode_examples(tok, [Example(ex.input, label)], False, eos=False)
            nll[label] = pm.example_nll(prompt[None], collate(enc.inputs, enc.targets, 0, False))[0].item()
        correct += min(nll, key=nll.get) == ex.target
    assert step0["train/accuracy"] == pytest.approx(100 * correct / 6)
    meta = json.loads((tmp_path / "pt" / "target.json").read_text())
    preds = json.loads((tmp_path / "pt" / "predictions-test.json").read_text())
    assert len(preds["correct"]) == meta["metrics"]["test_examples"] == 12 and meta["metrics"]["dev_examples"] == 12
    assert 100 * sum(preds["correct"]) / 12 == pytest.approx(meta["metrics"]["test"]["accuracy"])
    # the dev-selected step's dev results, example by example: their mean is its dev score
    assert len(preds["dev_correct"]) == 12
    assert 100 * sum(preds["dev_correct"]) / 12 == pytest.approx(meta["metrics"]["dev"]["accuracy"])
    assert meta["label_words"] == {"yes": "yes", "no": "no"}


def test_dev_and_test_samples_do_not_depend_on_the_seed(tmp_path):
    task = get_task("synth-product")
    a, b = (_cfg(tmp_path, "x", "unused", seed=s) for s in (0, 5))
    for split in ("dev", "test"):
        assert load_split(task, split, a, 12) == load_split(task, split, b, 12)
    assert load_split(task, "train", a, 12) != load_split(task, "train", b, 12)


def test_a_one_particle_posterior_needs_its_bandwidth_stated(tmp_path, tiny_llama, posterior):
    """M = 1 records no bandwidth (the median heuristic's h = 1 fallback made the prior ~100x stronger than
    the M = 3 run's); --prior-bandwidth-from borrows the M = 3 run's, so an M = 1 ablation changes only M."""
    cfg = SourceConfig(model="tiny-llama", out=str(tmp_path / "m1"), tasks="synth-sentiment,synth-animal",
                       particles=1, steps=1, batch_size=4, prompt_length=4, max_train_examples=8, progress=False,
                       device="cpu", final_eval_examples=0)
    assert run_source(cfg, *tiny_llama).info["bandwidth"] is None
    with pytest.raises(BmtptError, match="has one particle.*--prior-bandwidth"):
        run_target(_cfg(tmp_path, "m1-t", tmp_path / "m1", steps=1, eval_every=1), *tiny_llama)
    run_target(_cfg(tmp_path, "m1-ok", tmp_path / "m1", steps=1, eval_every=1, prior_bandwidth_from=str(posterior[0])),
               *tiny_llama)
    meta = json.loads((tmp_path / "m1-ok" / "target.json").read_text())
    assert meta["prior_bandwidth"] == pytest.approx(posterior[2])
    run_target(_cfg(tmp_path, "m1-pt", tmp_path / "m1", steps=1, eval_every=1, prior_weight=0.0), *tiny_llama)
    with pytest.raises(BmtptError, match="not both"):
        _cfg(tmp_path, "x", posterior[0], prior_bandwidth=1.0, prior_bandwidth_from="y").validate()


def test_source_stage_scores_its_particles_on_each_source_dev_set(tmp_path, tiny_llama):
    """posterior.json's final_dev: the particles' mean and each particle on each task's dev sample, by hand."""
    from bmtpt.runfiles import load_initial_particles, load_posterior
    from bmtpt.tasks import score_of

    model, tok = tiny_llama
    cfg = SourceConfig(model="tiny-llama", out=str(tmp_path / "s"), tasks="synth-sentiment,synth-animal",
                       particles=2, steps=1, batch_size=4, prompt_length=4, max_train_examples=8, progress=False,
                       device="cpu", final_eval_examples=6)
    run_source(cfg, model, tok)
    parts, meta = load_posterior(tmp_path / "s")
    assert load_initial_particles(tmp_path / "s").shape == parts.shape
    pm = PromptedModel(model, tok)
    for name in ("synth-sentiment", "synth-animal"):
        dev = load_split(get_task(name), "dev", cfg, 6)
        got = meta["final_dev"][name]
        assert got["examples"] == 6
        assert got["mean"] == pytest.approx(score_of(pm.evaluate(parts.mean(0), get_task(name), dev)), abs=1e-5)
        assert got["particles"][1] == pytest.approx(score_of(pm.evaluate(parts[1], get_task(name), dev)), abs=1e-5)


def test_repeated_evaluations_of_one_prompt_are_looked_up(tiny_llama, monkeypatch):
    """A grid scores the same start prompt on the same dev set in many cells: the second time is a lookup,
    a changed prompt or example list is evaluated again, and the metrics are the same either way."""
    from bmtpt.target import predict_and_score

    model, tok = tiny_llama
    pm = PromptedModel(model, tok)
    calls = []
    real = pm.label_probabilities  # what rank classification of a classification task calls
    monkeypatch.setattr(pm, "label_probabilities", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = _cfg(Path("/unused"), "x", None, method="pt")
    task = get_task("synth-product")
    dev = load_split(task, "dev", cfg, 6)
    prompt = torch.randn(4, 32, generator=torch.Generator().manual_seed(11))
    first = predict_and_score(pm, prompt, task, dev, cfg)
    assert predict_and_score(pm, prompt.clone(), task, dev, cfg) == first and len(calls) == 1
    predict_and_score(pm, prompt + 1e-3, task, dev, cfg)
    predict_and_score(pm, prompt, task, dev[:5], cfg)
    assert len(calls) == 3


def test_test_mix_dev_sample_is_refused_for_a_task_without_labels(tmp_path, tiny_llama, monkeypatch):
    from bmtpt import tasks
    from bmtpt.tasks import Example, Task

    rows = [Example(f"say {i}", f"word{i}") for i in range(8)]
    monkeypatch.setitem(tasks._REGISTRY, "free-text", Task(name="free-text", loader=lambda s, d, seed: list(rows)))
    with pytest.raises(BmtptError, match="test-mix mirrors a label mix; task free-text has no labels"):
        run_target(_cfg(tmp_path, "free", None, method="pt", task="free-text", dev_sample="test-mix"), *tiny_llama)
