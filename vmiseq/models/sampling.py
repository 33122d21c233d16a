"""Token sampling for generation: argument checks, a private random generator, ``sample_next``.

Every ``generate`` call draws from its own ``torch.Generator`` (seeded by ``seed``, or by
one draw from the global RNG when ``seed`` is None, so ``torch.manual_seed`` still makes
unseeded runs repeatable): interleaved streams and concurrent threads never consume each
other's random numbers.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_generation_args(
    vocab_size: int,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    eos_token_id,
    seed,
    prefill_chunk_size,
) -> None:
    """Raise TypeError / ValueError naming the first bad argument of ``generate``."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if not _is_real(temperature):
        raise TypeError(f"temperature: expected a number >= 0, got {type(temperature).__name__} {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k <= 0):
        raise ValueError(f"top_k: expected a positive int or None, got {top_k!r}")
    if top_p is not None:
        if not _is_real(top_p):
            raise TypeError(f"top_p: expected a probability in (0, 1] or None, got {type(top_p).__name__} {top_p!r}")
        if not 0.0 < top_p <= 1.0:  # NaN fails too
            raise ValueError(f"top_p: expected a probability in (0, 1] or None, got {top_p!r}")
    if eos_token_id is not None:
        if not _is_int(eos_token_id):
            raise TypeError(f"eos_token_id: expected an int token id or None, got {type(eos_token_id).__name__} {eos_token_id!r}")
        if not 0 <= eos_token_id < vocab_size:
            raise ValueError(f"eos_token_id: expected an id in [0, {vocab_size}), got {eos_token_id!r}")
    if seed is not None:
        if not _is_int(seed):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__} {seed!r}")
        if not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
            raise ValueError(f"seed: expected an int in [-2**63, 2**64), got {seed!r}")
    check_chunk_size("prefill_chunk_size", prefill_chunk_size)


def check_chunk_size(name: str, chunk_size) -> None:
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size <= 0):
        raise ValueError(f"{name}: expected a positive int (tokens per prefill piece) or None, got {chunk_size!r}")


def make_generator(seed: Optional[int], device: torch.device) -> torch.Generator:
    """A private generator on ``device``: from ``seed``, else from one draw of the global RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Pick one token per row of ``logits`` (B, V): greedy when temperature is 0, else sample
    from the softmax restricted to the top-k and/or top-p (nucleus) set."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
