"""Public functional VMI-SA: validation, dtype policy and backend dispatch.

``vmisa_scan`` is the causal / recurrent form (paper Eq. 9), ``vmisa_global`` the
non-causal matrix form (Eq. 10). See docs/design.md §1 for the exact math.
"""
from __future__ import annotations

import os
from typing import Union

import torch
from torch import Tensor

from ..kernels import triton_available
from . import chunk, naive, varlen
from .checks import (
    acc_dtype,
    channel_param,
    check_cu_seqlens,
    check_qv,
    check_unit_interval,
    non_finite_message,
    offset_positions,
    per_token,
    require_device,
    require_float,
    require_tensor,
    values_checkable,
)
from .scan_op import OP_BACKENDS, vmisa_scan_op

# The one backend vocabulary: what ``backend=`` and ``VMISEQ_BACKEND`` accept everywhere
# (the custom op runs the concrete OP_BACKENDS; "auto" resolves to one of them).
BACKENDS = ("auto", "naive", *OP_BACKENDS)
BACKEND_ENV = "VMISEQ_BACKEND"  # forces a backend for every call with backend="auto"

__all__ = ["BACKENDS", "BACKEND_ENV", "acc_dtype", "resolve_backend", "vmisa_global", "vmisa_scan"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` (and the ``VMISEQ_BACKEND`` environment variable) to a concrete backend."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        forced = os.environ.get(BACKEND_ENV, "").strip().lower()
        if forced and forced != "auto":
            if forced not in BACKENDS:
                raise ValueError(f"{BACKEND_ENV}: expected one of {BACKENDS}, got {forced!r}")
            return forced
        if device.type == "cuda" and triton_available():
            return "triton"
        return "torch"
    return backend


def vmisa_scan(
    q: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Union[Tensor, float],
    *,
    initial_state: Tensor | None = None,
    offset: Union[int, Tensor] = 0,
    rank_mask: bool = True,
    decay: Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    cu_seqlens: Tensor | None = None,
    check_values: bool = True,
):
    """Causal VMI-SA (paper Eq. 9), optionally with a decay gate.

    ``h_t = a_t * h_{t-1} + alpha_t * (q_t * v_t)``, ``y_t = M_t * h_t + beta * (q_t * v_t)``
    with ``M[t, c] = [c <= offset + t]`` (the rank mask, Eq. 8) and ``a_t = decay_t`` (1 when
    ``decay`` is None: the paper's plain prefix sum).

    Args:
        q, v: (B, L, D) floating tensors.
        alpha: (B, L) or (B, L, D) per-token weights, or an (L,) position table.
        beta: scalar tensor (or number) or (D,) tensor: weight of the direct path.
        initial_state: (B, D) state entering the first token (zeros if None).
        offset: absolute position of the first token (int, or (B,) tensor per sequence).
        rank_mask: apply M (paper v2); False gives paper v1.
        decay: None, or (B, L) / (B, L, D) values in (0, 1] multiplying h_{t-1}.
        output_final_state: also return the (B, D) state after the last token.
        backend: "auto", "naive" (reference loop), "torch" (chunked, CPU default) or "triton".
        cu_seqlens: None, or (N+1,) int32 offsets of N sequences packed in one row (q is
            (1, T, D)); then initial_state / final_state are (N, D), offset is an int or
            (N,) and each sequence's positions restart at its offset (see ``ops/varlen.py``).
        check_values: check that ``decay`` lies in [0, 1] (one pass over it) and that the
            final state is finite (one pass over (B, D)); eager mode only, skipped under
            torch.compile. Callers whose decay is a sigmoid (the layers) pass False.

    alpha may be negative (the official VMINet position table is signed); every backend
    computes the same recurrence for any real alpha. See docs/core.md, "Input checks".

    Returns:
        y (B, L, D) in q's dtype, or (y, final_state) with final_state (B, D) in the
        accumulation dtype (float64 for float64 inputs, float32 otherwise).
    """
    check_qv(q, v)
    B, L, D = q.shape
    acc = acc_dtype(q.dtype)
    alpha_n = per_token("alpha", alpha, q, allow_table=True)  # cast to acc below (triton loads it as is)
    beta_n = channel_param("beta", beta, q).to(acc)
    decay_n = None if decay is None else per_token("decay", decay, q, allow_table=False)
    checking = check_values and values_checkable(q)
    if checking and decay_n is not None:
        check_unit_interval("decay", decay_n)
    n_seq = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, q)
    positions = offset_positions(offset, q, n_seq, packed=cu_seqlens is not None)
    if initial_state is None:
        h0 = q.new_zeros(n_seq, D, dtype=acc)
    else:
        require_tensor("initial_state", initial_state, "a (B, D) tensor")
        require_float("initial_state", initial_state)
        if tuple(initial_state.shape) != (n_seq, D):
            dims = "(B, D)" if cu_seqlens is None else "(N, D) (one per packed sequence)"
            raise ValueError(
                f"initial_state: expected shape {dims} = {(n_seq, D)}, got {tuple(initial_state.shape)}"
            )
        require_device("initial_state", initial_state, q)
        h0 = initial_state.to(acc)
    name = resolve_backend(backend, q.device)
    if name != "triton":  # the Triton kernels load bf16 / fp16 gates natively: no extra pass
        alpha_n = alpha_n.to(acc)
        decay_n = None if decay_n is None else decay_n.to(acc)

    if L == 0:
        y, final = q.new_zeros(B, 0, D), h0
    elif name == "naive":
        z = q.to(acc) * v.to(acc)
        if cu_seqlens is None:
            y, final = naive.scan_naive(z, alpha_n, beta_n, h0, positions, rank_mask, decay_n)
        else:
            y, final = varlen.scan_naive_varlen(z, alpha_n, beta_n, h0, positions, rank_mask, decay_n, cu_seqlens)
        y = y.to(q.dtype)
    else:  # torch (eager: the chunked scan directly; compiled: the opaque custom op) or triton
        y, final = vmisa_scan_op(q, v, alpha_n, beta_n, h0, positions, rank_mask, decay_n, cu_seqlens, backend=name)
    if checking and final.numel() and not bool(torch.isfinite(final).all()):
        raise ValueError(non_finite_message("q, v", (q, v), final))
    return (y, final) if output_final_state else y


def vmisa_global(
    q: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta0: Union[Tensor, float],
    beta1: Union[Tensor, float],
    *,
    rank_mask: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Non-causal VMI-SA (paper Eq. 10), as the official VMINet v2 computes it.

    ``s = sum_t alpha_t * (M_t * z_t)`` with ``z = q * v`` and the rank mask applied to each
    token's contribution; ``y_t = beta0 * s + beta1 * z_t``.

    Args:
        q, v: (B, L, D). alpha: (L,) table, (B, L) or (B, L, D).
        beta0, beta1: scalars or (D,) tensors. rank_mask: v2 (True) or v1 (False).
        backend: "naive" (double loop) or "torch"/"auto" (vectorised).

    Returns:
        y (B, L, D) in q's dtype.
    """
    check_qv(q, v)
    acc = acc_dtype(q.dtype)
    alpha_n = per_token("alpha", alpha, q, allow_table=True).to(acc)
    b0 = channel_param("beta0", beta0, q).to(acc)
    b1 = channel_param("beta1", beta1, q).to(acc)
    name = resolve_backend(backend, q.device)
    z = q.to(acc) * v.to(acc)
    fn = naive.global_naive if name == "naive" else chunk.global_chunk
    if name == "naive":
        return fn(z, alpha_n, b0, b1, rank_mask).to(q.dtype)
    # z is a fresh temporary here: without autograd the output can reuse its memory
    overwrite = not (torch.is_grad_enabled() and any(t.requires_grad for t in (z, alpha_n, b0, b1)))
    return fn(z, alpha_n, b0, b1, rank_mask, overwrite_z=overwrite).to(q.dtype)
