"""Streaming states: the O(1) state of a causal VMI-SA layer, and the batch plumbing every
layer state shares (the GLA state and the attention KV cache use it too)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

S = TypeVar("S", bound="BatchedState")


@dataclass
class BatchedState:
    """A dataclass of tensors that all have the batch as their first dimension.

    Subclasses only declare their fields; detaching, moving, selecting rows, concatenating
    batches and counting bytes work field by field. Every state has a ``position`` field,
    (B,) int64: the absolute position of each sequence's next token.
    """

    def _fields(self) -> list[Tensor]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @property
    def batch_size(self) -> int:
        return self.position.shape[0]

    def detach(self: S) -> S:
        """A copy cut from the autograd graph (truncated back-propagation through time)."""
        return type(self)(*(t.detach() if t.is_floating_point() else t.clone() for t in self._fields()))

    def to(self: S, device=None) -> S:
        return type(self)(*(t.to(device) for t in self._fields()))

    def select(self: S, index: Tensor) -> S:
        """Keep (or reorder) sequences of the batch, e.g. for beam search or finished rows."""
        return type(self)(*(t[index] for t in self._fields()))

    def nbytes(self) -> int:
        """Bytes held for the whole batch."""
        return sum(t.numel() * t.element_size() for t in self._fields())

    @classmethod
    def cat(cls: type[S], states: list[S]) -> S:
        """Concatenate states along the batch."""
        columns = zip(*(s._fields() for s in states))
        return cls(*(torch.cat(list(c)) for c in columns))


@dataclass
class VMISAState(BatchedState):
    """Everything a causal layer needs to continue a sequence; its size never grows.

    Attributes:
        conv: (B, C, K-1) the last K-1 inputs of the depthwise causal convolution.
        h: (B, D) the VMI-SA accumulator, in the operator's accumulation dtype.
        position: (B,) int64 absolute position of the next token (for the rank mask
            and position alpha).
    """

    conv: Tensor
    h: Tensor
    position: Tensor
