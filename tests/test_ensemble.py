"""Target posterior ensembles (`bmtpt target --particles M`): the ensemble's predictions are the mean of its
prompts' label probabilities, an independent ensemble equals M separate MAP runs, calibration is reported,
and what cannot work is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bmtpt.checkpoint import load_checkpoint
from bmtpt.config import SourceConfig, TargetConfig
from bmtpt.ensemble import ensemble_probabilities
from bmtpt.errors import BmtptError
from bmtpt.evaluate import run_eval
from bmtpt.prompted import PromptedModel
from bmtpt.runs import load_split
from bmtpt.source import run_source
from bmtpt.target import calibration_of, run_target
from bmtpt.tasks import get_task
from bmtpt.toolconfig import EvalConfig
from bmtpt.train import train_target

BASE = dict(model="tiny-llama", task="synth-product", steps=3, eval_every=3, batch_size=4, max_train_examples=12,
            max_eval_examples=10, train_eval_examples=0, optimizer="adam", lr=0.05, log_every=1, progress=False,
            device="cpu", checkpoint_every=3)


@pytest.fixture(scope="module")
def posterior(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("ens") / "src"
    run_source(SourceConfig(model="tiny-llama", out=str(out), tasks="synth-sentiment,synth-animal", particles=3,
                            steps=2, batch_size=4, prompt_length=3, max_train_examples=8, final_eval_examples=0,
                            progress=False, device="cpu"), *tiny_llama)
    return out


def test_an_svgd_ensemble_predicts_with_its_prompts_mean_probabilities(posterior, tiny_llama, tmp_path):
    res = train_target(TargetConfig(**BASE, posterior=str(posterior), particles=3, out=str(tmp_path / "e")),
                       *tiny_llama)
    saved = load_file(str(tmp_path / "e" / "prompt.safetensors"))["particles"]
    start = load_file(str(posterior / "particles.safetensors"))["particles"]
    assert saved.shape == (3, 3, 32) and not torch.allclose(saved, start)  # training moved the prompts
    model, tok = tiny_llama
    pm = PromptedModel(model, tok)
    task = get_task("synth-product")
    test = load_split(task, "test", TargetConfig(**BASE, out="x"), 10)
    each = [pm.label_probabilities(p, task, test)[1] for p in saved]  # recomputed prompt by prompt
    mean = torch.stack(each).mean(0)
    preds = json.loads((tmp_path / "e" / "predictions-test.json").read_text())
    assert torch.allclose(torch.tensor(preds["probabilities"], dtype=torch.float64), mean, atol=1e-5)
    labels = list(task.verbalizers)
    assert preds["predictions"] == [labels[j] for j in mean.argmax(-1).tolist()]
    assert 100 * sum(preds["dev_correct"]) / len(preds["dev_correct"]) == pytest.approx(res.metrics["dev"]["accuracy"])
    assert res.metrics["test_calibration"] == pytest.approx(calibration_of(mean, task, test), abs=1e-5)
    for member, p in zip(res.metrics["members_test"], each, strict=True):
        assert member["calibration"] == pytest.approx(calibration_of(p, task, test), abs=1e-5)
    meta = json.loads((tmp_path / "e" / "target.json").read_text())
    assert meta["ensemble"] == {"particles": 3, "rule": "svgd"} and meta["trainable_parameters"] == 3 * 3 * 32
    assert torch.allclose(ensemble_probabilities(pm, saved, task, test)[0], mean, atol=1e-6)
    with pytest.raises(BmtptError, match="target ensemble of 3 prompts"):
        run_eval(EvalConfig(run_dir=str(tmp_path / "e"), progress=False, device="cpu"), *tiny_llama)


def test_an_independent_ensemble_is_m_separate_map_runs(posterior, tiny_llama, tmp_path):
    cfg = {**BASE, "posterior": str(posterior), "prior_weight": 0.5}
    train_target(TargetConfig(**cfg, particles=3, ensemble="independent", out=str(tmp_path / "ens")), *tiny_llama)
    together = load_checkpoint(tmp_path / "ens", "target").tensors["particles"]  # after the last step
    for k in range(3):
        run_target(TargetConfig(**cfg, init=f"particle:{k}", out=str(tmp_path / f"map{k}")), *tiny_llama)
        alone = load_checkpoint(tmp_path / f"map{k}", "target").tensors["param/theta0"]
        torch.testing.assert_close(together[k], alone, atol=1e-5, rtol=1e-5)


def test_a_map_run_reports_its_calibration(posterior, tiny_llama, tmp_path):
    res = run_target(TargetConfig(**BASE, posterior=str(posterior), out=str(tmp_path / "m")), *tiny_llama)
    model, tok = tiny_llama
    task = get_task("synth-product")
    test = load_split(task, "test", TargetConfig(**BASE, out="x"), 10)
    probs = PromptedModel(model, tok).label_probabilities(res.prompt, task, test)[1]
    assert res.metrics["test_calibration"] == pytest.approx(calibration_of(probs, task, test), abs=1e-5)
    assert res.metrics["test_calibration"]["accuracy"] == pytest.approx(res.metrics["test"]["accuracy"])


@pytest.mark.parametrize("change, message", [
    ({"method": "pt", "posterior": None}, "--method pt has none"),
    ({"rank_one": True}, "rank-one"),
    ({"eval_mode": "generate"}, "--eval-mode rank"),
    ({"particles": 1, "ensemble": "independent"}, "--ensemble applies to --particles M > 1"),
])
def test_what_an_ensemble_cannot_do_is_refused(posterior, tmp_path, change, message):
    cfg = {**BASE, "posterior": str(posterior), "particles": 2, "out": str(tmp_path / "x"), **change}
    with pytest.raises(BmtptError, match=message):
        TargetConfig(**cfg).validate()


def test_map_entry_point_refuses_several_particles(posterior, tiny_llama, tmp_path):
    with pytest.raises(BmtptError, match="train_target"):
        run_target(TargetConfig(**BASE, posterior=str(posterior), particles=2, out=str(tmp_path / "x")), *tiny_llama)
