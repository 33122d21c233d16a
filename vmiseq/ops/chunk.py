"""The vectorised PyTorch backend: a chunked scan that is the CPU default.

Within a chunk of ``chunk_size`` tokens the prefix sum is one batched matmul with a
lower-triangular matrix (BLAS does the work); across chunks only the chunk totals are
scanned, a tensor ``chunk_size`` times smaller. With a decay gate the in-chunk scan is a
short loop over the chunk's positions, vectorised over every chunk at once, and the
chunk carries are scanned recursively by the same function (no log-space division, so no
overflow when the gate is small).
Inputs arrive validated and normalised by :mod:`vmiseq.ops.vmisa`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import rank_mask

DEFAULT_CHUNK = 64


def _pad_time(x: Tensor, n_pad: int, value: float) -> Tensor:
    if n_pad == 0:
        return x
    return F.pad(x, (0, 0, 0, n_pad), value=value)


def prefix_sum(u: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Inclusive cumulative sum of ``u`` (B, L, D) over L, chunked through matmul."""
    B, L, D = u.shape
    if L <= chunk_size:
        return torch.cumsum(u, dim=1)
    n = -(-L // chunk_size)
    up = _pad_time(u, n * chunk_size - L, 0.0).reshape(B, n, chunk_size, D)
    tri = torch.ones(chunk_size, chunk_size, dtype=u.dtype, device=u.device).tril_()
    local = torch.matmul(tri, up)  # (B, n, C, D): in-chunk prefix sums
    totals = local[:, :, -1]  # (B, n, D)
    carry = torch.cumsum(totals, dim=1) - totals  # exclusive scan of chunk totals
    h = local + carry.unsqueeze(2)
    return h.reshape(B, n * chunk_size, D)[:, :L]


def linear_scan(u: Tensor, a: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """h_t = a_t * h_{t-1} + u_t with h_{-1} = 0; u (B, L, D), a (B|1, L, 1|D)."""
    B, L, D = u.shape
    if L <= chunk_size:
        hs, h = [], None
        for t in range(L):
            h = u[:, t] if h is None else a[:, t] * h + u[:, t]
            hs.append(h)
        return torch.stack(hs, dim=1)
    n = -(-L // chunk_size)
    pad = n * chunk_size - L
    up = _pad_time(u, pad, 0.0).reshape(B, n, chunk_size, D)
    ap = _pad_time(a, pad, 1.0)
    ap = ap.reshape(ap.shape[0], n, chunk_size, ap.shape[-1])
    # In-chunk scan from a zero state: a loop over positions, vectorised over chunks.
    hs, h = [], None
    for i in range(chunk_size):
        h = up[:, :, i] if h is None else ap[:, :, i] * h + up[:, :, i]
        hs.append(h)
    local = torch.stack(hs, dim=2)  # (B, n, C, D)
    decay_to = torch.cumprod(ap, dim=2)  # product of a within the chunk up to i
    # Carry across chunks: the same recurrence on (chunk total, chunk decay).
    total_decay = decay_to[:, :, -1].expand(B, n, -1) if decay_to.shape[0] == 1 else decay_to[:, :, -1]
    carry_incl = linear_scan(local[:, :, -1], total_decay, chunk_size)
    carry = F.pad(carry_incl[:, :-1], (0, 0, 1, 0))  # state entering each chunk
    h = local + decay_to * carry.unsqueeze(2)
    return h.reshape(B, n * chunk_size, D)[:, :L]


def scan_chunk(
    z: Tensor,
    alpha: Tensor,
    beta: Tensor,
    initial_state: Tensor,
    positions: Tensor,
    use_rank_mask: bool,
    decay: Tensor | None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor]:
    """Causal VMI-SA over the whole sequence at once; same contract as ``scan_naive``."""
    B, L, D = z.shape
    u = alpha * z
    # Fold the initial state into the first token: h_0 = a_0 * h_init + u_0.
    first = initial_state if decay is None else decay[:, 0] * initial_state
    u = torch.cat([(u[:, 0] + first).unsqueeze(1), u[:, 1:]], dim=1)
    h = prefix_sum(u, chunk_size) if decay is None else linear_scan(u, decay, chunk_size)
    final = h[:, -1]
    y = h
    if use_rank_mask:
        # M only differs from 1 on the first D - position tokens: touch just those.
        n_masked = min(L, max(0, D - int(positions.min())))
        if n_masked > 0:
            t = positions + torch.arange(n_masked, device=z.device)
            head = h[:, :n_masked] * rank_mask(t, D).to(h.dtype)
            y = torch.cat([head, h[:, n_masked:]], dim=1)
    return y + beta * z, final


def global_chunk(z: Tensor, alpha: Tensor, beta0: Tensor, beta1: Tensor, use_rank_mask: bool) -> Tensor:
    """Non-causal VMI-SA (Eq. 10), vectorised: one weighted sum over tokens."""
    B, L, D = z.shape
    w = alpha * z
    n_masked = min(L, D) if use_rank_mask else 0  # token t feeds only channels c <= t
    s = w[:, n_masked:].sum(dim=1)
    if n_masked > 0:
        t = torch.arange(n_masked, device=z.device)
        s = s + (w[:, :n_masked] * rank_mask(t, D).to(w.dtype)).sum(dim=1)
    return beta0 * s.unsqueeze(1) + beta1 * z
