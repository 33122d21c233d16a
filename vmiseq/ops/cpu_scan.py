"""Compiled CPU scan (numba): the causal VMI-SA forward and backward in one pass over memory.

Why: the vectorised torch scan (``chunk.py``) is a Python loop of tensor ops; every op
re-reads its operands from memory, so it runs at 4-10x the element-wise floor ``q * v``.
A compiled loop reads q, v (and the gates) once per token row and writes y once: the floor.

Layout of the work (measured on a 2-core CPU, see ``benchmarks/bench_ops.py``): each job
walks its tokens in order and processes whole rows of D channels (contiguous memory, SIMD
over channels). Rows split into column blocks run 10x slower (strided streams), so the
parallelism is over sequences and, when there are fewer sequences than threads, over
``nc`` chunks of each sequence -- a two-level scan. Jobs are plain compiled functions that
release the GIL, run on a thread pool of ``torch.get_num_threads()`` workers:

1. (parallel) each chunk but the last computes its local final state from zero and the
   product of its decay gates;
2. (sequential, (B, nc, D) work) the state entering every chunk, exactly:
   ``c_0 = h0, c_{k+1} = P_k * c_k + S_k``;
3. (parallel) every chunk scans from its carry and writes y.

The backward (docs/design.md §1) is the same pattern run from the end: reverse totals of
the masked upstream gradient, carries, then a reverse pass that recomputes z = q * v (never
saved) and writes dq, dv, dalpha, ddecay and per-job dbeta partials.

numba is optional (``pip install vmiseq[fast]``); without it ``chunk.py`` runs the torch scan.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch
from torch import Tensor

try:
    import numba
    from numba import njit
except ImportError:  # pragma: no cover - exercised where numba is missing
    numba = None

MIN_CHUNK_TOKENS = 256  # below this, splitting a sequence costs more than it saves
BLOCK_ELEMENTS = 1 << 14  # rows of this many elements per array are prefetched at once (L2)
FORCE_CHUNKS = None  # an int forces that many chunks per sequence (tests of the two-level scan)


def available() -> bool:
    """Whether the compiled CPU scan can run here (numba importable)."""
    return numba is not None


def n_chunks(B: int, L: int, threads: int) -> int:
    """Chunks per sequence: 1 when the B sequences already feed every thread, else enough
    that B * nc jobs balance ``threads`` (pass 1 has one job fewer per sequence)."""
    if FORCE_CHUNKS is not None:
        return max(1, min(FORCE_CHUNKS, L))
    if B >= threads or threads <= 1:
        return 1
    want = -(-2 * threads // B)  # two jobs per thread: pass 1 skips each last chunk
    return max(1, min(want, L // MIN_CHUNK_TOKENS))


if numba is not None:
    _jit = dict(cache=True, nogil=True, fastmath={"contract"}, boundscheck=False)

    @njit(inline="always", cache=True)
    def _row(x, b, t, scratch):
        """Row t of a (B|1, L, 1|D) gate as a length-D vector (a filled scratch when per-token)."""
        bb = b if x.shape[0] > 1 else 0
        if x.shape[2] == 1:
            c = x[bb, t, 0]
            for j in range(scratch.shape[0]):
                scratch[j] = c
            return scratch
        return x[bb, t]

    @njit(inline="always", cache=True)
    def _unmasked(pos, b, t, D, use_mask):
        """How many leading channels the rank mask keeps at token t: min(D, p + t + 1)."""
        if not use_mask:
            return D
        p = pos[b if pos.shape[0] > 1 else 0, 0]
        if p >= D - 1 - t:
            return D
        return p + t + 1

    @njit(inline="always", cache=True)
    def _prefetch(b, t0, t1, ins):
        """Touch every cache line of rows [t0, t1) of ``ins`` in ascending order: the reverse
        passes then find them in cache. Walking memory backwards defeats the hardware
        prefetcher (measured: a reverse pass costs 4-5x a forward one)."""
        acc = ins[0].dtype.type(0)
        for t in range(t0, t1):
            for x in ins:
                row = x[b, t]
                for j in range(0, row.shape[0], 8):
                    acc += row[j]
        return acc

    @njit(inline="always", cache=True)
    def _claim(b, t0, t1, outs):
        """The same for output rows: one write per cache line brings it in, ascending."""
        for t in range(t0, t1):
            for x in outs:
                row = x[b, t]
                for j in range(0, row.shape[0], 8):
                    row[j] = 0

    @njit(inline="always", cache=True)
    def _sum(x):
        """Sum of a row with 8 independent partial sums (vectorisable without reassociation)."""
        n8 = x.shape[0] // 8 * 8
        p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = x.dtype.type(0)
        for j in range(0, n8, 8):
            p0 += x[j]
            p1 += x[j + 1]
            p2 += x[j + 2]
            p3 += x[j + 3]
            p4 += x[j + 4]
            p5 += x[j + 5]
            p6 += x[j + 6]
            p7 += x[j + 7]
        total = ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7))
        for j in range(n8, x.shape[0]):
            total += x[j]
        return total

    @njit(**_jit)
    def _fwd_local(q, v, al, dec, has_dec, b, t0, t1, h, pr):
        """Pass 1 of one chunk: its final state from zero (into h) and decay product (pr)."""
        D = q.shape[2]
        ar, dr = np.empty(D, q.dtype), np.ones(D, q.dtype)
        for t in range(t0, t1):
            ar = _row(al, b, t, ar)
            qt, vt = q[b, t], v[b, t]
            if has_dec:
                dr = _row(dec, b, t, dr)
                for j in range(D):
                    h[j] *= dr[j]
                for j in range(D):
                    pr[j] *= dr[j]
            for j in range(D):
                h[j] += ar[j] * (qt[j] * vt[j])

    @njit(**_jit)
    def _fwd_scan(q, v, al, dec, has_dec, beta, pos, use_mask, b0, b1, t0, t1, hs, y, states, save_states):
        """Pass 3: tokens [t0, t1) of sequences [b0, b1) from the states hs (updated in place)."""
        D = q.shape[2]
        ar, dr = np.empty(D, q.dtype), np.ones(D, q.dtype)
        zero = q.dtype.type(0)
        for b in range(b0, b1):
            h = hs[b - b0]
            for t in range(t0, t1):
                ar = _row(al, b, t, ar)
                m = _unmasked(pos, b, t, D, use_mask)
                if has_dec:
                    dr = _row(dec, b, t, dr)
                qt, vt, yt = q[b, t], v[b, t], y[b, t]
                for j in range(D):  # one fused loop: each row is read and written once
                    z = qt[j] * vt[j]
                    hj = dr[j] * h[j] + ar[j] * z  # dr is all ones without decay: exact
                    h[j] = hj
                    yt[j] = (hj if j < m else zero) + beta[j] * z
                if save_states:
                    states[b, t] = h

    @njit(**_jit)
    def _bwd_local(g, dec, has_dec, pos, use_mask, b, t0, t1, s, pr):
        """Backward pass 1 of one chunk: the gradient leaving its first token from zero (s)."""
        D = g.shape[2]
        dr = np.ones(D, g.dtype)
        rows = max(4, BLOCK_ELEMENTS // D)
        touched = g.dtype.type(0)
        for t in range(t1 - 1, t0 - 1, -1):
            if t == t1 - 1 or (t - t0 + 1) % rows == 0:
                touched += _prefetch(b, max(t0, t - rows + 1), t + 1, (g,))
            m = _unmasked(pos, b, t, D, use_mask)
            gt = g[b, t]
            for j in range(m):
                s[j] += gt[j]
            if has_dec:
                dr = _row(dec, b, t, dr)
                for j in range(D):
                    s[j] *= dr[j]
                for j in range(D):
                    pr[j] *= dr[j]
        return touched

    @njit(**_jit)
    def _bwd_scan(q, v, al, dec, has_dec, beta, h0, pos, use_mask, g, states, need_ddec,
                  b0, b1, t0, t1, ss, dq, dv, dal, ddec, db):
        """Backward pass 3: tokens [t0, t1) of sequences [b0, b1) in reverse from the
        gradients ss (updated in place), recomputing z = q * v."""
        D = q.shape[2]
        ar, dr = np.empty(D, q.dtype), np.ones(D, q.dtype)
        scratch = np.empty(D, q.dtype)
        zero = q.dtype.type(0)
        dal_pc = dal.shape[2] != 1
        rows = max(4, BLOCK_ELEMENTS // D)
        touched = zero
        for b in range(b0, b1):
            s = ss[b - b0]
            for t in range(t1 - 1, t0 - 1, -1):
                if t == t1 - 1 or (t - t0 + 1) % rows == 0:  # entering a block of rows
                    lo = max(t0, t - rows + 1)
                    touched += _prefetch(b, lo, t + 1, (q, v, g))
                    _claim(b, lo, t + 1, (dq, dv))
                    if dal_pc:
                        _claim(b, lo, t + 1, (dal,))
                ar = _row(al, b, t, ar)
                m = _unmasked(pos, b, t, D, use_mask)
                qt, vt, gt = q[b, t], v[b, t], g[b, t]
                dqt, dvt = dq[b, t], dv[b, t]
                rz = dal[b, t] if dal_pc else scratch
                for j in range(D):  # one fused loop: each row is read and written once
                    r = s[j] + (gt[j] if j < m else zero)  # dL/dh_t
                    z = qt[j] * vt[j]
                    dz = r * ar[j] + beta[j] * gt[j]
                    dqt[j] = dz * vt[j]
                    dvt[j] = dz * qt[j]
                    rz[j] = r * z
                    db[j] += gt[j] * z
                    s[j] = r
                if not dal_pc:
                    dal[b, t, 0] = _sum(scratch)
                if has_dec:
                    hp = states[b, t - 1] if t > 0 else h0[b]
                    if need_ddec:
                        if ddec.shape[2] == 1:
                            for j in range(D):
                                scratch[j] = s[j] * hp[j]
                            ddec[b, t, 0] = _sum(scratch)
                        else:
                            ddt = ddec[b, t]
                            for j in range(D):
                                ddt[j] = s[j] * hp[j]
                    dr = _row(dec, b, t, dr)
                    for j in range(D):
                        s[j] *= dr[j]
        return touched


def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


_pool: Optional[ThreadPoolExecutor] = None
_pool_pid = 0  # a forked child (DataLoader worker) inherits the pool object but not its threads


def _run(calls: list) -> None:
    """Run kernel calls (each releases the GIL) on torch's thread count."""
    global _pool, _pool_pid
    threads = torch.get_num_threads()
    if threads <= 1 or len(calls) <= 1:
        for fn, args in calls:
            fn(*args)
        return
    if _pool is None or _pool._max_workers < threads or _pool_pid != os.getpid():
        _pool, _pool_pid = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vmiseq-scan"), os.getpid()
    for f in [_pool.submit(fn, *args) for fn, args in calls]:
        f.result()


def _jobs(B: int, L: int) -> tuple[int, list[tuple[int, int, int, int]]]:
    """(chunks per sequence, jobs (b0, b1, t0, t1)): whole sequences split among the threads,
    or, with fewer sequences than threads, every sequence cut into chunks."""
    threads = torch.get_num_threads()
    nc = n_chunks(B, L, threads)
    if nc == 1:
        groups = min(B, max(1, threads))
        return 1, [(i * B // groups, (i + 1) * B // groups, 0, L) for i in range(groups)]
    return nc, [(b, b + 1, k * L // nc, (k + 1) * L // nc) for b in range(B) for k in range(nc)]


def _gates(alpha: Tensor, decay, beta: Tensor, D: int):
    al = _np(alpha)
    dec = np.ones((1, 1, 1), dtype=al.dtype) if decay is None else _np(decay)
    return al, dec, _np(beta.expand(D))


def forward(q, v, alpha, beta, h0, positions, use_mask, decay, save_states=False):
    """y (B, L, D), final state (B, D) and, if asked, all states (B, L, D)."""
    B, L, D = q.shape
    qn, vn, pos = _np(q), _np(v), _np(positions)
    al, dec, bt = _gates(alpha, decay, beta, D)
    has_dec = decay is not None
    nc, jobs = _jobs(B, L)
    carry = h0.detach().to(q.dtype).clone()  # (B, D), or (B, nc, D) with chunks
    if nc > 1:
        acc = torch.zeros(B, nc, D, dtype=q.dtype)
        prod = torch.ones(B, nc, D, dtype=q.dtype)
        an, pn = acc.numpy(), prod.numpy()
        _run([(_fwd_local, (qn, vn, al, dec, has_dec, b, k * L // nc, (k + 1) * L // nc, an[b, k], pn[b, k]))
              for b in range(B) for k in range(nc - 1)])
        c = torch.empty(B, nc, D, dtype=q.dtype)
        c[:, 0] = carry
        for k in range(1, nc):  # the state entering every chunk, exactly
            c[:, k] = prod[:, k - 1] * c[:, k - 1] + acc[:, k - 1]
        carry = c.reshape(B * nc, D)
    y = torch.empty(B, L, D, dtype=q.dtype)
    states = torch.empty(B, L, D, dtype=q.dtype) if save_states else torch.empty(1, 1, D, dtype=q.dtype)
    hn, yn, sn = carry.numpy(), y.numpy(), states.numpy()
    _run([(_fwd_scan, (qn, vn, al, dec, has_dec, bt, pos, bool(use_mask), b0, b1, t0, t1,
                       hn[i:i + 1] if nc > 1 else hn[b0:b1], yn, sn, bool(save_states)))
          for i, (b0, b1, t0, t1) in enumerate(jobs)])
    final = carry.reshape(B, nc, D)[:, -1] if nc > 1 else carry
    return y, final.contiguous(), (states if save_states else None)


def backward(q, v, alpha, beta, h0, positions, use_mask, decay, states, gy, gfinal, needs):
    """Gradients (dq, dv, dalpha, dbeta, dh0, ddecay); ``needs`` = needs_input_grad[:6]."""
    nq, nv, nal, nbeta, _, nd = needs
    B, L, D = q.shape
    qn, vn, gn, pos = _np(q), _np(v), _np(gy), _np(positions)
    al, dec, bt = _gates(alpha, decay, beta, D)
    has_dec = decay is not None
    nc, jobs = _jobs(B, L)
    carry = gfinal.detach().to(q.dtype).clone()
    if nc > 1:
        tot = torch.zeros(B, nc, D, dtype=q.dtype)
        prod = torch.ones(B, nc, D, dtype=q.dtype)
        tn, pn = tot.numpy(), prod.numpy()
        _run([(_bwd_local, (gn, dec, has_dec, pos, bool(use_mask), b, k * L // nc, (k + 1) * L // nc, tn[b, k], pn[b, k]))
              for b in range(B) for k in range(1, nc)])
        c = torch.empty(B, nc, D, dtype=q.dtype)
        c[:, -1] = carry
        for k in range(nc - 2, -1, -1):  # the gradient entering every chunk from the right
            c[:, k] = prod[:, k + 1] * c[:, k + 1] + tot[:, k + 1]
        carry = c.reshape(B * nc, D)
    nd = bool(nd and has_dec)
    dq, dv = torch.empty(B, L, D, dtype=q.dtype), torch.empty(B, L, D, dtype=q.dtype)
    dal = torch.empty(B, L, alpha.shape[-1], dtype=q.dtype)
    dd = torch.empty(B, L, decay.shape[-1], dtype=q.dtype) if nd else torch.empty(1, 1, 1, dtype=q.dtype)
    dbeta = torch.zeros(len(jobs), D, dtype=q.dtype)
    st = _np(states) if states is not None else np.empty((1, 1, D), dtype=qn.dtype)
    cn, dbn = carry.numpy(), dbeta.numpy()
    h0n = _np(h0.to(q.dtype))
    _run([(_bwd_scan, (qn, vn, al, dec, has_dec, bt, h0n, pos, bool(use_mask), gn, st, nd, b0, b1, t0, t1,
                       cn[i:i + 1] if nc > 1 else cn[b0:b1], dq.numpy(), dv.numpy(), dal.numpy(), dd.numpy(), dbn[i]))
          for i, (b0, b1, t0, t1) in enumerate(jobs)])
    dh0 = carry.reshape(B, nc, D)[:, 0] if nc > 1 else carry
    db = None
    if nbeta:
        db = dbeta.sum(0)
        db = db.sum() if beta.dim() == 0 else db
    return (dq if nq else None, dv if nv else None, dal if nal else None, db, dh0.contiguous(), dd if nd else None)
