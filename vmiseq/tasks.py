"""Synthetic capability tasks: what a token mixer can remember, copy and look up.

Each task is a small frozen dataclass that draws batches of ``(inputs, targets)``, both
(B, L) int64, with the targets *aligned* to the inputs (the model predicts ``targets[:, t]``
from position t, the nanoGPT convention of ``VMISAForCausalLM(..., targets=...)``) and
``IGNORE`` (-100) wherever nothing is scored. Draws are seeded and deterministic: the same
seed gives the same batches on every machine, so a test, a training loop and an evaluation
can share one definition of a task.

- :class:`MQAR`: multi-query associative recall (Arora et al. 2023, "Zoology"): key-value
  pairs, then the keys again in another order; answer each with its value.
- :class:`SelectiveCopy`: selective copying (Gu & Dao 2023, Mamba): a few data tokens
  scattered among blanks, then one marker per data token; answer them in order.
- :class:`InductionHeads`: induction heads (Olsson et al. 2022): a trigger token followed by
  a random token somewhere in random text; at the end the trigger again; answer that token.
- :class:`CopyAtDistance`: random tokens; at every position t >= d answer the token seen d
  positions earlier (a fixed delay line).

Example::

    task = MQAR(seq_len=64, num_pairs=8)
    for batch in task.batches(batch_size=32, seed=0):   # an endless, reproducible stream
        loss = model(batch.inputs, targets=batch.targets).loss
        ...
    accuracy(model(batch.inputs).logits, batch.targets)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch
from torch import Tensor

IGNORE = -100  # target value of unscored positions (cross_entropy's ignore_index)

__all__ = ["IGNORE", "TaskBatch", "SyntheticTask", "MQAR", "SelectiveCopy", "InductionHeads", "CopyAtDistance", "accuracy"]


@dataclass(frozen=True)
class TaskBatch:
    """One batch of a task: ``inputs`` (B, L) token ids and aligned ``targets`` (B, L),
    ``IGNORE`` where a position is not scored."""

    inputs: Tensor
    targets: Tensor

    def to(self, device) -> "TaskBatch":
        return TaskBatch(self.inputs.to(device), self.targets.to(device))


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def _generator(seed: Union[int, torch.Generator, None]) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"seed: expected an int, a torch.Generator or None, got {type(seed).__name__}")
    gen = torch.Generator()
    gen.manual_seed(0 if seed is None else seed)
    return gen


def _random_subsets(batch: int, population: int, k: int, gen: torch.Generator) -> Tensor:
    """(batch, k) distinct indices in [0, population) per row, in random order."""
    return torch.rand(batch, population, generator=gen).argsort(dim=1)[:, :k]


class SyntheticTask:
    """Shared batching for the tasks: subclasses define ``vocab_size``, ``seq_len`` and
    ``_draw(batch_size, gen)``."""

    vocab_size: int
    seq_len: int

    def _draw(self, batch_size: int, gen: torch.Generator) -> TaskBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, batch_size: int, seed: Union[int, torch.Generator, None] = 0) -> TaskBatch:
        """One batch of ``batch_size`` sequences. ``seed``: an int (the same batch every
        time) or a ``torch.Generator`` (advanced by the draw, for a stream of batches)."""
        _positive_int("batch_size", batch_size)
        return self._draw(batch_size, _generator(seed))

    def batches(self, batch_size: int, seed: int = 0, num_batches: Optional[int] = None) -> Iterator[TaskBatch]:
        """A reproducible stream of batches (endless unless ``num_batches`` is given)."""
        _positive_int("batch_size", batch_size)
        if num_batches is not None:
            _positive_int("num_batches", num_batches, 0)
        gen = _generator(seed)
        i = 0
        while num_batches is None or i < num_batches:
            yield self._draw(batch_size, gen)
            i += 1


@dataclass(frozen=True)
class MQAR(SyntheticTask):
    """Multi-query associative recall (Zoology).

    ``k_1 v_1 k_2 v_2 ... k_N v_N`` (distinct keys from the lower half of the vocabulary,
    values from the upper half), then the rest of the sequence is blanks (id 0) with each of
    the N keys placed once, in a random order at random positions; the target at a query key
    is its value. Needs ``seq_len >= 3 * num_pairs`` and ``vocab_size // 2 - 1 >= num_pairs``.
    """

    seq_len: int = 64
    num_pairs: int = 8
    vocab_size: int = 256

    def __post_init__(self) -> None:
        _positive_int("num_pairs", self.num_pairs)
        _positive_int("vocab_size", self.vocab_size, 4)
        _positive_int("seq_len", self.seq_len, 3 * self.num_pairs)
        if self.vocab_size // 2 - 1 < self.num_pairs:
            raise ValueError(
                f"vocab_size: {self.num_pairs} distinct keys need vocab_size >= {2 * (self.num_pairs + 1)}, got {self.vocab_size}"
            )

    def _draw(self, batch_size: int, gen: torch.Generator) -> TaskBatch:
        B, N, L = batch_size, self.num_pairs, self.seq_len
        half = self.vocab_size // 2
        keys = _random_subsets(B, half - 1, N, gen) + 1  # ids 1 .. half-1 (0 is the blank)
        values = torch.randint(half, self.vocab_size, (B, N), generator=gen)
        inputs = torch.zeros(B, L, dtype=torch.long)
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        inputs[:, 0 : 2 * N : 2], inputs[:, 1 : 2 * N : 2] = keys, values
        slots = _random_subsets(B, L - 2 * N, N, gen).sort(dim=1).values + 2 * N  # query positions
        order = _random_subsets(B, N, N, gen)  # which pair each query asks for
        inputs.scatter_(1, slots, keys.gather(1, order))
        targets.scatter_(1, slots, values.gather(1, order))
        return TaskBatch(inputs, targets)


@dataclass(frozen=True)
class SelectiveCopy(SyntheticTask):
    """Selective copying (Mamba): ``num_tokens`` data tokens (ids 1 .. vocab_size-2) at
    random positions of a ``context_len`` stretch of blanks (id 0), then ``num_tokens``
    markers (id vocab_size-1); the target at the i-th marker is the i-th data token."""

    context_len: int = 64
    num_tokens: int = 8
    vocab_size: int = 16

    def __post_init__(self) -> None:
        _positive_int("num_tokens", self.num_tokens)
        _positive_int("context_len", self.context_len, self.num_tokens)
        _positive_int("vocab_size", self.vocab_size, 3)

    @property
    def seq_len(self) -> int:  # type: ignore[override]
        return self.context_len + self.num_tokens

    def _draw(self, batch_size: int, gen: torch.Generator) -> TaskBatch:
        B, M, C = batch_size, self.num_tokens, self.context_len
        data = torch.randint(1, self.vocab_size - 1, (B, M), generator=gen)
        slots = _random_subsets(B, C, M, gen).sort(dim=1).values
        inputs = torch.zeros(B, C + M, dtype=torch.long)
        inputs.scatter_(1, slots, data)
        inputs[:, C:] = self.vocab_size - 1
        targets = torch.full((B, C + M), IGNORE, dtype=torch.long)
        targets[:, C:] = data
        return TaskBatch(inputs, targets)


@dataclass(frozen=True)
class InductionHeads(SyntheticTask):
    """Induction heads: random tokens (ids 0 .. vocab_size-2); at a random position the
    trigger (id vocab_size-1) followed by a random token X; the last token is the trigger
    again and its target is X (one scored position per sequence)."""

    seq_len: int = 64
    vocab_size: int = 16

    def __post_init__(self) -> None:
        _positive_int("seq_len", self.seq_len, 4)
        _positive_int("vocab_size", self.vocab_size, 3)

    def _draw(self, batch_size: int, gen: torch.Generator) -> TaskBatch:
        B, L = batch_size, self.seq_len
        trigger = self.vocab_size - 1
        inputs = torch.randint(0, trigger, (B, L), generator=gen)
        at = torch.randint(0, L - 2, (B, 1), generator=gen)  # trigger position; X at at+1 < L-1
        inputs.scatter_(1, at, trigger)
        inputs[:, -1] = trigger
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        targets[:, -1] = inputs.gather(1, at + 1).squeeze(1)
        return TaskBatch(inputs, targets)


@dataclass(frozen=True)
class CopyAtDistance(SyntheticTask):
    """A delay line: uniform random tokens; at every position t >= ``distance`` the target
    is the input at t - ``distance`` (``seq_len - distance`` scored positions per sequence)."""

    distance: int = 8
    seq_len: int = 64
    vocab_size: int = 16

    def __post_init__(self) -> None:
        _positive_int("distance", self.distance)
        _positive_int("seq_len", self.seq_len, self.distance + 1)
        _positive_int("vocab_size", self.vocab_size, 2)

    def _draw(self, batch_size: int, gen: torch.Generator) -> TaskBatch:
        inputs = torch.randint(0, self.vocab_size, (batch_size, self.seq_len), generator=gen)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, self.distance :] = inputs[:, : -self.distance]
        return TaskBatch(inputs, targets)


def accuracy(logits: Tensor, targets: Tensor) -> float:
    """Fraction of scored positions (targets != IGNORE) where the argmax of ``logits``
    (B, L, V) equals the target; NaN when nothing is scored."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits: expected shape {tuple(targets.shape)} + (V,), got {tuple(logits.shape)}")
    scored = targets != IGNORE
    n = int(scored.sum())
    if n == 0:
        return float("nan")
    return float((logits.argmax(dim=-1)[scored] == targets[scored]).sum()) / n
