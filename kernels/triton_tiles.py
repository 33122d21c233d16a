"""Device helpers shared by the scan kernels (:mod:`.triton_kernels`): the in-chunk linear
scan, per-token / per-channel tile loads, and where a program's tokens are.

Every scan here runs FORWARD along the tile's rows. The backward's reverse recurrence is
done as a forward scan over tiles loaded with their rows reversed (the backward kernel
loads token ``row0 + BT - 1 - r`` into row ``r``): ``tl.associative_scan(reverse=True)``
with a non-commutative combine has had wrong-result bugs on GPUs (triton-lang/triton
issues 4362, 8412), and the interpreter cannot catch those.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _combine(a1, u1, a2, u2):
    # (a1, u1) then (a2, u2): h -> a2 * (a1 * h + u1) + u2
    return a1 * a2, a2 * u1 + u2


@triton.jit
def tile_linear_scan(a, u, BT: tl.constexpr, BD: tl.constexpr, LOG2_BT: tl.constexpr, NATIVE: tl.constexpr):
    """Scan a (BT, BD) tile along rows from a zero state: ``H_r = a_r * H_{r-1} + u_r``.

    Also returns ``A_r``, the product of ``a`` over rows 0..r, so that with a carried-in
    state c the true values are ``H_r + A_r * c``. NATIVE: ``tl.associative_scan`` (the GPU
    path); else a log-step (Hillis-Steele) scan from ``tl.gather``, which Triton's
    interpreter runs ~100x faster than its per-element ``associative_scan`` loop.
    """
    if NATIVE:
        A, H = tl.associative_scan((a, u), 0, _combine)
    else:
        rows = tl.arange(0, BT)
        A = a
        H = u
        for i in tl.static_range(LOG2_BT):
            step: tl.constexpr = 1 << i
            ok = rows >= step
            idx = tl.broadcast_to(tl.maximum(rows - step, 0)[:, None], (BT, BD))
            H_other = tl.gather(H, idx, 0)
            A_other = tl.gather(A, idx, 0)
            H = tl.where(ok[:, None], H + A * H_other, H)
            A = tl.where(ok[:, None], A * A_other, A)
    return A, H


@triton.jit
def last_row(x, BT: tl.constexpr):
    """Row BT - 1 of a (BT, BD) tile, as a (BD,) vector."""
    return tl.sum(tl.where(tl.arange(0, BT)[:, None] == BT - 1, x, 0.0), 0)


@triton.jit
def load_rows(
    chunk_base, rows, cols, stride_l, stride_d, rmask, cmask, other, PER_CH: tl.constexpr, BT: tl.constexpr,
    BD: tl.constexpr, ACC: tl.constexpr
):
    """A per-token (BT,) or per-channel (BT, BD) quantity of one chunk as a (BT, BD) tile in
    ACC (loaded in its own dtype: bf16 / fp16 gates are not cast on the host). ``chunk_base``
    points at the chunk's first token; ``rows`` (int32, possibly reversed) index tokens."""
    if PER_CH:
        x = tl.load(
            chunk_base + (rows[:, None] * stride_l + cols[None, :] * stride_d),
            mask=rmask[:, None] & cmask[None, :],
            other=other,
        )
        return x.to(ACC)
    else:
        x = tl.load(chunk_base + rows * stride_l, mask=rmask, other=other).to(ACC)
        return tl.broadcast_to(x[:, None], (BT, BD))


@triton.jit
def work_item(D, L, NSEG, SEG_CHUNKS, cu_ptr, ckoff_ptr, NC, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
              VARLEN: tl.constexpr):
    """Decode the 1-D program id into (d-block, work item w, sequence n, segment s) and the
    sequence's token range. Returns pid_d, w, n, s, bos, eos, lo, hi, b, ck0 (int64 except
    pid_d): [bos, eos) is sequence n, [lo, hi) this program's segment of it, b its batch row,
    ck0 the checkpoint row of the segment's first chunk."""
    pid = tl.program_id(0)
    n_db = tl.cdiv(D, BLOCK_D)
    pid_d = pid % n_db
    w = (pid // n_db).to(tl.int64)
    n = w // NSEG
    s = w % NSEG
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
    lo = tl.minimum(bos + s * SEG_CHUNKS * BLOCK_T, eos)
    hi = tl.minimum(lo + (s * 0 + SEG_CHUNKS) * BLOCK_T, eos)  # int64 product
    return pid_d, w, n, s, bos, eos, lo, hi, b, ck_base + s * SEG_CHUNKS


@triton.jit
def start_state(state_ptr, w, D, cols, cmask, beta_ptr, BETA_PER_CH: tl.constexpr, SUMMARY: tl.constexpr,
                ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    """(state, running decay product, beta as a (1, BLOCK_D) row) at the start of work item
    w. A summary pass starts from a zero state (beta unused); the others load row w of
    ``state_ptr``: the (N, D) initial states / final-state gradients in one pass (w == n),
    the (N*NSEG, D) segment carries on the split path."""
    prod = tl.full((BLOCK_D,), 1.0, dtype=ACC)
    if SUMMARY:
        state = tl.zeros((BLOCK_D,), dtype=ACC)
        beta = tl.zeros((1, BLOCK_D), dtype=ACC)
    else:
        state = tl.load(state_ptr + w * D + cols, mask=cmask, other=0.0).to(ACC)
        if BETA_PER_CH:
            beta = tl.load(beta_ptr + cols, mask=cmask, other=0.0).to(ACC)[None, :]
        else:
            beta = tl.zeros((1, BLOCK_D), dtype=ACC) + tl.load(beta_ptr).to(ACC)
    return state, prod, beta
