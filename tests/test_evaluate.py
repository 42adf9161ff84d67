"""`bmtpt eval` (evaluate.run_eval): it finds a run's prompt, task, settings and fixed evaluation sample
again, so it reproduces the scores the stages recorded while training (computed there by other code)."""

from __future__ import annotations

import json

import pytest

from bmtpt.config import SourceConfig, TargetConfig
from bmtpt.errors import BmtptError
from bmtpt.evaluate import run_eval
from bmtpt.source import run_source
from bmtpt.target import run_target
from bmtpt.tiny import build_tiny
from bmtpt.toolconfig import EvalConfig

TASKS = "synth-sentiment,synth-animal"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("eval")
    src = run_source(SourceConfig(model="tiny-llama", out=str(root / "src"), tasks=TASKS, particles=2, steps=3,
                                  batch_size=4, prompt_length=3, max_train_examples=12, final_eval_examples=6,
                                  progress=False, device="cpu"), *tiny_llama)
    tgt = run_target(TargetConfig(model="tiny-llama", out=str(root / "tgt"), task="synth-product",
                                  posterior=str(src.out), steps=3, eval_every=1, batch_size=4, max_train_examples=12,
                                  max_eval_examples=10, lr=0.5, progress=False, device="cpu"), *tiny_llama)
    return src, tgt


@pytest.mark.parametrize("split", ["dev", "test"])
def test_eval_of_a_target_run_reproduces_its_recorded_scores(runs, tiny_llama, split):
    _, tgt = runs
    got = run_eval(EvalConfig(run_dir=str(tgt.out), split=split, max_eval_examples=10, progress=False,
                              device="cpu"), *tiny_llama)
    recorded = tgt.metrics[split]  # the dev score of the selected step / the final test score
    assert got["synth-product"]["score"] == pytest.approx(recorded["score"], abs=1e-9)
    assert got["synth-product"]["examples"] == tgt.metrics[f"{split}_examples"] == 10
    saved = json.loads((tgt.out / f"eval-{split}.json").read_text())
    assert saved["split"] == split and saved["results"] == got
    calib = got["synth-product"]["calibration"]  # a rank-classified task: its label probabilities' calibration
    assert calib["accuracy"] == pytest.approx(got["synth-product"]["accuracy"], abs=1e-6)
    if split == "test":  # the target run recorded the same on its final test pass
        assert calib == pytest.approx(tgt.metrics["test_calibration"], abs=1e-6)


def test_eval_of_a_source_run_scores_the_particles_mean_on_every_source_task(runs, tiny_llama):
    src, _ = runs
    got = run_eval(EvalConfig(run_dir=str(src.out), split="dev", max_eval_examples=6, progress=False,
                              device="cpu"), *tiny_llama)
    assert set(got) == set(TASKS.split(","))
    for name, rec in src.info["final_dev"].items():  # scored by the source stage after its last step
        assert got[name]["score"] == pytest.approx(rec["mean"], abs=1e-6) and got[name]["examples"] == 6


def test_eval_refuses_what_it_cannot_evaluate(runs, tmp_path, tiny_llama):
    _, tgt = runs
    with pytest.raises(BmtptError, match="does not exist"):
        run_eval(EvalConfig(run_dir=str(tmp_path / "nothing")), *tiny_llama)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BmtptError, match="neither target.json nor posterior.json"):
        run_eval(EvalConfig(run_dir=str(tmp_path / "empty")), *tiny_llama)
    wider = build_tiny("llama", d_model=48)
    with pytest.raises(BmtptError, match="the run's prompt is 32 wide but the backbone embeds in 48"):
        run_eval(EvalConfig(run_dir=str(tgt.out), progress=False, device="cpu"), *wider)
    assert not list(tmp_path.glob("**/eval-*.json"))
