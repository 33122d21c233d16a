"""Generation for :class:`~vmiseq.models.lm.VMISAForCausalLM`: sampling, streaming, ragged batches.

``LMGenerationMixin`` gives the model ``generate`` / ``generate_stream`` on top of its state
API (``prefill``, ``step``): each prompt is prefilled with the parallel (chunked) path, then
the model advances one token at a time carrying only its per-layer states. Prompts of
different lengths are prefilled in groups of equal length, so every row equals generating
that prompt alone (no padding enters any state).

Every call draws from its own ``torch.Generator`` (seeded by ``seed``, or by one draw from
the global RNG when ``seed`` is None, so ``torch.manual_seed`` still makes unseeded runs
repeatable): interleaved streams and concurrent threads never consume each other's random
numbers.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Iterator, Optional, TypedDict, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.dropout import inference_context
from .config import is_int

_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


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
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if not _is_real(temperature):
        raise TypeError(f"temperature: expected a number >= 0, got {type(temperature).__name__} {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k <= 0):
        raise ValueError(f"top_k: expected a positive int or None, got {top_k!r}")
    if top_p is not None:
        if not _is_real(top_p):
            raise TypeError(f"top_p: expected a probability in (0, 1] or None, got {type(top_p).__name__} {top_p!r}")
        if not 0.0 < top_p <= 1.0:  # NaN fails too
            raise ValueError(f"top_p: expected a probability in (0, 1] or None, got {top_p!r}")
    if eos_token_id is not None:
        if not is_int(eos_token_id):
            raise TypeError(f"eos_token_id: expected an int token id or None, got {type(eos_token_id).__name__} {eos_token_id!r}")
        if not 0 <= eos_token_id < vocab_size:
            raise ValueError(f"eos_token_id: expected an id in [0, {vocab_size}), got {eos_token_id!r}")
    if seed is not None:
        if not is_int(seed):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__} {seed!r}")
        if not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
            raise ValueError(f"seed: expected an int in [-2**63, 2**64), got {seed!r}")
    check_chunk_size("prefill_chunk_size", prefill_chunk_size)


class SamplingOptions(TypedDict, total=False):
    """The keyword options of ``generate`` / ``generate_stream`` (defaults: ``SAMPLING_DEFAULTS``)."""

    temperature: float
    top_k: Optional[int]
    top_p: Optional[float]
    eos_token_id: Optional[int]
    seed: Optional[int]
    prefill_chunk_size: Optional[int]


SAMPLING_DEFAULTS: dict = dict(temperature=1.0, top_k=None, top_p=None, eos_token_id=None, seed=None, prefill_chunk_size=4096)


def sampling_options(vocab_size: int, max_new_tokens, options: dict) -> dict:
    """``options`` completed with the defaults and checked (TypeError for an unknown name)."""
    unknown = sorted(set(options) - set(SAMPLING_DEFAULTS))
    if unknown:
        raise TypeError(f"generate: unexpected keyword argument(s) {unknown}; expected some of {sorted(SAMPLING_DEFAULTS)}")
    opts = {**SAMPLING_DEFAULTS, **options}
    check_generation_args(vocab_size, max_new_tokens, **opts)
    return opts


def check_chunk_size(name: str, chunk_size) -> None:
    if chunk_size is not None and (not is_int(chunk_size) or chunk_size <= 0):
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


class LMGenerationMixin:
    """``generate`` and ``generate_stream`` for a causal LM with ``prefill`` / ``step``
    (``VMISAForCausalLM``); uses its ``config.vocab_size``, ``_check_ids``, ``_check_length``
    and ``tok_emb`` (the device of new tensors)."""

    def generate(
        self,
        input_ids,
        max_new_tokens: int = 100,
        *,
        streamer: Optional[Callable[[Tensor], None]] = None,
        **options: Unpack[SamplingOptions],
    ):
        """Sample ``max_new_tokens`` tokens after each prompt.

        Args:
            input_ids: a (B, L) LongTensor (prompts of equal length), or a list of 1-D
                tensors / lists of ids (prompts of different lengths).
            max_new_tokens: tokens to add (0 returns the prompts unchanged).
            streamer: called with the (B,) tensor of new tokens after every step.
            **options (keyword only, see :class:`SamplingOptions`):
            temperature: softmax temperature; 0 means greedy (argmax).
            top_k: sample only among the k most likely tokens.
            top_p: sample only from the smallest set whose probability reaches top_p.
            eos_token_id: a row stops after producing it (later positions repeat it).
            seed: seeds this call's private generator; None draws its seed from the global
                RNG once (``torch.manual_seed`` makes the run repeatable).
            prefill_chunk_size: prompts longer than this are prefilled in pieces (None: one).

        The model's train/eval flag is neither read nor written: generation always runs
        without dropout (inside ``inference_context``), so it may interleave with training
        or with other generations, in any thread, and each stream gets the tokens it would
        get alone.

        Returns:
            (B, L + max_new_tokens) LongTensor for tensor input; a list of 1-D tensors (each
            prompt followed by its new tokens, cut after eos) for list input.
        """
        if streamer is not None and not callable(streamer):
            raise TypeError(f"streamer: expected a callable or None, got {type(streamer).__name__}")
        prompts, as_tensor = self._normalise_prompts(input_ids)
        pieces = [[] for _ in prompts]
        eos_token_id = options.get("eos_token_id")
        for tokens in self.generate_stream(prompts, max_new_tokens, **options):
            if streamer is not None:
                streamer(tokens)
            for row, t in enumerate(tokens.tolist()):
                pieces[row].append(t)
        outs = [torch.cat([p, torch.tensor(new, dtype=torch.long, device=p.device)]) for p, new in zip(prompts, pieces)]
        if as_tensor:
            width = len(prompts[0]) + max_new_tokens
            fill = eos_token_id if eos_token_id is not None else 0
            return torch.stack([F.pad(o, (0, width - len(o)), value=fill) for o in outs])
        if eos_token_id is not None:
            outs = [_cut_after(o, eos_token_id, len(p)) for o, p in zip(outs, prompts)]
        return outs

    def _normalise_prompts(self, input_ids) -> tuple[list[Tensor], bool]:
        device = self.tok_emb.weight.device
        if isinstance(input_ids, Tensor):
            if input_ids.dim() == 1:
                input_ids = input_ids.unsqueeze(0)
            ids = self._check_ids(input_ids)
            if ids.shape[1] == 0:
                raise ValueError("input_ids: expected a non-empty prompt, got 0 tokens")
            return [row.to(device) for row in ids], True
        if not isinstance(input_ids, (list, tuple)) or not input_ids:
            raise ValueError(f"input_ids: expected a (B, L) tensor or a non-empty list of prompts, got {input_ids!r}")
        prompts = []
        for i, p in enumerate(input_ids):
            t = p if isinstance(p, Tensor) else _ids_tensor(p, f"input_ids[{i}]")
            if t.dim() != 1 or t.numel() == 0:
                raise ValueError(f"input_ids[{i}]: expected a non-empty 1-D list of token ids, got shape {tuple(t.shape)}")
            prompts.append(self._check_ids(t.unsqueeze(0), f"input_ids[{i}]")[0].to(device))
        return prompts, False

    @torch.no_grad()
    def generate_stream(
        self, input_ids, max_new_tokens: int = 100, **options: Unpack[SamplingOptions]
    ) -> Iterator[Tensor]:
        """Yield a (B,) LongTensor of new tokens per step (finished rows repeat ``eos_token_id``).

        Same arguments as :meth:`generate` (without ``streamer``). The state stays O(1) per
        sequence for the VMI-SA and GLA mixers whatever the number of tokens.
        """
        opts = sampling_options(self.config.vocab_size, max_new_tokens, options)
        temperature, top_k, top_p, eos_token_id = opts["temperature"], opts["top_k"], opts["top_p"], opts["eos_token_id"]
        prompts, _ = self._normalise_prompts(input_ids)
        if max_new_tokens == 0:
            return
        longest = max(len(p) for p in prompts)
        self._check_length(longest + max_new_tokens - 1)
        # This call's own generator, made at the stream's first next(): with seed=None its one
        # draw from the global RNG happens then, whatever runs between later tokens.
        gen = make_generator(opts["seed"], prompts[0].device) if temperature != 0 else None
        # inference_context: no dropout for these calls only; self.training stays as it is
        # (each context is set and reset between yields, never across one)
        with inference_context():
            logits, state = self._prefill_ragged(prompts, opts["prefill_chunk_size"])
        done = torch.zeros(len(prompts), dtype=torch.bool, device=logits.device)
        for i in range(max_new_tokens):
            tok = sample_next(logits, temperature, top_k, top_p, gen)
            if eos_token_id is not None:
                tok = torch.where(done, torch.full_like(tok, int(eos_token_id)), tok)
                done = done | (tok == int(eos_token_id))
            yield tok
            if i + 1 == max_new_tokens or (eos_token_id is not None and bool(done.all())):
                break
            with inference_context():
                logits, state = self.step(tok, state)

    def _prefill_ragged(self, prompts: list[Tensor], chunk_size: Optional[int]):
        """Prefill prompts of any lengths; rows grouped by length run as one batch each, so
        every row is computed exactly as if it were alone (no padding enters any state)."""
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        if len(groups) == 1:
            return self.prefill(torch.stack(prompts), chunk_size=chunk_size)
        order, logits, states = [], [], []
        for length, rows in groups.items():
            lg, st = self.prefill(torch.stack([prompts[r] for r in rows]), chunk_size=chunk_size)
            order.extend(rows)
            logits.append(lg)
            states.append(st)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(logits[0].device)
        return torch.cat(logits)[inverse], type(states[0]).cat(states).select(inverse)


def _ids_tensor(ids, name: str) -> Tensor:
    """A list of ids -> a tensor with the dtype torch infers (floats stay floats, so that
    ``_check_ids`` rejects them instead of truncating 1.5 to 1)."""
    try:
        t = torch.tensor(list(ids))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name}: expected a list of int token ids, got {ids!r}") from exc
    return t.long() if t.numel() == 0 else t


def _cut_after(seq: Tensor, eos: int, start: int) -> Tensor:
    hits = (seq[start:] == eos).nonzero()
    return seq if hits.numel() == 0 else seq[: start + int(hits[0]) + 1]

