"""Public functional VMI-SA: validation, dtype policy and backend dispatch.

``vmisa_scan`` is the causal / recurrent form (paper Eq. 9), ``vmisa_global`` the
non-causal matrix form (Eq. 10). See ``DESIGN.md`` §1 for the exact math.
"""
from __future__ import annotations

import os
from typing import Union

import torch
from torch import Tensor

from . import chunk, naive, varlen

BACKENDS = ("auto", "naive", "torch", "triton")
BACKEND_ENV = "VMISEQ_BACKEND"  # forces a backend for every call with backend="auto"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 for float32 and half types."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _describe(x: Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"


def values_checkable(x: Tensor) -> bool:
    """Whether checks that read values (a host sync) may run: eager mode on real data, not
    under torch.compile / export tracing and not on the ``meta`` device (shape-only runs)."""
    return not torch.compiler.is_compiling() and x.device.type != "meta"


def _require_tensor(name: str, x, expected: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected {expected}, got {type(x).__name__}")


def _require_float(name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def _require_device(name: str, x: Tensor, ref: Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref.device} (the device of q), got one on {x.device}")


def _check_qv(q: Tensor, v: Tensor) -> None:
    _require_tensor("q", q, "a (B, L, D) tensor")
    _require_tensor("v", v, "a (B, L, D) tensor")
    if q.dim() != 3:
        raise ValueError(f"q: expected a 3-D (B, L, D) tensor, got {q.dim()}-D with shape {tuple(q.shape)}")
    if v.shape != q.shape:
        raise ValueError(f"v: expected the shape of q {tuple(q.shape)}, got {tuple(v.shape)}")
    _require_float("q", q)
    _require_float("v", v)
    _require_device("v", v, q)


def _per_token(name: str, x: Tensor, q: Tensor, allow_table: bool) -> Tensor:
    """(L,), (B, L) or (B, L, D) -> (B|1, L, 1|D), validated against q (B, L, D)."""
    B, L, D = q.shape
    _require_tensor(name, x, "a tensor")
    _require_float(name, x)
    _require_device(name, x, q)
    if allow_table and x.dim() == 1:
        if x.shape[0] != L:
            raise ValueError(f"{name}: expected a (L,) table with L={L}, got shape {tuple(x.shape)}")
        return x.reshape(1, L, 1)
    if x.dim() == 2:
        if tuple(x.shape) != (B, L):
            raise ValueError(f"{name}: expected shape (B, L) = {(B, L)}, got {tuple(x.shape)}")
        return x.unsqueeze(-1)
    if x.dim() == 3:
        if tuple(x.shape) != (B, L, D):
            raise ValueError(f"{name}: expected shape (B, L, D) = {(B, L, D)}, got {tuple(x.shape)}")
        return x
    shapes = "(L,), (B, L) or (B, L, D)" if allow_table else "(B, L) or (B, L, D)"
    raise ValueError(f"{name}: expected shape {shapes} with (B, L, D) = {(B, L, D)}, got {tuple(x.shape)}")


def _channel_param(name: str, x, q: Tensor) -> Tensor:
    """A scalar (python number, 0-d or 1-element tensor) or a (D,) tensor."""
    D = q.shape[-1]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return torch.tensor(float(x), dtype=acc_dtype(q.dtype), device=q.device)
    _require_tensor(name, x, "a scalar tensor or a (D,) tensor")
    _require_float(name, x)
    _require_device(name, x, q)
    if x.dim() == 0 or (x.dim() == 1 and x.shape[0] == 1 and D != 1):
        return x.reshape(())
    if x.dim() == 1 and x.shape[0] == D:
        return x
    raise ValueError(f"{name}: expected a scalar tensor or shape (D,) = ({D},), got shape {tuple(x.shape)}")


_MAX_POSITION = 2**63 - 1  # positions are int64


def _positions(offset, q: Tensor, n_seq: int, packed: bool) -> Tensor:
    """offset: int or (n_seq,) integer tensor -> (n_seq|1, 1) int64 position of each first token.

    ``n_seq`` is B, or N packed sequences (``packed``: cu_seqlens given). The last position a
    call reaches, offset + L - 1, must fit in int64 (it would wrap round to a negative one).
    """
    dims = "(N,)" if packed else "(B,)"
    L = q.shape[1]
    if isinstance(offset, bool) or not isinstance(offset, (int, Tensor)):
        raise TypeError(f"offset: expected an int or a {dims} integer tensor, got {type(offset).__name__}")
    if isinstance(offset, int):
        if offset < 0:
            raise ValueError(f"offset: expected a non-negative position, got {offset}")
        if offset + max(L - 1, 0) > _MAX_POSITION:
            raise ValueError(f"offset: expected a position <= 2**63 - L = {_MAX_POSITION - max(L - 1, 0)} "
                             f"(int64 positions for L={L} tokens), got {offset}")
        return torch.full((1, 1), offset, dtype=torch.long, device=q.device)
    if offset.is_floating_point() or offset.is_complex() or offset.dtype == torch.bool:
        raise TypeError(f"offset: expected an integer tensor, got dtype {offset.dtype}")
    if offset.dim() == 0:
        offset = offset.reshape(1)
    if offset.dim() != 1 or offset.shape[0] not in (1, n_seq):
        packed_note = "with cu_seqlens " if packed else ""
        raise ValueError(
            f"offset: {packed_note}expected an int or shape {dims} = ({n_seq},), got shape {tuple(offset.shape)}"
        )
    _require_device("offset", offset, q)
    offset = offset.to(torch.long)
    if offset.numel() and values_checkable(offset):  # one host sync on a (B,) tensor: eager only
        lo, hi = (int(x) for x in torch.aminmax(offset))
        if lo < 0:
            raise ValueError(f"offset: expected non-negative positions, got {lo}")
        if hi > _MAX_POSITION - max(L - 1, 0):
            raise ValueError(f"offset: expected positions <= 2**63 - L (int64, L={L}), got {hi}")
    return offset.reshape(-1, 1)


def _check_unit_interval(name: str, x: Tensor) -> None:
    """Values in [0, 1] (NaN fails). A decay above 1 grows the state exponentially, where the
    chunked and step-by-step forms also stop agreeing in float32; 0 resets the state."""
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        bad = x[~((x >= 0) & (x <= 1))]
        raise ValueError(
            f"{name}: expected values in [0, 1] (a forget gate multiplying the state), got "
            f"{bad.numel()} outside, e.g. {bad.flatten()[0].item()!r} (min {x.min().item()!r}, max {x.max().item()!r})"
        )


def non_finite_message(name: str, inputs: tuple[Tensor, ...], state: Tensor) -> str:
    """Why the ``state`` after a call is NaN/inf: non-finite ``inputs``, or overflow."""
    if not all(bool(torch.isfinite(t).all()) for t in inputs):
        return f"{name}: expected finite values, got NaN or inf (the state became non-finite)"
    peak = max(float(t.abs().max()) for t in inputs if t.numel())
    return (
        f"{name}: the {state.dtype} state became non-finite (inf/NaN) although the inputs are finite: "
        f"values up to |{name}| = {peak:.3g} overflow {state.dtype} arithmetic; rescale the input"
    )


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
        if device.type == "cuda":
            from .. import kernels  # noqa: F401  (lazy: CPU paths never import triton)

            if kernels.triton_available():
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
    _check_qv(q, v)
    B, L, D = q.shape
    acc = acc_dtype(q.dtype)
    alpha_n = _per_token("alpha", alpha, q, allow_table=True)  # cast to acc below (triton loads it as is)
    beta_n = _channel_param("beta", beta, q).to(acc)
    decay_n = None if decay is None else _per_token("decay", decay, q, allow_table=False)
    checking = check_values and values_checkable(q)
    if checking and decay_n is not None:
        _check_unit_interval("decay", decay_n)
    n_seq = B if cu_seqlens is None else varlen.check_cu_seqlens(cu_seqlens, q)
    positions = _positions(offset, q, n_seq, packed=cu_seqlens is not None)
    if initial_state is None:
        h0 = q.new_zeros(n_seq, D, dtype=acc)
    else:
        _require_tensor("initial_state", initial_state, "a (B, D) tensor")
        _require_float("initial_state", initial_state)
        if tuple(initial_state.shape) != (n_seq, D):
            dims = "(B, D)" if cu_seqlens is None else "(N, D) (one per packed sequence)"
            raise ValueError(
                f"initial_state: expected shape {dims} = {(n_seq, D)}, got {tuple(initial_state.shape)}"
            )
        _require_device("initial_state", initial_state, q)
        h0 = initial_state.to(acc)
    name = resolve_backend(backend, q.device)
    if name != "triton":  # the Triton kernels load bf16 / fp16 gates natively: no extra pass
        alpha_n = alpha_n.to(acc)
        decay_n = None if decay_n is None else decay_n.to(acc)

    if L == 0:
        y, final = q.new_zeros(B, 0, D), h0
    elif name == "triton" or (name == "torch" and (cu_seqlens is not None or torch.compiler.is_compiling())):
        # the custom op (opaque to torch.compile) and the packed-batch paths: vmiseq.kernels
        from ..kernels import vmisa_scan_op

        y, final = vmisa_scan_op(q, v, alpha_n, beta_n, h0, positions, rank_mask, decay_n, cu_seqlens, backend=name)
    else:
        if name == "naive" and cu_seqlens is not None:
            z = q.to(acc) * v.to(acc)
            y, final = varlen.scan_naive_varlen(z, alpha_n, beta_n, h0, positions, rank_mask, decay_n, cu_seqlens)
        elif name == "naive":
            z = q.to(acc) * v.to(acc)
            y, final = naive.scan_naive(z, alpha_n, beta_n, h0, positions, rank_mask, decay_n)
        else:  # fused: never materialises z = q * v (see chunk.py)
            y, final = chunk.scan_torch(q.to(acc), v.to(acc), alpha_n, beta_n, h0, positions, rank_mask, decay_n)
        y = y.to(q.dtype)
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
    _check_qv(q, v)
    acc = acc_dtype(q.dtype)
    alpha_n = _per_token("alpha", alpha, q, allow_table=True).to(acc)
    b0 = _channel_param("beta0", beta0, q).to(acc)
    b1 = _channel_param("beta1", beta1, q).to(acc)
    name = resolve_backend(backend, q.device)
    z = q.to(acc) * v.to(acc)
    fn = naive.global_naive if name == "naive" else chunk.global_chunk
    if name == "naive":
        return fn(z, alpha_n, b0, b1, rank_mask).to(q.dtype)
    # z is a fresh temporary here: without autograd the output can reuse its memory
    overwrite = not (torch.is_grad_enabled() and any(t.requires_grad for t in (z, alpha_n, b0, b1)))
    return fn(z, alpha_n, b0, b1, rank_mask, overwrite_z=overwrite).to(q.dtype)
