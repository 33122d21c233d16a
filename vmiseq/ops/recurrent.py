"""The recurrent form of causal VMI-SA: one token of Eq. 9 with the state passed in and out.

This is the decode step (FLA's ``fused_recurrent``): what ``VMISALayer.step`` runs for every
generated token, beside the reference loop (``naive.py``) and the chunked scan
(``chunk.py``) that process whole sequences. The math is docs/design.md §1:

    h_t = a_t * h_{t-1} + alpha_t * (q_t * v_t)
    y_t = M_t * h_t + beta * (q_t * v_t),      M_t[c] = [c <= t]  (the rank mask, Eq. 8)

with a_t = 1 when there is no decay (the paper's plain prefix sum). Inputs are not
validated here (a step runs once per token, and the layer has already checked them); the
order of operations is the scan's, so a stream of steps matches one call of ``vmisa_scan``
to rounding (tested against ``naive.scan_naive`` in float64).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor


def vmisa_step(
    q: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Union[Tensor, float],
    state: Tensor,
    position: Tensor,
    *,
    rank_mask: bool = True,
    decay: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Advance causal VMI-SA by one token.

    Args:
        q, v: (B, D) the token's query and value.
        alpha: the token's weight, broadcastable to (B, D): (B, 1), (B, D), (1,) or ().
        beta: weight of the direct path, a number, () or (D,).
        state: (B, D) h_{t-1}, in the accumulation dtype (float64 for float64 inputs,
            float32 otherwise).
        position: (B,) int64 absolute position t of this token (read by the rank mask only).
        rank_mask: apply M_t. Where every position is >= D - 1, M_t is all ones and a caller
            may pass False to skip it (the layer does, to save a pass per decoded token).
        decay: None (a_t = 1) or a_t in [0, 1], broadcastable to (B, D): (B, 1), (B, D) or (D,).

    Returns:
        (y_t, h_t): y_t (B, D) in q's dtype and the new state h_t (B, D) in the
        accumulation dtype. ``state`` is not modified.
    """
    # The scans' accumulation dtype (``acc_dtype``) over both inputs: float64 if q or the
    # state is float64, else float32 (half-precision q accumulates in float32).
    acc = torch.promote_types(torch.promote_types(q.dtype, state.dtype), torch.float32)
    z = q.to(acc) * v.to(acc)
    h = state if decay is None else decay.to(acc) * state
    h = h.addcmul(z, alpha.to(acc))
    y = h
    if rank_mask:
        channels = torch.arange(h.shape[-1], device=h.device)
        y = y * (channels <= position.unsqueeze(1)).to(acc)
    beta = beta.to(acc) if isinstance(beta, Tensor) else torch.tensor(beta, dtype=acc, device=h.device)
    return torch.addcmul(y, z, beta).to(q.dtype), h
