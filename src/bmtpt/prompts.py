"""Creating, saving and loading prompts and posteriors (safetensors + JSON; nothing is unpickled)."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import BmtptError
from .runfiles import import_peft, load_prompt_tensor

INIT_CHOICES = "vocab | vocab-shared:NOISE | uniform | text:SOME WORDS | file:PATH.safetensors | peft:ADAPTER_DIR"
VOCAB_ROWS = 5000  # prompt-tuning convention: sample rows of the first 5,000 vocabulary embeddings


def init_prompts(model, tokenizer, num: int, length: int, how: str = "vocab", seed: int = 0) -> Tensor:
    """(num, length, d) float32 initial prompts.

    `vocab`: rows drawn at random from the first 5,000 token embeddings (distinct per prompt);
    `vocab-shared:S`: one such draw shared by all prompts, each plus Gaussian noise of std S times the
    embeddings' std (particles that start close together have a mean that is itself a natural prompt);
    `uniform`: U(-0.5, 0.5); `text:...`: the embeddings of the text's tokens, repeated to fill the
    length; `file:PATH`: a saved prompt (l, d) or particles (M, l, d) file; `peft:DIR`: the prompt of a
    PEFT prompt-tuning adapter folder as prompt 0, the others (if num > 1) drawn as for `vocab`.
    """
    emb = model.get_input_embeddings().weight.detach().float().cpu()
    d = emb.shape[1]
    g = torch.Generator().manual_seed(seed)
    if how == "vocab":
        rows = min(VOCAB_ROWS, emb.shape[0])
        idx = torch.stack([torch.randint(0, rows, (length,), generator=g) for _ in range(num)])
        return emb[idx].clone()
    if how.startswith("vocab-shared:"):
        try:
            scale = float(how.split(":", 1)[1])
        except ValueError:
            raise BmtptError(f"--init {how}: expected vocab-shared:S with a number S >= 0") from None
        if not scale >= 0:
            raise BmtptError(f"--init {how}: the noise scale must be >= 0")
        base = init_prompts(model, tokenizer, 1, length, "vocab", seed)
        noise = torch.randn(num, length, d, generator=torch.Generator().manual_seed(seed + 1))
        return base + scale * emb[: min(VOCAB_ROWS, emb.shape[0])].std() * noise
    if how == "uniform":
        return torch.rand(num, length, d, generator=g) - 0.5
    if how.startswith("text:"):
        ids = tokenizer(how[5:], add_special_tokens=False).input_ids
        if not ids:
            raise BmtptError("prompt init text tokenises to nothing")
        ids = (ids * (length // len(ids) + 1))[:length]
        return emb[torch.tensor(ids)].unsqueeze(0).repeat(num, 1, 1).clone()
    if how.startswith("file:"):
        t = load_prompt_tensor(how[5:])
        t = t.unsqueeze(0) if t.dim() == 2 else t
        if t.shape[1:] != (length, d):
            raise BmtptError(f"prompt file {how[5:]} holds shape {tuple(t.shape[1:])}, expected ({length}, {d})")
        if t.shape[0] not in (1, num):
            raise BmtptError(f"prompt file {how[5:]} holds {t.shape[0]} prompts, expected 1 or {num}")
        return t.expand(num, -1, -1).clone().float()
    if how.startswith("peft:"):
        first = import_peft(how[5:], width=d, length=length)[None]
        # One adapter is one particle. Copying it into all M would start SVGD with identical particles,
        # which get identical updates (zero kernel gradient between them) and never separate.
        rest = init_prompts(model, tokenizer, num - 1, length, "vocab", seed) if num > 1 else first[:0]
        return torch.cat([first, rest])
    raise BmtptError(f"unknown prompt init {how!r} (choose {INIT_CHOICES})")


