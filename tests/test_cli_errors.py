"""Bad input through the command line: one line `bmtpt CMD: error: ...` on stderr, exit code 2, no
traceback, and no result already saved is overwritten or lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SMALL as TINY_RUN
from helpers import assert_one_line_error, cli

from bmtpt import source as source_mod
from bmtpt import target as target_mod
from bmtpt.checkpoint import load_checkpoint
from bmtpt.runfiles import save_posterior

SMALL = [*TINY_RUN, "--max-train-examples", "8"]
TGT_SMALL = [*SMALL, "--max-eval-examples", "4"]  # the test-set cap is a target option

SRC = ["--tasks", "synth-sentiment,synth-animal", "--particles", "2"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture
def good_posterior(tmp_path) -> Path:
    """A valid 32-wide posterior folder (the tiny models are 32 wide) written without training."""
    folder = tmp_path / "post"
    folder.mkdir()
    save_posterior(folder, torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0)),
                   {"backbone": "tiny", "source_tasks": ["synth-animal"], "bandwidth": 1.0, "method": "svgd"})
    return folder


def target_args(model, out, posterior) -> list:
    """A target run on a posterior saved under another name of the same tiny model (hence the flag)."""
    return ["target", "--model", model, "--out", out, "--task", "synth-product", "--posterior", posterior,
            "--allow-other-backbone", "--steps", "2", "--eval-every", "1", *TGT_SMALL]


# ----------------------------------------------------------------------------- names and numbers
@pytest.mark.parametrize("args, fragments", [
    (["source", "--tasks", "synth-animl,synth-past"], ["unknown task 'synth-animl'", "did you mean synth-animal"]),
    (["target", "--task", "synth-prodcut", "--method", "pt"], ["unknown task", "did you mean synth-product"]),
    (["source", "--tasks", "synth-animal", "--model", "./no-such-model"], ["backbone folder", "does not exist"]),
    (["source", "--tasks", "synth-animal", "--particles", "0"], ["--particles must be positive, got 0"]),
    (["source", "--tasks", "synth-animal", "--particles", "-2"], ["--particles must be positive, got -2"]),
    (["source", "--tasks", "synth-animal", "--steps", "0"], ["--steps must be positive"]),
    (["source", "--tasks", "synth-animal", "--batch-size", "-1"], ["--batch-size must be positive"]),
    (["source", "--tasks", "synth-animal", "--prompt-length", "0"], ["--prompt-length must be positive"]),
    (["source", "--tasks", "synth-animal", "--checkpoint-every", "0"], ["--checkpoint-every must be positive"]),
    (["source", "--tasks", "synth-animal", "--log-every", "-5"], ["--log-every must be positive"]),
    (["source", "--tasks", "synth-animal", "--max-train-examples", "0"], ["--max-train-examples must be positive"]),
    (["source", "--tasks", "synth-animal", "--particle-chunk", "0"], ["--particle-chunk must be positive"]),
    (["source", "--tasks", "synth-animal", "--lr", "-0.1"], ["--lr must be positive"]),
    (["source", "--tasks", "synth-animal", "--lr", "nan"], ["--lr must be positive"]),
    (["source", "--tasks", "synth-animal", "--lr", "inf"], ["--lr must be positive and finite"]),
    (["source", "--tasks", "synth-animal", "--weight-decay", "-1"], ["--weight-decay must be non-negative"]),
    (["source", "--tasks", "synth-animal", "--prior-std", "0"], ["--prior-std must be positive"]),
    (["target", "--task", "synth-product", "--method", "pt", "--lr", "0"], ["--lr must be positive"]),
    (["target", "--task", "synth-product", "--method", "pt", "--lr-factor", "0"], ["--lr-factor must be positive"]),
    (["target", "--task", "synth-product", "--method", "pt", "--steps", "-1"], ["--steps must be positive"]),
    (["target", "--task", "synth-product", "--method", "pt", "--eval-every", "0"], ["--eval-every must be positive"]),
    (["target", "--task", "synth-product", "--method", "pt", "--eval-batch-size", "0"],
     ["--eval-batch-size must be positive"]),
    (["target", "--task", "synth-product", "--method", "pt", "--prior-weight", "-1"],
     ["--prior-weight must be non-negative"]),
    (["target", "--task", "synth-product"], ["--posterior is required"]),
    (["source", "--tasks", "synth-animal", "--data-dir", "{tmp}/nowhere"], ["data folder", "does not exist"]),
    (["target", "--task", "synth-product", "--method", "pt", "--data-dir", "{tmp}/nowhere"], ["does not exist"]),
])
def test_bad_names_and_numbers(tmp_path, capsys, args, fragments):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--model" not in args:
        args += ["--model", "x"]
    rc, _, err = cli(capsys, *args, "--out", tmp_path / "out", "--no-progress")
    assert_one_line_error(rc, err, args[0], *fragments)
    assert not (tmp_path / "out").exists()  # nothing written


def test_unknown_backbone_in_a_real_subprocess(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "bmtpt", "source", "--model", "google-t5/t5-smal", "--out",
                          str(tmp_path / "out"), "--tasks", "synth-animal", "--steps", "1", "--no-progress"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert_one_line_error(res.returncode, res.stderr, "source", "cannot load backbone 'google-t5/t5-smal'",
                          "did you mean google-t5/t5-small")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- posteriors
def test_posterior_of_another_width(tmp_path, tiny_dirs, capsys):
    folder = tmp_path / "post16"
    folder.mkdir()
    save_posterior(folder, torch.randn(2, 3, 16), {"backbone": "other-model", "source_tasks": ["synth-animal"],
                                                   "bandwidth": 1.0, "method": "svgd"})
    rc, _, err = cli(capsys, *target_args(tiny_dirs["llama"], tmp_path / "out", folder))
    assert_one_line_error(rc, err, "target", "16 wide", "embeds in 32", "other-model")
    assert not (tmp_path / "out").exists()


def test_posterior_of_another_backbone_is_refused_without_the_flag(tmp_path, tiny_dirs, capsys, good_posterior):
    """Two backbones with 32-wide embeddings: the width check cannot tell them apart, the names can."""
    folder = good_posterior  # trained on "tiny", by its posterior.json
    args = [a for a in target_args(tiny_dirs["llama"], tmp_path / "out", folder) if a != "--allow-other-backbone"]
    rc, _, err = cli(capsys, *args)
    assert_one_line_error(rc, err, "target", "trained on backbone 'tiny'", str(tiny_dirs["llama"]),
                          "--allow-other-backbone")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,fragment", [
    (["--method", "avg", "--prior-weight", "2"], "--prior-weight set the prior of --method bmtpt"),
    (["--method", "pt", "--prior", "diag"], "--prior set the prior of --method bmtpt; --method pt has none"),
    (["--particle-chunk", "2"], "--particle-chunk splits a source stage's particles"),
])
def test_options_a_target_method_does_not_use_are_refused(tmp_path, tiny_dirs, capsys, good_posterior, extra,
                                                          fragment):
    folder = good_posterior
    rc, _, err = cli(capsys, *target_args(tiny_dirs["llama"], tmp_path / "out", folder), *extra)
    assert_one_line_error(rc, err, "target", fragment)
    assert not (tmp_path / "out").exists()


def _truncate(folder: Path) -> None:
    f = folder / "particles.safetensors"
    f.write_bytes(f.read_bytes()[:-40])


def _garble(folder: Path) -> None:
    f = folder / "particles.safetensors"
    f.write_bytes(b"\x00\x01not a safetensors file" * 10)


def _drop_keys(folder: Path) -> None:
    meta = json.loads((folder / "posterior.json").read_text())
    del meta["bandwidth"], meta["embed_dim"]
    (folder / "posterior.json").write_text(json.dumps(meta))


def _future_format(folder: Path) -> None:
    meta = json.loads((folder / "posterior.json").read_text())
    (folder / "posterior.json").write_text(json.dumps({**meta, "format": 99}))


def _not_json(folder: Path) -> None:
    (folder / "posterior.json").write_text('{"format": 1, "backbone": ')


def _a_list(folder: Path) -> None:
    (folder / "posterior.json").write_text("[1, 2]")


def _bad_bandwidth(folder: Path) -> None:
    meta = json.loads((folder / "posterior.json").read_text())
    (folder / "posterior.json").write_text(json.dumps({**meta, "bandwidth": "wide"}))


def _wrong_shape(folder: Path) -> None:
    meta = json.loads((folder / "posterior.json").read_text())
    (folder / "posterior.json").write_text(json.dumps({**meta, "num_particles": 5}))


@pytest.mark.parametrize("damage, fragments", [
    (_truncate, ["particles.safetensors", "truncated or corrupted"]),
    (_garble, ["particles.safetensors", "truncated or corrupted"]),
    (_drop_keys, ["posterior.json lacks key(s): embed_dim, bandwidth"]),
    (_future_format, ["format 99", "reads format 1"]),
    (_not_json, ["posterior.json is not valid JSON"]),
    (_wrong_shape, ["shape (2, 3, 32)", "(5, 3, 32)"]),
    (_a_list, ["posterior.json holds a JSON list"]),
    (_bad_bandwidth, ["bandwidth must be a positive number, got 'wide'"]),
])
def test_damaged_posterior(tmp_path, capsys, good_posterior, damage, fragments):
    damage(good_posterior)
    rc, _, err = cli(capsys, *target_args("x", tmp_path / "out", good_posterior))
    assert_one_line_error(rc, err, "target", *fragments)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- data
def _glue_dir(tmp_path: Path, train: str) -> Path:
    d = tmp_path / "data"
    (d / "glue" / "SST-2").mkdir(parents=True)
    (d / "glue" / "SST-2" / "train.tsv").write_text(train)
    (d / "glue" / "SST-2" / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\n")
    return d


@pytest.mark.parametrize("train", ["", "sentence\tlabel\n", "sentence\tlabel\ngood\t1\nbad\t0\nfine\t1\n"],
                         ids=["empty-file", "header-only", "all-rows-go-to-dev"])
def test_empty_training_set(tmp_path, tiny_dirs, capsys, train):
    data = _glue_dir(tmp_path, train)
    rc, _, err = cli(capsys, "source", "--model", tiny_dirs["llama"], "--out", tmp_path / "out", "--tasks", "sst2",
                      "--data-dir", data, "--steps", "1", *SMALL)
    assert_one_line_error(rc, err, "source", "sst2", "train split is empty")
    assert not (tmp_path / "out").exists()


def test_empty_dev_set_of_a_target(tmp_path, tiny_dirs, capsys):
    d = tmp_path / "data" / "glue" / "RTE"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA cat.\tAn animal.\tentailment\n")
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    rc, _, err = cli(capsys, "target", "--model", tiny_dirs["llama"], "--out", tmp_path / "out", "--task", "rte",
                      "--method", "pt", "--data-dir", tmp_path / "data", "--steps", "1", *TGT_SMALL)
    assert_one_line_error(rc, err, "target", "rte", "split is empty")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- non-finite losses
def _nan_from(monkeypatch, module, name, at: int, poison):
    """Wrap module.name so that from its `at`-th call on its result is poisoned (made non-finite)."""
    real, calls = getattr(module, name), [0]

    def wrapper(*a, **k):
        calls[0] += 1
        result = real(*a, **k)
        return poison(result) if calls[0] >= at else result

    monkeypatch.setattr(module, name, wrapper)


def _nan_task_1(result):
    scores, losses = result
    losses = losses.clone()
    losses[:, 1] = float("nan")
    return scores, losses


def test_source_loss_turning_nan_stops_and_keeps_the_last_checkpoint(tmp_path, tiny_dirs, capsys, monkeypatch):
    args = ["source", "--model", tiny_dirs["llama"], *SRC, "--steps", "6", "--checkpoint-every", "2",
            "--log-every", "1", *SMALL]
    _nan_from(monkeypatch, source_mod, "particle_scores", 5, _nan_task_1)
    rc, _, err = cli(capsys, *args, "--out", tmp_path / "run")
    monkeypatch.undo()
    assert_one_line_error(rc, err, "source", "non-finite at step 5", "task synth-animal", "checkpoint (step 4)")
    assert load_checkpoint(tmp_path / "run", "source").step == 4
    assert not (tmp_path / "run" / "posterior.json").exists()
    # the checkpoint resumes, and the resumed run ends as an uninterrupted one
    rc, _, err = cli(capsys, "source", "--resume", "--out", tmp_path / "run", "--no-progress")
    assert rc == 0, err
    rc, _, err = cli(capsys, *args, "--out", tmp_path / "ref")
    assert rc == 0, err
    for f in ("particles.safetensors",):
        assert (tmp_path / "run" / f).read_bytes() == (tmp_path / "ref" / f).read_bytes()


def test_target_loss_turning_nan_stops_and_keeps_the_last_checkpoint(tmp_path, tiny_dirs, capsys, monkeypatch,
                                                                      good_posterior):
    args = [*target_args(tiny_dirs["llama"], tmp_path / "run", good_posterior), "--steps", "5",
            "--checkpoint-every", "2"]
    _nan_from(monkeypatch, target_mod.PriorTerm, "__call__", 3, lambda r: r * float("nan"))
    rc, _, err = cli(capsys, *args)
    monkeypatch.undo()
    assert_one_line_error(rc, err, "target", "non-finite at step 3", "task synth-product", "checkpoint (step 2)")
    assert load_checkpoint(tmp_path / "run", "target").step == 2
    assert not (tmp_path / "run" / "target.json").exists()
    rc, _, err = cli(capsys, "target", "--resume", "--out", tmp_path / "run", "--no-progress")
    assert rc == 0, err
    assert json.loads((tmp_path / "run" / "target.json").read_text())["metrics"]["best_step"] in range(6)


@pytest.mark.parametrize("command", ["source", "target"])
def test_a_huge_learning_rate_is_caught_before_it_reaches_a_checkpoint(tmp_path, tiny_dirs, capsys, command):
    model = tiny_dirs["llama"]
    args = (["source", "--model", model, "--out", tmp_path / "run", *SRC, *SMALL] if command == "source" else
            ["target", "--model", model, "--out", tmp_path / "run", "--task", "synth-product", "--method", "pt",
             *TGT_SMALL])
    rc, _, err = cli(capsys, *args, "--steps", "10", "--checkpoint-every", "1", "--lr", "1e30", "--optimizer", "sgd")
    line = assert_one_line_error(rc, err, command, "became non-finite at step", "synth-")
    ck = load_checkpoint(tmp_path / "run", command)
    assert f"checkpoint (step {ck.step})" in line
    assert all(torch.isfinite(t).all() for t in ck.tensors.values())


# ----------------------------------------------------------------------------- nothing lost
def test_errors_never_touch_saved_results(tmp_path, tiny_dirs, capsys, good_posterior):
    """A finished run's folder survives every refusal, even with --overwrite when the input is bad."""
    model, run = tiny_dirs["llama"], tmp_path / "run"
    rc, _, err = cli(capsys, *target_args(model, run, good_posterior))
    assert rc == 0, err
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    bad16 = tmp_path / "post16"
    bad16.mkdir()
    save_posterior(bad16, torch.randn(2, 3, 16), {"backbone": "b", "source_tasks": ["synth-animal"],
                                                  "bandwidth": 1.0, "method": "svgd"})
    attempts = [
        target_args(model, run, good_posterior),  # no --overwrite
        [*target_args(model, run, good_posterior), "--resume"],  # complete: nothing to resume
        [*target_args(model, run, bad16), "--overwrite"],  # bad input found only after the model is loaded
        [*target_args(model, run, good_posterior), "--overwrite", "--task", "synth-prodct"],
        [*target_args(model, run, good_posterior), "--overwrite", "--data-dir", tmp_path / "nowhere"],
        ["source", "--model", model, "--out", run, *SRC, "--overwrite", "--tasks", "sst2", "--data-dir",
         _glue_dir(tmp_path, "")],
    ]
    for args in attempts:
        rc, _, err = cli(capsys, *args)
        assert_one_line_error(rc, err, args[0])
        assert snapshot(run) == before, args
