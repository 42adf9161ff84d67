"""A frozen backbone with soft prompts prepended to its input embeddings.

The central trick: M prompts ("particles") are evaluated in ONE forward pass by stacking
(particle, example) pairs on the batch axis. The token embeddings of the B examples are computed
once and broadcast into the M*B rows (written once, no gathered copies); with an index per row instead,
each row gets its own prompt, so the same code also serves "particle m sees only task m's examples"
(the independent per-task baseline). Seq2seq rank classification encodes each input once for all its
candidate answers.

Options: `gradient_checkpointing` recomputes each backbone layer in the backward pass instead of keeping
its activations (less memory, ~1/3 more compute); `full_logits` runs the LM head at every position of a
causal LM (the naive baseline of `bmtpt bench speed`; normally only the T + 1 target positions).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .backbone import autocast, checkpoint_layers, checkpointing, embedding_width, is_seq2seq_config
from .data import Batch, Encoded, batch_of, chunks, collate, encode_examples, encode_input, encode_target
from .distributed import Dist
from .errors import BmtptError
from .tasks import Example, Task
from .verbalizers import label_words


class PromptedModel:
    """Wraps a frozen (model, tokenizer) pair; prompts are passed in, never owned.

    `gradient_checkpointing`: recompute each backbone layer during the backward pass (non-reentrant
    torch checkpointing) instead of storing its activations. `full_logits`: causal LMs compute the LM
    head at every position instead of the target positions only (slower; a benchmark baseline).
    `verbalizers` ('auto' or 'labels') picks the words classification labels are trained and scored as
    (`bmtpt.verbalizers`); `eval_mode` ('rank' or 'generate') decides whether classification targets end
    in an end-of-text token (generation needs one to stop; rank classification scores the label only).
    """

    def __init__(self, model, tokenizer, precision: str = "fp32", max_input_tokens: int = 256,
                 gradient_checkpointing: bool = False, full_logits: bool = False, compile: bool = False,  # noqa: A002
                 verbalizers: str = "auto", eval_mode: str = "rank"):
        self.model, self.tokenizer = model, tokenizer
        self.verbalizers, self.eval_mode = verbalizers, eval_mode
        self._words: dict[str, dict[str, str]] = {}
        model.requires_grad_(False)  # a model passed in directly (not via load_backbone) must stay frozen too
        self.is_seq2seq = is_seq2seq_config(model.config)
        self.precision = precision
        self.max_input_tokens = max_input_tokens
        self.progress = False  # evaluation progress bars; the stages turn them on with --progress
        self.dist = Dist()  # a distributed run's stages set theirs: evaluations are then sharded by example
        self.pad_id = tokenizer.pad_token_id
        self.device = next(model.parameters()).device
        fwd = inspect.signature(model.forward).parameters
        self._keep_logits = "logits_to_keep" in fwd and not full_logits
        # the shared-prefix rank classification needs a key/value cache argument (transformers >= 5.2x names it
        # `cache`, older versions `past_key_values`); without one it falls back to a full pass per candidate
        self._cache_arg = next((a for a in ("cache", "past_key_values") if a in fwd), None)
        self.gradient_checkpointing = gradient_checkpointing
        self._layers = checkpoint_layers(model) if gradient_checkpointing else []
        if gradient_checkpointing and not self._layers:
            raise BmtptError(f"gradient checkpointing: found no repeated layers in {type(model).__name__}")
        # `compile`: the training forward goes through torch.compile (dynamic shapes, since every batch pads
        # to its own length); evaluation and generation stay eager, where the KV cache and generate() live
        self._train_forward = torch.compile(model, dynamic=True) if compile else model

    @classmethod
    def for_run(cls, model, tokenizer, cfg) -> PromptedModel:
        """The PromptedModel of a training run: precision, truncation, checkpointing and compile from `cfg`."""
        return cls(model, tokenizer, cfg.precision, cfg.max_input_tokens,
                   gradient_checkpointing=cfg.gradient_checkpointing, compile=getattr(cfg, "compile", False),
                   verbalizers=getattr(cfg, "verbalizers", "auto"), eval_mode=getattr(cfg, "eval_mode", "rank"))

    def words(self, task: Task) -> dict[str, str]:
        """label -> the word this backbone is trained and scored on for it (`bmtpt.verbalizers`)."""
        if task.name not in self._words:
            self._words[task.name] = label_words(task, self.tokenizer, self.is_seq2seq, self.verbalizers)
        return self._words[task.name]

    def label_only(self, task: Task) -> bool:
        """True when the task is rank-classified: its targets are the label's tokens, with no end-of-text."""
        return task.is_classification and self.eval_mode == "rank"

    def encode(self, task: Task, examples: Sequence[Example], max_target_tokens: int = 32) -> Encoded:
        """Token ids of a task's examples as training sees them (label words, no EOS when rank-classified)."""
        return encode_examples(self.tokenizer, examples, self.is_seq2seq, self.max_input_tokens, max_target_tokens,
                               self.words(task), eos=not self.label_only(task))

    @property
    def embed_dim(self) -> int:
        """Embedding width d."""
        return embedding_width(self.model)

    # ------------------------------------------------------------------ forward
    def _rows(self, prompts: Tensor, batch: Batch, prompt_index: Tensor | None):
        """Prompt embeddings (R, l, d), example embeddings, masks and targets of every row.

        `prompts` may also be an input-dependent prompt (an object with `instance_prompts(embeddings, mask)`,
        such as ATTEMPT's): row r is then example r under the prompt made from its own input."""
        dev = self.device
        emb = self.model.get_input_embeddings()(batch.input_ids.to(dev))  # once per example
        tgt, tmask = batch.target_ids.to(dev), batch.target_mask.to(dev)
        if not isinstance(prompts, Tensor):
            own = prompts.instance_prompts(emb, batch.attention_mask.to(dev)).to(emb.dtype)
            ones = torch.ones(own.shape[:2], dtype=batch.attention_mask.dtype, device=dev)
            return (torch.cat([own, emb], dim=1), torch.cat([ones, batch.attention_mask.to(dev)], dim=1), tgt,
                    tmask)
        (m, plen, d), b = prompts.shape, len(batch)
        ones = torch.ones(b, plen, dtype=batch.attention_mask.dtype, device=dev)
        mask = torch.cat([ones, batch.attention_mask.to(dev)], dim=1)
        prompts = prompts.to(emb.dtype)
        if prompt_index is None:  # all M prompts on all B examples, particle-major
            # cat of broadcast views: the (M*B, l+n, d) input is written once, with no gathered copies, and
            # the prompt's gradient is a sum over the broadcast axis rather than a scatter-add
            n = emb.shape[1]
            x = torch.cat([prompts[:, None].expand(m, b, plen, d), emb[None].expand(m, b, n, d)], dim=2)
            return x.view(m * b, plen + n, d), mask.repeat(m, 1), tgt.repeat(m, 1), tmask.repeat(m, 1)
        # row r is example r with prompt prompt_index[r]
        return torch.cat([prompts[prompt_index.to(dev)], emb], dim=1), mask, tgt, tmask

    def token_nll(self, prompts: Tensor, batch: Batch, prompt_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-token negative log-likelihood of the targets, (R, T), and the target mask (R, T).

        `prompts` is (M, l, d). Without `prompt_index` the rows are all M x B (particle, example)
        pairs, particle-major; with it, row r is example r under prompt `prompt_index[r]`.
        """
        x, mask, tgt, tmask = self._rows(prompts, batch, prompt_index)
        return self._nll(self.backbone_logits(x, mask, tgt, tmask), tgt, tmask)

    def backbone_logits(self, x: Tensor, mask: Tensor, tgt: Tensor, tmask: Tensor) -> Tensor:
        """The backbone's logits at the target positions, (R, T, V), from the input embeddings of `_rows`.

        This is the whole backbone part of a step (autocast and checkpointing included); everything else
        (rows, loss, kernel, optimiser) is bmtpt's overhead, which `bmtpt bench speed` measures.
        """
        ckpt = checkpointing(self._layers) if self._layers else contextlib.nullcontext()
        with autocast(self.device.type, self.precision), ckpt:
            if self.is_seq2seq:
                labels = tgt.masked_fill(tmask == 0, -100)
                dec_in = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
                return self._train_forward(inputs_embeds=x, attention_mask=mask, decoder_input_ids=dec_in,
                                           use_cache=False).logits
            # Positions from the mask: padding (between prompt and text) never shifts positions.
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            t = tgt.shape[1]
            kw = {"logits_to_keep": t + 1} if self._keep_logits else {}
            logits = self._train_forward(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False,
                                         **kw).logits
            return logits[:, -(t + 1):-1]  # position i predicts token i + 1

    @staticmethod
    def _nll(logits: Tensor, tgt: Tensor, tmask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token NLL (fp32 log-softmax), zero at padded target positions, and the target mask."""
        nll = F.cross_entropy(logits.float().transpose(1, 2), tgt, reduction="none")
        return nll * tmask, tmask

    def example_nll(self, prompts: Tensor, batch: Batch, prompt_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Summed target NLL per row, (R,), and the number of target tokens per row, (R,)."""
        nll, tmask = self.token_nll(prompts, batch, prompt_index)
        return nll.sum(-1), tmask.sum(-1)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _bar(self, it, total: int, what: str):
        """A transient progress bar over evaluation batches (set `progress = True` to show it)."""
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=f"eval ({what})", leave=False, disable=not self.progress or total < 2)

    def rank_classify(self, prompt: Tensor, examples: Sequence[Example], verbalizers: Sequence[str],
                      batch_size: int = 32) -> tuple[list[str], Tensor]:
        """Pick, for each example, the verbalizer with the highest summed log-likelihood.

        The candidates are scored on their own tokens (no end-of-text token), as training sees them.
        Examples are batched in order of length, so a batch pads little (in a random order the padding
        doubled the work on short-text sets). Returns the predicted verbalizers and the (N, C)
        log-likelihood matrix, in the examples' order.
        """
        enc = encode_examples(self.tokenizer, examples, self.is_seq2seq, self.max_input_tokens)
        cands = [encode_target(self.tokenizer, v, self.is_seq2seq, eos=False) for v in verbalizers]
        c = len(cands)
        scores = []
        single = not self.is_seq2seq and all(len(t) == 1 for t in cands)
        per = batch_size if single else max(1, batch_size // c)  # a row per example, not per candidate
        order = sorted(range(len(examples)), key=lambda i: len(enc.inputs[i]))
        for idx in self._bar(chunks(order, per), -(-len(examples) // per), "rank"):
            if single:
                nll = self._causal_single_token_nll(prompt, [enc.inputs[i] for i in idx], [t[0] for t in cands])
            elif self.is_seq2seq and hasattr(self.model, "get_encoder"):
                nll = self._candidates_nll(prompt, [enc.inputs[i] for i in idx], cands)
            elif not self.is_seq2seq and c > 1 and self._cache_arg:
                nll = self._causal_candidates_nll(prompt, [enc.inputs[i] for i in idx], cands)
            else:
                inputs = [enc.inputs[i] for i in idx for _ in range(c)]
                targets = [cands[j] for _ in idx for j in range(c)]
                batch = collate(inputs, targets, self.pad_id, self.is_seq2seq)
                nll, _ = self.example_nll(_as_prompts(prompt), batch)
            scores.append((-nll).view(len(idx), c).float().cpu())
        ll = torch.empty(len(examples), c)
        ll[torch.tensor(order, dtype=torch.long)] = torch.cat(scores)
        return [verbalizers[j] for j in ll.argmax(-1).tolist()], ll

    def _candidates_nll(self, prompt: Tensor, inputs: list[list[int]], cands: list[list[int]]) -> Tensor:
        """Seq2seq: summed NLL of every (input, candidate) pair, example-major, (E * C,).

        The encoder runs once per example and its states are shared by the C candidates' decoder rows
        (encoding the input C times would multiply the dominant cost of rank classification by C).
        """
        e, c, dev = len(inputs), len(cands), self.device
        batch = collate(inputs, [[self.pad_id]] * e, self.pad_id, True)
        cand = collate([[self.pad_id]] * c, cands, self.pad_id, True)
        x, mask, _, _ = self._rows(_as_prompts(prompt), batch, None)
        tgt, tmask = cand.target_ids.to(dev).repeat(e, 1), cand.target_mask.to(dev).repeat(e, 1)
        with autocast(dev.type, self.precision):
            states = self.model.get_encoder()(inputs_embeds=x, attention_mask=mask).last_hidden_state
            labels = tgt.masked_fill(tmask == 0, -100)
            dec_in = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = self.model(encoder_outputs=(states.repeat_interleave(c, 0),),
                                attention_mask=mask.repeat_interleave(c, 0), decoder_input_ids=dec_in,
                                use_cache=False).logits
        nll, _ = self._nll(logits, tgt, tmask)
        return nll.sum(-1)

    def _causal_single_token_nll(self, prompt: Tensor, inputs: list[list[int]], cand_ids: list[int]) -> Tensor:
        """Causal LMs, one-token candidates: one pass per example, the LM head at its last position only; the
        NLL of each candidate token, example-major, (E * C,). (Label words are one token wherever the
        tokenizer allows, so this is the usual case: C candidates cost one forward pass, not C.)"""
        e, dev = len(inputs), self.device
        batch = collate(inputs, [[self.pad_id]] * e, self.pad_id, False)  # dummy target: cut off below
        batch.input_ids, batch.attention_mask = batch.input_ids[:, :-1], batch.attention_mask[:, :-1]
        x, mask, _, _ = self._rows(_as_prompts(prompt), batch, None)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        with autocast(dev.type, self.precision):
            logits = self.model(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False,
                                **({"logits_to_keep": 1} if self._keep_logits else {})).logits[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return -logp[:, torch.tensor(cand_ids, device=dev)].reshape(-1)

    def _causal_candidates_nll(self, prompt: Tensor, inputs: list[list[int]], cands: list[list[int]]) -> Tensor:
        """Causal LMs: summed NLL of every (input, candidate) pair, example-major, (E * C,).

        The prompt and input run once per example (left-padded, so every row's prefix ends in the same
        column) and their key/value cache is shared by the C candidates, which then cost only their own
        few tokens: C full passes over the input would cost C times the dominant part of the work.
        """
        e, c, dev = len(inputs), len(cands), self.device
        batch = collate(inputs, [[self.pad_id]] * e, self.pad_id, False)  # dummy target: cut off below
        batch.input_ids, batch.attention_mask = batch.input_ids[:, :-1], batch.attention_mask[:, :-1]
        x, mask, _, _ = self._rows(_as_prompts(prompt), batch, None)
        cand = collate([[]] * c, cands, self.pad_id, True)  # right-padded candidates, (C, T)
        tgt, tmask = cand.target_ids.to(dev).repeat(e, 1), cand.target_mask.to(dev).repeat(e, 1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        with autocast(dev.type, self.precision):
            out = self.model(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=True,
                             **({"logits_to_keep": 1} if self._keep_logits else {}))
            cache = out.cache if self._cache_arg == "cache" else out.past_key_values
            cache.batch_repeat_interleave(c)
            first = out.logits[:, -1:].repeat_interleave(c, 0)  # predicts each candidate's first token
            t = tgt.shape[1]
            if t > 1:  # candidate token j predicts token j + 1; the last one predicts nothing we score
                full_mask = torch.cat([mask.repeat_interleave(c, 0), tmask[:, :-1]], dim=1)
                cpos = pos[:, -1:].repeat_interleave(c, 0) + torch.arange(1, t, device=dev)
                rest = self.model(input_ids=tgt[:, :-1], attention_mask=full_mask, position_ids=cpos,
                                  use_cache=True, **{self._cache_arg: cache}).logits
                first = torch.cat([first, rest], dim=1)
        nll, _ = self._nll(first, tgt, tmask)
        return nll.sum(-1)

    @torch.no_grad()
    def generate(self, prompt: Tensor, examples: Sequence[Example], max_new_tokens: int = 16,
                 batch_size: int = 32) -> list[str]:
        """Greedy-decode an answer for each example with the prompt prepended (transformers' generate)."""
        out: list[str] = []
        for part in self._bar(chunks(list(examples), batch_size), -(-len(examples) // batch_size), "generate"):
            ids = [encode_input(self.tokenizer, e, self.max_input_tokens) for e in part]
            # Causal LMs continue after the last position, so their inputs are left-padded: collate with a
            # one-token dummy target (which lands in the last column) and cut that column off.
            batch = collate(ids, [[self.pad_id]] * len(ids), self.pad_id, self.is_seq2seq)
            if not self.is_seq2seq:
                batch.input_ids, batch.attention_mask = batch.input_ids[:, :-1], batch.attention_mask[:, :-1]
            x, mask, _, _ = self._rows(_as_prompts(prompt), batch, None)
            with autocast(self.device.type, self.precision):
                gen = self.model.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, num_beams=1, pad_token_id=self.pad_id)
            out.extend(t.strip() for t in self.tokenizer.batch_decode(gen, skip_special_tokens=True))
        return out

    def predict(self, prompt: Tensor, task: Task, examples: Sequence[Example], mode: str = "rank",
                batch_size: int = 32) -> list:
        """Predictions for a task: rank classification for classification tasks in 'rank' mode, else
        generation. A classification task's predictions are its labels (the backbone's words mapped back).
        In a distributed run each process predicts its block of the examples and all get every prediction."""
        if self.dist.active:
            mine = [examples[i] for i in self.dist.block(len(examples))]
            return self.dist.gather(self._predict(prompt, task, mine, mode, batch_size) if mine else [])
        return self._predict(prompt, task, examples, mode, batch_size)

    def _predict(self, prompt: Tensor, task: Task, examples: Sequence[Example], mode: str, batch_size: int) -> list:
        words = self.words(task)
        back = {w: label for label, w in words.items()}
        if mode == "rank" and task.is_classification:
            preds = self.rank_classify(prompt, examples, [words[v] for v in task.verbalizers], batch_size)[0]
        else:
            preds = self.generate(prompt, examples, task.max_target_tokens, batch_size)
        return [back.get(p, p) for p in preds]

    def label_probabilities(self, prompt: Tensor, task: Task, examples: Sequence[Example], batch_size: int = 32
                            ) -> tuple[list, Tensor]:
        """A classification task's rank-mode predictions (as `predict`) and the (N, C) softmax over its label
        words' log-likelihoods, columns in the order of `task.verbalizers` (sharded like `predict`)."""
        if self.dist.active:
            mine = [examples[i] for i in self.dist.block(len(examples))]
            rows = self.dist.gather(list(zip(*self._label_probabilities(prompt, task, mine, batch_size)))
                                    if mine else [])
            return [r[0] for r in rows], torch.stack([r[1] for r in rows]) if rows else torch.empty(0)
        return self._label_probabilities(prompt, task, examples, batch_size)

    def _label_probabilities(self, prompt: Tensor, task: Task, examples: Sequence[Example], batch_size: int
                             ) -> tuple[list, Tensor]:
        words = self.words(task)
        _, ll = self.rank_classify(prompt, examples, [words[v] for v in task.verbalizers], batch_size)
        labels = list(task.verbalizers)
        return [labels[j] for j in ll.argmax(-1).tolist()], torch.softmax(ll.double(), -1)

    def evaluate(self, prompt: Tensor, task: Task, examples: Sequence[Example], mode: str = "rank",
                 batch_size: int = 32) -> dict[str, float]:
        """The task's metrics for one prompt on a list of examples."""
        return task.score(self.predict(prompt, task, examples, mode, batch_size), examples)


def _as_prompts(prompt):
    """One prompt (l, d) as a batch of one, (1, l, d); an input-dependent prompt object as it is."""
    return prompt[None] if isinstance(prompt, Tensor) else prompt


def mean_loss_by_group(nll_sum: Tensor, ntok: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Token-mean NLL per group: sum of NLL over the group's rows / their token count, (num_groups,)."""
    zeros = torch.zeros(num_groups, dtype=nll_sum.dtype, device=nll_sum.device)
    tot = zeros.index_add(0, groups, nll_sum)
    cnt = zeros.index_add(0, groups, ntok.to(nll_sum.dtype))
    return tot / cnt.clamp_min(1)


__all__ = ["PromptedModel", "batch_of", "mean_loss_by_group"]
