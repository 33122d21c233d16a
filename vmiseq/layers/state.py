"""Streaming states: the O(1) state of a causal VMI-SA layer, the batch plumbing every
layer state shares (the GLA state and the attention KV cache use it too), and the state
protocol every causal mixer shares (``init_state``, ``check_state``, ``step``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, TypeVar, Union

import torch
import torch.nn as nn
from torch import Tensor

from .checks import check_dtype, check_position_dtype

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


# A state field's shape: ints, and names for the dimensions that may vary (a KV cache's
# capacity); ``init_state`` sizes a named dimension from its keyword argument.
Shape = tuple[Union[int, str], ...]


class StreamingMixer(nn.Module):
    """The state protocol of a causal token mixer, written once for every mixer.

    A subclass sets ``state_class`` and describes its state in :meth:`state_fields`; it
    gets ``init_state`` (zeros at position 0), ``check_state`` (type, shapes and device,
    each error naming the field) and ``step`` (one token through ``forward``). Its
    ``forward(x, state=None, output_state=False)`` takes (B, L, C) with C = ``self.dim``.
    """

    state_class: type = BatchedState
    dim: int

    def state_fields(self, batch_size: int, dtype: torch.dtype) -> dict[str, tuple[Shape, torch.dtype]]:
        """Name -> (shape, dtype) of every field but ``position``, for inputs of ``dtype``."""
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=None, **dims: int):
        """A fresh state at position 0 for ``batch_size`` sequences (``dims`` sizes the
        named dimensions of :meth:`state_fields`, 0 by default)."""
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        ref = next(self.parameters())
        device = device if device is not None else ref.device
        dtype = dtype if dtype is not None else ref.dtype
        fields = {
            name: torch.zeros([dims.get(d, 0) if isinstance(d, str) else d for d in shape], device=device, dtype=dt)
            for name, (shape, dt) in self.state_fields(batch_size, dtype).items()
        }
        return self.state_class(**fields, position=torch.zeros(batch_size, dtype=torch.long, device=device))

    def check_state(self, state: BatchedState, x: Tensor) -> None:
        """Raise a clear error when ``state`` does not belong to this layer and batch."""
        if not isinstance(state, self.state_class):
            raise TypeError(f"state: expected a {self.state_class.__name__}, got {type(state).__name__}")
        B = x.shape[0]
        expected: dict[str, Shape] = {name: shape for name, (shape, _) in self.state_fields(B, x.dtype).items()}
        expected["position"] = (B,)
        for name, shape in expected.items():
            t = getattr(state, name)
            actual = tuple(t.shape)
            if actual != shape and (len(actual) != len(shape) or any(e != n for e, n in zip(shape, actual) if isinstance(e, int))):
                shown = "(" + ", ".join(str(e) for e in shape) + ("," if len(shape) == 1 else "") + ")"
                raise ValueError(
                    f"state.{name}: expected shape {shown} (batch {B}, width {self.dim}), got {actual}: "
                    "was this state made for another batch size or layer?"
                )
            if t.device != x.device:
                raise ValueError(f"state.{name}: expected a tensor on {x.device} (the device of x), got {t.device}")
        check_position_dtype(state.position)

    def check_sequence(self, x) -> None:
        """``x`` must be (B, L, C) tokens in the dtype of the layer's parameters."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (B, L, C) with C={self.dim}, got {shape}")
        check_dtype("x", x, next(self.parameters()).dtype)

    def check_token(self, x_t) -> None:
        """``x_t`` must be one token per sequence, (B, C)."""
        if not isinstance(x_t, Tensor) or x_t.dim() != 2:
            shape = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"x_t: expected one token per sequence, shape (B, C) with C={self.dim}, got {shape}")

    def step(self, x_t: Tensor, state: Optional[BatchedState]):
        """Advance one token: x_t (B, C) -> (y_t (B, C), new state)."""
        self.check_token(x_t)
        y, new_state = self(x_t.unsqueeze(1), state, output_state=True)
        return y.squeeze(1), new_state


def next_position(state: Optional[BatchedState], x: Tensor) -> Tensor:
    """(B,) position after the L tokens of ``x`` (B, L, ...), continuing ``state`` (or from 0)."""
    B, L = x.shape[:2]
    if state is None:
        return torch.full((B,), L, dtype=torch.long, device=x.device)
    return state.position + L
