"""ATTEMPT (`--method attempt`): the input-dependent prompt by hand, batched evaluation equals one example at a
time, a run trains and reports its parameters, and what cannot read it refuses it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bmtpt.attempt import AttemptPrompt
from bmtpt.config import SourceConfig, TargetConfig
from bmtpt.errors import BmtptError
from bmtpt.evaluate import run_eval
from bmtpt.interop import run_export
from bmtpt.prompted import PromptedModel
from bmtpt.runs import load_split
from bmtpt.source import run_source
from bmtpt.tasks import get_task
from bmtpt.toolconfig import EvalConfig, ExportConfig
from bmtpt.train import train_target


def test_with_the_attention_on_one_source_the_prompt_is_that_source_plus_the_target():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(1, 3, 8, generator=g)
    module = AttemptPrompt(source, rank=4)
    with torch.no_grad():
        module.target.copy_(torch.randn(3, 8, generator=g))
    module.attention = lambda emb, mask: torch.tensor([[1.0, 0.0]] * emb.shape[0])  # forced to the source
    out = module.instance_prompts(torch.randn(2, 5, 8, generator=g), torch.ones(2, 5))
    torch.testing.assert_close(out, (source[0] + module.target.detach())[None].expand(2, 3, 8))


def test_attention_by_hand():
    g = torch.Generator().manual_seed(1)
    sources = torch.randn(2, 3, 6, generator=g)
    module = AttemptPrompt(sources, rank=4, temperature=2.5)
    emb, mask = torch.randn(2, 4, 6, generator=g), torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])  # padding left/right
    got = module.attention(emb, mask).detach().numpy()
    w_d, b_d = module.down.weight.detach().numpy(), module.down.bias.detach().numpy()
    w_u, b_u = module.up.weight.detach().numpy(), module.up.bias.detach().numpy()
    keys = np.concatenate([sources.numpy(), np.zeros((1, 3, 6))]).max(1)  # the target prompt starts at zero
    for e in range(2):
        x = emb[e].numpy()[mask[e].numpy() == 1].max(0)  # max-pool over the real tokens only
        z = w_d @ x + b_d
        h = w_u @ (z / (1 + np.exp(-z))) + b_u
        h = (h - h.mean()) / np.sqrt(h.var() + 1e-5)  # LayerNorm with its initial weight 1, bias 0
        logits = keys @ h / 2.5
        want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(got[e], want, rtol=1e-5, atol=1e-6)


def test_batched_rank_classification_equals_one_example_at_a_time(tiny_llama):
    model, tok = tiny_llama
    pm = PromptedModel(model, tok)
    task = get_task("synth-product")
    examples = load_split(task, "dev", SourceConfig(out="x", tasks="synth-product"), 5)  # different lengths
    g = torch.Generator().manual_seed(2)
    module = AttemptPrompt(torch.randn(2, 3, 32, generator=g) * 0.5, rank=4)
    with torch.no_grad():
        _, together = pm.label_probabilities(module, task, examples)
        for i, ex in enumerate(examples):
            ids = torch.tensor([tok(ex.input).input_ids])
            own = module.instance_prompts(model.get_input_embeddings()(ids), torch.ones_like(ids))[0]
            _, alone = pm.label_probabilities(own, task, [ex])
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-4)


def test_an_attempt_run_trains_reports_its_parameters_and_is_not_exported(tiny_llama, tmp_path):
    src = tmp_path / "src"
    run_source(SourceConfig(model="tiny-llama", out=str(src), tasks="synth-sentiment,synth-animal", particles=2,
                            method="independent", steps=2, batch_size=4, prompt_length=3, max_train_examples=8,
                            final_eval_examples=0, progress=False, device="cpu"), *tiny_llama)
    cfg = TargetConfig(model="tiny-llama", out=str(tmp_path / "t"), task="synth-product", method="attempt",
                       posterior=str(src), steps=3, eval_every=3, batch_size=4, max_train_examples=8,
                       max_eval_examples=8, train_eval_examples=0, lr=0.1, attention_lr=0.05, attention_rank=4,
                       optimizer="adam", progress=False, device="cpu")
    res = train_target(cfg, *tiny_llama)
    meta = json.loads((tmp_path / "t" / "target.json").read_text())
    assert meta["trainable_parameters"] == 3 * 32 + (32 * 4 + 4) + (4 * 32 + 32) + 2 * 32
    assert meta["method"] == "attempt" and "test_calibration" in res.metrics
    from bmtpt.checkpoint import load_checkpoint

    last = load_checkpoint(tmp_path / "t", "target").tensors  # after the last step (the best may be step 0)
    assert last["param/target"].abs().sum() > 0 and res.prompt.shape == (3, 32)  # training moved it from zero
    preds = json.loads((tmp_path / "t" / "predictions-test.json").read_text())
    assert 100 * sum(preds["correct"]) / len(preds["correct"]) == pytest.approx(res.metrics["test"]["accuracy"])
    assert 100 * sum(preds["dev_correct"]) / len(preds["dev_correct"]) == pytest.approx(res.metrics["dev"]["accuracy"])
    with pytest.raises(BmtptError, match="not a single prompt or a PEFT prompt-tuning adapter"):
        run_export(ExportConfig(run_dir=str(tmp_path / "t"), out_dir=str(tmp_path / "peft")))
    with pytest.raises(BmtptError, match="ATTEMPT run"):
        run_eval(EvalConfig(run_dir=str(tmp_path / "t"), progress=False, device="cpu"), *tiny_llama)


@pytest.mark.parametrize("change, message", [
    ({"method": "bmtpt", "attention_lr": 0.5}, "--method attempt's attention"),
    ({"init": "vocab"}, "--method attempt trains its own"),
    ({"attention_rank": 0}, "must be positive"),
])
def test_options_that_do_not_fit_attempt_are_refused(change, message):
    cfg = {"out": "x", "task": "synth-product", "method": "attempt", "posterior": "p", **change}
    with pytest.raises(BmtptError, match=message):
        TargetConfig(**cfg).validate()
