"""Variable-length packed batches (``cu_seqlens``, the FlashAttention convention).

N sequences are packed along L of a single batch row: q, v are (1, T, D) and
``cu_seqlens`` holds the int32 offsets ``[0, l_0, l_0 + l_1, ..., T]`` (N+1 values).
Every sequence starts from its own initial state (``initial_state`` is (N, D)), ends with
its own final state ((N, D) out) and its rank-mask positions restart at its first token:
token i of sequence n sits at position ``offset[n] + i`` (``offset`` an int for all, or an
(N,) tensor). Alpha and decay are given per packed token ((1, T), (1, T, D), or a (T,)
table indexed by packed token).

This module holds two implementations (the arguments are validated by
:func:`.checks.check_cu_seqlens`): the reference (one naive scan per sequence) and the torch
backend's, built on :func:`.chunk.scan_chunk`:
the whole packed row is scanned at once with the recurrence cut at every sequence start
(decay 0 there), then each sequence's initial state is added back, carried by the
product of its decays, ``h_t = h_local_t + (prod_{bos..t} a) * h0_n``. Nothing crosses a
boundary, so this is exactly running each sequence on its own, gradients included
(autograd runs through ``chunk``'s hand-written backward).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import chunk, naive


def scan_naive_varlen(
    z: Tensor,
    alpha: Tensor,
    beta: Tensor,
    initial_state: Tensor,
    positions: Tensor,
    use_rank_mask: bool,
    decay: Tensor | None,
    cu_seqlens: Tensor,
) -> tuple[Tensor, Tensor]:
    """Reference: :func:`naive.scan_naive` on each packed sequence on its own.

    z (1, T, D); alpha / decay (1, T, 1|D); initial_state (N, D); positions (N|1, 1).
    Returns y (1, T, D) and the final states (N, D), in z's dtype.
    """
    bounds = [int(c) for c in cu_seqlens.tolist()]
    ys, finals = [], []
    for n in range(len(bounds) - 1):
        s, e = bounds[n], bounds[n + 1]
        pos = positions[n : n + 1] if positions.shape[0] > 1 else positions
        dec = None if decay is None else decay[:, s:e]
        y, h = naive.scan_naive(z[:, s:e], alpha[:, s:e], beta, initial_state[n : n + 1], pos, use_rank_mask, dec)
        ys.append(y)
        finals.append(h)
    return torch.cat(ys, dim=1), torch.cat(finals, dim=0)


class Packing:
    """Token-level bookkeeping of a packed batch (all on device, no host sync)."""

    def __init__(self, cu_seqlens: Tensor, T: int) -> None:
        cu = cu_seqlens.to(torch.long)
        self.starts, self.ends = cu[:-1], cu[1:]
        self.nonempty = self.ends > self.starts
        t = torch.arange(T, device=cu.device)
        self.seq = torch.searchsorted(self.ends, t, right=True)  # sequence of each token
        self.first = t == self.starts[self.seq]  # first token of its sequence
        self.local = t - self.starts[self.seq]  # index inside its sequence

    def token_positions(self, positions: Tensor) -> Tensor:
        """(1, T) absolute rank-mask position of each token: offset of its sequence + local index."""
        start = positions[self.seq, 0] if positions.shape[0] > 1 else positions[0, 0]
        return (start + self.local).unsqueeze(0)


def scan_chunk_varlen(
    q: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    initial_state: Tensor,
    positions: Tensor,
    use_rank_mask: bool,
    decay: Tensor | None,
    cu_seqlens: Tensor,
) -> tuple[Tensor, Tensor]:
    """Packed causal scan with the chunked torch backend (differentiable by autograd).

    q, v (1, T, D) and everything else in the accumulation dtype; alpha / decay (1, T, 1|D);
    initial_state (N, D); positions (N|1, 1). Returns y (1, T, D) and the final states (N, D).
    """
    T, D = q.shape[1], q.shape[2]
    acc = q.dtype
    pk = Packing(cu_seqlens, T)
    zero_beta = torch.zeros((), dtype=acc, device=q.device)
    pos0 = torch.zeros(1, 1, dtype=torch.long, device=q.device)
    first = pk.first.to(acc).view(1, T, 1)
    gate = torch.ones(1, T, 1, dtype=acc, device=q.device) if decay is None else decay
    cut = gate * (1.0 - first)  # a_t = 0 at a sequence start: the scan restarts from zero there
    # beta = 0 and no mask: the "outputs" are the states h of the zero-started scan
    h, _ = chunk.scan_chunk(q, v, alpha, zero_beta, q.new_zeros(1, D), pos0, False, cut)
    h0_tok = initial_state[pk.seq].unsqueeze(0)  # (1, T, D): initial state of each token's sequence
    if decay is None:
        h = h + h0_tok
    else:
        # P_t = prod of the gates from the sequence start to t: the same scan fed the gate at
        # each first token (h_start = a_start * 1), run on the gate's own width (1 or D).
        Dg = gate.shape[-1]
        ones = torch.ones(1, T, 1, dtype=acc, device=q.device)
        P, _ = chunk.scan_chunk(
            first.expand(1, T, Dg), gate.expand(1, T, Dg), ones, zero_beta, q.new_zeros(1, Dg), pos0, False, cut
        )
        h = h + P * h0_tok
    out = h
    if use_rank_mask:
        out = h * naive.rank_mask(pk.token_positions(positions), D).to(acc)
    y = out + beta * (q * v)
    last = (pk.ends - 1).clamp(min=0)
    final = torch.where(pk.nonempty.unsqueeze(-1), h[0, last], initial_state)
    return y, final
