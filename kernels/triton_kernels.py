"""Triton kernels of the causal VMI-SA scan (``docs/kernels.md`` has the design).

* ``vmisa_fwd_kernel``: a program owns one (work item, BLOCK_D channels) pair and walks its
  tokens in chunks of BLOCK_T, carrying the D-block of the state ``h`` in registers; q, v,
  alpha (and decay) are read once, y written once. In-chunk: ``tl.cumsum`` without decay,
  a linear scan over (a, u) pairs with decay (:func:`.triton_tiles.tile_linear_scan`).
* ``vmisa_bwd_kernel``: the reverse scan ``dh_t = M_t g_t + a_{t+1} dh_{t+1}`` from the final
  state's gradient, walking chunks last to first, each tile loaded with its rows REVERSED so
  that the reverse recurrence is a forward scan. ``d decay_t = dh_t h_{t-1}`` rebuilds the
  chunk's states from the checkpoint the forward saved at the chunk's entry.
* ``SUMMARY=True`` (the small-batch path) runs either kernel over one segment from a zero
  state and writes only the segment's total (state and decay product);
  ``segment_carry_kernel`` scans those totals into every segment's carry, and the replay
  (``SUMMARY=False``) starts each segment from its carry.
Work items, segments and the 1-D grid: :func:`.triton_tiles.work_item`, ``geometry.py``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_tiles import last_row, load_rows, start_state, tile_linear_scan, work_item


@triton.jit
def vmisa_fwd_kernel(
    q_ptr, v_ptr, alpha_ptr, decay_ptr, beta_ptr, h0_ptr, pos_ptr, cu_ptr, ckoff_ptr,
    y_ptr, hT_ptr, ck_ptr, sumA_ptr,
    stride_qb, stride_ql, stride_vb, stride_vl,
    stride_ab, stride_al, stride_ad,
    stride_db, stride_dl, stride_dd,
    stride_yb, stride_yl,
    stride_pos, L, D, NC, NSEG, SEG_CHUNKS,
    BLOCK_T: tl.constexpr, LOG2_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ALPHA_PER_CH: tl.constexpr, HAS_DECAY: tl.constexpr, DECAY_PER_CH: tl.constexpr,
    BETA_PER_CH: tl.constexpr, USE_MASK: tl.constexpr, VARLEN: tl.constexpr, NATIVE_SCAN: tl.constexpr,
    SUMMARY: tl.constexpr, LOOP_STAGES: tl.constexpr,
):
    """Outputs: y (B, L, D); the final states hT (N, D) (written by each sequence's last
    segment); ck, the state entering every chunk (decay only). SUMMARY: hT is the (N*NSEG, D)
    buffer of segment totals from a zero state and sumA their decay products."""
    pid_d, w, n, s, bos, eos, lo, hi, b, ck0 = work_item(
        D, L, NSEG, SEG_CHUNKS, cu_ptr, ckoff_ptr, NC, BLOCK_T, BLOCK_D, VARLEN)
    ACC: tl.constexpr = hT_ptr.dtype.element_ty
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows0 = tl.arange(0, BLOCK_T)
    off_q = rows0[:, None] * stride_ql + cols[None, :]
    off_v = rows0[:, None] * stride_vl + cols[None, :]
    off_y = rows0[:, None] * stride_yl + cols[None, :]
    h, aprod, beta = start_state(h0_ptr, w, D, cols, cmask, beta_ptr, BETA_PER_CH, SUMMARY, ACC, BLOCK_D)
    p0 = tl.load(pos_ptr + n * stride_pos)

    n_chunks = tl.cdiv(hi - lo, BLOCK_T)
    for k in tl.range(0, n_chunks, num_stages=LOOP_STAGES):  # cp.async prefetch of the next chunks
        row0 = lo + k * BLOCK_T  # first token of the chunk (int64)
        rmask = rows0 < hi - row0
        m2 = rmask[:, None] & cmask[None, :]
        qt = tl.load(q_ptr + (b * stride_qb + row0 * stride_ql) + off_q, mask=m2, other=0.0).to(ACC)
        vt = tl.load(v_ptr + (b * stride_vb + row0 * stride_vl) + off_v, mask=m2, other=0.0).to(ACC)
        z = qt * vt
        a_chunk = alpha_ptr + (b * stride_ab + row0 * stride_al)
        al = load_rows(a_chunk, rows0, cols, stride_al, stride_ad, rmask, cmask, 0.0, ALPHA_PER_CH, BLOCK_T, BLOCK_D, ACC)
        u = al * z
        if HAS_DECAY:
            if not SUMMARY:
                tl.store(ck_ptr + (ck0 + k) * D + cols, h, mask=cmask)  # state entering the chunk
            d_chunk = decay_ptr + (b * stride_db + row0 * stride_dl)
            a = load_rows(d_chunk, rows0, cols, stride_dl, stride_dd, rmask, cmask, 1.0, DECAY_PER_CH, BLOCK_T, BLOCK_D, ACC)
            A, H = tile_linear_scan(a, u, BLOCK_T, BLOCK_D, LOG2_T, NATIVE_SCAN)
            hs = H + A * h[None, :]
            # padded rows have a = 1, u = 0, so the last row holds the state after hi - 1
            h = last_row(hs, BLOCK_T)
            if SUMMARY:
                aprod = aprod * last_row(A, BLOCK_T)
        else:
            hs = tl.cumsum(u, 0) + h[None, :]
            h = h + tl.sum(u, 0)
        if not SUMMARY:
            out = hs
            if USE_MASK:
                pos = p0 + (row0 - bos) + rows0  # absolute position of each token
                out = tl.where(cols[None, :] <= pos[:, None], hs, 0.0)
            yt = out + beta * z
            tl.store(y_ptr + (b * stride_yb + row0 * stride_yl) + off_y, yt.to(y_ptr.dtype.element_ty), mask=m2)
    if SUMMARY:
        tl.store(hT_ptr + w * D + cols, h, mask=cmask)
        if HAS_DECAY:
            tl.store(sumA_ptr + w * D + cols, aprod, mask=cmask)
    else:
        tl.store(hT_ptr + n * D + cols, h, mask=cmask & (s == NSEG - 1))


@triton.jit
def vmisa_bwd_kernel(
    q_ptr, v_ptr, alpha_ptr, decay_ptr, beta_ptr, pos_ptr, cu_ptr, ckoff_ptr, ck_ptr,
    dy_ptr, dcarry_ptr,
    dq_ptr, dv_ptr, dalpha_ptr, ddecay_ptr, dbeta_ptr, dh0_ptr, sumP_ptr,
    stride_qb, stride_ql, stride_vb, stride_vl,
    stride_ab, stride_al, stride_ad,
    stride_db, stride_dl, stride_dd,
    stride_gb, stride_gl,
    stride_pos, L, D, NC, NB, NSEG, SEG_CHUNKS,
    BLOCK_T: tl.constexpr, LOG2_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ALPHA_PER_CH: tl.constexpr, HAS_DECAY: tl.constexpr, DECAY_PER_CH: tl.constexpr,
    BETA_PER_CH: tl.constexpr, USE_MASK: tl.constexpr, VARLEN: tl.constexpr, NATIVE_SCAN: tl.constexpr,
    NEED_DDECAY: tl.constexpr, SUMMARY: tl.constexpr, LOOP_STAGES: tl.constexpr,
):
    """Reverse scan. dcarry: dL/dh after each work item's last token ((N, D) final-state
    gradients in one pass, the (N*NSEG, D) segment carries on the split path). Outputs (all
    contiguous): dq, dv (B, L, D); dh0 (N, D) (written by segment 0); dbeta (N*NSEG, D)
    per-program sums; dalpha / ddecay (B, L, D) when per channel, else (D-blocks, B, L)
    partial sums over this program's channels (summed on the host: deterministic, no
    atomics). SUMMARY: dh0 is the (N*NSEG, D) buffer of segment totals (dh at the segment's
    first token from a zero carry) and sumP their decay products."""
    pid_d, w, n, s, bos, eos, lo, hi, b, ck0 = work_item(
        D, L, NSEG, SEG_CHUNKS, cu_ptr, ckoff_ptr, NC, BLOCK_T, BLOCK_D, VARLEN)
    ACC: tl.constexpr = dh0_ptr.dtype.element_ty
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows0 = tl.arange(0, BLOCK_T)
    rr = BLOCK_T - 1 - rows0  # tile row r holds the chunk's token BLOCK_T - 1 - r (reversed)
    off_q = rr[:, None] * stride_ql + cols[None, :]
    off_v = rr[:, None] * stride_vl + cols[None, :]
    off_g = rr[:, None] * stride_gl + cols[None, :]
    off_o = rr[:, None] * D + cols[None, :]  # the contiguous (B, L, D) outputs
    flip = tl.broadcast_to(rr[:, None], (BLOCK_T, BLOCK_D))
    carry, pprod, beta = start_state(dcarry_ptr, w, D, cols, cmask, beta_ptr, BETA_PER_CH, SUMMARY, ACC, BLOCK_D)
    dbeta = tl.zeros((BLOCK_D,), dtype=ACC)
    p0 = tl.load(pos_ptr + n * stride_pos)
    d_seq = decay_ptr + b * stride_db

    n_chunks = tl.cdiv(hi - lo, BLOCK_T)
    for i in tl.range(0, n_chunks, num_stages=LOOP_STAGES):
        k = n_chunks - 1 - i
        row0 = lo + k * BLOCK_T
        rmask = rr < hi - row0
        m2 = rmask[:, None] & cmask[None, :]
        g = tl.load(dy_ptr + (b * stride_gb + row0 * stride_gl) + off_g, mask=m2, other=0.0).to(ACC)
        m = g
        if USE_MASK:
            pos = p0 + (row0 - bos) + rr
            m = tl.where(cols[None, :] <= pos[:, None], g, 0.0)
        if HAS_DECAY:
            # dh_t = a_{t+1} dh_{t+1} + m_t: the coefficient of token t is the decay of token
            # t + 1 (1 past the sequence's end, where dh continues as the carried gradient)
            nmask = rr < eos - row0 - 1
            c = load_rows(d_seq + (row0 + 1) * stride_dl, rr, cols, stride_dl, stride_dd, nmask, cmask, 1.0,
                          DECAY_PER_CH, BLOCK_T, BLOCK_D, ACC)
            P, S = tile_linear_scan(c, m, BLOCK_T, BLOCK_D, LOG2_T, NATIVE_SCAN)
            dh = S + P * carry[None, :]
            if SUMMARY:
                pprod = pprod * last_row(P, BLOCK_T)
        else:
            dh = tl.cumsum(m, 0) + carry[None, :]
        carry = last_row(dh, BLOCK_T)  # dh at the chunk's first token

        if not SUMMARY:
            qt = tl.load(q_ptr + (b * stride_qb + row0 * stride_ql) + off_q, mask=m2, other=0.0).to(ACC)
            vt = tl.load(v_ptr + (b * stride_vb + row0 * stride_vl) + off_v, mask=m2, other=0.0).to(ACC)
            z = qt * vt
            a_chunk = alpha_ptr + (b * stride_ab + row0 * stride_al)
            al = load_rows(a_chunk, rr, cols, stride_al, stride_ad, rmask, cmask, 0.0, ALPHA_PER_CH, BLOCK_T,
                           BLOCK_D, ACC)
            dz = al * dh + beta * g
            o_chunk = b * L * D + row0 * D
            tl.store(dq_ptr + o_chunk + off_o, (dz * vt).to(dq_ptr.dtype.element_ty), mask=m2)
            tl.store(dv_ptr + o_chunk + off_o, (dz * qt).to(dv_ptr.dtype.element_ty), mask=m2)
            dal = dh * z
            p_chunk = pid_d.to(tl.int64) * NB * L + b * L + row0  # (D-blocks, B, L) partial sums
            if ALPHA_PER_CH:
                tl.store(dalpha_ptr + o_chunk + off_o, dal.to(dalpha_ptr.dtype.element_ty), mask=m2)
            else:
                tl.store(dalpha_ptr + p_chunk + rr, tl.sum(tl.where(m2, dal, 0.0), 1), mask=rmask)
            dbeta += tl.sum(g * z, 0)

            if HAS_DECAY and NEED_DDECAY:
                # d decay_t = dh_t * h_{t-1}: rebuild the chunk's states (token order) from its
                # checkpoint, then read them back in the reversed row order.
                h_in = tl.load(ck_ptr + (ck0 + k) * D + cols, mask=cmask, other=0.0)
                a = load_rows(d_seq + row0 * stride_dl, rows0, cols, stride_dl, stride_dd, rows0 < hi - row0, cmask,
                              1.0, DECAY_PER_CH, BLOCK_T, BLOCK_D, ACC)
                A, H = tile_linear_scan(a, tl.gather(al * z, flip, 0), BLOCK_T, BLOCK_D, LOG2_T, NATIVE_SCAN)
                hs = H + A * h_in[None, :]
                prev = tl.broadcast_to(tl.maximum(rr - 1, 0)[:, None], (BLOCK_T, BLOCK_D))  # token t-1
                h_prev = tl.where(rr[:, None] == 0, h_in[None, :], tl.gather(hs, prev, 0))
                dd = dh * h_prev
                if DECAY_PER_CH:
                    tl.store(ddecay_ptr + o_chunk + off_o, dd.to(ddecay_ptr.dtype.element_ty), mask=m2)
                else:
                    tl.store(ddecay_ptr + p_chunk + rr, tl.sum(tl.where(m2, dd, 0.0), 1), mask=rmask)

    if SUMMARY:
        tl.store(dh0_ptr + w * D + cols, carry, mask=cmask)
        if HAS_DECAY:
            tl.store(sumP_ptr + w * D + cols, pprod, mask=cmask)
    else:
        if HAS_DECAY:
            # dL/dh_init = a_0 * dh_0 (an empty sequence passes the final-state gradient through)
            a0 = tl.load(d_seq + bos * stride_dl + cols * stride_dd, mask=cmask & (bos < eos), other=1.0).to(ACC)
            carry = carry * a0
        tl.store(dh0_ptr + n * D + cols, carry, mask=cmask & (s == 0))
        tl.store(dbeta_ptr + w * D + cols, dbeta, mask=cmask)


@triton.jit
def segment_carry_kernel(
    h0_ptr, sumH_ptr, sumA_ptr, carry_ptr, D, NSEG,
    HAS_DECAY: tl.constexpr, REVERSE: tl.constexpr, NSEG_P2: tl.constexpr, LOG2_NSEG: tl.constexpr,
    BLOCK_D: tl.constexpr, NATIVE_SCAN: tl.constexpr,
):
    """Scan the segment totals (H, A) of each sequence into every segment's carry: forward,
    the state entering segment s (from h0 = the initial states); REVERSE, dL/dh after segment
    s's last token (from h0 = the final-state gradients). One program per (sequence, D-block)
    loads all of the sequence's segments as one (NSEG_P2, BLOCK_D) tile; tile row r holds the
    total composed just before the target segment (row 0 the identity), so one inclusive
    forward scan gives every carry."""
    pid = tl.program_id(0)
    n_db = tl.cdiv(D, BLOCK_D)
    pid_d = pid % n_db
    n = (pid // n_db).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    r = tl.arange(0, NSEG_P2)
    if REVERSE:
        tgt = NSEG - 1 - r
        src = tgt + 1
    else:
        tgt = r
        src = r - 1
    ok = ((src >= 0) & (src < NSEG) & (r < NSEG))[:, None] & cmask[None, :]
    off = (n * NSEG + src)[:, None] * D + cols[None, :]
    H = tl.load(sumH_ptr + off, mask=ok, other=0.0)
    h0 = tl.load(h0_ptr + n * D + cols, mask=cmask, other=0.0).to(H.dtype)
    if HAS_DECAY:
        A = tl.load(sumA_ptr + off, mask=ok, other=1.0)
        Ac, Hc = tile_linear_scan(A, H, NSEG_P2, BLOCK_D, LOG2_NSEG, NATIVE_SCAN)
        c = Hc + Ac * h0[None, :]
    else:
        c = tl.cumsum(H, 0) + h0[None, :]
    dst = (n * NSEG + tgt)[:, None] * D + cols[None, :]
    tl.store(carry_ptr + dst, c, mask=(r < NSEG)[:, None] & cmask[None, :])
