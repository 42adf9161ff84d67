"""Saving and loading prompts and posteriors, refusing broken files, and the prompt initialisations."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from bmtpt import __version__
from bmtpt.errors import BmtptError
from bmtpt.prompts import init_prompts
from bmtpt.runfiles import atomic_save_tensors, load_posterior, load_prompt_tensor, save_posterior

INFO = {"backbone": "tiny", "source_tasks": ["synth-animal", "synth-past"], "bandwidth": 1.25, "method": "svgd"}


def _parts(m=3, length=4, d=8, seed=0):
    return torch.randn(m, length, d, generator=torch.Generator().manual_seed(seed))


def test_posterior_round_trip(tmp_path):
    parts = _parts()
    save_posterior(tmp_path, parts, {**INFO, "hyperparameters": {"lr": 0.3}})
    got, meta = load_posterior(tmp_path)
    assert torch.equal(got, parts)
    assert meta["num_particles"] == 3 and meta["prompt_length"] == 4 and meta["embed_dim"] == 8
    assert meta["library_version"] == __version__ and meta["format"] == 1
    assert meta["bandwidth"] == 1.25 and meta["source_tasks"] == INFO["source_tasks"]
    assert meta["hyperparameters"] == {"lr": 0.3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["particles.safetensors", "posterior.json"]  # no temp files


def test_prompt_round_trip_and_keys(tmp_path):
    prompt = _parts(1)[0]
    atomic_save_tensors({"prompt": prompt, "u": torch.ones(4)}, tmp_path / "prompt.safetensors")
    assert torch.equal(load_prompt_tensor(tmp_path / "prompt.safetensors"), prompt)
    atomic_save_tensors({"particles": _parts()}, tmp_path / "p.safetensors")
    assert torch.equal(load_prompt_tensor(tmp_path / "p.safetensors"), _parts())
    save_file({"prompt_embeddings": prompt.half()}, str(tmp_path / "peft.safetensors"))  # a PEFT adapter
    got = load_prompt_tensor(tmp_path / "peft.safetensors")
    assert got.dtype == torch.float32 and torch.equal(got, prompt.half().float())
    atomic_save_tensors({"other": prompt}, tmp_path / "none.safetensors")
    with pytest.raises(BmtptError, match="no prompt tensor"):
        load_prompt_tensor(tmp_path / "none.safetensors")
    with pytest.raises(BmtptError, match="does not exist"):
        load_prompt_tensor(tmp_path / "missing.safetensors")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp files were renamed away


def test_atomic_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "prompt.safetensors"
    atomic_save_tensors({"prompt": torch.zeros(2, 3)}, path)
    atomic_save_tensors({"prompt": torch.ones(2, 3)}, path)
    assert torch.equal(load_prompt_tensor(path), torch.ones(2, 3))


def test_truncated_particles_file_is_refused(tmp_path):
    save_posterior(tmp_path, _parts(), INFO)
    path = tmp_path / "particles.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BmtptError, match="truncated or corrupted"):
        load_posterior(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(BmtptError):
        load_posterior(tmp_path)


@pytest.mark.parametrize("drop", ["bandwidth", "source_tasks", "embed_dim", "format"])
def test_posterior_json_missing_a_key_is_refused(tmp_path, drop):
    save_posterior(tmp_path, _parts(), INFO)
    meta = json.loads((tmp_path / "posterior.json").read_text())
    del meta[drop]
    (tmp_path / "posterior.json").write_text(json.dumps(meta))
    with pytest.raises(BmtptError, match=drop):
        load_posterior(tmp_path)


def test_other_format_and_inconsistent_files_are_refused(tmp_path):
    save_posterior(tmp_path, _parts(), INFO)
    meta_path = tmp_path / "posterior.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format": 2}))
    with pytest.raises(BmtptError, match="format 2"):
        load_posterior(tmp_path)
    meta_path.write_text(json.dumps({**meta, "num_particles": 5}))
    with pytest.raises(BmtptError, match="shape"):
        load_posterior(tmp_path)
    meta_path.write_text("{not json")
    with pytest.raises(BmtptError, match="not valid JSON"):
        load_posterior(tmp_path)
    meta_path.write_text(json.dumps(meta))
    bad = _parts()
    bad[1, 2, 3] = float("nan")
    save_file({"particles": bad}, str(tmp_path / "particles.safetensors"))
    with pytest.raises(BmtptError, match="non-finite"):
        load_posterior(tmp_path)
    save_file({"prompt": _parts()}, str(tmp_path / "particles.safetensors"))
    with pytest.raises(BmtptError, match="no 'particles'"):
        load_posterior(tmp_path)
    with pytest.raises(BmtptError, match="does not exist"):
        load_posterior(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BmtptError, match="no posterior.json"):
        load_posterior(tmp_path / "empty")


class _FakeLM(torch.nn.Module):
    """A 'model' of 6,000 token embeddings: row i holds i in column 0; rows >= 5000 are marked with -1."""

    def __init__(self):
        super().__init__()
        w = torch.zeros(6000, 4)
        w[:, 0] = torch.arange(6000).float()
        w[:, 1:] = torch.randn(6000, 3)
        w[5000:, 0] = -1.0
        self.emb = torch.nn.Embedding.from_pretrained(w)

    def get_input_embeddings(self):
        return self.emb


def test_vocab_init_samples_rows_of_the_first_5000_embeddings():
    model = _FakeLM()
    w = model.emb.weight
    p = init_prompts(model, None, num=4, length=50, how="vocab", seed=3)
    assert p.shape == (4, 50, 4) and p.dtype == torch.float32
    rows = p[..., 0].long()
    assert (rows >= 0).all() and (rows < 5000).all()  # never a row past the first 5000
    assert torch.equal(p, w[rows])  # whole embedding rows, unchanged
    assert len({tuple(r.tolist()) for r in rows}) == 4  # distinct prompts
    assert len(set(rows.flatten().tolist())) > 150  # spread over the vocabulary
    assert torch.equal(init_prompts(model, None, 4, 50, "vocab", seed=3), p)  # reproducible
    assert not torch.equal(init_prompts(model, None, 4, 50, "vocab", seed=4), p)


def test_uniform_init_is_in_the_half_open_interval():
    p = init_prompts(_FakeLM(), None, num=5, length=100, how="uniform", seed=0)
    assert p.shape == (5, 100, 4)
    assert p.min() >= -0.5 and p.max() < 0.5
    assert abs(p.mean().item()) < 0.03 and p.var().item() == pytest.approx(1 / 12, rel=0.1)


def test_text_init_repeats_the_token_embeddings(tiny_llama):
    model, tok = tiny_llama
    ids = tok("good movie", add_special_tokens=False).input_ids
    assert len(ids) == 2
    p = init_prompts(model, tok, num=2, length=5, how="text:good movie")
    w = model.get_input_embeddings().weight.detach()
    want = w[torch.tensor([ids[0], ids[1], ids[0], ids[1], ids[0]])]
    assert torch.equal(p[0], want) and torch.equal(p[1], want)
    with pytest.raises(BmtptError, match="tokenises to nothing"):
        init_prompts(model, tok, 1, 5, "text:")


def test_file_init_and_bad_choices(tmp_path, tiny_llama):
    model, tok = tiny_llama
    saved = _parts(1, length=3, d=32)[0]
    atomic_save_tensors({"prompt": saved}, tmp_path / "p.safetensors")
    p = init_prompts(model, tok, 2, 3, f"file:{tmp_path / 'p.safetensors'}")
    assert torch.equal(p[0], saved) and torch.equal(p[1], saved)
    with pytest.raises(BmtptError, match="expected"):
        init_prompts(model, tok, 2, 4, f"file:{tmp_path / 'p.safetensors'}")
    with pytest.raises(BmtptError, match="unknown prompt init"):
        init_prompts(model, tok, 1, 3, "zeros")


def test_vocab_shared_init_is_one_vocab_draw_plus_scaled_noise(tiny_llama):
    from bmtpt.prompts import VOCAB_ROWS, init_prompts

    model, tok = tiny_llama
    base = init_prompts(model, tok, 1, 4, "vocab", seed=3)[0]
    p = init_prompts(model, tok, 50, 4, "vocab-shared:0.5", seed=3)
    emb = model.get_input_embeddings().weight.detach().float()[:VOCAB_ROWS]
    noise = (p - base) / emb.std()
    assert abs(noise.std().item() - 0.5) < 0.02 and abs(noise.mean().item()) < 0.02
    torch.testing.assert_close(init_prompts(model, tok, 3, 4, "vocab-shared:0", seed=3), base.expand(3, -1, -1))
    with pytest.raises(BmtptError, match="vocab-shared"):
        init_prompts(model, tok, 2, 4, "vocab-shared:x")
