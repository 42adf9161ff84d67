"""Shared fixtures: tiny random T5 and Llama backbones (built once per session) and saved copies."""

from __future__ import annotations

import pytest
import torch

from bmtpt.tiny import build_tiny, save_tiny

# The test backbones are 32 wide: intra-op threads only add overhead, and on a busy 2-core machine
# they make every small op wait on the other process (10x slower forward passes).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_t5():
    """(model, tokenizer) of a 2-layer, 32-wide random T5."""
    return build_tiny("t5")


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer) of a 2-layer, 32-wide random Llama."""
    return build_tiny("llama")


@pytest.fixture(scope="session", params=["t5", "llama"])
def tiny(request):
    """(arch, model, tokenizer), once per architecture."""
    model, tokenizer = request.getfixturevalue(f"tiny_{request.param}")
    return request.param, model, tokenizer


class _SavedTiny(dict):
    """{arch: folder}; each model is written with save_tiny on first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, arch):
        self[arch] = save_tiny(self.root / arch, arch)
        return self[arch]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """tiny_dirs['t5'] / tiny_dirs['llama']: folders holding tiny models written with save_tiny (for the CLI)."""
    return _SavedTiny(tmp_path_factory.mktemp("tiny-models"))
