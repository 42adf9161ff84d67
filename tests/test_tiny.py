"""Tiny random backbones and their word-level tokenizer."""

from bmtpt.tiny import COMMON_WORDS, build_tokenizer


def test_tokenizer_learns_a_given_corpus_within_a_vocabulary_cap():
    corpus = ["zebra zebra zebra quokka quokka"] * 3
    full = build_tokenizer("t5", corpus)
    assert {"zebra", "quokka", *COMMON_WORDS[:20]} <= set(full.get_vocab())
    assert full("zebra quokka").input_ids[-1] == full.eos_token_id  # T5: </s> appended
    capped = build_tokenizer("t5", corpus, vocab_size=6)
    assert len(capped) == 6  # the 4 specials and the two most frequent words
    assert capped.unk_token_id not in capped("zebra quokka").input_ids
    assert capped.convert_tokens_to_ids("the") == capped.unk_token_id
