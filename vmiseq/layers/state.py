"""The O(1) streaming state of one causal VMI-SA layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class VMISAState:
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

    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    def detach(self) -> "VMISAState":
        """A copy cut from the autograd graph (truncated back-propagation through time)."""
        return VMISAState(self.conv.detach(), self.h.detach(), self.position.clone())

    def to(self, device=None) -> "VMISAState":
        return VMISAState(self.conv.to(device), self.h.to(device), self.position.to(device))

    def select(self, index: Tensor) -> "VMISAState":
        """Keep (or reorder) sequences of the batch, e.g. for beam search or finished rows."""
        return VMISAState(self.conv[index], self.h[index], self.position[index])

    def nbytes(self) -> int:
        """Bytes held per batch (all sequences)."""
        return sum(t.numel() * t.element_size() for t in (self.conv, self.h, self.position))

    @staticmethod
    def cat(states: list["VMISAState"]) -> "VMISAState":
        """Concatenate states along the batch."""
        return VMISAState(
            torch.cat([s.conv for s in states]),
            torch.cat([s.h for s in states]),
            torch.cat([s.position for s in states]),
        )
