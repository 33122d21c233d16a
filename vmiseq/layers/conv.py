"""The causal depthwise convolution of the streaming mixers, with its rolling input buffer.

A causal conv of kernel K at token t reads inputs t-K+1..t, so a stream carries the last
K-1 inputs from one call to the next (the ``conv`` field of ``VMISAState`` and ``GLAState``,
(B, C, K-1)). One function serves a whole sequence, a chunk of a stream and a single
decoded token, so the buffer is kept in one place and every form computes the same sums.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_depthwise_conv(
    x: Tensor, buffer: Optional[Tensor], weight: Tensor, bias: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv of ``x`` (B, L, C) continuing from ``buffer``.

    Args:
        x: (B, L, C) tokens, channels last.
        buffer: (B, C, K-1) the K-1 inputs before x (a stream's state), or None for zeros
            (the start of a sequence).
        weight: (C, 1, K) the depthwise kernel of an ``nn.Conv1d(C, C, K, groups=C)``.
        bias: (C,) or None.

    Returns:
        (u, new_buffer): u (B, L, C) with ``u[:, t] = bias + sum_k w[:, k] * x[:, t-K+1+k]``,
        and the last K-1 inputs (B, C, K-1) to continue from.
    """
    K, L = weight.shape[-1], x.shape[1]
    if buffer is None:
        xp = F.pad(x, (0, 0, K - 1, 0))
    else:
        xp = torch.cat([buffer.to(x.dtype).transpose(1, 2), x], dim=1)  # (B, K-1+L, C)
    new_buffer = xp[:, L:].transpose(1, 2)  # the last K-1 inputs
    if L > K - 1:  # a copy, not a view (not even an empty one): the state must not keep a long input alive
        new_buffer = new_buffer.clone(memory_format=torch.contiguous_format)
    # K shifted multiply-adds in (B, L, C) layout: the same sum as F.conv1d, but several
    # times faster on CPU (forward and backward) for the small K used here.
    w = weight[:, 0]  # (C, K)
    u = xp[:, :L] * w[:, 0] if bias is None else torch.addcmul(bias, xp[:, :L], w[:, 0])
    for k in range(1, K):
        u = u.addcmul(xp[:, k : k + L], w[:, k])
    return u, new_buffer
