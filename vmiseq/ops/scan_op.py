"""The causal VMI-SA scan as PyTorch custom ops (``torch.library``), so ``torch.compile``
sees one opaque node (no graph break) and autograd uses our own backward.

* ``vmiseq::scan_fwd(q, v, alpha, beta, h0, positions, decay?, cu_seqlens?, rank_mask, backend)
  -> (y, final_state, checkpoints)``
* ``vmiseq::scan_bwd(dy, dfinal, q, v, alpha, beta, h0, positions, decay?, cu_seqlens?,
  checkpoints, rank_mask, backend, need_ddecay) -> (dq, dv, dalpha, dbeta, dh0, ddecay)``

``backend`` is "triton" (``vmiseq.kernels.triton_scan``: our kernels, forward and backward)
or "torch" (:func:`scan_torch_backend`: :func:`.chunk.scan_chunk` or, for packed batches,
:func:`.varlen.scan_chunk_varlen`, with their hand-written backward). Eager torch calls skip
the op and run autograd directly (no recomputation); under ``torch.compile`` the torch
backend goes through the op too, and its backward recomputes the forward with autograd on
(the op's implementation is opaque to the compiler, so the data-dependent code of the
chunked scan never causes a graph break).
Inputs arrive normalised by :func:`.scan.vmisa_scan`: alpha / decay are (B|1, L, 1|D) in the
accumulation dtype, beta () or (D,), h0 (N, D), positions (N|1, 1) int64, cu_seqlens None or
(N+1,) int32. ``checkpoints`` holds the state entering every chunk of the Triton forward
(needed by its decay backward; empty otherwise).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor
from torch._C import DispatchKey

from ..kernels import geometry, triton_available, triton_unavailable_reason
from . import chunk, varlen

OP_BACKENDS = ("torch", "triton")  # the concrete backends of ``.scan.BACKENDS`` the op runs


def scan_torch_backend(
    q: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    initial_state: Tensor,
    positions: Tensor,
    use_rank_mask: bool,
    decay: Tensor | None,
    cu_seqlens: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The torch backend for ordinary (``cu_seqlens=None``) and packed batches; q, v may be
    in any float dtype, y comes back in q's dtype and the final states in the accumulation
    dtype (that of ``initial_state``)."""
    acc = initial_state.dtype
    args = (q.to(acc), v.to(acc), alpha, beta, initial_state, positions, use_rank_mask, decay)
    y, final = chunk.scan_chunk(*args) if cu_seqlens is None else varlen.scan_chunk_varlen(*args, cu_seqlens)
    return y.to(q.dtype), final


def _empty(ref: Tensor) -> Tensor:
    return ref.new_empty((0,))


def _check_backend(backend: str) -> None:
    if backend not in OP_BACKENDS:
        raise ValueError(f"backend: expected one of {OP_BACKENDS} for the scan op, got {backend!r}")


@contextlib.contextmanager
def _autograd_inside_op():
    """Re-enable autograd inside a custom op's implementation.

    The dispatcher runs an op's kernel with the autograd dispatch keys excluded (thread-local),
    so a recomputation there would record no graph. This lifts that exclusion (and turns grad
    mode on) for the block only; the previous thread-local sets come back on exit.
    """
    exclude = torch._C._dispatch_tls_local_exclude_set()
    include = torch._C._dispatch_tls_local_include_set()
    exclude = exclude.remove(DispatchKey.AutogradFunctionality).remove(DispatchKey.ADInplaceOrView)
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield


def _torch_backward(dy, dfinal, q, v, alpha, beta, h0, positions, decay, cu_seqlens, rank_mask, need_ddecay):
    """Torch-backend gradients: recompute the forward with autograd, then one autograd.grad."""
    with _autograd_inside_op():
        leaves = [x.detach().requires_grad_(True) for x in (q, v, alpha, beta, h0)]
        dec = None
        if decay is not None:
            dec = decay.detach().requires_grad_(need_ddecay)
        y, final = scan_torch_backend(*leaves, positions, rank_mask, dec, cu_seqlens)
        wrt = leaves + ([dec] if need_ddecay else [])
        grads = torch.autograd.grad((y, final), wrt, (dy, dfinal), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt)]
    ddecay = grads[5] if need_ddecay else None
    return grads[0], grads[1], grads[2], grads[3], grads[4], ddecay


@torch.library.custom_op("vmiseq::scan_fwd", mutates_args=())
def scan_fwd(
    q: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, h0: Tensor, positions: Tensor,
    decay: Optional[Tensor], cu_seqlens: Optional[Tensor], rank_mask: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_backend(backend)
    if backend == "triton":
        from ..kernels import triton_scan  # lazy: CPU paths never import triton

        y, final, ck = triton_scan.launch_fwd(q, v, alpha, beta, h0, positions, decay, cu_seqlens, rank_mask)
        return y, final, ck
    y, final = scan_torch_backend(q, v, alpha, beta, h0, positions, rank_mask, decay, cu_seqlens)
    return y.contiguous(), final.clone(), _empty(h0)


@scan_fwd.register_fake
def _scan_fwd_fake(q, v, alpha, beta, h0, positions, decay, cu_seqlens, rank_mask, backend):
    B, L, D = q.shape
    y = q.new_empty((B, L, D))
    final = h0.new_empty(h0.shape)
    if backend == "triton" and decay is not None:
        ck = h0.new_empty((geometry.checkpoint_rows(h0.shape[0], B, L, cu_seqlens is not None), D))
    else:
        ck = _empty(h0)
    return y, final, ck


@torch.library.custom_op("vmiseq::scan_bwd", mutates_args=())
def scan_bwd(
    dy: Tensor, dfinal: Tensor, q: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, h0: Tensor,
    positions: Tensor, decay: Optional[Tensor], cu_seqlens: Optional[Tensor], checkpoints: Tensor,
    rank_mask: bool, backend: str, need_ddecay: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_backend(backend)
    if backend == "triton":
        from ..kernels import triton_scan

        grads = triton_scan.launch_bwd(
            dy, dfinal, q, v, alpha, beta, h0, positions, decay, cu_seqlens, checkpoints, rank_mask, need_ddecay
        )
    else:
        grads = _torch_backward(dy, dfinal, q, v, alpha, beta, h0, positions, decay, cu_seqlens, rank_mask, need_ddecay)
    dq, dv, dalpha, dbeta, dh0, ddecay = grads
    ddecay = _empty(h0) if ddecay is None else ddecay.contiguous()
    return dq.contiguous(), dv.contiguous(), dalpha.contiguous(), dbeta.contiguous(), dh0.contiguous(), ddecay


@scan_bwd.register_fake
def _scan_bwd_fake(dy, dfinal, q, v, alpha, beta, h0, positions, decay, cu_seqlens, checkpoints, rank_mask,
                   backend, need_ddecay):
    ddecay = decay.new_empty(decay.shape) if (decay is not None and need_ddecay) else _empty(h0)
    return (
        q.new_empty(q.shape), v.new_empty(v.shape), alpha.new_empty(alpha.shape), beta.new_empty(beta.shape),
        h0.new_empty(h0.shape), ddecay,
    )


def _setup_context(ctx, inputs, output):
    q, v, alpha, beta, h0, positions, decay, cu_seqlens, rank_mask, backend = inputs
    ctx.save_for_backward(q, v, alpha, beta, h0, positions, decay, cu_seqlens, output[2])
    ctx.rank_mask, ctx.backend = rank_mask, backend
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, dy, dfinal, _dck):
    q, v, alpha, beta, h0, positions, decay, cu_seqlens, ck = ctx.saved_tensors
    need = ctx.needs_input_grad
    if dy is None:
        dy = torch.zeros_like(q)
    if dfinal is None:
        dfinal = torch.zeros_like(h0)
    dq, dv, dalpha, dbeta, dh0, ddecay = scan_bwd(
        dy, dfinal, q, v, alpha, beta, h0, positions, decay, cu_seqlens, ck,
        ctx.rank_mask, ctx.backend, bool(decay is not None and need[6]),
    )
    return (
        dq if need[0] else None,
        dv if need[1] else None,
        dalpha if need[2] else None,
        dbeta if need[3] else None,
        dh0 if need[4] else None,
        None,
        ddecay if (decay is not None and need[6]) else None,
        None,
        None,
        None,
    )


scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def vmisa_scan_op(
    q: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, h0: Tensor, positions: Tensor, rank_mask: bool,
    decay: Tensor | None = None, cu_seqlens: Tensor | None = None, backend: str = "torch",
    force_op: bool = False,
) -> tuple[Tensor, Tensor]:
    """Differentiable causal scan on normalised inputs: returns (y, final_state).

    "triton" always runs the custom op. "torch" runs it under ``torch.compile`` (or with
    ``force_op=True``); in eager mode it calls the torch backend directly, whose autograd
    needs no recomputation.
    """
    _check_backend(backend)
    if backend == "triton" and not torch.compiler.is_compiling() and not triton_available():
        raise ImportError(f"backend: 'triton' cannot run: {triton_unavailable_reason()}; use backend='torch'")
    if backend == "torch" and not (force_op or torch.compiler.is_compiling()):
        return scan_torch_backend(q, v, alpha, beta, h0, positions, bool(rank_mask), decay, cu_seqlens)
    y, final, _ = scan_fwd(q, v, alpha, beta, h0, positions, decay, cu_seqlens, bool(rank_mask), backend)
    return y, final
