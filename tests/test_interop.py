"""PEFT interop: bmtpt prompts exported as PEFT prompt-tuning adapters give bmtpt's logits, predictions and
generations under the real `peft` package; PEFT adapters import back as initial prompts; bad input is refused."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, cli
from safetensors.torch import load_file, save_file

from bmtpt.backbone import load_backbone
from bmtpt.cli import main
from bmtpt.config import TargetConfig
from bmtpt.data import Batch, collate, encode_examples, encode_text
from bmtpt.errors import BmtptError
from bmtpt.interop import export_peft, write_peft_adapter
from bmtpt.prompted import PromptedModel
from bmtpt.prompts import init_prompts
from bmtpt.runfiles import effective_prompt, import_peft, read_peft_adapter, save_posterior
from bmtpt.target import run_target
from bmtpt.tasks import Example, get_task
from bmtpt.tiny import build_tiny

# PEFT's loader warns about a transformers deprecation; PEFT's causal generate about position ids it drops.
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:Position ids are not supported:UserWarning")]

L, D = 4, 32
EXAMPLES = [Example("the movie was good", "positive"), Example("a bad film , terrible and long", "negative"),
            Example("yes", "no")]


@pytest.fixture(scope="module")
def backbones(tiny_dirs):
    """{arch: (model, tokenizer, folder)}: fresh copies loaded from disk, so PEFT's wrapping cannot touch the
    session-wide tiny models other tests share."""
    return {arch: (*load_backbone(str(tiny_dirs[arch])), str(tiny_dirs[arch])) for arch in ("t5", "llama")}


def _prompt(seed=0, length=L, width=D):
    return torch.randn(length, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def write_target_run(folder, prompt, backbone, **extra):
    """A target run folder as run_target writes it: prompt.safetensors + target.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"prompt": prompt.contiguous(), **extra}, str(folder / "prompt.safetensors"))
    (folder / "target.json").write_text(json.dumps({"format": 1, "backbone": backbone, "task": "synth-product",
                                                    "prompt_length": prompt.shape[0], "embed_dim": prompt.shape[1]}))
    return folder


def bmtpt_logits(pm: PromptedModel, prompt, batch: Batch):
    """Full logits of bmtpt's forward pass (the one PromptedModel.token_nll runs, all positions kept)."""
    x, mask, tgt, tmask = pm._rows(prompt[None], batch, None)
    if pm.is_seq2seq:
        dec = pm.model.prepare_decoder_input_ids_from_labels(labels=tgt.masked_fill(tmask == 0, -100))
        return pm.model(inputs_embeds=x, attention_mask=mask, decoder_input_ids=dec).logits, dec
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return pm.model(inputs_embeds=x, attention_mask=mask, position_ids=pos).logits, None


def load_peft(model, folder):
    peft = pytest.importorskip("peft")
    pmodel = peft.PeftModel.from_pretrained(model, str(folder))
    pmodel.eval()
    return pmodel


@pytest.mark.parametrize("arch", ["t5", "llama"])
@torch.no_grad()
def test_exported_adapter_gives_bmtpt_logits_and_predictions(tmp_path, backbones, arch):
    model, tok, path = backbones[arch]
    prompt = _prompt()
    run = write_target_run(tmp_path / "run", prompt, path)
    out = export_peft(run, tmp_path / "adapter")  # task type 'auto': read from the backbone folder's config
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["base_model_name_or_path"] == path
    assert cfg["task_type"] == {"t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM"}[arch]
    assert (cfg["num_virtual_tokens"], cfg["token_dim"], cfg["num_transformer_submodules"]) == (L, D, 1)
    assert set(load_file(str(out / "adapter_model.safetensors"))) == {"prompt_embeddings"}

    pmodel = load_peft(model, out)
    assert pmodel.peft_config["default"].num_transformer_submodules == 1  # encoder-only prompt for T5
    pm = PromptedModel(model, tok)
    enc = encode_examples(tok, EXAMPLES, pm.is_seq2seq)
    # single unpadded examples, and for T5 a padded batch (padding is harmless for seq2seq in both libraries)
    for idx in ([0], [1], [0, 1, 2] if arch == "t5" else [2]):
        batch = collate([enc.inputs[i] for i in idx], [enc.targets[i] for i in idx], pm.pad_id, pm.is_seq2seq)
        ref, dec = bmtpt_logits(pm, prompt, batch)
        kw = {"decoder_input_ids": dec} if pm.is_seq2seq else {}
        got = pmodel(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kw).logits
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        assert torch.equal(got.argmax(-1), ref.argmax(-1))
        # the training loss bmtpt optimises, recomputed from PEFT's logits
        nll, tmask = pm.token_nll(prompt[None], batch)
        t = batch.target_ids.shape[1]
        peft_logits = got if pm.is_seq2seq else got[:, -(t + 1):-1]
        peft_nll = F.cross_entropy(peft_logits.transpose(1, 2), batch.target_ids, reduction="none") * tmask
        torch.testing.assert_close(peft_nll, nll, atol=1e-5, rtol=0)

    # rank classification: bmtpt's batched scores vs PEFT's, one unpadded (example, label) pair at a time
    verbalizers = ["positive", "negative"]
    preds, ll = pm.rank_classify(prompt, EXAMPLES, verbalizers)
    for i, ex in enumerate(EXAMPLES):
        for j, label in enumerate(verbalizers):
            one = encode_examples(tok, [Example(ex.input, label)], pm.is_seq2seq, eos=False)  # label tokens only
            batch = collate(one.inputs, one.targets, pm.pad_id, pm.is_seq2seq)
            _, dec = bmtpt_logits(pm, prompt, batch)
            kw = {"decoder_input_ids": dec} if pm.is_seq2seq else {}
            logits = pmodel(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kw).logits
            t = batch.target_ids.shape[1]
            logits = logits if pm.is_seq2seq else logits[:, -(t + 1):-1]
            peft_ll = -F.cross_entropy(logits[0], batch.target_ids[0], reduction="sum")
            assert peft_ll.item() == pytest.approx(ll[i, j].item(), abs=1e-4)
    assert preds == [verbalizers[j] for j in ll.argmax(-1).tolist()]

    # AutoPeftModel* loads the backbone itself, from base_model_name_or_path (the run's backbone)
    auto_cls = {"t5": "AutoPeftModelForSeq2SeqLM", "llama": "AutoPeftModelForCausalLM"}[arch]
    auto = getattr(pytest.importorskip("peft"), auto_cls).from_pretrained(str(out))
    auto.eval()
    batch = collate(enc.inputs[:1], enc.targets[:1], pm.pad_id, pm.is_seq2seq)
    ref, dec = bmtpt_logits(pm, prompt, batch)
    kw = {"decoder_input_ids": dec} if pm.is_seq2seq else {}
    got = auto(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kw).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_causal_padding_difference_is_as_documented(tmp_path, backbones):
    """bmtpt left-pads and takes positions from the mask; PEFT drops position ids. Right-padded PEFT rows match
    bmtpt's at every real token; left-padded PEFT rows (prompt | pads | text) are shifted and do not."""
    model, tok, path = backbones["llama"]
    prompt = _prompt(1)
    out = write_peft_adapter(prompt, tmp_path / "a", "CAUSAL_LM", path)
    pmodel = load_peft(model, out)
    pm = PromptedModel(model, tok)
    enc = encode_examples(tok, EXAMPLES, False)
    left = collate(enc.inputs, enc.targets, pm.pad_id, False)
    ref, _ = bmtpt_logits(pm, prompt, left)
    seqs = [x + y for x, y in zip(enc.inputs, enc.targets)]
    n = max(map(len, seqs))
    right_ids = torch.tensor([s + [pm.pad_id] * (n - len(s)) for s in seqs])
    right_mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
    got = pmodel(input_ids=right_ids, attention_mask=right_mask).logits
    for i, s in enumerate(seqs):  # row i: prompt, then the real tokens (right-aligned in bmtpt's row)
        torch.testing.assert_close(got[i, : L + len(s)], torch.cat([ref[i, :L], ref[i, L + n - len(s):]]),
                                   atol=1e-5, rtol=0)
    shifted = pmodel(input_ids=left.input_ids, attention_mask=left.attention_mask).logits
    padded_row = int((left.attention_mask == 0).any(-1).nonzero()[0])
    assert not torch.allclose(shifted[padded_row, -1], ref[padded_row, -1], atol=1e-5)


@torch.no_grad()
def test_generation_agrees(tmp_path, backbones):
    peft = pytest.importorskip("peft")
    # T5 seed 1: a random T5 whose greedy outputs are not empty (seed 0 emits </s> first), on a padded batch
    t5, t5_tok = build_tiny("t5", seed=1)
    examples = get_task("synth-product").loader("dev", None, 0)[:4]
    prompt = _prompt(2)
    pm = PromptedModel(t5, t5_tok)
    pmodel = peft.PeftModel.from_pretrained(t5, str(write_peft_adapter(prompt, tmp_path / "t5", "SEQ_2_SEQ_LM", None)))
    ids = [encode_text(t5_tok, e.input) for e in examples]
    batch = collate(ids, [[0]] * len(ids), pm.pad_id, True)
    gen = pmodel.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=6,
                          do_sample=False, num_beams=1, pad_token_id=pm.pad_id)
    want = pm.generate(prompt, examples, max_new_tokens=6)
    assert [t.strip() for t in t5_tok.batch_decode(gen, skip_special_tokens=True)] == want
    assert all(want)
    # causal: one unpadded example (PEFT's output repeats the input ids first)
    model, tok, path = backbones["llama"]
    pm = PromptedModel(model, tok)
    pmodel = load_peft(model, write_peft_adapter(prompt, tmp_path / "llama", "CAUSAL_LM", path))
    for ex in examples[:2]:
        x = torch.tensor([encode_text(tok, ex.input)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gen = pmodel.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False,
                                  num_beams=1, pad_token_id=pm.pad_id)
        got = tok.batch_decode(gen[:, x.shape[1]:], skip_special_tokens=True)[0].strip()
        assert got == pm.generate(prompt, [ex], max_new_tokens=5)[0] and got


@torch.no_grad()
def test_rank_one_factor_is_folded_into_the_adapter(tmp_path, backbones):
    model, tok, path = backbones["t5"]
    theta0 = _prompt(3)
    g = torch.Generator().manual_seed(4)
    u, v = 1 + 0.5 * torch.randn(L, generator=g), 1 + 0.5 * torch.randn(D, generator=g)
    eff = effective_prompt(theta0, u, v)
    run = write_target_run(tmp_path / "run", eff, path, theta0=theta0, u=u, v=v)
    out = export_peft(run, tmp_path / "adapter", task_type="SEQ_2_SEQ_LM")
    exported = load_file(str(out / "adapter_model.safetensors"))["prompt_embeddings"]
    torch.testing.assert_close(exported, theta0 * torch.outer(u, v), atol=1e-6, rtol=0)
    assert not torch.allclose(exported, theta0, atol=1e-2)
    # PEFT with the adapter == bmtpt with theta0 * (u v^T)
    pm = PromptedModel(model, tok)
    enc = encode_examples(tok, EXAMPLES, True)
    batch = collate(enc.inputs, enc.targets, pm.pad_id, True)
    ref, dec = bmtpt_logits(pm, eff, batch)
    got = load_peft(model, out)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                decoder_input_ids=dec).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # a prompt file holding only the factors is folded the same way
    (run / "prompt.safetensors").unlink()
    save_file({"theta0": theta0, "u": u, "v": v}, str(run / "prompt.safetensors"))
    out2 = export_peft(run, tmp_path / "adapter2", task_type="SEQ_2_SEQ_LM")
    torch.testing.assert_close(import_peft(out2), exported, atol=0, rtol=0)


def test_a_real_rank_one_target_run_exports_its_effective_prompt(tmp_path, backbones):
    model, tok, path = backbones["llama"]
    cfg = TargetConfig(model=path, out=str(tmp_path / "run"), task="synth-product", method="pt", rank_one=True,
                       lr_factor=0.5, steps=2, eval_every=1, batch_size=4, prompt_length=L, max_train_examples=8,
                       max_eval_examples=4, progress=False, device="cpu")
    res = run_target(cfg, model, tok)
    saved = load_file(str(tmp_path / "run" / "prompt.safetensors"))
    prompt = import_peft(export_peft(tmp_path / "run", tmp_path / "adapter"))  # 'auto': the run names the folder
    torch.testing.assert_close(prompt, saved["theta0"] * torch.outer(saved["u"], saved["v"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(prompt, res.prompt, atol=0, rtol=0)


def test_source_run_exports_a_particle_or_the_mean(tmp_path, backbones):
    parts = torch.randn(3, L, D, generator=torch.Generator().manual_seed(5))
    (tmp_path / "src").mkdir()
    save_posterior(tmp_path / "src", parts, {"backbone": backbones["llama"][2], "source_tasks": ["synth-animal"],
                                             "bandwidth": 1.0, "method": "svgd"})
    mean = import_peft(export_peft(tmp_path / "src", tmp_path / "mean"))
    torch.testing.assert_close(mean, parts.mean(0))
    assert json.loads((tmp_path / "mean" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert torch.equal(import_peft(export_peft(tmp_path / "src", tmp_path / "p2", particle=2)), parts[2])
    with pytest.raises(BmtptError, match=r"particles 0\.\.2"):
        export_peft(tmp_path / "src", tmp_path / "p3", particle=3)


def test_import_round_trip_and_init_prompts(tmp_path, backbones):
    model, tok, _ = backbones["llama"]
    prompt = _prompt(6)
    out = write_peft_adapter(prompt, tmp_path / "a", "CAUSAL_LM", "somewhere")
    assert torch.equal(import_peft(out), prompt) and torch.equal(import_peft(out / "adapter_config.json"), prompt)
    assert torch.equal(init_prompts(model, tok, 1, L, f"peft:{out}")[0], prompt)
    three = init_prompts(model, tok, 3, L, f"peft:{out}", seed=7)  # a source run: the adapter is particle 0
    assert torch.equal(three[0], prompt) and torch.equal(three[1:], init_prompts(model, tok, 2, L, "vocab", seed=7))
    with pytest.raises(BmtptError, match="4 virtual tokens"):
        init_prompts(model, tok, 1, 5, f"peft:{out}")
    narrow = write_peft_adapter(_prompt(0, width=16), tmp_path / "narrow", "CAUSAL_LM", "other-model")
    with pytest.raises(BmtptError, match="16 wide.*other-model.*embeds in 32"):
        init_prompts(model, tok, 1, L, f"peft:{narrow}")


def test_adapters_made_by_peft_itself_import(tmp_path, backbones):
    """PEFT -> bmtpt: a causal adapter, and a seq2seq one with PEFT's default of 2 submodules (2l rows, of which
    PEFT prepends only the first l to the encoder input: the prompt bmtpt imports)."""
    peft = pytest.importorskip("peft")
    for arch, task_type in (("llama", "CAUSAL_LM"), ("t5", "SEQ_2_SEQ_LM")):
        model, tok = build_tiny(arch)  # get_peft_model wraps its model: a private copy
        pconf = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=L, prompt_tuning_init="SAMPLE_VOCAB")
        pmodel = peft.get_peft_model(model, pconf)
        pmodel.save_pretrained(str(tmp_path / arch))
        weight = pmodel.prompt_encoder["default"].embedding.weight.detach()
        assert weight.shape[0] == L * (2 if arch == "t5" else 1)
        prompt = import_peft(tmp_path / arch, width=D, length=L)
        assert torch.equal(prompt, weight[:L])
        if arch == "t5":
            pmodel.eval()
            pm = PromptedModel(model, tok)
            enc = encode_examples(tok, EXAMPLES, True)
            batch = collate(enc.inputs, enc.targets, pm.pad_id, True)
            with torch.no_grad():
                ref, dec = bmtpt_logits(pm, prompt, batch)
                got = pmodel(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             decoder_input_ids=dec).logits
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_bad_adapters_are_refused(tmp_path):
    good = write_peft_adapter(_prompt(), tmp_path / "good", "CAUSAL_LM", None)
    with pytest.raises(BmtptError, match="does not exist"):
        import_peft(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BmtptError, match="no adapter_config.json"):
        import_peft(tmp_path / "empty")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(BmtptError, match="LORA adapter; bmtpt imports only PROMPT_TUNING"):
        import_peft(lora)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(BmtptError, match="safe_serialization=True"):
        import_peft(pickled)
    cfg = json.loads((good / "adapter_config.json").read_text())
    (good / "adapter_config.json").write_text(json.dumps({**cfg, "num_virtual_tokens": 5}))
    with pytest.raises(BmtptError, match=r"shape \(4, 32\).*5 virtual tokens"):
        read_peft_adapter(good)


def test_cli_export_and_its_errors(tmp_path, tiny_dirs, capsys):
    run = write_target_run(tmp_path / "run", _prompt(8), str(tiny_dirs["t5"]))
    out = tmp_path / "adapter"
    rc, stdout, err = cli(capsys, "export", "--to", "peft", run, out)
    assert rc == 0, err
    assert "adapter_config.json" in stdout and (out / "adapter_model.safetensors").is_file()
    before = (out / "adapter_model.safetensors").read_bytes()
    write_target_run(run, _prompt(9), str(tiny_dirs["t5"]))
    rc, _, err = cli(capsys, "export", run, out)
    assert_one_line_error(rc, err, "export", "already holds an adapter", "--overwrite")
    assert (out / "adapter_model.safetensors").read_bytes() == before
    rc, _, err = cli(capsys, "export", run, out, "--overwrite")
    assert rc == 0, err
    assert torch.equal(import_peft(out), _prompt(9))

    (tmp_path / "plain").mkdir()
    for args, fragments in (([tmp_path / "nowhere", tmp_path / "o1"], ["does not exist"]),
                            ([tmp_path / "plain", tmp_path / "o2"], ["not a bmtpt run folder"]),
                            ([run, tmp_path / "o3", "--particle", "1"], ["--particle applies to source runs"]),
                            ([run, tmp_path / "o4", "--particle", "-1"], ["non-negative"])):
        rc, _, err = cli(capsys, "export", *args)
        assert_one_line_error(rc, err, "export", *fragments)
    write_target_run(tmp_path / "offline", _prompt(), str(tmp_path / "deleted-model"))  # no hub look-up
    rc, _, err = cli(capsys, "export", tmp_path / "offline", tmp_path / "o5")
    assert_one_line_error(rc, err, "export", "--task-type")
    rc, _, err = cli(capsys, "export", tmp_path / "offline", tmp_path / "o5", "--task-type", "CAUSAL_LM")
    assert rc == 0, err
    with pytest.raises(SystemExit) as exc:
        main(["export", "--to", "onnx", str(run), str(tmp_path / "o6")])
    assert exc.value.code == 2


def test_cli_init_from_a_peft_adapter(tmp_path, tiny_dirs, capsys):
    model = tiny_dirs["llama"]
    adapter = write_peft_adapter(_prompt(10, length=3), tmp_path / "a", "CAUSAL_LM", str(model))
    small = ["--model", model, "--prompt-length", "3", "--batch-size", "4", "--max-train-examples", "8",
             "--device", "cpu", "--no-progress"]
    rc, _, err = cli(capsys, "target", "--method", "pt", "--task", "synth-product", "--init", f"peft:{adapter}",
                     "--steps", "1", "--out", tmp_path / "tgt", "--max-eval-examples", "4", *small)
    assert rc == 0, err
    rc, _, err = cli(capsys, "source", "--tasks", "synth-animal,synth-past", "--particles", "2", "--steps", "1",
                     "--init", f"peft:{adapter}", "--out", tmp_path / "src", *small)
    assert rc == 0, err
    narrow = write_peft_adapter(_prompt(0, length=3, width=16), tmp_path / "narrow", "CAUSAL_LM", None)
    rc, _, err = cli(capsys, "target", "--method", "pt", "--task", "synth-product", "--init", f"peft:{narrow}",
                     "--steps", "1", "--out", tmp_path / "t2", "--max-eval-examples", "4", *small)
    assert_one_line_error(rc, err, "target", "16 wide", "embeds in 32")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    rc, _, err = cli(capsys, "source", "--tasks", "synth-animal", "--init", f"peft:{lora}", "--steps", "1",
                     "--out", tmp_path / "s2", *small)
    assert_one_line_error(rc, err, "source", "PROMPT_TUNING")
