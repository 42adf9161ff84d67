"""Baselines: SPoT's retrieval against brute force, MPT's parameter count and posterior, and pt/avg/spot/mpt
end to end through the experiment runner (tiny Llama)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bmtpt.backbone import backbone_grads
from bmtpt.baselines import (
    MptConfig,
    mpt_trainable_parameters,
    spot_select,
    task_prompts,
    train_mpt_source,
    train_probe,
)
from bmtpt.config import TargetConfig
from bmtpt.errors import BmtptError
from bmtpt.experiment import run_experiment
from bmtpt.runfiles import load_posterior
from bmtpt.target import run_target


def _brute_cosines(sources: np.ndarray, target: np.ndarray, pool: str) -> list[float]:
    out = []
    for s in sources:
        a, b = (s.ravel(), target.ravel()) if pool == "flat" else (s.mean(0), target.mean(0))
        out.append(float(sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))))
    return out


@pytest.mark.parametrize("pool", ["flat", "mean"])
def test_spot_picks_the_most_cosine_similar_prompt(pool):
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        sources = torch.randn(6, 3, 5, generator=g)
        # a target close to a random source, rescaled (cosine ignores the scale), so the answer is not index 0
        want = int(torch.randint(0, 6, (1,), generator=g))
        target = 3.0 * (sources[want] + 0.3 * torch.randn(3, 5, generator=g))
        k, sims = spot_select(sources, target, pool)
        brute = _brute_cosines(sources.double().numpy(), target.double().numpy(), pool)
        np.testing.assert_allclose(sims.numpy(), brute, atol=1e-12)
        assert k == int(np.argmax(brute))
        if pool == "flat":
            assert k == want
    with pytest.raises(BmtptError, match="pool"):
        spot_select(sources, target, "max")


def test_task_prompts_are_shared_times_rank_one_factors():
    g = torch.Generator().manual_seed(1)
    shared, u, v = torch.randn(4, 6, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, 6, generator=g)
    got = task_prompts(shared, u, v)
    assert got.shape == (3, 4, 6)
    for k in range(3):
        torch.testing.assert_close(got[k], shared * torch.outer(u[k], v[k]))


def test_mpt_source_parameters_and_posterior(tmp_path, tiny_llama):
    model, tok = tiny_llama
    cfg = MptConfig(model="tiny-llama", out=str(tmp_path / "mpt"), tasks="synth-sentiment,synth-animal,synth-past",
                    steps=3, batch_size=6, prompt_length=4, max_train_examples=12, log_every=1, optimizer="adam",
                    lr=0.05, progress=False, device="cpu")
    res = train_mpt_source(cfg, model, tok)
    assert res.info["trainable_parameters"] == 4 * 32 + 3 * (4 + 32) == mpt_trainable_parameters(4, 32, 3)
    assert res.info["compute"]["example_passes"] == 6 * 3
    particles, meta = load_posterior(tmp_path / "mpt")
    assert particles.shape == (1, 4, 32) and meta["method"] == "mpt" and meta["num_particles"] == 1
    factors = load_file(str(tmp_path / "mpt" / "mpt_factors.safetensors"))
    assert factors["task_cols"].shape == (3, 4) and factors["task_rows"].shape == (3, 32)
    assert sum(t.numel() for t in factors.values()) == res.info["trainable_parameters"]
    torch.testing.assert_close(factors["shared_prompt"], particles[0])
    assert not torch.equal(factors["task_cols"], torch.ones(3, 4))  # the factors were trained
    logs = [json.loads(x) for x in (tmp_path / "mpt" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]
    assert all(len(r["particle_loss"]) == 1 and "loss/synth-past" in r for r in logs)
    assert backbone_grads(model) == []
    # the target starts from the shared prompt with a fresh rank-one factor: l*d + l + d trainable numbers
    tcfg = TargetConfig(model="tiny-llama", out=str(tmp_path / "tgt"), task="synth-product",
                        posterior=str(tmp_path / "mpt"), method="avg", rank_one=True, steps=2, eval_every=2,
                        batch_size=4, max_train_examples=8, max_eval_examples=8, progress=False, device="cpu")
    run_target(tcfg, model, tok)
    assert json.loads((tmp_path / "tgt" / "target.json").read_text())["trainable_parameters"] == 4 * 32 + 4 + 32


def test_probe_starts_from_its_own_init(tiny_llama):
    model, tok = tiny_llama
    cfg = TargetConfig(model="tiny-llama", out="unused", task="synth-product", method="pt", steps=1, batch_size=4,
                       max_train_examples=8, optimizer="sgd", lr=1e-9, weight_decay=0.0, device="cpu")
    probe, passes = train_probe(cfg, 2, 4, model, tok)
    assert probe.shape == (4, 32) and passes == 8
    from bmtpt.prompts import init_prompts

    first_source = init_prompts(model, tok, 3, 4, "vocab", cfg.seed)[0]  # what source prompt 0 starts from
    assert not torch.allclose(probe, first_source, atol=1e-3)
    again, _ = train_probe(cfg, 2, 4, model, tok)
    torch.testing.assert_close(probe, again)


def test_a_diverging_probe_is_a_one_line_error(tiny_llama):
    cfg = TargetConfig(model="tiny-llama", out="unused", task="synth-product", method="pt", steps=1, batch_size=4,
                       max_train_examples=8, optimizer="sgd", lr=0.1, weight_decay=0.0, device="cpu")
    start = torch.full((4, 32), float("inf"))
    with pytest.raises(BmtptError, match="the loss became non-finite at step 1 of the SPoT probe on synth-product"):
        train_probe(cfg, 3, 4, *tiny_llama, start=start)


def test_baselines_end_to_end(tmp_path, tiny_llama):
    cfg = {"name": "baselines", "out": str(tmp_path / "exp"), "model": "tiny-llama", "device": "cpu",
           "progress": False, "prompt_length": 4, "batch_size": 4, "lr": 0.05, "optimizer": "adam",
           "sources": ["synth-sentiment", "synth-animal", "synth-past"],
           "source": {"steps": 2, "particles": 2, "max_train_examples": 12},
           "targets": ["synth-product"], "target": {"steps": 2, "eval_every": 2, "max_eval_examples": 8},
           "seeds": [0], "shots": [8], "spot": {"steps": 2}, "methods": ["pt", "avg", "spot", "mpt"]}
    res = run_experiment(cfg, *tiny_llama, plots=False, echo=None)
    by = {r["method"]: r for r in res.records}
    assert set(by) == {"pt", "avg", "spot", "mpt"}
    assert by["pt"]["source_passes"] == 0 and by["pt"]["source_stage"] is None
    assert by["avg"]["source_stage"] == by["spot"]["source_stage"]  # one independent stage serves both
    assert by["avg"]["source_passes"] == 4 * 2  # independent: every example is seen by one prompt
    assert by["spot"]["probe_passes"] == 2 * 4 + 3 * 2 * 4  # its probe, and one per source task (first cell)
    assert {r["trainable_parameters"] for m, r in by.items() if m != "mpt"} == {4 * 32}
    assert by["mpt"]["trainable_parameters"] == 4 * 32 + 4 + 32
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "exp" / "sources").iterdir())
    assert stages == ["independent", "mpt"]
    # SPoT's choice is the brute-force argmax of the cosines between the probe's displacement from the shared
    # start and the source tasks' embeddings (both centred on the embeddings' mean)
    spot_dir = tmp_path / "exp" / by["spot"]["run_dir"]
    stage = tmp_path / "exp" / by["spot"]["source_stage"]
    probe = load_file(str(spot_dir / "spot_probe.safetensors"))["prompt"].double().numpy()
    start = load_file(str(stage / "particles.safetensors"))["initial"].double().numpy().mean(0)
    emb = load_file(str(next(stage.glob("spot-embeddings-*.safetensors"))))["embeddings"].double().numpy()
    _, meta = load_posterior(stage)
    brute = _brute_cosines(emb - emb.mean(0), probe - start - emb.mean(0), "flat")
    assert by["spot"]["spot"]["chosen"] == int(np.argmax(brute))
    assert by["spot"]["spot"]["similarities"] == pytest.approx(brute, abs=1e-5)
    assert by["spot"]["spot"]["chosen_task"] == meta["source_tasks"][int(np.argmax(brute))]
    target_cfg = json.loads((spot_dir / "target.json").read_text())["hyperparameters"]
    assert target_cfg["init"] == f"particle:{int(np.argmax(brute))}" and target_cfg["method"] == "avg"


@pytest.fixture
def relabelled():
    """Two test tasks, unregistered afterwards (the task table tests list every registered task): synthetic
    sentiment / animal examples whose yes/no labels are renamed, so the two tasks answer with other words."""
    from bmtpt.synth import generate
    from bmtpt.tasks import _REGISTRY, Example, Task, register

    def make(name: str, base: str, words: tuple[str, str]) -> str:
        def load(split, data_dir, seed):
            return [Example(e.input, words[e.target == "no"]) for e in generate(base, split, seed)]

        return register(Task(name, load, verbalizers=words, suite="test")).name

    names = [make("spot-a", "synth-sentiment", ("yes", "no")), make("spot-b", "synth-animal", ("cat", "dog"))]
    yield names
    for name in names:
        _REGISTRY.pop(name, None)


@pytest.mark.parametrize("k", [0, 1])
def test_spot_probe_on_a_source_task_picks_that_tasks_prompt(tmp_path_factory, tiny_llama, relabelled, k):
    """Task embeddings from one shared start: a probe on source task k (another seed, so other examples in
    another order) is closest to task k's embedding. The two tasks answer with different words, as sentiment
    (negative/positive) and NLI (yes/maybe/no) tasks do; on a random-weight model the answer words are what
    a task's prompt learns first (tasks sharing theirs were told apart in only ~2 of 3 trials)."""
    from bmtpt.baselines import spot_choose
    from bmtpt.config import SourceConfig
    from bmtpt.source import run_source

    model, tok = tiny_llama
    tasks = relabelled
    out = tmp_path_factory.getbasetemp() / "spot-sources"
    if not (out / "posterior.json").is_file():
        run_source(SourceConfig(model="tiny-llama", out=str(out), tasks=",".join(tasks), method="independent",
                                particles=2, steps=4, batch_size=16, prompt_length=4, init="vocab-shared:0.25",
                                optimizer="sgd", lr=0.5, max_train_examples=32, progress=False, device="cpu",
                                final_eval_examples=0, overwrite=True), model, tok)
    particles, _ = load_posterior(out)
    for seed in (3, 7):
        cfg = TargetConfig(model="tiny-llama", out="unused", task=tasks[k], posterior=str(out), method="avg",
                           batch_size=16, optimizer="sgd", lr=0.5, max_train_examples=32, seed=seed, device="cpu")
        chosen, sims, probe, passes = spot_choose(str(out), particles, cfg, 4, "flat", model, tok)
        assert chosen == k and sims[k] > sims[1 - k] + 0.2
        assert passes in (64, 3 * 64)  # the source embeddings (2 probes) are paid for once, then read from the folder


def test_mpt_config_has_no_svgd_options_and_a_grid_leaves_them_out(tmp_path):
    """MPT's stage config holds the multi-task options only; a global `source:` SVGD option reaches the SVGD
    stage and stays out of MPT's (it is still part of MPT's stage hash: finished stages keep their folders)."""
    import dataclasses

    from bmtpt.config import MultiTaskConfig, SourceConfig
    from bmtpt.expconfig import load_experiment
    from bmtpt.grid import plan_experiment

    mpt = {f.name for f in dataclasses.fields(MptConfig)}
    multi = {f.name for f in dataclasses.fields(MultiTaskConfig)}
    assert mpt == multi | {"method", "particles", "lr_factor", "factor_init"}
    assert not mpt & ({f.name for f in dataclasses.fields(SourceConfig)} - multi - {"method", "particles"})
    raw = {"name": "g", "out": str(tmp_path), "model": "tiny-llama", "sources": ["synth-sentiment", "synth-animal"],
           "targets": ["synth-product"], "methods": ["mpt", "bmtpt"], "source": {"steps": 2, "repulsion": 3.0}}
    stages = {s.kind: s for s in plan_experiment(load_experiment(raw)).stages.values()}
    assert stages["svgd"].cfg.repulsion == 3.0 and isinstance(stages["mpt"].cfg, MptConfig)
    plain = {s.kind: s.key for s in plan_experiment(load_experiment({**raw, "source": {"steps": 2}})).stages.values()}
    assert plain["mpt"] != stages["mpt"].key
