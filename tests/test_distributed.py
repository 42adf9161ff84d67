"""Distributed runs (torch.distributed, gloo on CPU): the shares of a step sum to the whole step, and runs
launched by torchrun with 2 processes end with the particles / prompt of one process with the same global
batch and seed (to 1e-5), with rank 0 alone writing the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bmtpt.config import SourceConfig
from bmtpt.data import EpochSampler
from bmtpt.distributed import Dist
from bmtpt.prompted import PromptedModel
from bmtpt.source import mixed_batch, particle_scores, run_source
from bmtpt.tasks import get_task

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TASKS = "synth-sentiment,synth-animal,synth-past"
SOURCE = ["--tasks", TASKS, "--particles", "3", "--steps", "3", "--batch-size", "6", "--prompt-length", "3",
          "--max-train-examples", "12", "--final-eval-examples", "5", "--log-every", "1", "--prior-std", "2",
          "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_blocks_are_tensor_splits_sizes_in_rank_order(world):
    for n in range(0, 11):
        blocks = [list(Dist(rank, world).block(n)) for rank in range(world)]
        assert [len(b) for b in blocks] == [len(t) for t in torch.arange(n).tensor_split(world)]
        assert [i for b in blocks for i in b] == list(range(n))


@pytest.mark.parametrize("independent", [False, True])
def test_the_shares_of_a_step_sum_to_the_whole_step(tiny_llama, independent):
    """Data shares (blocks of rows, the prior on the first) and particle shares (blocks of particles) of
    particle_scores add up to one call on everything."""
    model, tok = tiny_llama
    pm = PromptedModel(model, tok)
    tasks = [get_task(n) for n in TASKS.split(",")]
    from bmtpt.runs import load_split

    cfg = SourceConfig(out="unused", tasks=TASKS, max_train_examples=8)
    enc = [pm.encode(t, load_split(t, "train", cfg, 8)) for t in tasks]
    batch = mixed_batch(enc, [EpochSampler(8, k) for k in range(3)], [2, 2, 2], pm.pad_id, pm.is_seq2seq)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    particles = torch.randn(3, 3, 32, generator=torch.Generator().manual_seed(0)) * 0.1
    args = (pm, particles, batch, groups, 3, torch.ones(3), 2.0, independent)
    full_s, full_l = particle_scores(*args)
    for world in (2, 3):
        data = [particle_scores(*args, rows=torch.tensor(list(Dist(r, world).block(6))), with_prior=r == 0)
                for r in range(world)]
        parts = [particle_scores(*args, owned=Dist(r, world).block(3)) for r in range(world)]
        for shares in (data, parts):
            torch.testing.assert_close(sum(s for s, _ in shares), full_s, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(sum(l_ for _, l_ in shares), full_l, atol=1e-6, rtol=1e-5)


def _torchrun(*args, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _logs(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def _same_logs(a: list[dict], b: list[dict]) -> None:
    assert [sorted(r) for r in a] == [sorted(r) for r in b]  # rank 0 alone logged: no line twice
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            if isinstance(v, list) and v and isinstance(v[0], list):  # rows: per-particle per-task losses
                v, rb = [x for row in v for x in row], {**rb, k: [x for row in rb[k] for x in row]}
            assert v == pytest.approx(rb[k], rel=1e-4, abs=1e-6), k


@pytest.fixture(scope="module")
def one_process(tiny_dirs, tmp_path_factory):
    """The reference: one process, the same options."""
    root = tmp_path_factory.mktemp("dist")
    model = tiny_dirs["llama"]
    subprocess.run([sys.executable, "-m", "bmtpt", "source", "--model", model, *SOURCE, "--out", root / "one"],
                   env=ENV, check=True, capture_output=True)
    return root, model


@pytest.mark.parametrize("parallel", ["data", "particle"])
def test_a_source_run_on_two_processes_equals_one_process(one_process, parallel):
    root, model = one_process
    res = _torchrun("-m", "bmtpt", "source", "--model", model, *SOURCE, "--out", root / parallel,
                    "--parallel", parallel, cwd=root)
    assert res.stdout.count("wrote") == 1  # rank 0 alone prints the result
    one, two = (load_file(str(root / d / "particles.safetensors")) for d in ("one", parallel))
    torch.testing.assert_close(two["particles"], one["particles"], atol=1e-5, rtol=1e-5)
    assert not torch.equal(one["particles"], one["initial"])  # training moved the particles
    meta = [json.loads((root / d / "posterior.json").read_text()) for d in ("one", parallel)]
    assert meta[0]["final_dev"] == meta[1]["final_dev"]  # the sharded evaluation gathered every example
    assert meta[0]["bandwidth"] == pytest.approx(meta[1]["bandwidth"], rel=1e-5)
    _same_logs(_logs(root / parallel), _logs(root / "one"))


def test_a_target_run_on_two_processes_equals_one_process(one_process):
    root, model = one_process
    args = ["--model", model, "--task", "synth-product", "--posterior", root / "one", "--steps", "4", "--eval-every",
            "2", "--batch-size", "6", "--max-train-examples", "12", "--max-eval-examples", "9",
            "--train-eval-examples", "5", "--rank-one", "--lr-factor", "0.05", "--device", "cpu", "--no-progress"]
    subprocess.run([sys.executable, "-m", "bmtpt", "target", *args, "--out", root / "t1"], env=ENV, check=True,
                   capture_output=True)
    _torchrun("-m", "bmtpt", "target", *args, "--out", root / "t2", cwd=root)
    one, two = (load_file(str(root / d / "prompt.safetensors")) for d in ("t1", "t2"))
    assert one.keys() == two.keys() == {"prompt", "theta0", "u", "v"}
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-5)
    metrics = [json.loads((root / d / "target.json").read_text())["metrics"] for d in ("t1", "t2")]
    assert metrics[0] == metrics[1]
    _same_logs(_logs(root / "t2"), _logs(root / "t1"))


def test_an_interrupted_run_resumes_on_two_processes(one_process, tiny_llama, monkeypatch):
    """All ranks read the checkpoint one process wrote; the run ends as the uninterrupted one."""
    import bmtpt.source as source_mod

    root, model = one_process
    cfg = SourceConfig(model=str(model), out=str(root / "resumed"), tasks=TASKS, particles=3, steps=3, batch_size=6,
                       prompt_length=3, max_train_examples=12, final_eval_examples=5, log_every=1, prior_std=2.0,
                       checkpoint_every=2, device="cpu", progress=False)
    real, calls = source_mod.particle_scores, []

    def killed_in_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(source_mod, "particle_scores", killed_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_source(cfg, *tiny_llama)
    _torchrun("-m", "bmtpt", "source", "--resume", "--out", root / "resumed", "--no-progress", cwd=root)
    a, b = (load_file(str(root / d / "particles.safetensors"))["particles"] for d in ("one", "resumed"))
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_mpt_source_stage_on_two_processes_equals_one_process(one_process, tmp_path):
    root, model = one_process
    script = tmp_path / "mpt.py"
    script.write_text(
        "import sys\nfrom bmtpt.baselines import MptConfig, train_mpt_source\n"
        f"train_mpt_source(MptConfig(model={str(model)!r}, out=sys.argv[1], tasks={TASKS!r}, steps=3, batch_size=6,"
        " prompt_length=3, max_train_examples=12, lr_factor=0.05, device='cpu', progress=False))\n")
    subprocess.run([sys.executable, script, tmp_path / "m1"], env=ENV, check=True, capture_output=True)
    _torchrun(script, tmp_path / "m2", cwd=tmp_path)
    for name in ("particles.safetensors", "mpt_factors.safetensors"):
        one, two = (load_file(str(tmp_path / d / name)) for d in ("m1", "m2"))
        for k in one:
            torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-5)


def test_commands_that_do_not_distribute_refuse_torchrun(monkeypatch, capsys, tmp_path):
    from bmtpt.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "only source and target runs are distributed" in err
