"""`bmtpt bench speed` on tiny shapes, and the PromptedModel options it measures (checkpointing, full logits)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bmtpt.backbone import backbone_grads, checkpoint_layers
from bmtpt.bench import SpeedConfig
from bmtpt.bench.memory import hwm_supported, peak_bytes
from bmtpt.bench.report import format_table, make_checks
from bmtpt.bench.speed import run_speed
from bmtpt.cli import main
from bmtpt.data import collate
from bmtpt.errors import BmtptError
from bmtpt.prompted import PromptedModel

TINY = {"repeats": 1, "warmup": 0, "batch_size": 2, "seq_len": 5, "target_len": 2, "prompt_length": 3,
        "particles": 2, "memory_particles": "1,2", "memory_batch_sizes": "2"}


def _positive_finite(x) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and x > 0


def _check_result(res: dict, causal: bool) -> None:
    for key in ("machine", "config", "backbone", "workload", "main", "variants", "memory", "checks", "all_pass"):
        assert key in res, key
    cpu = res["machine"]["cpu"]
    assert cpu["model"] and cpu["logical_cores"] >= 1 and isinstance(cpu["bf16_native"], bool)
    assert res["machine"]["torch"] == torch.__version__ and res["machine"]["torch_threads"] >= 1
    m = res["main"]
    for key in ("svgd_step_s", "sequential_steps_s", "backbone_fwd_bwd_s", "backbone_fwd_s", "tokens_per_s",
                "batched_vs_sequential", "fwd_bwd_vs_fwd"):
        assert _positive_finite(m[key]), (key, m[key])
    assert math.isfinite(m["outside_backbone_share"])
    assert m["backbone_grads"] == [] and res["backbone_grads"] == []
    assert set(m["outside_parts_s"]) == {"collate", "rows", "svgd_kernel", "optimizer"}
    ckpt = [v for v in res["variants"] if v["gradient_checkpointing"]]
    assert len(ckpt) == 1 and _positive_finite(ckpt[0]["svgd_step_s"]) and ckpt[0]["peak_mib"] >= 0
    mem = res["memory"]
    assert mem["method"] in ("hwm", "subprocess")
    assert [(g["particles"], g["batch_size"]) for g in mem["grid"]] == [(1, 2), (2, 2)]
    assert all(g["peak_mib"] >= 0 and _positive_finite(g["tokens_per_s"]) for g in mem["grid"])
    assert mem["chunk"]["chunk"] == 1 and mem["chunk"]["ratio"] > 0
    names = {"batched_vs_sequential", "outside_backbone_share", "fwd_bwd_vs_fwd", "no_backbone_grads",
             "chunk_peak_vs_single"} | ({"naive_speedup"} if causal else set())
    assert set(res["checks"]) == names
    assert res["checks"]["no_backbone_grads"]["pass"] is True
    share = res["main"]["outside_backbone_attributed_share"]
    assert 0 < share < 1 and res["checks"]["outside_backbone_share"]["value"] == share
    for ch in res["checks"].values():
        assert {"value", "target", "op", "pass"} <= set(ch)
    if causal:
        assert _positive_finite(res["naive"]["naive_step_s"])
        assert all(_positive_finite(v) for v in res["naive"]["speedup"].values())
    else:
        assert "naive" not in res


def test_run_speed_on_tiny_t5_writes_every_figure(tmp_path):
    out = tmp_path / "speed.json"
    res = run_speed(SpeedConfig(backbone="tiny-t5-shape", out=str(out), **TINY), log=lambda s: None)
    _check_result(res, causal=False)
    assert json.loads(out.read_text())["main"]["rows"] == 4
    assert "batched_vs_sequential" in format_table(res)


def test_bench_speed_command_on_tiny_llama(tmp_path, capsys):
    out = tmp_path / "r" / "speed.json"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    try:
        assert main(["bench", "speed", "--backbone", "tiny-llama-shape", "--out", str(out), "--threads", "2",
                     "--memory-method", "hwm" if hwm_supported() else "subprocess", *args]) == 0
    finally:
        torch.set_num_threads(1)  # conftest's setting for the rest of the session
    printed = capsys.readouterr().out
    assert "naive_speedup" in printed and f"wrote {out}" in printed
    res = json.loads(out.read_text())
    _check_result(res, causal=True)
    assert res["machine"]["torch_threads"] == 2
    assert res["memory"]["method"] == ("hwm" if hwm_supported() else "subprocess")


def test_bench_rejects_bad_options(capsys):
    assert main(["bench", "nosuch"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    with pytest.raises(BmtptError, match="--memory-particles"):
        SpeedConfig(memory_particles="1,x").validate()
    with pytest.raises(BmtptError, match="--precision"):
        SpeedConfig(precision="fp8").validate()


def test_checks_compare_against_the_targets():
    res = {"main": {"batched_vs_sequential": 0.9, "outside_backbone_share": 0.05, "fwd_bwd_vs_fwd": 2.0,
                    "backbone_grads": []}, "backbone_grads": [],
           "memory": {"chunk": {"ratio": 1.05}}, "naive": {"speedup": {"fp32": 1.3}}}
    cpu = make_checks(res, "cpu", bf16=False)
    assert cpu["batched_vs_sequential"]["pass"] is True and cpu["outside_backbone_share"]["pass"] is False
    assert cpu["fwd_bwd_vs_fwd"]["pass"] is True and cpu["chunk_peak_vs_single"]["pass"] is True
    assert cpu["naive_speedup"]["pass"] is None  # no native bf16: the 2.5x target does not apply
    gpu = make_checks({**res, "naive": {"speedup": {"bf16": 3.0, "fp32": 1.3}}}, "cuda", bf16=True)
    assert gpu["batched_vs_sequential"]["pass"] is False  # 0.6 on a GPU
    assert gpu["naive_speedup"]["pass"] is True and gpu["naive_speedup"]["value"] == 3.0


@pytest.mark.skipif(not hwm_supported(), reason="needs /proc/self/clear_refs (Linux)")
def test_cpu_peak_memory_sees_a_temporary_allocation():
    def alloc():
        x = torch.ones(16 * 2**20)  # 64 MiB, freed on return
        return float(x[0])

    peak, secs = peak_bytes(alloc, "cpu")
    assert 60 * 2**20 < peak < 200 * 2**20 and secs > 0


# ----------------------------------------------------------------------------- PromptedModel options
def _tiny_batch(arch):
    ins = [[5, 6, 7, 8, 9, 10, 11], [7, 8, 9]]
    tgt = [[5, 6, 1], [8, 1]]
    return collate(ins, tgt, 0, arch == "t5")


def _prompt_grads(pm, prompts, batch, prompt_index=None):
    leaf = prompts.clone().requires_grad_(True)
    nll, ntok = pm.example_nll(leaf, batch, prompt_index)
    (nll.sum() / ntok.sum()).backward()
    return nll.detach(), leaf.grad


def test_gradient_checkpointing_gives_the_same_prompt_gradients(tiny):
    arch, model, tok = tiny
    batch = _tiny_batch(arch)
    prompts = 0.5 * torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    layers = checkpoint_layers(model)
    assert len(layers) == (4 if arch == "t5" else 2)  # T5: 2 encoder + 2 decoder blocks
    first_linear = next(m for m in layers[0].modules() if isinstance(m, torch.nn.Linear))
    calls = []
    hook = first_linear.register_forward_hook(lambda *a: calls.append(1))
    try:
        nll0, g0 = _prompt_grads(PromptedModel(model, tok), prompts, batch)
        plain = len(calls)
        nll1, g1 = _prompt_grads(PromptedModel(model, tok, gradient_checkpointing=True), prompts, batch)
    finally:
        hook.remove()
    assert len(calls) - plain == 2 * plain  # the checkpointed layer ran again in the backward pass
    torch.testing.assert_close(nll1, nll0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-5)
    assert g1.abs().sum() > 0
    assert backbone_grads(model) == []
    assert all("forward" not in layer.__dict__ for layer in layers)  # the wrappers are gone after the call
    assert not model.training and not any(m.training for m in model.modules())


def test_batched_prompt_gradients_equal_one_particle_at_a_time(tiny):
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    batch = _tiny_batch(arch)
    prompts = 0.5 * torch.randn(3, 3, 32, generator=torch.Generator().manual_seed(1))
    leaf = prompts.clone().requires_grad_(True)
    nll, _ = pm.example_nll(leaf, batch)
    nll.sum().backward()
    for m in range(3):
        one = prompts[m:m + 1].clone().requires_grad_(True)
        n1, _ = pm.example_nll(one, batch)
        n1.sum().backward()
        torch.testing.assert_close(leaf.grad[m], one.grad[0], atol=1e-5, rtol=1e-5)
    index = torch.tensor([2, 0])  # the prompt_index path (gathered prompts) still gets its gradients
    _, gi = _prompt_grads(pm, prompts, batch, index)
    assert gi[1].abs().sum() == 0 and gi[0].abs().sum() > 0 and gi[2].abs().sum() > 0


def test_full_logits_gives_the_same_nll(tiny_llama):
    model, tok = tiny_llama
    batch = _tiny_batch("llama")
    prompts = 0.5 * torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(2))
    a, _ = PromptedModel(model, tok).token_nll(prompts, batch)
    b, _ = PromptedModel(model, tok, full_logits=True).token_nll(prompts, batch)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_attributed_step_splits_the_step_and_restores_the_model(tiny):
    """The in-step split: backbone time is positive and below the step's; the patches are undone after."""
    import torch

    from bmtpt.bench.steps import attributed_step, make_workload
    from bmtpt.prompted import PromptedModel

    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    work = make_workload(model, 2, 6, 2, 3, 2, 2, 0)
    run = attributed_step(pm, work, "adam")
    backward = torch.Tensor.backward
    for _ in range(2):
        run()
        total, backbone = run.last
        assert 0 < backbone < total
    assert "backbone_logits" not in vars(pm) and torch.Tensor.backward is backward
