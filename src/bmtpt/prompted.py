"""A frozen backbone with soft prompts prepended to its input embeddings.

The central trick: M prompts ("particles") are evaluated in ONE forward pass by stacking
(particle, example) pairs on the batch axis. The token embeddings of the B examples are computed
once and gathered into the M*B rows; each row gets its own prompt via an index, so the same code
also serves "particle m sees only task m's examples" (the independent per-task baseline).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .backbone import embedding_width, is_seq2seq_config
from .data import Batch, batch_of, chunks, collate, encode_examples, encode_target, encode_text
from .tasks import Example, Task


def autocast(device: str, precision: str):
    """Autocast context for 'bf16' / 'fp16'; a no-op for 'fp32'. Prompts stay fp32 (master copies)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


class PromptedModel:
    """Wraps a frozen (model, tokenizer) pair; prompts are passed in, never owned."""

    def __init__(self, model, tokenizer, precision: str = "fp32", max_input_tokens: int = 256):
        self.model, self.tokenizer = model, tokenizer
        model.requires_grad_(False)  # a model passed in directly (not via load_backbone) must stay frozen too
        self.is_seq2seq = is_seq2seq_config(model.config)
        self.precision = precision
        self.max_input_tokens = max_input_tokens
        self.pad_id = tokenizer.pad_token_id
        self.device = next(model.parameters()).device
        fwd = inspect.signature(model.forward).parameters
        self._keep_logits = "logits_to_keep" in fwd

    @property
    def embed_dim(self) -> int:
        """Embedding width d."""
        return embedding_width(self.model)

    # ------------------------------------------------------------------ forward
    def _rows(self, prompts: Tensor, batch: Batch, prompt_index: Tensor | None):
        """Prompt embeddings (R, l, d), example embeddings, masks and targets of every row."""
        m, b = prompts.shape[0], len(batch)
        dev = self.device
        if prompt_index is None:  # all M prompts on all B examples, particle-major
            p_idx = torch.arange(m, device=dev).repeat_interleave(b)
            e_idx = torch.arange(b, device=dev).repeat(m)
        else:  # row r is example r with prompt prompt_index[r]
            p_idx, e_idx = prompt_index.to(dev), torch.arange(b, device=dev)
        emb = self.model.get_input_embeddings()(batch.input_ids.to(dev))  # once per example
        x = torch.cat([prompts[p_idx].to(emb.dtype), emb[e_idx]], dim=1)
        ones = torch.ones(len(p_idx), prompts.shape[1], dtype=batch.attention_mask.dtype, device=dev)
        mask = torch.cat([ones, batch.attention_mask.to(dev)[e_idx]], dim=1)
        return x, mask, batch.target_ids.to(dev)[e_idx], batch.target_mask.to(dev)[e_idx]

    def token_nll(self, prompts: Tensor, batch: Batch, prompt_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-token negative log-likelihood of the targets, (R, T), and the target mask (R, T).

        `prompts` is (M, l, d). Without `prompt_index` the rows are all M x B (particle, example)
        pairs, particle-major; with it, row r is example r under prompt `prompt_index[r]`.
        """
        x, mask, tgt, tmask = self._rows(prompts, batch, prompt_index)
        with autocast(self.device.type, self.precision):
            if self.is_seq2seq:
                labels = tgt.masked_fill(tmask == 0, -100)
                dec_in = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
                logits = self.model(inputs_embeds=x, attention_mask=mask, decoder_input_ids=dec_in,
                                    use_cache=False).logits
            else:
                # Positions from the mask: padding (between prompt and text) never shifts positions.
                pos = (mask.cumsum(-1) - 1).clamp_min(0)
                t = tgt.shape[1]
                kw = {"logits_to_keep": t + 1} if self._keep_logits else {}
                logits = self.model(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False,
                                    **kw).logits
                logits = logits[:, -(t + 1):-1]  # position i predicts token i + 1
        nll = F.cross_entropy(logits.float().transpose(1, 2), tgt, reduction="none")
        return nll * tmask, tmask

    def example_nll(self, prompts: Tensor, batch: Batch, prompt_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Summed target NLL per row, (R,), and the number of target tokens per row, (R,)."""
        nll, tmask = self.token_nll(prompts, batch, prompt_index)
        return nll.sum(-1), tmask.sum(-1)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def rank_classify(self, prompt: Tensor, examples: Sequence[Example], verbalizers: Sequence[str],
                      batch_size: int = 32) -> tuple[list[str], Tensor]:
        """Pick, for each example, the verbalizer with the highest summed log-likelihood.

        Returns the predicted verbalizers and the (N, C) log-likelihood matrix.
        """
        enc = encode_examples(self.tokenizer, examples, self.is_seq2seq, self.max_input_tokens)
        cands = [encode_target(self.tokenizer, v, self.is_seq2seq) for v in verbalizers]
        c = len(cands)
        scores = []
        per = max(1, batch_size // c)
        for idx in chunks(range(len(examples)), per):
            inputs = [enc.inputs[i] for i in idx for _ in range(c)]
            targets = [cands[j] for _ in idx for j in range(c)]
            batch = collate(inputs, targets, self.pad_id, self.is_seq2seq)
            nll, _ = self.example_nll(prompt[None], batch)
            scores.append((-nll).view(len(idx), c).float().cpu())
        ll = torch.cat(scores)
        return [verbalizers[j] for j in ll.argmax(-1).tolist()], ll

    @torch.no_grad()
    def generate(self, prompt: Tensor, examples: Sequence[Example], max_new_tokens: int = 16,
                 batch_size: int = 32) -> list[str]:
        """Greedy-decode an answer for each example with the prompt prepended (transformers' generate)."""
        out: list[str] = []
        for part in chunks(list(examples), batch_size):
            ids = [encode_text(self.tokenizer, e.input)[: self.max_input_tokens] for e in part]
            # Causal LMs continue after the last position, so their inputs are left-padded: collate with a
            # one-token dummy target (which lands in the last column) and cut that column off.
            batch = collate(ids, [[self.pad_id]] * len(ids), self.pad_id, self.is_seq2seq)
            if not self.is_seq2seq:
                batch.input_ids, batch.attention_mask = batch.input_ids[:, :-1], batch.attention_mask[:, :-1]
            x, mask, _, _ = self._rows(prompt[None], batch, None)
            with autocast(self.device.type, self.precision):
                gen = self.model.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, num_beams=1, pad_token_id=self.pad_id)
            out.extend(t.strip() for t in self.tokenizer.batch_decode(gen, skip_special_tokens=True))
        return out

    def predict(self, prompt: Tensor, task: Task, examples: Sequence[Example], mode: str = "rank",
                batch_size: int = 32) -> list:
        """Predictions for a task: rank classification for classification tasks in 'rank' mode, else
        generation."""
        if mode == "rank" and task.is_classification:
            return self.rank_classify(prompt, examples, task.verbalizers, batch_size)[0]
        return self.generate(prompt, examples, task.max_target_tokens, batch_size)

    def evaluate(self, prompt: Tensor, task: Task, examples: Sequence[Example], mode: str = "rank",
                 batch_size: int = 32) -> dict[str, float]:
        """The task's metrics for one prompt on a list of examples."""
        return task.score(self.predict(prompt, task, examples, mode, batch_size), examples)


def mean_loss_by_group(nll_sum: Tensor, ntok: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Token-mean NLL per group: sum of NLL over the group's rows / their token count, (num_groups,)."""
    zeros = torch.zeros(num_groups, dtype=nll_sum.dtype, device=nll_sum.device)
    tot = zeros.index_add(0, groups, nll_sum)
    cnt = zeros.index_add(0, groups, ntok.to(nll_sum.dtype))
    return tot / cnt.clamp_min(1)


__all__ = ["PromptedModel", "autocast", "batch_of", "mean_loss_by_group"]
