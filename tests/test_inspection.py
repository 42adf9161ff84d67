"""Task interference: the matrix by brute force, the per-task scores sum to the step's score, and
`bmtpt inspect` on a tiny source run (report, picture, --target alignment against separate gradients)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bmtpt.config import SourceConfig
from bmtpt.errors import BmtptError
from bmtpt.inspection import cosine, favoured, run_inspect
from bmtpt.prompted import PromptedModel
from bmtpt.runs import load_split
from bmtpt.source import run_source
from bmtpt.svgd import task_interference
from bmtpt.tasks import get_task
from bmtpt.toolconfig import InspectConfig

TASKS = "synth-sentiment,synth-animal,synth-past"


def test_interference_matrix_by_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 4, 2, 5, generator=g, dtype=torch.float64)
    scores[1, 2] = 0.0  # a zero score counts as orthogonal
    want = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            for m in range(4):
                a, b = scores[i, m].numpy().ravel(), scores[j, m].numpy().ravel()
                na, nb = np.linalg.norm(a), np.linalg.norm(b)
                want[i, j] += (a @ b / (na * nb) if na and nb else 0.0) / 4
    np.testing.assert_allclose(task_interference(scores).numpy(), want, atol=1e-12)


def test_favoured_tasks_are_those_below_the_particles_mean():
    assert favoured([[1.0, 3.0], [2.0, 1.0]], ["a", "b"]) == [["a"], ["b"]]
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(torch.zeros(2), torch.ones(2)) == 0.0


def test_the_tasks_parts_of_the_scores_sum_to_the_score(tiny_llama):
    from bmtpt.data import EpochSampler
    from bmtpt.source import mixed_batch, particle_scores

    model, tok = tiny_llama
    pm = PromptedModel(model, tok)
    cfg = SourceConfig(out="unused", tasks=TASKS)
    tasks = [get_task(n) for n in TASKS.split(",")]
    enc = [pm.encode(t, load_split(t, "train", cfg, 8)) for t in tasks]
    batch = mixed_batch(enc, [EpochSampler(8, k) for k in range(3)], [2, 2, 2], pm.pad_id, pm.is_seq2seq)
    particles = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(1)) * 0.1
    parts = torch.zeros(3, 2, 3, 32)
    weights = torch.tensor([1.0, 0.5, 2.0])
    scores, _ = particle_scores(pm, particles, batch, torch.tensor([0, 0, 1, 1, 2, 2]), 3, weights, None,
                                task_scores=parts, micro_batches=2)
    torch.testing.assert_close(parts.sum(0), scores, atol=1e-6, rtol=1e-5)
    alone, _ = particle_scores(pm, particles, batch, torch.tensor([0, 0, 1, 1, 2, 2]), 3,
                               torch.tensor([0.0, 0.5, 0.0]), None)  # task 1's pull alone
    torch.testing.assert_close(parts[1], alone, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("inspect") / "src"
    run_source(SourceConfig(model="tiny-llama", out=str(out), tasks=TASKS, particles=3, steps=4, batch_size=6,
                            prompt_length=3, max_train_examples=12, interference_every=2, log_every=2,
                            final_eval_examples=0, progress=False, device="cpu"), *tiny_llama)
    return out


def test_inspect_reports_and_draws_a_source_run(source_run, capsys):
    logged = [json.loads(x) for x in (source_run / "metrics.jsonl").read_text().splitlines()]
    mats = [r["interference"] for r in logged if "interference" in r]
    assert [r["step"] for r in logged if "interference" in r] == [2, 4] and len(mats[0]) == 3
    report = run_inspect(InspectConfig(run_dir=str(source_run)))
    printed = capsys.readouterr().out
    np.testing.assert_allclose(report["interference"], np.mean(mats, axis=0), atol=1e-12)
    assert report["interference"][0][0] == pytest.approx(1.0, abs=1e-5)  # a task with itself
    last = [r["particle_task_loss"] for r in logged if "particle_task_loss" in r][-1]
    assert report["particle_task_loss"] == last and len(last) == 3 and len(last[0]) == 3
    assert "## Task interference" in printed and "| synth-animal |" in printed and "favours" in printed
    assert (source_run / "inspect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_target_alignment_equals_separately_computed_gradients(source_run, tiny_llama, capsys):
    from bmtpt.data import batch_of
    from bmtpt.runfiles import load_posterior

    report = run_inspect(InspectConfig(run_dir=str(source_run), target="synth-product", examples=8, plots=False),
                         *tiny_llama)
    particles, _ = load_posterior(source_run)
    model, tok = tiny_llama
    pm = PromptedModel(model, tok)

    def grad(name):  # d mean-token NLL / d prompt, one task at a time
        task = get_task(name)
        enc = pm.encode(task, load_split(task, "train", SourceConfig(out="x", tasks=name), 8))
        p = particles.mean(0).clone().requires_grad_(True)
        nll, _ = pm.example_nll(p[None], batch_of(enc, list(range(len(enc))), pm.pad_id, pm.is_seq2seq))
        (nll.sum() / sum(len(t) for t in enc.targets)).backward()
        return p.grad.reshape(-1).double()

    target = grad("synth-product")
    for name in TASKS.split(","):
        g = grad(name)
        assert report["alignment"][name] == pytest.approx(float(target @ g / (target.norm() * g.norm())), abs=1e-5)
    assert "should help synth-product" in capsys.readouterr().out


def test_inspect_refusals(source_run, tmp_path):
    with pytest.raises(BmtptError, match="only act with --target"):
        run_inspect(InspectConfig(run_dir=str(source_run), device="cpu", examples=5))
    with pytest.raises(BmtptError, match="does not exist"):
        run_inspect(InspectConfig(run_dir=str(tmp_path / "nothing")))


def test_a_run_without_interference_records_still_reports_its_losses(tiny_llama, tmp_path, capsys):
    out = tmp_path / "indep"
    run_source(SourceConfig(model="tiny-llama", out=str(out), tasks=TASKS, particles=3, steps=2, batch_size=6,
                            prompt_length=3, max_train_examples=12, method="independent", final_eval_examples=0,
                            progress=False, device="cpu"), *tiny_llama)
    report = run_inspect(InspectConfig(run_dir=str(out), plots=False))
    assert report["interference"] is None and len(report["particle_task_loss"]) == 3
    assert "No task-interference records" in capsys.readouterr().out
