"""PromptedModel on tiny T5 and Llama: row layout, NLL against the HF model run by hand, batching, freezing."""

from __future__ import annotations

import pytest
import torch

from bmtpt.data import collate, encode_target
from bmtpt.prompted import PromptedModel
from bmtpt.tasks import Example

INPUTS = ["is the movie good ?", "the cat sat on the mat and the dog was in the garden", "yes", "what did he cook ?"]
TARGETS = ["yes", "the soup was great", "no", "dinner ."]
L = 3  # prompt length


def _ids(arch, tok, inp, tgt, eos=True):
    """(input ids, target ids): inputs with the tokenizer's specials, targets in the backbone's layout."""
    return list(tok(inp).input_ids), encode_target(tok, tgt, arch == "t5", eos)


def _batch(arch, tok, inputs=INPUTS, targets=TARGETS):
    pairs = [_ids(arch, tok, i, t) for i, t in zip(inputs, targets)]
    return pairs, collate([p[0] for p in pairs], [p[1] for p in pairs], tok.pad_token_id, arch == "t5")


def _prompts(m, d=32, seed=0):
    return 0.5 * torch.randn(m, L, d, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def brute_nll(arch, model, prompt, inp, tgt):
    """Per-token NLL of `tgt` after `prompt` + `inp`, one example, no padding, straight through the HF model."""
    emb = model.get_input_embeddings()
    if arch == "t5":
        x = torch.cat([prompt, emb(torch.tensor(inp))])[None]
        labels = torch.tensor(tgt)[None]
        out = model(inputs_embeds=x, labels=labels)
        logp = out.logits[0].float().log_softmax(-1)
        per = torch.stack([-logp[i, tgt[i]] for i in range(len(tgt))])
        assert per.sum().item() == pytest.approx(out.loss.item() * len(tgt), rel=1e-5, abs=1e-5)
        return per
    seq = torch.tensor(inp + tgt)
    x = torch.cat([prompt, emb(seq)])[None]
    n = x.shape[1]
    logits = model(inputs_embeds=x, position_ids=torch.arange(n)[None]).logits[0]  # every position
    logp = logits.float().log_softmax(-1)
    start = L + len(inp)  # position of the first target token; it is predicted by the position before it
    return torch.stack([-logp[start + i - 1, tgt[i]] for i in range(len(tgt))])


def _row_tokens(nll, tmask, r):
    return nll[r][tmask[r].bool()]


def test_rows_put_the_prompt_first_with_ones_in_the_mask(tiny):
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    pairs, batch = _batch(arch, tok)
    prompts = _prompts(2)
    x, mask, tgt, tmask = pm._rows(prompts, batch, None)
    b = len(pairs)
    assert x.shape[0] == 2 * b and x.shape[1] == L + batch.input_ids.shape[1]
    emb = model.get_input_embeddings()
    n = batch.input_ids.shape[1]
    for m in range(2):
        for e, (inp, y) in enumerate(pairs):
            r = m * b + e  # particle-major
            torch.testing.assert_close(x[r, :L], prompts[m])
            assert mask[r, :L].tolist() == [1] * L
            if arch == "t5":  # encoder input right-padded
                assert mask[r, L:].tolist() == [1] * len(inp) + [0] * (n - len(inp))
                torch.testing.assert_close(x[r, L:L + len(inp)], emb(torch.tensor(inp)))
                assert tgt[r, :len(y)].tolist() == y and tmask[r].tolist()[:len(y)] == [1] * len(y)
            else:  # causal: input + target left-padded, padding sits between the prompt and the text
                seq = inp + y
                pad = n - len(seq)
                assert mask[r, L:].tolist() == [0] * pad + [1] * len(seq)
                torch.testing.assert_close(x[r, L + pad:], emb(torch.tensor(seq)))
                t = tgt.shape[1]
                assert tgt[r, t - len(y):].tolist() == y and tmask[r].tolist() == [0] * (t - len(y)) + [1] * len(y)


def test_token_nll_equals_the_model_run_by_hand(tiny):
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    pairs, batch = _batch(arch, tok)
    prompt = _prompts(1, seed=1)
    nll, tmask = pm.token_nll(prompt, batch)
    assert nll.shape == tmask.shape == (len(pairs), batch.target_ids.shape[1])
    for e, (inp, y) in enumerate(pairs):
        torch.testing.assert_close(_row_tokens(nll, tmask, e), brute_nll(arch, model, prompt[0], inp, y),
                                   atol=1e-5, rtol=1e-5)
        assert (nll[e][tmask[e] == 0] == 0).all()  # padding contributes nothing
    tot, ntok = pm.example_nll(prompt, batch)
    assert ntok.tolist() == [len(y) for _, y in pairs]
    torch.testing.assert_close(tot, nll.sum(-1))


def test_batched_particles_equal_one_at_a_time(tiny):
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    pairs, batch = _batch(arch, tok)
    prompts = _prompts(3, seed=2)
    nll, tmask = pm.token_nll(prompts, batch)
    b = len(pairs)
    assert nll.shape[0] == 3 * b
    for m in range(3):
        for e, (inp, y) in enumerate(pairs):
            alone = collate([inp], [y], tok.pad_token_id, arch == "t5")
            one, one_mask = pm.token_nll(prompts[m:m + 1], alone)
            torch.testing.assert_close(_row_tokens(nll, tmask, m * b + e), _row_tokens(one, one_mask, 0),
                                       atol=1e-5, rtol=1e-5)


def test_prompt_index_rows_equal_the_full_mode(tiny):
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    pairs, batch = _batch(arch, tok)
    prompts = _prompts(3, seed=3)
    full, _ = pm.example_nll(prompts, batch)
    index = torch.tensor([2, 0, 1, 2])
    part, ntok = pm.example_nll(prompts, batch, prompt_index=index)
    assert part.shape == (len(pairs),)
    want = torch.stack([full[int(index[r]) * len(pairs) + r] for r in range(len(pairs))])
    torch.testing.assert_close(part, want, atol=1e-5, rtol=1e-5)


def test_backbone_stays_frozen_and_only_the_prompt_learns(tiny):
    arch, model, tok = tiny
    model.requires_grad_(True)  # as a caller might hand it over; PromptedModel must freeze it
    pm = PromptedModel(model, tok)
    _, batch = _batch(arch, tok)
    prompts = _prompts(2, seed=4).requires_grad_(True)
    nll, ntok = pm.example_nll(prompts, batch)
    (nll.sum() / ntok.sum()).backward()
    for name, p in model.named_parameters():
        assert not p.requires_grad, name
        assert p.grad is None, name
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0


def test_rank_classify_picks_the_most_likely_verbalizer(tiny):
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    prompt = _prompts(1, seed=5)[0]
    verbalizers = ["yes", "no", "maybe", "the soup"]
    examples = [Example(i, "yes") for i in INPUTS]
    preds, ll = pm.rank_classify(prompt, examples, verbalizers, batch_size=5)  # chunks cut across examples
    assert ll.shape == (len(examples), len(verbalizers))
    for e, ex in enumerate(examples):
        # candidates are scored on their own tokens: no end-of-text token
        by_hand = [-brute_nll(arch, model, prompt, *_ids(arch, tok, ex.input, v, eos=False)).sum().item()
                   for v in verbalizers]
        assert ll[e].tolist() == pytest.approx(by_hand, abs=1e-4)
        assert preds[e] == verbalizers[max(range(len(verbalizers)), key=lambda c: by_hand[c])]


@torch.no_grad()
def test_generate_returns_one_string_per_example_starting_with_the_greedy_token(tiny):
    arch, model, tok = tiny
    pm = PromptedModel(model, tok)
    prompt = _prompts(1, seed=6)[0]
    examples = [Example(i, "x") for i in INPUTS]
    out = pm.generate(prompt, examples, max_new_tokens=3, batch_size=3)
    assert isinstance(out, list) and len(out) == len(examples) and all(isinstance(s, str) for s in out)
    first = pm.generate(prompt, examples, max_new_tokens=1, batch_size=3)
    emb = model.get_input_embeddings()
    for ex, got in zip(examples, first):
        inp = torch.tensor(tok(ex.input).input_ids)
        x = torch.cat([prompt, emb(inp)])[None]
        if arch == "t5":
            logits = model(inputs_embeds=x, decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id]]))
        else:
            logits = model(inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None])
        greedy = int(logits.logits[0, -1].argmax())
        assert got == tok.decode([greedy], skip_special_tokens=True).strip()


def test_causal_rank_classify_shares_the_prefix_and_matches_a_full_pass_per_candidate(tiny_llama):
    model, tok = tiny_llama
    pm = PromptedModel(model, tok)
    assert pm._cache_arg  # the shared-prefix path is the one taken for transformers' causal LMs
    prompt = _prompts(1, seed=7)[0]
    examples = [Example(i, "yes") for i in INPUTS]
    verbalizers = ["yes", "the soup", "no"]
    _, shared = pm.rank_classify(prompt, examples, verbalizers, batch_size=6)
    pm._cache_arg = None  # one full (prompt + input + candidate) row per candidate
    _, full = pm.rank_classify(prompt, examples, verbalizers, batch_size=6)
    assert torch.allclose(shared, full, atol=1e-4)


@pytest.mark.slow
def test_compiled_training_forward_matches_eager(tiny_llama):
    """--compile: torch.compile'd training forward gives the eager NLL and gradient (needs a C++ compiler)."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on a CPU needs a C++ compiler (none on PATH)")
    model, tok = tiny_llama
    _, batch = _batch("llama", tok)
    grads = {}
    for compiled in (False, True):
        pm = PromptedModel(model, tok, compile=compiled)
        prompts = _prompts(2).requires_grad_(True)
        nll, ntok = pm.example_nll(prompts, batch)
        (nll.sum() / ntok.sum()).backward()
        grads[compiled] = (nll.detach(), prompts.grad)
    torch.testing.assert_close(grads[True][0], grads[False][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[True][1], grads[False][1], atol=1e-4, rtol=1e-4)
