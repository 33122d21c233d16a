"""Tokenizers: Unicode round trips, streaming decode, save/load, bad input; text data helpers."""
from __future__ import annotations

import numpy as np
import pytest

from vmiseq.data.text import RandomWindows, SequentialWindows, bits_per_char, load_text, split_text, tokenize_cached
from vmiseq.data.tokenizer import Tokenizer

UNICODE = "Grüße, 世界! 😀 naïve café — ΑΒΓ αβγ\n\tтекст עברית\r\nend 🇫🇷"
CORPUS = ("The quick brown fox jumps over the lazy dog.\n" * 30) + UNICODE


def test_bpe_round_trips_any_unicode():
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=300)
    assert tok.vocab_size <= 300 and tok.kind == "bpe"
    for text in (UNICODE, "unseen 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓ and 中文字符", "", " leading and trailing  "):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("The quick brown fox")) < len("The quick brown fox")  # merges learned


def test_char_round_trips_its_alphabet_and_marks_unknowns():
    tok = Tokenizer.train_char(CORPUS)
    assert tok.kind == "char"
    ids = tok.encode(UNICODE)
    assert len(ids) == len(UNICODE)  # one id per character, multi-byte ones included
    assert tok.decode(ids) == UNICODE
    unk = tok.encode("Q")  # not in the corpus
    assert tok.decode(unk) == "[UNK]"
    chars = sorted(set(CORPUS))
    assert tok.encode("".join(chars)) == list(range(len(chars)))  # sorted ids, nanoGPT's order


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_stream_decode_equals_decode(kind):
    tok = Tokenizer.train(kind, CORPUS, vocab_size=280)
    ids = tok.encode(UNICODE)
    pieces = list(tok.stream_decode(ids))
    assert "".join(pieces) == UNICODE
    assert all("\ufffd" not in p for p in pieces)  # never prints half a character


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load(tmp_path, kind):
    tok = Tokenizer.train(kind, CORPUS, vocab_size=280)
    tok.save(tmp_path / "t")
    back = Tokenizer.load(tmp_path / "t")
    assert back.kind == kind and back.vocab_size == tok.vocab_size
    assert back.encode(UNICODE) == tok.encode(UNICODE) and back.eos_token_id == tok.eos_token_id


def test_bad_input():
    tok = Tokenizer.train_char("abc")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 99])
    with pytest.raises(TypeError, match="text: expected a str"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train_bpe("abc", vocab_size=100)
    with pytest.raises(ValueError, match="kind"):
        Tokenizer.train("word", "abc")
    with pytest.raises(ValueError, match="no text|some text"):
        Tokenizer.train_char("")
    with pytest.raises(ValueError, match="expected tokenizer.json"):
        Tokenizer.load("/nonexistent-dir")


# ------------------------------------------------------------------ data helpers
def test_builtin_corpus_and_split():
    text = load_text("kjv")
    assert text.startswith("In the beginning God created the heaven and the earth.")
    assert len(text) > 4_000_000
    train, val = split_text("0123456789", 0.1)
    assert (train, val) == ("012345678", "9")
    with pytest.raises(ValueError, match="val_fraction"):
        split_text("abc", 1.0)
    with pytest.raises(ValueError, match="not found"):
        load_text("./no/such/file.txt")


def test_tokenize_cached_and_windows(tmp_path):
    tok = Tokenizer.train_char(CORPUS)
    ids = tokenize_cached(CORPUS, tok, tmp_path)
    assert ids.tolist() == tok.encode(CORPUS)
    assert tokenize_cached(CORPUS, tok, tmp_path) is not None and list(tmp_path.glob("tokens-*.npy"))
    rw = RandomWindows(ids, block_size=8, batch_size=4, seed=3)
    x, y = rw.batch(5)
    assert x.shape == (4, 8) and np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())
    resumed = RandomWindows(ids, block_size=8, batch_size=4, seed=3, start=5)
    assert all(a.equal(b) for a, b in zip(next(iter(resumed)), (x, y)))  # resumable stream
    sw = SequentialWindows(ids, 8)
    assert len(sw) == (len(ids) - 1) // 8
    assert abs(bits_per_char(np.log(2), 10, 10) - 1.0) < 1e-12
