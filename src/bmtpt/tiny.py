"""Tiny random-weight backbones with a working tokenizer, for smoke runs and tests (no downloads).

The tokenizer is a lower-casing word-level tokenizer trained with `tokenizers` on the demo suite's
sentences plus a list of common words, wrapped in `PreTrainedTokenizerFast`, so a saved tiny model
loads through the same `from_pretrained` path as a real one.
"""

from __future__ import annotations

from pathlib import Path

import torch

COMMON_WORDS = """the a an of to and in is was it that this for on with as at by from be are were not no yes
he she they we you i his her their our my your what which who when where why how did does do has have had
will would can could should may might must sentence question answer premise hypothesis entailment
not_entailment positive negative true false review movie food good bad great terrible duplicate
not_duplicate acceptable unacceptable equivalent not_equivalent neutral contradiction label text
passage context word choice 1 2 3 4 5 0 . , ? ! : ; ' " - ( )""".split()


def _corpus() -> list[str]:
    lines = [" ".join(COMMON_WORDS)]
    try:  # the demo suite's sentences give the tiny tokenizer full coverage of the synth tasks
        from . import synth
        from .tasks import get_task

        for name in (*synth.SOURCE_TASKS, *synth.TARGET_TASKS):
            for split in ("train", "dev", "test"):
                lines += [f"{e.input} {e.target}" for e in get_task(name).loader(split, None, 0)[:500]]
    except (ImportError, AttributeError):
        pass
    return lines


def build_tokenizer(arch: str, corpus: list[str] | None = None, vocab_size: int | None = None):
    """A word-level `PreTrainedTokenizerFast`. For T5, ids 0/1/2 are pad/eos/unk and </s> is appended
    to every encoded text (as T5's own tokenizer does); for Llama, <s> is prepended.

    `corpus` (default: the demo suite's sentences) is the text the vocabulary is learnt from, capped at
    `vocab_size` words (the most frequent, specials included) when given."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1,
                                        **({"vocab_size": vocab_size} if vocab_size else {}))
    tok.train_from_iterator(_corpus() if corpus is None else [" ".join(COMMON_WORDS), *corpus], trainer)
    if arch == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>")


def build_tiny(arch: str = "t5", seed: int = 0, d_model: int = 32, layers: int = 2):
    """(model, tokenizer) with random weights: a 2-layer T5 or Llama of width 32 by default."""
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    tokenizer = build_tokenizer(arch)
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if arch == "t5":
        cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // 2, d_ff=2 * d_model, num_layers=layers,
                       num_decoder_layers=layers, num_heads=2, decoder_start_token_id=0, pad_token_id=0,
                       eos_token_id=1, dropout_rate=0.0)
        model = T5ForConditionalGeneration(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=2 * d_model,
                          num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                          max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=3,
                          tie_word_embeddings=True)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r} (t5 or llama)")
    model.generation_config.pad_token_id = 0
    model.eval()
    return model, tokenizer


def save_tiny(out: str | Path, arch: str = "t5", seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer to `out` with `save_pretrained`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_tiny(arch, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
