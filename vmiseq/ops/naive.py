"""The readable reference: a plain loop over time, exactly the paper's recurrence (Eq. 9/10).

Every fast path (chunked torch, Triton) is tested against these functions.
Inputs arrive already validated and normalised by :mod:`vmiseq.ops.scan`:
``alpha`` and ``decay`` are (B|1, L, 1|D), ``beta`` is () or (D,), ``positions``
is (B|1, 1) absolute position of the first token.
"""
from __future__ import annotations

import torch
from torch import Tensor


def rank_mask(positions: Tensor, D: int) -> Tensor:
    """Eq. 8: ``M[t, c] = 1 if c <= t``. positions (..., L) -> bool mask (..., L, D)."""
    channels = torch.arange(D, device=positions.device)
    return channels <= positions.unsqueeze(-1)


def scan_naive(
    z: Tensor,
    alpha: Tensor,
    beta: Tensor,
    initial_state: Tensor,
    positions: Tensor,
    use_rank_mask: bool,
    decay: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Causal VMI-SA, one token at a time.

    h_t = a_t * h_{t-1} + alpha_t * z_t ;  y_t = M_t * h_t + beta * z_t
    ``z`` (B, L, D) in the accumulation dtype; returns (y, h_L) in that dtype.
    """
    B, L, D = z.shape
    h = initial_state
    ys = []
    for t in range(L):
        if decay is not None:
            h = decay[:, t] * h
        h = h + alpha[:, t] * z[:, t]
        out = h
        if use_rank_mask:
            out = out * rank_mask(positions[:, 0] + t, D).to(z.dtype)
        ys.append(out + beta * z[:, t])
    y = torch.stack(ys, dim=1) if ys else z.new_zeros(B, 0, D)
    return y, h


def global_naive(z: Tensor, alpha: Tensor, beta0: Tensor, beta1: Tensor, use_rank_mask: bool) -> Tensor:
    """Non-causal VMI-SA (Eq. 10), a direct double loop over tokens.

    s = sum_t alpha_t * (M_t * z_t);  y_t = beta0 * s + beta1 * z_t
    """
    B, L, D = z.shape
    s = z.new_zeros(B, D)
    for t in range(L):
        contrib = alpha[:, t] * z[:, t]
        if use_rank_mask:
            contrib = contrib * rank_mask(torch.tensor(t, device=z.device), D).to(z.dtype)
        s = s + contrib
    return beta0 * s.unsqueeze(1) + beta1 * z
