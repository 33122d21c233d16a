"""Dropout that a caller can switch off for one call without touching ``module.training``.

``model.eval()`` flips a flag shared by every user of the model: generation that did
``eval()`` ... ``train(was_training)`` around its work changed the mode under a training
loop, and two interleaved generators restored each other's mode at the wrong time. Inside
``with inference_context():`` every vmiseq dropout (and drop-path) acts as in eval mode
for the current thread / asyncio task only; ``module.training`` is never written.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

_INFERENCE = contextvars.ContextVar("vmiseq_inference", default=False)


@contextlib.contextmanager
def inference_context() -> Iterator[None]:
    """Run vmiseq modules without dropout in this context (thread-local, nests)."""
    token = _INFERENCE.set(True)
    try:
        yield
    finally:
        _INFERENCE.reset(token)


def dropout_active(module: nn.Module) -> bool:
    """``module.training``, unless inside :func:`inference_context`.

    torch.compile traces ``module.training`` alone (generation runs eagerly).
    """
    if not module.training:
        return False
    return torch.compiler.is_compiling() or not _INFERENCE.get()


class Dropout(nn.Dropout):
    """``nn.Dropout`` that also honours :func:`inference_context` (same state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not dropout_active(self):
            return x
        return F.dropout(x, self.p, True, self.inplace)
