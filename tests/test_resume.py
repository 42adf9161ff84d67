"""Checkpoints and --resume: optimiser/RNG state round trips, atomic writes, run-folder rules, and runs
killed (in-process, and by SIGKILL in a real subprocess) then resumed, against uninterrupted runs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import cli
from safetensors.torch import load_file
from safetensors.torch import save as st_save

import bmtpt.runfiles as runfiles
from bmtpt import source as source_mod
from bmtpt import target as target_mod
from bmtpt.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    read_checkpoint_meta,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bmtpt.config import SourceConfig, TargetConfig
from bmtpt.errors import BmtptError
from bmtpt.runs import make_optimizer
from bmtpt.source import run_source
from bmtpt.target import run_target

TASKS = "synth-sentiment,synth-animal,synth-past"
# One intra-op thread in the subprocesses, as conftest sets for this process: the same reductions in the
# same order, so an in-process reference run and a subprocess agree to the last bit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def records(out: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_records(a: list[dict], b: list[dict]) -> None:
    """Equal logs: the same keys and steps, numbers equal to 1e-6."""
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b):
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, list):  # numbers, or rows of numbers (per-particle per-task losses)
                flat = (lambda x: [y for row in x for y in row] if x and isinstance(x[0], list) else x)  # noqa: E731
                assert flat(va) == pytest.approx(flat(vb), rel=1e-6, abs=1e-9), k
            elif isinstance(va, float):
                assert va == pytest.approx(vb, rel=1e-6, abs=1e-9), k
            else:
                assert va == vb, k


# ----------------------------------------------------------------------------- state round trips
@pytest.mark.parametrize("name", ["adafactor", "adam", "sgd"])
def test_optimizer_state_survives_a_checkpoint_file(tmp_path, name):
    def build():
        g = torch.Generator().manual_seed(0)
        p, q = torch.nn.Parameter(torch.randn(3, 4, 5, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))
        return (p, q), make_optimizer([{"params": [p], "lr": 0.1}, {"params": [q], "lr": 0.01}], name, 1e-3)

    def steps(params, opt, seeds):
        for s in seeds:
            g = torch.Generator().manual_seed(s)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    (a, opt_a) = build()
    steps(a, opt_a, [1, 2, 3])
    save_checkpoint(tmp_path, "source", 3, {}, {"p": a[0], "q": a[1]}, opt_a, {})
    ck = load_checkpoint(tmp_path, "source")
    (b, opt_b) = build()
    with torch.no_grad():
        b[0].copy_(ck.tensors["p"])
        b[1].copy_(ck.tensors["q"])
    ck.restore(opt_b)
    steps(a, opt_a, [4, 5])
    steps(b, opt_b, [4, 5])
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    ta, ma = optimizer_state(opt_a)
    tb, mb = optimizer_state(opt_b)
    assert ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_optimizer_state_refuses_other_parameter_groups():
    p = torch.nn.Parameter(torch.zeros(2))
    tensors, meta = optimizer_state(make_optimizer([{"params": [p], "lr": 0.1}], "adam", 0.0))
    other = make_optimizer([{"params": [p], "lr": 0.1}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1}],
                           "adam", 0.0)
    with pytest.raises(BmtptError, match="parameter groups"):
        load_optimizer_state(other, tensors, meta)


def test_rng_states_round_trip_through_json():
    tensors, meta = rng_state()
    meta = json.loads(json.dumps(meta))
    want = (random.random(), torch.rand(3))
    set_rng_state(tensors, meta)
    got = (random.random(), torch.rand(3))
    assert want[0] == got[0] and torch.equal(want[1], got[1])


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    opt = make_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 0.1}], "sgd", 0.0)
    save_checkpoint(tmp_path, "target", 4, {"steps": 9}, {"param/theta0": torch.ones(2)}, opt, {"x": 1})

    def killed(*a, **k):
        raise KeyboardInterrupt  # as if the process died between writing the temporary file and the rename

    monkeypatch.setattr(runfiles.os, "replace", killed)  # the one atomic writer lives in bmtpt.runfiles
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "target", 8, {"steps": 9}, {"param/theta0": torch.zeros(2)}, opt, {"x": 2})
    monkeypatch.undo()
    ck = load_checkpoint(tmp_path, "target")  # the previous checkpoint, whole
    assert ck.step == 4 and ck.state == {"x": 1} and torch.equal(ck.tensors["param/theta0"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]
    with pytest.raises(BmtptError, match="`bmtpt target` run, not `bmtpt source`"):
        load_checkpoint(tmp_path, "source")
    data = (tmp_path / CHECKPOINT_FILE).read_bytes()
    assert data[8:9] == b"{"  # a safetensors file: header length, then a JSON header; nothing pickled
    (tmp_path / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(BmtptError, match="truncated or corrupted"):
        load_checkpoint(tmp_path, "target")


# ----------------------------------------------------------------------------- run-folder rules
def _source_cfg(out, **kw) -> SourceConfig:
    base = dict(model="tiny-llama", out=str(out), tasks=TASKS, particles=3, steps=7, batch_size=6, prompt_length=3,
                max_train_examples=24, log_every=1, checkpoint_every=3, progress=False, device="cpu")
    return SourceConfig(**{**base, **kw})


def _interrupt_at(monkeypatch, module, name, at: int):
    """Make module.name raise KeyboardInterrupt on its `at`-th call (a kill at that step, in-process)."""
    real, calls = getattr(module, name), [0]

    def wrapper(*a, **k):
        calls[0] += 1
        if calls[0] == at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapper)


def test_folder_rules_for_resume_and_overwrite(tmp_path, tiny_llama, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(BmtptError, match="holds no checkpoint to resume from"):
        run_source(_source_cfg(out, resume=True), *tiny_llama)
    assert not out.exists()
    _interrupt_at(monkeypatch, source_mod, "particle_scores", 5)
    with pytest.raises(KeyboardInterrupt):
        run_source(_source_cfg(out), *tiny_llama)
    monkeypatch.undo()
    assert read_checkpoint_meta(out)["step"] == 3
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for kw, fragment in [({}, "unfinished run (checkpoint at step 3 of 7); pass --resume"),
                         ({"resume": True, "overwrite": True}, "give only one"),
                         ({"resume": True, "lr": 0.1}, "--lr 0.1 (the run's: 0.3)"),
                         ({"resume": True, "steps": 9}, "--steps 9")]:
        with pytest.raises(BmtptError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            run_source(_source_cfg(out, **kw), *tiny_llama)
    with pytest.raises(BmtptError, match="not `bmtpt target`"):
        run_target(TargetConfig(model="x", out=str(out), task="synth-product", method="pt", resume=True,
                                progress=False, device="cpu"), *tiny_llama)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refusals touch nothing
    run_source(_source_cfg(out, resume=True, progress=True), *tiny_llama)  # progress may differ
    with pytest.raises(BmtptError, match="already complete"):
        run_source(_source_cfg(out, resume=True), *tiny_llama)
    with pytest.raises(BmtptError, match="already holds results"):
        run_source(_source_cfg(out), *tiny_llama)
    (out / ".checkpoint.safetensors.x1y2.tmp").write_bytes(b"half a file")  # left by a kill mid-write
    run_source(_source_cfg(out, overwrite=True, steps=2), *tiny_llama)
    assert read_checkpoint_meta(out)["step"] == 2 and [r["step"] for r in records(out)] == [1, 2]
    assert not list(out.glob(".*.tmp"))


def test_resume_via_the_command_line_reads_the_runs_options(tmp_path, tiny_dirs, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["source", "--model", tiny_dirs["llama"], "--out", out, "--tasks", TASKS, "--particles", "2",
            "--steps", "5", "--checkpoint-every", "2", "--prompt-length", "2", "--batch-size", "6",
            "--max-train-examples", "12", "--lr", "0.05", "--log-every", "1", "--device", "cpu", "--no-progress"]
    rc, _, err = cli(capsys, "source", "--resume", "--out", out)
    assert rc == 2 and "holds no checkpoint to resume from" in err and not out.exists()
    _interrupt_at(monkeypatch, source_mod, "particle_scores", 4)
    assert cli(capsys, *args)[0] == 130
    monkeypatch.undo()
    rc, _, err = cli(capsys, "target", "--resume", "--out", out)
    assert rc == 2 and "is a `bmtpt source` run" in err
    rc, _, err = cli(capsys, "source", "--resume", "--out", out, "--lr", "0.3")
    assert rc == 2 and "--lr 0.3 (the run's: 0.05)" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(capsys, "source", "--resume", "--out", f"{out}/", "--no-progress")  # --out spelled differently
    assert rc == 0, err
    assert json.loads((out / "posterior.json").read_text())["hyperparameters"]["lr"] == 0.05
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------- interrupted == uninterrupted
@pytest.mark.parametrize("optimizer, method, particles", [("adafactor", "svgd", 3), ("adam", "independent", 3),
                                                           ("sgd", "svgd", 2)])
def test_source_interrupted_and_resumed_equals_uninterrupted(tmp_path, tiny_llama, monkeypatch, optimizer, method,
                                                             particles):
    kw = dict(optimizer=optimizer, method=method, particles=particles)
    ref = run_source(_source_cfg(tmp_path / "ref", **kw), *tiny_llama)
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, source_mod, "particle_scores", 5)  # checkpoint at 3, step 4 logged, killed in 5
    with pytest.raises(KeyboardInterrupt):
        run_source(_source_cfg(out, **kw), *tiny_llama)
    monkeypatch.undo()
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4]
    res = run_source(_source_cfg(out, resume=True, **kw), *tiny_llama)
    assert torch.equal(res.particles, ref.particles)
    assert records(out) == records(tmp_path / "ref")  # step 4 once, not twice
    assert res.info["bandwidth"] == ref.info["bandwidth"]


def test_mpt_source_interrupted_and_resumed_equals_uninterrupted(tmp_path, tiny_llama, monkeypatch):
    """The MPT baseline's source stage shares the run session, so it resumes as the SVGD stage does."""
    from bmtpt import baselines

    def cfg(out, **kw):
        return baselines.MptConfig(model="tiny-llama", out=str(out), tasks=TASKS, steps=7, batch_size=6,
                                   prompt_length=3, max_train_examples=24, log_every=1, checkpoint_every=3,
                                   lr_factor=0.05, progress=False, device="cpu", **kw)

    ref = baselines.train_mpt_source(cfg(tmp_path / "ref"), *tiny_llama)
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, baselines, "mixed_batch", 5)  # checkpoint at 3, step 4 logged, killed in 5
    with pytest.raises(KeyboardInterrupt):
        baselines.train_mpt_source(cfg(out), *tiny_llama)
    monkeypatch.undo()
    assert read_checkpoint_meta(out)["step"] == 3 and [r["step"] for r in records(out)] == [1, 2, 3, 4]
    with pytest.raises(BmtptError, match="unfinished run"):
        baselines.train_mpt_source(cfg(out), *tiny_llama)
    res = baselines.train_mpt_source(cfg(out, resume=True), *tiny_llama)
    assert torch.equal(res.particles, ref.particles) and not torch.equal(res.particles, load_file(
        str(out / "particles.safetensors"))["initial"])  # training moved the shared prompt
    assert records(out) == records(tmp_path / "ref")
    a, b = (load_file(str(d / baselines.MPT_FACTORS_FILE)) for d in (out, tmp_path / "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _target_cfg(out, posterior, **kw) -> TargetConfig:
    base = dict(model="tiny-llama", out=str(out), task="synth-product", posterior=str(posterior), steps=9,
                eval_every=2, log_every=1, checkpoint_every=3, batch_size=4, max_train_examples=16,
                max_eval_examples=8, rank_one=True, progress=False, device="cpu")
    return TargetConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def posterior(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("post") / "src"
    run_source(SourceConfig(model="tiny-llama", out=str(out), tasks=TASKS, particles=3, steps=2, batch_size=6,
                            prompt_length=3, max_train_examples=12, progress=False, device="cpu"), *tiny_llama)
    return out


@pytest.mark.parametrize("optimizer", ["adafactor", "adam"])
def test_target_interrupted_and_resumed_equals_uninterrupted(tmp_path, tiny_llama, posterior, monkeypatch, optimizer):
    ref = run_target(_target_cfg(tmp_path / "ref", posterior, optimizer=optimizer, lr=0.5), *tiny_llama)
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, target_mod, "batch_of", 8)  # checkpoints at 3 and 6, killed in step 8
    with pytest.raises(KeyboardInterrupt):
        run_target(_target_cfg(out, posterior, optimizer=optimizer, lr=0.5), *tiny_llama)
    monkeypatch.undo()
    assert read_checkpoint_meta(out)["step"] == 6 and records(out)[-1]["step"] == 7
    res = run_target(_target_cfg(out, posterior, optimizer=optimizer, lr=0.5, resume=True), *tiny_llama)
    assert torch.equal(res.prompt, ref.prompt) and res.metrics == ref.metrics
    assert records(out) == records(tmp_path / "ref")
    a, b = load_file(str(out / "prompt.safetensors")), load_file(str(tmp_path / "ref" / "prompt.safetensors"))
    assert a.keys() == b.keys() == {"prompt", "theta0", "u", "v"} and all(torch.equal(a[k], b[k]) for k in a)


def test_target_resume_refuses_a_changed_posterior(tmp_path, tiny_llama, posterior, monkeypatch):
    post = tmp_path / "post"
    post.mkdir()
    for f in ("particles.safetensors", "posterior.json"):
        (post / f).write_bytes((posterior / f).read_bytes())
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, target_mod, "batch_of", 5)
    with pytest.raises(KeyboardInterrupt):
        run_target(_target_cfg(out, post), *tiny_llama)
    monkeypatch.undo()
    t = load_file(str(post / "particles.safetensors"))
    runfiles.atomic_write_bytes(st_save({"particles": t["particles"] + 1}), post / "particles.safetensors")
    with pytest.raises(BmtptError, match="posterior .* changed"):
        run_target(_target_cfg(out, post, resume=True), *tiny_llama)


# ----------------------------------------------------------------------------- SIGKILL in a real subprocess
def _kill_mid_run(proc: subprocess.Popen, out: Path, timeout: float = 600) -> int | None:
    """SIGKILL `proc` once a checkpoint exists and a later step is already in the log (so the resumed run
    must cut the log back); returns the checkpoint's step, or None if the run ended first."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        try:
            step = read_checkpoint_meta(out)["step"]
            last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
            if last > step:
                os.kill(proc.pid, signal.SIGKILL)
                return step
        except (BmtptError, FileNotFoundError, IndexError, json.JSONDecodeError):
            pass  # no checkpoint yet, or a log line half written
        time.sleep(0.003)
    return None


def _killed_then_resumed(tmp_path, capsys, command: str, args: list) -> tuple[Path, Path, int]:
    """Run `command` in a subprocess killed by SIGKILL mid-run (the uninterrupted reference runs in this
    process meanwhile), then resume it; returns (resumed run, reference run, checkpoint step)."""
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    args = [str(a) for a in args]
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bmtpt", command, "--out", str(killed), *args], env=ENV,
                            stdout=log, stderr=log)
    with ThreadPoolExecutor(1) as pool:  # watch the subprocess while this process computes the reference
        watch = pool.submit(_kill_mid_run, proc, killed)
        rc, _, err = cli(capsys, command, "--out", ref, *args)
        assert rc == 0, err
        at = watch.result()
    assert proc.wait() == -signal.SIGKILL and at is not None, "the run ended before it could be killed"
    assert not (killed / ("posterior.json" if command == "source" else "target.json")).exists()
    assert load_checkpoint(killed, command).step == at  # the last checkpoint survived the kill whole
    # resumed in this process (a second interpreter start would only add time): `bmtpt CMD --resume --out RUN`
    rc, _, err = cli(capsys, command, "--resume", "--out", killed, "--no-progress")
    assert rc == 0, err
    return killed, ref, at


def test_source_killed_by_sigkill_then_resumed_matches_an_uninterrupted_run(tmp_path, tiny_dirs, capsys):
    args = ["--model", tiny_dirs["llama"], "--tasks", TASKS, "--particles", "3", "--prompt-length", "3",
            "--batch-size", "6", "--max-train-examples", "24", "--steps", "40", "--log-every", "1",
            "--checkpoint-every", "4", "--device", "cpu", "--no-progress"]
    killed, ref, at = _killed_then_resumed(tmp_path, capsys, "source", args)
    assert 4 <= at < 40
    a = load_file(str(killed / "particles.safetensors"))["particles"]
    b = load_file(str(ref / "particles.safetensors"))["particles"]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    ra, rb = records(killed), records(ref)
    assert [r["step"] for r in ra] == list(range(1, 41))  # no step twice
    assert_same_records(ra, rb)
    pa, pb = (json.loads((d / "posterior.json").read_text()) for d in (killed, ref))
    assert pa["bandwidth"] == pytest.approx(pb["bandwidth"], rel=1e-6)


def test_target_killed_by_sigkill_then_resumed_matches_an_uninterrupted_run(tmp_path, tiny_dirs, posterior, capsys):
    args = ["--model", tiny_dirs["llama"], "--task", "synth-product", "--posterior", posterior,
            "--allow-other-backbone", "--rank-one",
            "--prompt-length", "3", "--batch-size", "4", "--max-train-examples", "16", "--max-eval-examples", "8",
            "--steps", "40", "--eval-every", "3", "--log-every", "1", "--checkpoint-every", "4", "--lr", "0.5",
            "--device", "cpu", "--no-progress"]
    killed, ref, at = _killed_then_resumed(tmp_path, capsys, "target", args)
    assert 4 <= at < 40
    a, b = load_file(str(killed / "prompt.safetensors")), load_file(str(ref / "prompt.safetensors"))
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ra, rb = records(killed), records(ref)
    steps = [r["step"] for r in ra if "nll" in r]
    assert steps == list(range(1, 41))
    assert_same_records(ra, rb)
    ma, mb = (json.loads((d / "target.json").read_text())["metrics"] for d in (killed, ref))
    assert ma == mb
