"""Launchers of the Triton scan kernels (forward and backward), called by the custom ops in
``vmiseq/ops/scan_op.py``. The kernels are in :mod:`.triton_kernels`, the launch plan (one pass, or the
small-batch split into segments) in :mod:`.geometry`, config choice in :mod:`.tuning`.

Triton's interpreter (``TRITON_INTERPRET=1``, read when this module is imported) runs the
same kernels on CPU tensors. Its generic ``associative_scan`` is a per-element Python loop,
so under the interpreter the in-chunk decay scan is a log-step scan built from ``tl.gather``
instead, unless ``VMISEQ_TRITON_SCAN=native``.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from . import tuning
from .geometry import BLOCK_T, LOG2_BLOCK_T, LaunchPlan, cdiv, checkpoint_rows, next_pow2, plan_launch, work_bucket
from .triton_kernels import segment_carry_kernel, vmisa_bwd_kernel, vmisa_fwd_kernel

INTERPRET = bool(triton.knobs.runtime.interpret)  # decided when this module is imported
NAN_ENV = "VMISEQ_DEBUG_NAN"  # "1": fill every buffer the kernels write with NaN first
SCAN_ENV = "VMISEQ_TRITON_SCAN"  # "native" / "doubling": force the in-chunk decay scan
CARRY_BLOCK_D = 16


@dataclass
class LaunchSettings:
    """Process-wide launch policy (tests change it to force the split path on tiny inputs).

    sm_count: None = the device's multiprocessor count (0 under the interpreter: one pass);
    programs_per_sm: the grid size below which a launch is split into segments;
    split: "auto", "always" or "never"."""

    sm_count: int | None = None
    programs_per_sm: int = 2
    split: str = "auto"


SETTINGS = LaunchSettings()
_TUNERS = {"fwd": tuning.Tuner("fwd"), "bwd": tuning.Tuner("bwd")}


def _gpu() -> bool:
    return not INTERPRET


def _native_scan() -> bool:
    forced = os.environ.get(SCAN_ENV, "").strip().lower()
    if forced in ("native", "doubling"):
        return forced == "native"
    return not INTERPRET


def _alloc(shape, dtype, device) -> Tensor:
    """Output buffer: uninitialised, or NaN-filled when VMISEQ_DEBUG_NAN=1 (catches unwritten elements)."""
    if os.environ.get(NAN_ENV, "") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _rows_last_unit(x: Tensor) -> Tensor:
    """Make the channel stride 1 (the kernels assume it); a no-op for the usual layouts."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_launchable(q: Tensor) -> None:
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError(
            f"backend: 'triton' needs CUDA tensors, got q on {q.device}. To run the Triton kernels "
            "on CPU through Triton's interpreter, set TRITON_INTERPRET=1 before the first triton call "
            "(it is read when vmiseq.kernels.triton_scan is imported); otherwise use backend='torch'."
        )


def _device_guard(x: Tensor):
    """Launch on x's GPU (Triton launches on the current device, which may be another)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _sm_count(x: Tensor) -> int:
    if SETTINGS.sm_count is not None:
        return SETTINGS.sm_count
    if x.is_cuda:
        return torch.cuda.get_device_properties(x.device).multi_processor_count
    return 0


def plan_for(kernel: str, x: Tensor, n_seq: int, length: int, d: int, varlen: bool) -> LaunchPlan:
    return plan_launch(
        n_seq, length, d, sm_count=_sm_count(x), block_ds=tuning.block_ds(kernel, _gpu()), varlen=varlen,
        programs_per_sm=SETTINGS.programs_per_sm, split=SETTINGS.split,
    )


def _chunk_offsets(cu_seqlens: Tensor) -> Tensor:
    """Index of each sequence's first checkpoint row (N+1,), computed on device (no sync)."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    n_chunks = (lens + BLOCK_T - 1) // BLOCK_T
    return torch.cat([n_chunks.new_zeros(1), torch.cumsum(n_chunks, 0)])


def _per_token_strides(x: Tensor | None):
    """(B|1, L, 1|D) -> (stride_b, stride_l, stride_d, per_channel) with broadcast dims at stride 0."""
    if x is None:
        return 0, 0, 0, False
    per_ch = x.shape[-1] != 1
    sb = x.stride(0) if x.shape[0] > 1 else 0
    sd = x.stride(2) if per_ch else 0
    return sb, x.stride(1), sd, per_ch


def _run(kernel: str, jit_fn, args: tuple, consts: dict, plan: LaunchPlan, n_work: int, d: int, key: tuple):
    """Launch ``jit_fn`` over ``n_work`` work items x D-blocks with the tuned (or pinned)
    config among the plan's BLOCK_D values; returns the config launched."""
    gpu = _gpu()
    space = tuning.configs(kernel, gpu)
    pinned = tuning.pinned(kernel, plan.block_ds, gpu)
    cands = [c for c in space if c.kwargs["BLOCK_D"] in plan.block_ds] if gpu else [pinned]

    def launch(cfg):
        jit_fn[(cdiv(d, cfg.kwargs["BLOCK_D"]) * n_work,)](*args, **consts, **cfg.all_kwargs())

    # the key: the variant and dtypes (``key``), the device, D, and buckets of the number of
    # work items and of the chunks each one walks (N and L, through the plan)
    key = key + (str(args[0].device), d, work_bucket(n_work), work_bucket(plan.seg_chunks))
    return _TUNERS[kernel].run(key, cands, launch, pinned)


def _carry_scan(h0: Tensor, sum_h: Tensor, sum_a: Tensor, carry: Tensor, n_seq: int, n_seg: int, has_decay: bool,
                reverse: bool) -> None:
    p2 = next_pow2(n_seg)
    d = h0.shape[1]
    segment_carry_kernel[(cdiv(d, CARRY_BLOCK_D) * n_seq,)](
        h0, sum_h, sum_a, carry, d, n_seg, HAS_DECAY=has_decay, REVERSE=reverse, NSEG_P2=p2,
        LOG2_NSEG=p2.bit_length() - 1, BLOCK_D=CARRY_BLOCK_D, NATIVE_SCAN=_native_scan(),
        num_warps=8 if p2 >= 128 else 4,
    )


def launch_fwd(
    q: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, h0: Tensor, positions: Tensor,
    decay: Tensor | None, cu_seqlens: Tensor | None, rank_mask: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward. Returns y (B, L, D) in q's dtype, the final states (N, D) and
    the chunk-entry state checkpoints (rows, D) (empty without decay). alpha / decay may be
    in any float dtype (loaded natively)."""
    _check_launchable(q)
    with _device_guard(q):
        return _launch_fwd(q, v, alpha, beta, h0, positions, decay, cu_seqlens, rank_mask)


def _launch_fwd(q, v, alpha, beta, h0, positions, decay, cu_seqlens, rank_mask):
    B, L, D = q.shape
    N, varlen, has_decay = h0.shape[0], cu_seqlens is not None, decay is not None
    q, v = _rows_last_unit(q), _rows_last_unit(v)
    h0, beta = h0.contiguous(), beta.contiguous()
    acc, dev = h0.dtype, q.device
    y = _alloc((B, L, D), q.dtype, dev)
    final = _alloc((N, D), acc, dev)
    ck_shape = (checkpoint_rows(N, B, L, varlen), D) if has_decay else (0,)
    # packed: an upper bound on the rows; the unused tail must not hold garbage (it is an output)
    ck = torch.zeros(ck_shape, dtype=acc, device=dev) if varlen else _alloc(ck_shape, acc, dev)
    cu = cu_seqlens.contiguous() if varlen else h0
    ckoff = _chunk_offsets(cu_seqlens) if (varlen and has_decay) else h0
    sab, sal, sad, alpha_ch = _per_token_strides(alpha)
    sdb, sdl, sdd, decay_ch = _per_token_strides(decay)
    dec = decay if has_decay else h0
    plan = plan_for("fwd", q, N, L, D, varlen)
    strides = (q.stride(0), q.stride(1), v.stride(0), v.stride(1), sab, sal, sad, sdb, sdl, sdd, y.stride(0), y.stride(1),
               positions.stride(0) if positions.shape[0] > 1 else 0, L, D, cdiv(L, BLOCK_T))
    consts = dict(BLOCK_T=BLOCK_T, LOG2_T=LOG2_BLOCK_T, ALPHA_PER_CH=alpha_ch, HAS_DECAY=has_decay,
                  DECAY_PER_CH=decay_ch, BETA_PER_CH=beta.dim() == 1, USE_MASK=bool(rank_mask), VARLEN=varlen,
                  NATIVE_SCAN=_native_scan())
    key = ("fwd", has_decay, alpha_ch, decay_ch, varlen, q.dtype, alpha.dtype, dec.dtype, acc)
    head = (q, v, alpha, dec, beta, h0, positions, cu, ckoff)
    h_start = h0
    if plan.split:
        nw = plan.n_work
        sum_h = _alloc((nw, D), acc, dev)
        sum_a = _alloc((nw, D), acc, dev) if has_decay else h0
        _run("fwd", vmisa_fwd_kernel, head + (y, sum_h, h0, sum_a) + strides + (plan.n_seg, plan.seg_chunks),
             {**consts, "SUMMARY": True}, plan, nw, D, key + (True,))
        h_start = _alloc((nw, D), acc, dev)
        _carry_scan(h0, sum_h, sum_a, h_start, N, plan.n_seg, has_decay, reverse=False)
    head = (q, v, alpha, dec, beta, h_start, positions, cu, ckoff)
    _run("fwd", vmisa_fwd_kernel, head + (y, final, ck if has_decay else h0, h0) + strides
         + (plan.n_seg, plan.seg_chunks), {**consts, "SUMMARY": False}, plan, plan.n_work, D, key + (False,))
    return y, final, ck


def _reduce_like(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a gradient over the dims ``like`` broadcasts (size 1 there, larger in ``grad``)."""
    dims = [i for i, (g, s) in enumerate(zip(grad.shape, like.shape)) if s == 1 and g != 1]
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad.reshape(like.shape).to(like.dtype)


def launch_bwd(
    dy: Tensor, dfinal: Tensor, q: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, h0: Tensor,
    positions: Tensor, decay: Tensor | None, cu_seqlens: Tensor | None, ckpt: Tensor,
    rank_mask: bool, need_ddecay: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the backward. Returns (dq, dv, dalpha, dbeta, dh0, ddecay) shaped and typed like
    the inputs (ddecay None without decay or when ``need_ddecay`` is False)."""
    _check_launchable(q)
    with _device_guard(q):
        return _launch_bwd(dy, dfinal, q, v, alpha, beta, h0, positions, decay, cu_seqlens, ckpt, rank_mask, need_ddecay)


def _launch_bwd(dy, dfinal, q, v, alpha, beta, h0, positions, decay, cu_seqlens, ckpt, rank_mask, need_ddecay):
    B, L, D = q.shape
    N, varlen, has_decay = h0.shape[0], cu_seqlens is not None, decay is not None
    q, v, dy = _rows_last_unit(q), _rows_last_unit(v), _rows_last_unit(dy)
    beta_c = beta.contiguous()
    acc, dev = h0.dtype, q.device
    dfinal = dfinal.to(acc).contiguous()
    need_ddecay = bool(need_ddecay and has_decay)
    sab, sal, sad, alpha_ch = _per_token_strides(alpha)
    sdb, sdl, sdd, decay_ch = _per_token_strides(decay)
    dec = decay if has_decay else h0
    plan = plan_for("bwd", q, N, L, D, varlen)
    n_dblocks = cdiv(D, min(plan.block_ds + (tuning.pinned("bwd", plan.block_ds, _gpu()).kwargs["BLOCK_D"],)))
    dq = _alloc((B, L, D), q.dtype, dev)
    dv = _alloc((B, L, D), v.dtype, dev)
    dalpha = _alloc((B, L, D), alpha.dtype, dev) if alpha_ch else _alloc((n_dblocks, B, L), acc, dev)
    ddecay = h0
    if need_ddecay:
        ddecay = _alloc((B, L, D), decay.dtype, dev) if decay_ch else _alloc((n_dblocks, B, L), acc, dev)
    dbeta = _alloc((plan.n_work, D), acc, dev)
    dh0 = _alloc((N, D), acc, dev)
    cu = cu_seqlens.contiguous() if varlen else h0
    ckoff = _chunk_offsets(cu_seqlens) if (varlen and has_decay) else h0
    strides = (q.stride(0), q.stride(1), v.stride(0), v.stride(1), sab, sal, sad, sdb, sdl, sdd, dy.stride(0),
               dy.stride(1), positions.stride(0) if positions.shape[0] > 1 else 0, L, D, cdiv(L, BLOCK_T), B)
    consts = dict(BLOCK_T=BLOCK_T, LOG2_T=LOG2_BLOCK_T, ALPHA_PER_CH=alpha_ch, HAS_DECAY=has_decay,
                  DECAY_PER_CH=decay_ch, BETA_PER_CH=beta.dim() == 1, USE_MASK=bool(rank_mask), VARLEN=varlen,
                  NATIVE_SCAN=_native_scan(), NEED_DDECAY=need_ddecay)
    key = ("bwd", has_decay, alpha_ch, decay_ch, varlen, need_ddecay, q.dtype, alpha.dtype, dec.dtype, acc)
    head = (q, v, alpha, dec, beta_c, positions, cu, ckoff, ckpt if has_decay else h0)
    dcarry = dfinal
    if plan.split:
        nw = plan.n_work
        sum_s = _alloc((nw, D), acc, dev)
        sum_p = _alloc((nw, D), acc, dev) if has_decay else h0
        _run("bwd", vmisa_bwd_kernel, head + (dy, dfinal, dq, dv, dalpha, ddecay, dbeta, sum_s, sum_p) + strides
             + (plan.n_seg, plan.seg_chunks), {**consts, "SUMMARY": True}, plan, nw, D, key + (True,))
        dcarry = _alloc((nw, D), acc, dev)
        _carry_scan(dfinal, sum_s, sum_p, dcarry, N, plan.n_seg, has_decay, reverse=True)
    cfg = _run("bwd", vmisa_bwd_kernel, head + (dy, dcarry, dq, dv, dalpha, ddecay, dbeta, dh0, h0) + strides
               + (plan.n_seg, plan.seg_chunks), {**consts, "SUMMARY": False}, plan, plan.n_work, D, key + (False,))
    used = cdiv(D, cfg.kwargs["BLOCK_D"])  # D-blocks the launched config wrote
    if not alpha_ch:
        dalpha = dalpha[:used].sum(0).unsqueeze(-1)  # (B, L, 1)
    dalpha = _reduce_like(dalpha, alpha)
    dd = None
    if need_ddecay:
        dd = ddecay if decay_ch else ddecay[:used].sum(0).unsqueeze(-1)
        dd = _reduce_like(dd, decay)
    dbeta = dbeta.sum(0)
    if beta.dim() == 0:
        dbeta = dbeta.sum()
    return dq, dv, dalpha, dbeta, dh0, dd
