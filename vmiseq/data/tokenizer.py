"""Tokenizers for the language model, built on the Hugging Face ``tokenizers`` library.

Two kinds, both saved as one ``tokenizer.json`` (plus ``vmiseq_tokenizer.json`` meta) and
loaded with the model:

- ``"char"``: one id per character seen in the training text (sorted, as nanoGPT's
  char-level setup), plus ``[UNK]`` and ``<|endoftext|>``.
- ``"bpe"``: byte-level BPE trained on the corpus to a chosen vocabulary size (GPT-2 style:
  any Unicode text round-trips exactly, no unknown token).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

UNK = "[UNK]"
EOS = "<|endoftext|>"
KINDS = ("char", "bpe")
_FILE = "tokenizer.json"
_META = "vmiseq_tokenizer.json"


class Tokenizer:
    """A trained tokenizer: ``encode(text) -> list[int]``, ``decode(ids) -> str``."""

    def __init__(self, backend, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        self._tok = backend
        self.kind = kind

    # ------------------------------------------------------------------ training
    @classmethod
    def train_char(cls, texts: Union[str, Iterable[str]]) -> "Tokenizer":
        """Character-level vocabulary: every distinct character of ``texts``."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        chars: set[str] = set()
        for t in [texts] if isinstance(texts, str) else texts:
            chars.update(t)
        if not chars:
            raise ValueError("texts: expected some text to build a character vocabulary from, got none")
        vocab = {c: i for i, c in enumerate(sorted(chars))}
        vocab[UNK] = len(vocab)
        vocab[EOS] = len(vocab)
        tok = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        # Oniguruma's (?m) lets "." match newlines too: every character is its own piece.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m)."), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens([EOS])
        return cls(tok, "char")

    @classmethod
    def train_bpe(cls, texts: Union[str, Iterable[str]], vocab_size: int = 1024, min_frequency: int = 2) -> "Tokenizer":
        """Byte-level BPE with ``vocab_size`` ids (>= 258: 256 bytes + ``[UNK]``-free + EOS)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if not isinstance(vocab_size, int) or vocab_size < 257:
            raise ValueError(f"vocab_size: expected an int >= 257 (256 bytes + end-of-text), got {vocab_size!r}")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_chunks([texts] if isinstance(texts, str) else texts), trainer=trainer)
        return cls(tok, "bpe")

    @classmethod
    def train(cls, kind: str, texts, vocab_size: int = 1024) -> "Tokenizer":
        """``train_char`` or ``train_bpe`` by name."""
        if kind == "char":
            return cls.train_char(texts)
        if kind == "bpe":
            return cls.train_bpe(texts, vocab_size)
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")

    # ------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self):
        """The underlying ``tokenizers.Tokenizer`` (shared, e.g., with transformers' fast tokenizer)."""
        return self._tok

    @property
    def eos_token_id(self) -> int:
        return self._tok.token_to_id(EOS)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (special tokens kept, so an end-of-text marker stays visible)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids: token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=False)

    def stream_decode(self, ids: Iterable[int]) -> Iterator[str]:
        """Yield text pieces as ids arrive; holds back bytes of an unfinished UTF-8 character."""
        pending: list[int] = []  # ids since the last complete character boundary
        for i in ids:
            pending.append(int(i))
            text = self.decode(pending)
            if text.endswith("\ufffd"):
                continue  # a multi-byte character split across tokens: wait for the rest
            pending = []
            if text:
                yield text

    # ------------------------------------------------------------------ files
    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``tokenizer.json`` and the vmiseq meta file into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path / _FILE))
        (path / _META).write_text(json.dumps({"kind": self.kind, "vocab_size": self.vocab_size}))
        return path

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "Tokenizer":
        """Load a tokenizer written by :meth:`save`."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(directory)
        if not (path / _FILE).is_file() or not (path / _META).is_file():
            raise ValueError(f"directory: expected {_FILE} and {_META} in {str(path)!r}, not found")
        try:
            meta = json.loads((path / _META).read_text())
            tok = HFTokenizer.from_file(str(path / _FILE))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
            raise ValueError(f"directory: unreadable tokenizer files in {str(path)!r}: {exc}") from exc
        return cls(tok, meta.get("kind", "bpe"))

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _chunks(texts: Iterable[str], size: int = 1 << 16) -> Iterator[str]:
    """Feed long texts to the trainer in pieces (it parallelises over them)."""
    for t in texts:
        for i in range(0, len(t), size):
            yield t[i : i + size]
