"""Triton kernels for the causal VMI-SA scan (forward and backward), plus their launchers.

Design (``docs/kernels.md`` has the long version):

* One program owns one (sequence, block of ``BLOCK_D`` channels) pair and walks the
  sequence in chunks of ``BLOCK_T`` tokens, carrying the D-block of the state ``h``
  from chunk to chunk in registers. Each element of q, v, alpha (and decay) is read
  once and each element of y written once: the minimum traffic of this memory-bound op.
* Inside a chunk the recurrence is a parallel scan over the (BLOCK_T, BLOCK_D) tile:
  ``tl.cumsum`` without decay, ``tl.associative_scan`` over (a, u) pairs with decay.
* The backward is the reverse scan of DESIGN.md §1: ``dh_t = M_t g_t + a_{t+1} dh_{t+1}``,
  started from the final state's upstream gradient, walked from the last chunk to the
  first. ``d decay_t = dh_t * h_{t-1}`` needs the forward states: the forward kernel
  saves the state entering every chunk (a (chunks, D) checkpoint, 1/BLOCK_T of the
  activations) and the backward recomputes the chunk's states from it.
* Float32 accumulation for fp16 / bf16 / fp32 inputs; float64 inputs run in float64
  (the accumulation dtype is the dtype of the state ``h0``).
* Variable-length packed batches (``cu_seqlens``): program (d-block, n) reads the
  boundaries of sequence n and walks only its tokens.

Triton's interpreter (``TRITON_INTERPRET=1``, read when this module is imported) runs the
same kernels on CPU tensors. Its generic ``associative_scan`` is a per-element Python loop
(~50 us an element), so under the interpreter the decay scan uses a log-step
(Hillis-Steele) scan built from ``tl.gather`` instead, unless ``VMISEQ_TRITON_SCAN=native``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .geometry import BLOCK_T, LOG2_BLOCK_T, checkpoint_rows

INTERPRET = bool(triton.knobs.runtime.interpret)  # decided when this module is imported
NAN_ENV = "VMISEQ_DEBUG_NAN"  # "1": fill every buffer the kernels write with NaN first
SCAN_ENV = "VMISEQ_TRITON_SCAN"  # "native" / "doubling": force the in-chunk decay scan


def _configs(kernel: str, gpu: bool | None = None) -> list[triton.Config]:
    """Autotuning space of one kernel; one default config under the interpreter or without a
    GPU driver. ``LOOP_STAGES`` is the software-pipelining depth of the chunk loop (Triton
    prefetches the next chunks' tiles with cp.async); 1 turns it off."""
    if gpu is None:
        gpu = torch.cuda.is_available() and not INTERPRET
    if not gpu:
        return [triton.Config({"BLOCK_D": 64, "LOOP_STAGES": 1}, num_warps=4, num_stages=1)]
    shapes = FWD_SHAPES if kernel == "fwd" else BWD_SHAPES
    return [
        triton.Config({"BLOCK_D": bd, "LOOP_STAGES": st}, num_warps=w, num_stages=1, maxnreg=reg)
        for bd, w, reg in shapes
        for st in (1, 2, 3)
    ]


# (BLOCK_D, num_warps, register cap), measured with kernels/compile_check.py for sm_90, bf16.
# Uncapped, ptxas takes up to 255 registers and a 256-thread program then fills a whole SM
# (one sequential program per SM hides little latency); the caps allow 2 programs per SM.
# Uncapped shapes never spill; the capped ones spill 0-40 bytes, except the backward at
# (32, 8, 128) with a per-channel decay (~380 bytes): the autotuner weighs that on the device.
# The per-thread share of a (64, BLOCK_D) tile stays at 8-16 elements.
FWD_SHAPES = ((16, 4, None), (32, 4, None), (32, 8, 96), (64, 8, 128))
BWD_SHAPES = ((16, 4, None), (16, 8, 128), (32, 8, None), (32, 8, 128))
FWD_CONFIGS = _configs("fwd")
BWD_CONFIGS = _configs("bwd")
# rows of the per-D-block partial sums: enough for any config the GPU autotuner may pick
MIN_BLOCK_D = min(c.kwargs["BLOCK_D"] for c in BWD_CONFIGS + _configs("bwd", gpu=True))


def _prune(configs, named_args, **kwargs):
    """Drop D-blocks much wider than D (all lanes but a few would be masked off)."""
    D = named_args["D"]
    keep = [c for c in configs if c.kwargs["BLOCK_D"] <= max(16, triton.next_power_of_2(D))]
    return keep or configs[:1]


AUTOTUNE_KEY = ["D", "HAS_DECAY", "ALPHA_PER_CH", "DECAY_PER_CH", "VARLEN"]


# ----------------------------------------------------------------------------- device helpers
@triton.jit
def _combine(a1, u1, a2, u2):
    # (a1, u1) then (a2, u2): h -> a2 * (a1 * h + u1) + u2
    return a1 * a2, a2 * u1 + u2


@triton.jit
def _tile_linear_scan(
    a, u, BT: tl.constexpr, BD: tl.constexpr, LOG2_BT: tl.constexpr, REVERSE: tl.constexpr, NATIVE: tl.constexpr
):
    """Scan a (BT, BD) tile along rows from a zero state.

    Forward: ``H_t = a_t * H_{t-1} + u_t``; REVERSE: ``H_t = a_t * H_{t+1} + u_t``.
    Also returns ``A_t``, the product of ``a`` over the rows scanned so far (inclusive),
    so that with a carried-in state c the true values are ``H_t + A_t * c``.
    """
    if NATIVE:
        A, H = tl.associative_scan((a, u), 0, _combine, reverse=REVERSE)
    else:
        # Hillis-Steele: log2(BT) rounds of "combine with the element 2^i rows away".
        rows = tl.arange(0, BT)
        A = a
        H = u
        for i in tl.static_range(LOG2_BT):
            step: tl.constexpr = 1 << i
            if REVERSE:
                src = tl.minimum(rows + step, BT - 1)
                ok = (rows + step) < BT
            else:
                src = tl.maximum(rows - step, 0)
                ok = rows >= step
            idx = tl.broadcast_to(src[:, None], (BT, BD))
            H_other = tl.gather(H, idx, 0)
            A_other = tl.gather(A, idx, 0)
            H = tl.where(ok[:, None], H + A * H_other, H)
            A = tl.where(ok[:, None], A * A_other, A)
    return A, H


@triton.jit
def _load_rows(
    chunk_base, rows0, cols, stride_l, stride_d, rmask, cmask, other, PER_CH: tl.constexpr, BT: tl.constexpr,
    BD: tl.constexpr, ACC: tl.constexpr
):
    """A per-token (BT,) or per-channel (BT, BD) quantity of one chunk as a (BT, BD) tile.
    ``chunk_base`` points at the chunk's first row; ``rows0`` are 0..BT-1 (int32)."""
    if PER_CH:
        x = tl.load(
            chunk_base + (rows0[:, None] * stride_l + cols[None, :] * stride_d),
            mask=rmask[:, None] & cmask[None, :],
            other=other,
        )
        return x.to(ACC)
    else:
        x = tl.load(chunk_base + rows0 * stride_l, mask=rmask, other=other).to(ACC)
        return tl.broadcast_to(x[:, None], (BT, BD))


@triton.jit
def _bounds(n, cu_ptr, ckoff_ptr, L, NC, VARLEN: tl.constexpr):
    """(first token, end token, batch row, first checkpoint row) of sequence n, as int64."""
    if VARLEN:
        bos = tl.load(cu_ptr + n).to(tl.int64)
        eos = tl.load(cu_ptr + n + 1).to(tl.int64)
        b = n * 0  # packed: every sequence lives in batch row 0
        ck_base = tl.load(ckoff_ptr + n).to(tl.int64)
    else:
        bos = n * 0
        eos = n * 0 + L
        b = n
        ck_base = n * NC
    return bos, eos, b, ck_base


# Addressing: 64-bit scalar pointers to the first row of the current chunk, plus int32
# (BLOCK_T, BLOCK_D) offset tiles computed once per program. Per-element 64-bit pointer
# tiles would cost two registers per element per tensor (the backward reads or writes ten).

# ----------------------------------------------------------------------------- forward
@triton.autotune(configs=FWD_CONFIGS, key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _vmisa_fwd_kernel(
    q_ptr, v_ptr, alpha_ptr, decay_ptr, beta_ptr, h0_ptr, pos_ptr, cu_ptr, ckoff_ptr,
    y_ptr, hT_ptr, ck_ptr,
    stride_qb, stride_ql, stride_vb, stride_vl,
    stride_ab, stride_al, stride_ad,
    stride_db, stride_dl, stride_dd,
    stride_yb, stride_yl,
    stride_pos, L, D, NC,
    BLOCK_T: tl.constexpr, LOG2_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ALPHA_PER_CH: tl.constexpr, HAS_DECAY: tl.constexpr, DECAY_PER_CH: tl.constexpr,
    BETA_PER_CH: tl.constexpr, USE_MASK: tl.constexpr, VARLEN: tl.constexpr, NATIVE_SCAN: tl.constexpr,
    LOOP_STAGES: tl.constexpr,
):
    pid_d = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)  # sequence index
    bos, eos, b, ck_base = _bounds(n, cu_ptr, ckoff_ptr, L, NC, VARLEN)
    ACC: tl.constexpr = h0_ptr.dtype.element_ty
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows0 = tl.arange(0, BLOCK_T)
    off_q = rows0[:, None] * stride_ql + cols[None, :]
    off_v = rows0[:, None] * stride_vl + cols[None, :]
    off_y = rows0[:, None] * stride_yl + cols[None, :]

    h = tl.load(h0_ptr + n * D + cols, mask=cmask, other=0.0).to(ACC)
    if BETA_PER_CH:
        beta = tl.load(beta_ptr + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    else:
        beta = tl.load(beta_ptr).to(ACC)
    p0 = tl.load(pos_ptr + n * stride_pos)

    n_chunks = tl.cdiv(eos - bos, BLOCK_T)
    for k in tl.range(0, n_chunks, num_stages=LOOP_STAGES):  # cp.async prefetch of the next chunks
        row0 = bos + k * BLOCK_T  # first token of the chunk (int64)
        rmask = rows0 < eos - row0
        m2 = rmask[:, None] & cmask[None, :]
        qt = tl.load(q_ptr + (b * stride_qb + row0 * stride_ql) + off_q, mask=m2, other=0.0).to(ACC)
        vt = tl.load(v_ptr + (b * stride_vb + row0 * stride_vl) + off_v, mask=m2, other=0.0).to(ACC)
        z = qt * vt
        a_chunk = alpha_ptr + (b * stride_ab + row0 * stride_al)
        al = _load_rows(a_chunk, rows0, cols, stride_al, stride_ad, rmask, cmask, 0.0, ALPHA_PER_CH, BLOCK_T, BLOCK_D, ACC)
        u = al * z
        if HAS_DECAY:
            tl.store(ck_ptr + (ck_base + k) * D + cols, h, mask=cmask)  # state entering the chunk
            d_chunk = decay_ptr + (b * stride_db + row0 * stride_dl)
            a = _load_rows(d_chunk, rows0, cols, stride_dl, stride_dd, rmask, cmask, 1.0, DECAY_PER_CH, BLOCK_T, BLOCK_D, ACC)
            A, H = _tile_linear_scan(a, u, BLOCK_T, BLOCK_D, LOG2_T, False, NATIVE_SCAN)
            hs = H + A * h[None, :]
            # padded rows have a = 1, u = 0, so the last row holds the state after eos - 1
            h = tl.sum(tl.where(rows0[:, None] == BLOCK_T - 1, hs, 0.0), 0)
        else:
            hs = tl.cumsum(u, 0) + h[None, :]
            h = h + tl.sum(u, 0)
        out = hs
        if USE_MASK:
            pos = p0 + (row0 - bos) + rows0  # absolute position of each token
            out = tl.where(cols[None, :] <= pos[:, None], hs, 0.0)
        yt = out + beta * z
        tl.store(y_ptr + (b * stride_yb + row0 * stride_yl) + off_y, yt.to(y_ptr.dtype.element_ty), mask=m2)
    tl.store(hT_ptr + n * D + cols, h, mask=cmask)


# ----------------------------------------------------------------------------- backward
@triton.autotune(configs=BWD_CONFIGS, key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _vmisa_bwd_kernel(
    q_ptr, v_ptr, alpha_ptr, decay_ptr, beta_ptr, pos_ptr, cu_ptr, ckoff_ptr, ck_ptr,
    dy_ptr, dhT_ptr,
    dq_ptr, dv_ptr, dalpha_ptr, ddecay_ptr, dbeta_ptr, dh0_ptr,
    stride_qb, stride_ql, stride_vb, stride_vl,
    stride_ab, stride_al, stride_ad,
    stride_db, stride_dl, stride_dd,
    stride_gb, stride_gl,
    stride_pos, L, D, NC, NB,
    BLOCK_T: tl.constexpr, LOG2_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ALPHA_PER_CH: tl.constexpr, HAS_DECAY: tl.constexpr, DECAY_PER_CH: tl.constexpr,
    BETA_PER_CH: tl.constexpr, USE_MASK: tl.constexpr, VARLEN: tl.constexpr, NATIVE_SCAN: tl.constexpr,
    NEED_DDECAY: tl.constexpr, LOOP_STAGES: tl.constexpr,
):
    """Reverse scan. Layout of the outputs (all contiguous):
    dq, dv: (B, L, D); dh0, dbeta: (N, D) (dbeta is per-sequence, summed on the host);
    dalpha / ddecay: (B, L, D) when per channel, else (D-blocks, B, L) partial sums over
    this program's channels (summed on the host: deterministic, no atomics).
    """
    pid_d = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    bos, eos, b, ck_base = _bounds(n, cu_ptr, ckoff_ptr, L, NC, VARLEN)
    ACC: tl.constexpr = dh0_ptr.dtype.element_ty
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows0 = tl.arange(0, BLOCK_T)
    off_q = rows0[:, None] * stride_ql + cols[None, :]
    off_v = rows0[:, None] * stride_vl + cols[None, :]
    off_g = rows0[:, None] * stride_gl + cols[None, :]
    off_o = rows0[:, None] * D + cols[None, :]  # the contiguous (B, L, D) outputs

    carry = tl.load(dhT_ptr + n * D + cols, mask=cmask, other=0.0).to(ACC)  # dL/dh after the last token
    if BETA_PER_CH:
        beta = tl.load(beta_ptr + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    else:
        beta = tl.load(beta_ptr).to(ACC)
    p0 = tl.load(pos_ptr + n * stride_pos)
    dbeta = tl.zeros((BLOCK_D,), dtype=ACC)
    d_seq = decay_ptr + b * stride_db

    n_chunks = tl.cdiv(eos - bos, BLOCK_T)
    for i in tl.range(0, n_chunks, num_stages=LOOP_STAGES):
        k = n_chunks - 1 - i
        row0 = bos + k * BLOCK_T
        rmask = rows0 < eos - row0
        m2 = rmask[:, None] & cmask[None, :]
        qt = tl.load(q_ptr + (b * stride_qb + row0 * stride_ql) + off_q, mask=m2, other=0.0).to(ACC)
        vt = tl.load(v_ptr + (b * stride_vb + row0 * stride_vl) + off_v, mask=m2, other=0.0).to(ACC)
        g = tl.load(dy_ptr + (b * stride_gb + row0 * stride_gl) + off_g, mask=m2, other=0.0).to(ACC)
        z = qt * vt
        a_chunk = alpha_ptr + (b * stride_ab + row0 * stride_al)
        al = _load_rows(a_chunk, rows0, cols, stride_al, stride_ad, rmask, cmask, 0.0, ALPHA_PER_CH, BLOCK_T, BLOCK_D, ACC)
        m = g
        if USE_MASK:
            pos = p0 + (row0 - bos) + rows0
            m = tl.where(cols[None, :] <= pos[:, None], g, 0.0)
        if HAS_DECAY:
            # dh_t = a_{t+1} dh_{t+1} + m_t: the coefficient of row t is the decay of row t + 1
            # (1 past the end of the sequence, where dh continues as the final-state gradient).
            nmask = rows0 < eos - row0 - 1
            c = _load_rows(d_seq + (row0 + 1) * stride_dl, rows0, cols, stride_dl, stride_dd, nmask, cmask, 1.0,
                           DECAY_PER_CH, BLOCK_T, BLOCK_D, ACC)
            P, S = _tile_linear_scan(c, m, BLOCK_T, BLOCK_D, LOG2_T, True, NATIVE_SCAN)
            dh = S + P * carry[None, :]
        else:
            dh = tl.cumsum(m, 0, reverse=True) + carry[None, :]
        carry = tl.sum(tl.where(rows0[:, None] == 0, dh, 0.0), 0)  # dh at the chunk's first token

        dz = al * dh + beta * g
        o_chunk = b * L * D + row0 * D
        tl.store(dq_ptr + o_chunk + off_o, (dz * vt).to(dq_ptr.dtype.element_ty), mask=m2)
        tl.store(dv_ptr + o_chunk + off_o, (dz * qt).to(dv_ptr.dtype.element_ty), mask=m2)
        dal = dh * z
        p_chunk = pid_d * NB * L + b * L + row0  # (D-blocks, B, L) partial sums
        if ALPHA_PER_CH:
            tl.store(dalpha_ptr + o_chunk + off_o, dal, mask=m2)
        else:
            tl.store(dalpha_ptr + p_chunk + rows0, tl.sum(tl.where(m2, dal, 0.0), 1), mask=rmask)
        dbeta += tl.sum(g * z, 0)

        if HAS_DECAY and NEED_DDECAY:
            # d decay_t = dh_t * h_{t-1}: rebuild the chunk's states from its checkpoint.
            h_in = tl.load(ck_ptr + (ck_base + k) * D + cols, mask=cmask, other=0.0)
            a = _load_rows(d_seq + row0 * stride_dl, rows0, cols, stride_dl, stride_dd, rmask, cmask, 1.0,
                           DECAY_PER_CH, BLOCK_T, BLOCK_D, ACC)
            A, H = _tile_linear_scan(a, al * z, BLOCK_T, BLOCK_D, LOG2_T, False, NATIVE_SCAN)
            hs = H + A * h_in[None, :]
            prev = tl.broadcast_to(tl.maximum(rows0 - 1, 0)[:, None], (BLOCK_T, BLOCK_D))
            h_prev = tl.where(rows0[:, None] == 0, h_in[None, :], tl.gather(hs, prev, 0))
            dd = dh * h_prev
            if DECAY_PER_CH:
                tl.store(ddecay_ptr + o_chunk + off_o, dd, mask=m2)
            else:
                tl.store(ddecay_ptr + p_chunk + rows0, tl.sum(tl.where(m2, dd, 0.0), 1), mask=rmask)

    if HAS_DECAY:
        # dL/dh_init = a_0 * dh_0 (an empty sequence passes the final-state gradient through)
        a0 = tl.load(d_seq + bos * stride_dl + cols * stride_dd, mask=cmask & (bos < eos), other=1.0).to(ACC)
        carry = carry * a0
    tl.store(dh0_ptr + n * D + cols, carry, mask=cmask)
    tl.store(dbeta_ptr + n * D + cols, dbeta, mask=cmask)


# ----------------------------------------------------------------------------- launchers
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


def _chunk_offsets(cu_seqlens: Tensor) -> Tensor:
    """Index of each sequence's first checkpoint row (N+1,), computed on device (no sync)."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    n_chunks = (lens + BLOCK_T - 1) // BLOCK_T
    return torch.cat([n_chunks.new_zeros(1), torch.cumsum(n_chunks, 0)])


def _geometry(q: Tensor, h0: Tensor, cu_seqlens: Tensor | None):
    B, L, D = q.shape
    varlen = cu_seqlens is not None
    N = h0.shape[0]
    NC = triton.cdiv(L, BLOCK_T)
    return B, L, D, N, NC, varlen


def _per_token_strides(x: Tensor | None, D: int):
    """(B|1, L, 1|D) -> (stride_b, stride_l, stride_d, per_channel) with broadcast dims at stride 0."""
    if x is None:
        return 0, 0, 0, False
    per_ch = x.shape[-1] != 1
    sb = x.stride(0) if x.shape[0] > 1 else 0
    sd = x.stride(2) if per_ch else 0
    return sb, x.stride(1), sd, per_ch


def scan_fwd(
    q: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, h0: Tensor, positions: Tensor,
    decay: Tensor | None, cu_seqlens: Tensor | None, rank_mask: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel. Returns y (B, L, D) in q's dtype, the final states (N, D)
    and the chunk-entry state checkpoints (rows, D) (empty without decay)."""
    _check_launchable(q)
    B, L, D, N, NC, varlen = _geometry(q, h0, cu_seqlens)
    q, v = _rows_last_unit(q), _rows_last_unit(v)
    h0 = h0.contiguous()
    beta = beta.contiguous()
    acc = h0.dtype
    y = _alloc((B, L, D), q.dtype, q.device)
    final = _alloc((N, D), acc, q.device)
    has_decay = decay is not None
    ck_shape = (checkpoint_rows(N, B, L, varlen), D) if has_decay else (0,)
    # packed: an upper bound on the rows; the unused tail must not hold garbage (it is an output)
    ck = torch.zeros(ck_shape, dtype=acc, device=q.device) if varlen else _alloc(ck_shape, acc, q.device)
    cu = cu_seqlens.contiguous() if varlen else h0
    ckoff = _chunk_offsets(cu_seqlens) if (varlen and has_decay) else h0
    sab, sal, sad, alpha_ch = _per_token_strides(alpha, D)
    sdb, sdl, sdd, decay_ch = _per_token_strides(decay, D)
    grid = lambda meta: (triton.cdiv(D, meta["BLOCK_D"]), N)  # noqa: E731
    _vmisa_fwd_kernel[grid](
        q, v, alpha, decay if has_decay else h0, beta, h0, positions, cu, ckoff,
        y, final, ck if has_decay else h0,
        q.stride(0), q.stride(1), v.stride(0), v.stride(1),
        sab, sal, sad, sdb, sdl, sdd,
        y.stride(0), y.stride(1),
        positions.stride(0) if positions.shape[0] > 1 else 0, L, D, NC,
        BLOCK_T=BLOCK_T, LOG2_T=LOG2_BLOCK_T,
        ALPHA_PER_CH=alpha_ch, HAS_DECAY=has_decay, DECAY_PER_CH=decay_ch,
        BETA_PER_CH=beta.dim() == 1, USE_MASK=bool(rank_mask), VARLEN=varlen, NATIVE_SCAN=_native_scan(),
    )
    return y, final, ck


def _reduce_like(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a gradient over the dims ``like`` broadcasts (size 1 there, larger in ``grad``)."""
    dims = [i for i, (g, s) in enumerate(zip(grad.shape, like.shape)) if s == 1 and g != 1]
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad.reshape(like.shape)


def scan_bwd(
    dy: Tensor, dfinal: Tensor, q: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, h0: Tensor,
    positions: Tensor, decay: Tensor | None, cu_seqlens: Tensor | None, ckpt: Tensor,
    rank_mask: bool, need_ddecay: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the backward kernel. Returns (dq, dv, dalpha, dbeta, dh0, ddecay) shaped like
    the inputs (ddecay None without decay or when ``need_ddecay`` is False)."""
    _check_launchable(q)
    B, L, D, N, NC, varlen = _geometry(q, h0, cu_seqlens)
    q, v, dy = _rows_last_unit(q), _rows_last_unit(v), _rows_last_unit(dy)
    beta_c = beta.contiguous()
    acc = h0.dtype
    dfinal = dfinal.to(acc).contiguous()
    has_decay = decay is not None
    need_ddecay = bool(need_ddecay and has_decay)
    sab, sal, sad, alpha_ch = _per_token_strides(alpha, D)
    sdb, sdl, sdd, decay_ch = _per_token_strides(decay, D)
    n_dblocks = triton.cdiv(D, MIN_BLOCK_D)  # enough rows for any autotuned BLOCK_D
    dq = _alloc((B, L, D), q.dtype, q.device)
    dv = _alloc((B, L, D), v.dtype, q.device)
    dalpha = _alloc((B, L, D) if alpha_ch else (n_dblocks, B, L), acc, q.device)
    ddecay = _alloc(((B, L, D) if decay_ch else (n_dblocks, B, L)) if need_ddecay else (0,), acc, q.device)
    dbeta = _alloc((N, D), acc, q.device)
    dh0 = _alloc((N, D), acc, q.device)
    cu = cu_seqlens.contiguous() if varlen else h0
    ckoff = _chunk_offsets(cu_seqlens) if (varlen and has_decay) else h0
    grid = lambda meta: (triton.cdiv(D, meta["BLOCK_D"]), N)  # noqa: E731
    _vmisa_bwd_kernel[grid](
        q, v, alpha, decay if has_decay else h0, beta_c, positions, cu, ckoff, ckpt if has_decay else h0,
        dy, dfinal,
        dq, dv, dalpha, ddecay if need_ddecay else h0, dbeta, dh0,
        q.stride(0), q.stride(1), v.stride(0), v.stride(1),
        sab, sal, sad, sdb, sdl, sdd,
        dy.stride(0), dy.stride(1),
        positions.stride(0) if positions.shape[0] > 1 else 0, L, D, NC, B,
        BLOCK_T=BLOCK_T, LOG2_T=LOG2_BLOCK_T,
        ALPHA_PER_CH=alpha_ch, HAS_DECAY=has_decay, DECAY_PER_CH=decay_ch,
        BETA_PER_CH=beta.dim() == 1, USE_MASK=bool(rank_mask), VARLEN=varlen, NATIVE_SCAN=_native_scan(),
        NEED_DDECAY=need_ddecay,
    )
    used = triton.cdiv(D, _vmisa_bwd_kernel.best_config.kwargs["BLOCK_D"])  # D-blocks actually written
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
