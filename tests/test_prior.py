"""The target prior's shapes (bmtpt.prior) against numpy, the Bayes weight rule, and the source Fisher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bmtpt.config import SourceConfig, TargetConfig
from bmtpt.errors import BmtptError
from bmtpt.prior import FLOOR, SHRINK, PriorTerm, effective_weight


def _parts(m=3, length=2, d=5, seed=0):
    return torch.randn(m, length, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _shaped(raw, h):
    raw = np.maximum(raw, FLOOR * raw.mean())
    return raw * (2 / h) / raw.mean()


def test_diag_prior_by_hand():
    parts, h = _parts(), 3.0
    theta = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = parts.numpy()
    var = p.var(0, ddof=1)
    prec = _shaped(1 / (var + SHRINK * var.mean()), h)
    want = -0.5 * (prec * (theta.numpy() - p.mean(0)) ** 2).sum()
    prior = PriorTerm(parts, h, "diag")
    assert prior(theta).item() == pytest.approx(want, rel=1e-5)
    assert prior.precision.double().mean().item() == pytest.approx(2 / h, rel=1e-5)  # the gaussian's mean precision


def test_fisher_prior_by_hand_and_its_errors():
    parts, h = _parts(), 2.0
    fisher = torch.rand(2, 5, generator=torch.Generator().manual_seed(2)) ** 3  # a skewed shape: the floor acts
    theta = torch.randn(2, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    prec = _shaped(fisher.double().numpy(), h)
    want = -0.5 * (prec * (theta.numpy() - parts.numpy().mean(0)) ** 2).sum()
    assert PriorTerm(parts, h, "fisher", fisher)(theta).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(BmtptError, match="Fisher estimate"):
        PriorTerm(parts, h, "fisher")
    with pytest.raises(BmtptError, match="at least two particles"):
        PriorTerm(parts[:1], h, "diag")
    with pytest.raises(BmtptError, match="unknown --prior"):
        PriorTerm(parts, h, "laplace")


def test_a_flat_shape_is_the_isotropic_gaussian():
    parts = _parts()
    theta = parts[0] + 0.3
    iso = PriorTerm(parts, 4.0, "gaussian")(theta).item()
    assert PriorTerm(parts, 4.0, "fisher", torch.ones(2, 5))(theta).item() == pytest.approx(iso, rel=1e-6)


def test_bayes_weight_rule():
    assert effective_weight(2.0, "fixed", 500) == 2.0
    assert effective_weight(2.0, "bayes", 500) == pytest.approx(2.0 / 500)
    with pytest.raises(BmtptError, match="prior-weight-rule"):
        effective_weight(1.0, "sum", 5)


def test_source_stage_saves_the_mean_squared_score_of_its_second_half(tmp_path, tiny_llama, monkeypatch):
    """fisher = mean over the steps after steps // 2 and over particles of the squared scores, recomputed
    here from the scores the stage used."""
    import bmtpt.source as source

    seen, real = [], source.particle_scores
    monkeypatch.setattr(source, "particle_scores", lambda *a, **k: seen.append(r := real(*a, **k)) or r)
    cfg = SourceConfig(model="tiny-llama", out=str(tmp_path / "s"), tasks="synth-sentiment,synth-animal",
                       particles=2, steps=4, batch_size=4, prompt_length=3, max_train_examples=8, progress=False,
                       device="cpu", final_eval_examples=0)
    source.run_source(cfg, *tiny_llama)
    want = np.mean([(s[0].double().numpy() ** 2).mean(0) for s in seen[2:]], axis=0)
    got = load_file(str(tmp_path / "s" / "particles.safetensors"))["fisher"].double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_target_run_with_the_bayes_rule_and_the_fisher_prior(tmp_path, tiny_llama, monkeypatch):
    """The logged loss is nll - (lambda / target tokens) * log prior; target.json records both weights."""
    from bmtpt.source import run_source
    from bmtpt.target import run_target

    cfg = SourceConfig(model="tiny-llama", out=str(tmp_path / "s"), tasks="synth-sentiment,synth-animal",
                       particles=2, steps=2, batch_size=4, prompt_length=3, max_train_examples=8, progress=False,
                       device="cpu", final_eval_examples=0)
    run_source(cfg, *tiny_llama)
    t = TargetConfig(model="tiny-llama", out=str(tmp_path / "t"), task="synth-product", posterior=str(tmp_path / "s"),
                     steps=2, eval_every=2, log_every=1, batch_size=4, shots=8, max_eval_examples=6, prior="fisher",
                     prior_weight=4.0, prior_weight_rule="bayes", train_eval_examples=0, progress=False, device="cpu")
    run_target(t, *tiny_llama)
    meta = json.loads((tmp_path / "t" / "target.json").read_text())
    assert meta["prior"] == "fisher" and meta["prior_weight"] == 4.0
    assert meta["prior_weight_effective"] == pytest.approx(4.0 / 8)  # 8 training examples, one label token each
    recs = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    for r in (r for r in recs if "nll" in r):
        assert r["loss"] == pytest.approx(r["nll"] - 0.5 * r["log_prior"], rel=1e-5, abs=1e-6)


def test_prior_bandwidth_sources_and_scale():
    from types import SimpleNamespace

    from bmtpt.prior import prior_bandwidth

    cfg = SimpleNamespace(prior_bandwidth=None, prior_bandwidth_from=None, prior_bandwidth_scale=0.25, posterior="p")
    assert prior_bandwidth(cfg, {"bandwidth": 8.0}) == pytest.approx(2.0)
    cfg.prior_bandwidth = 3.0
    assert prior_bandwidth(cfg, {"bandwidth": 8.0}) == pytest.approx(0.75)
    cfg.prior_bandwidth = None
    with pytest.raises(BmtptError, match="one particle"):
        prior_bandwidth(cfg, {"bandwidth": None})
    with pytest.raises(BmtptError, match="prior-bandwidth-scale"):
        TargetConfig(out="x", task="t", method="pt", prior_bandwidth_scale=0.0).validate()


def test_particle_weights_are_the_posterior_given_the_target_examples(tiny_llama):
    """log w_m = sum of particle m's target log-likelihoods (each example scored alone, by a loop) minus
    their log-sum-exp; the weighted mean and the weighted KDE prior follow them."""
    from scipy.special import logsumexp

    from bmtpt.data import batch_of
    from bmtpt.prior import particle_log_weights, weighted_mean
    from bmtpt.prompted import PromptedModel
    from bmtpt.tasks import get_task

    model, tok = tiny_llama
    pm = PromptedModel(model, tok)
    task = get_task("synth-sentiment")
    enc = pm.encode(task, task.load("train")[:5], 4)
    parts = 0.5 * torch.randn(3, 2, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    ll = np.array([[-pm.example_nll(parts[m][None], batch_of(enc, [i], pm.pad_id, False))[0].item()
                    for i in range(5)] for m in range(3)]).sum(1)
    lw = particle_log_weights(pm, parts, enc, batch=2)
    np.testing.assert_allclose(lw.numpy(), ll - logsumexp(ll), rtol=1e-5, atol=1e-5)
    sample = particle_log_weights(pm, parts, enc, examples=3)  # a fixed sample of 3 of the 5
    ids = torch.randperm(5, generator=torch.Generator().manual_seed(0))[:3].tolist()
    ll3 = np.array([[-pm.example_nll(parts[m][None], batch_of(enc, [i], pm.pad_id, False))[0].item()
                     for i in ids] for m in range(3)]).sum(1)
    np.testing.assert_allclose(sample.numpy(), ll3 - logsumexp(ll3), rtol=1e-5, atol=1e-5)
    w = np.exp(lw.numpy())
    torch.testing.assert_close(weighted_mean(parts, lw), (torch.tensor(w, dtype=torch.float32)[:, None, None]
                                                          * parts).sum(0), atol=1e-6, rtol=1e-5)
    assert PriorTerm(parts, 2.0, "gaussian", log_weights=lw).mean.allclose(weighted_mean(parts, lw))


def test_a_target_run_with_particle_weights(tmp_path, tiny_llama):
    """--particle-weights target: target.json records weights that sum to one, equal to those recomputed from
    the posterior and the training examples; the start is their weighted mean; bad combinations are refused."""
    from bmtpt.prior import particle_log_weights, weighted_mean
    from bmtpt.prompted import PromptedModel
    from bmtpt.runs import load_train
    from bmtpt.source import run_source
    from bmtpt.target import initial_prompt, run_target
    from bmtpt.tasks import get_task

    run_source(SourceConfig(model="tiny-llama", out=str(tmp_path / "s"), tasks="synth-sentiment,synth-animal",
                            particles=2, steps=2, batch_size=4, prompt_length=3, max_train_examples=8,
                            specialise=0.1, progress=False, device="cpu", final_eval_examples=0), *tiny_llama)
    t = TargetConfig(model="tiny-llama", out=str(tmp_path / "t"), task="synth-product", posterior=str(tmp_path / "s"),
                     steps=2, eval_every=2, batch_size=4, shots=8, max_eval_examples=6, particle_weights="target",
                     train_eval_examples=0, progress=False, device="cpu")
    run_target(t, *tiny_llama)
    meta = json.loads((tmp_path / "t" / "target.json").read_text())
    parts = load_file(str(tmp_path / "s" / "particles.safetensors"))["particles"]
    pm = PromptedModel(tiny_llama[0], tiny_llama[1])
    enc = pm.encode(get_task("synth-product"), load_train(get_task("synth-product"), t), t.max_target_tokens)
    lw = particle_log_weights(pm, parts, enc)
    assert sum(meta["particle_weights"]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(meta["particle_weights"], lw.exp().numpy(), atol=1e-5)
    torch.testing.assert_close(initial_prompt(t, None, None, parts, lw), weighted_mean(parts, lw))
    for bad in ({"init": "particle:0"}, {"method": "pt", "posterior": None}, {"particles": 2}):
        with pytest.raises(BmtptError, match="--particle-weights target"):
            TargetConfig(**{**t.to_dict(), **bad}).validate()
