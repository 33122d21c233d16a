"""The vectorised PyTorch backend: a fused, chunked scan (the CPU path without numba).

Where numba is installed, the compiled one-pass scan of ``cpu_scan.py`` replaces these
loops on CPU (same recurrence, same autograd Function below); this module stays the
dependency-free path and the form the compiled one is checked against.

Why it looks like this: a plain ``torch.cumsum`` over L costs ~5x an element-wise product,
and every extra full-size temporary is one more trip through memory. So the sequence is cut
into ``n`` chunks of ``C`` tokens, viewed as (B, n, C, D) without copying, and the scan runs
as a loop over the ``C`` positions of a chunk, vectorised over all ``n`` chunks at once:
pass 1 reads q and v and produces the chunk totals (with decay: the chunk-local final states
and decay products); the n totals are scanned; pass 2 reads q and v again, starts each chunk
from its exact carried state and writes ``y_t = M_t * h_t + beta * z_t`` into the output.

The backward (``_ScanFunction``, hand-written per docs/design.md §1) is the same pattern run
backwards: a reverse scan of the masked upstream gradient, fused with dq, dv, dalpha and
dbeta; it saves only q, v, alpha (and the states when a decay gate is learned), never z.

Inputs arrive validated and normalised by the dispatcher (``vmisa_scan``): ``alpha`` and
``decay`` are (B|1, L, 1|D), ``beta`` is () or (D,), ``positions`` (B|1, 1) absolute
positions of the first token, everything in the accumulation dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import cpu_scan
from .naive import rank_mask

# Elements of the (B, n, D) slice one vectorised step touches: per-op overhead vs cache.
SLICE_ELEMENTS = 1 << 17
MAX_CHUNK = 128
# False forces the torch loops where the compiled scan (cpu_scan.py) is installed: the tests
CPU_KERNEL = True  # check both against the naive loop.


def _compiled(q: Tensor) -> bool:
    return CPU_KERNEL and cpu_scan.available() and q.device.type == "cpu"


def choose_chunk(B: int, L: int, D: int) -> int:
    """Chunk length C: a power of two with B * (L / C) * D ~ SLICE_ELEMENTS, in [1, 128]."""
    c = 1
    while c < MAX_CHUNK and B * L * D // (2 * c) >= SLICE_ELEMENTS:
        c *= 2
    return max(1, min(c, L))


class _Block:
    """A (B, n, C, ...) view of tokens [start, start + n*C) of every per-token tensor."""

    def __init__(self, start: int, n: int, C: int, tensors: dict[str, Optional[Tensor]], pmin: int) -> None:
        self.start, self.n, self.C, self.pmin = start, n, C, pmin
        self.t = {k: (None if x is None else x[:, start : start + n * C].unflatten(1, (n, C))) for k, x in tensors.items()}

    def __getitem__(self, key: str) -> Optional[Tensor]:
        return self.t[key]


def _blocks(L: int, C: int, tensors: dict[str, Optional[Tensor]], positions: Tensor) -> list[_Block]:
    """The full chunks, then (if L % C) the leftover tokens as one chunk of their own."""
    n = L // C
    pmin = int(positions.min())  # one host sync, not one per step
    out = [_Block(0, n, C, tensors, pmin)]
    if n * C < L:
        out.append(_Block(n * C, 1, L - n * C, tensors, pmin))
    return out


def _mask_rows(positions: Tensor, block: _Block, i: int, D: int, use_mask: bool, dtype) -> tuple[int, Optional[Tensor]]:
    """For step i of a block: K = how many leading chunks the rank mask touches, and the
    (B|1, K, D) 0/1 mask for them (``M[t, c] = c <= t`` is all ones once t >= D - 1)."""
    if not use_mask:
        return 0, None
    first = block.pmin + block.start + i  # smallest position in chunk 0 at step i
    if first >= D - 1:
        return 0, None
    K = min(block.n, -(-(D - 1 - first) // block.C))
    t = positions + block.start + i + block.C * torch.arange(K, device=positions.device)  # (B|1, K)
    return K, rank_mask(t, D).to(dtype)


# ---------------------------------------------------------------------------- forward
def _block_totals(blk: _Block, has_v: bool) -> tuple[Tensor, Optional[Tensor]]:
    """Chunk-local final states from a zero start, (B, n, D), and chunk decay products."""
    q, v, al, a = blk["q"], blk["v"], blk["alpha"], blk["decay"]
    acc = None
    for i in range(blk.C):
        z = q[:, :, i] * v[:, :, i] if has_v else q[:, :, i]
        if acc is None:
            acc = z * al[:, :, i] if al is not None else z.clone()
        else:
            if a is not None:
                acc.mul_(a[:, :, i])
            if al is not None:
                acc.addcmul_(z, al[:, :, i])
            else:
                acc.add_(z)
    prod = None if a is None else torch.prod(a, dim=2)  # the carry passes every gate of the chunk
    return acc, prod


def _carries(totals: Tensor, prods: Optional[Tensor], h0: Tensor) -> Tensor:
    """State entering each chunk, (B, n, D), from the chunk totals (exact recurrence):
    c_0 = h0, c_{k+1} = prods_k * c_k + totals_k (prods = 1 without decay)."""
    n = totals.shape[1]
    if n == 1:
        return h0.unsqueeze(1)
    if prods is None:
        rest = h0.unsqueeze(1) + torch.cumsum(totals[:, :-1], dim=1)
        return torch.cat([h0.unsqueeze(1), rest], dim=1)
    states = _linear_states(totals[:, :-1], prods[:, :-1], h0)
    return torch.cat([h0.unsqueeze(1), states], dim=1)


def _block_outputs(
    blk: _Block,
    h: Tensor,
    beta: Optional[Tensor],
    positions: Tensor,
    use_mask: bool,
    has_v: bool,
) -> None:
    """Run the scan over the block from carries ``h`` (B, n, D; updated in place to each
    chunk's final state), writing y (or the states when ``beta`` is None) into blk['y']."""
    q, v, al, a, y, hs = blk["q"], blk["v"], blk["alpha"], blk["decay"], blk["y"], blk["states"]
    D = h.shape[-1]
    for i in range(blk.C):
        z = q[:, :, i] * v[:, :, i] if has_v else q[:, :, i]
        if a is not None:
            h.mul_(a[:, :, i])
        if al is not None:
            h.addcmul_(z, al[:, :, i])
        else:
            h.add_(z)
        if hs is not None:
            hs[:, :, i].copy_(h)
        yi = y[:, :, i]
        K, m = _mask_rows(positions, blk, i, D, use_mask, h.dtype)
        if beta is None:
            yi.copy_(h)
            if K:
                yi[:, :K].mul_(m)
            continue
        if K < blk.n:
            torch.addcmul(h[:, K:], z[:, K:], beta, out=yi[:, K:])
        if K:
            torch.addcmul(z[:, :K] * beta, h[:, :K], m, out=yi[:, :K])


def _scan_forward(
    q: Tensor,
    v: Optional[Tensor],
    alpha: Optional[Tensor],
    beta: Optional[Tensor],
    h0: Tensor,
    positions: Tensor,
    use_mask: bool,
    decay: Optional[Tensor],
    save_states: bool = False,
    chunk_size: Optional[int] = None,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """y (B, L, D), final state (B, D) and, if asked, all states h (B, L, D).

    ``v=None`` scans ``q`` itself (z = q); ``alpha=None`` means 1; ``beta=None`` returns the
    masked states instead of y.
    """
    B, L, D = q.shape
    C = chunk_size or choose_chunk(B, L, D)
    y = torch.empty(B, L, D, dtype=q.dtype, device=q.device)
    states = torch.empty_like(y) if save_states else None
    tensors = {"q": q, "v": v, "alpha": alpha, "decay": decay, "y": y, "states": states}
    h_prev = h0
    for blk in _blocks(L, C, tensors, positions):
        if blk.n == 1:
            h = h_prev.unsqueeze(1).clone()
        else:
            totals, prods = _block_totals(blk, v is not None)
            h = _carries(totals, prods, h_prev)
        _block_outputs(blk, h, beta, positions, use_mask, v is not None)
        h_prev = h[:, -1]
    return y, h_prev, states


def _linear_states(u: Tensor, a: Tensor, h0: Tensor) -> Tensor:
    """All states of h_t = a_t * h_{t-1} + u_t (h_{-1} = h0): (B, n, D)."""
    B, n, D = u.shape
    if n <= 16:  # short: a plain loop is cheapest
        out, h = [], h0
        for t in range(n):
            h = a[:, t] * h + u[:, t]
            out.append(h)
        return torch.stack(out, dim=1)
    C = max(4, choose_chunk(B, n, D))  # >= 4 so the recursion shrinks
    pos = torch.zeros(1, 1, dtype=torch.long, device=u.device)
    return _scan_forward(u, None, None, None, h0, pos, False, a.expand(B, n, a.shape[-1]), chunk_size=C)[0]


# ---------------------------------------------------------------------------- backward
def _block_rev_totals(blk: _Block, positions: Tensor, use_mask: bool) -> Tensor:
    """Reverse-scan totals of the masked upstream gradient per chunk from a zero start:
    s leaving chunk k backwards = sum_i (prod_{j<=i} a_j) * M_i * g_i, (B, n, D)."""
    g, a = blk["g"], blk["decay"]
    D = g.shape[-1]
    s = None
    for i in reversed(range(blk.C)):
        K, m = _mask_rows(positions, blk, i, D, use_mask, g.dtype)
        gi = g[:, :, i]
        if K:
            gi = gi.clone()
            gi[:, :K].mul_(m)
        s = gi.clone() if s is None else s.add_(gi)
        if a is not None:
            s.mul_(a[:, :, i])
    return s


def _rev_carries(totals: Tensor, a_blk: Optional[Tensor], s_in: Tensor) -> Tensor:
    """s entering each chunk from the right, (B, n, D): S_{n-1} = s_in,
    S_k = A_{k+1} * S_{k+1} + R_{k+1} with A the whole chunk's decay product."""
    n = totals.shape[1]
    if n == 1:
        return s_in.unsqueeze(1)
    if a_blk is None:
        rest = s_in.unsqueeze(1) + torch.cumsum(totals[:, 1:].flip(1), dim=1)
        return torch.cat([rest.flip(1), s_in.unsqueeze(1)], dim=1)
    prods = torch.prod(a_blk, dim=2)  # (B, n, Dd)
    states = _linear_states(totals[:, 1:].flip(1), prods[:, 1:].flip(1), s_in)
    return torch.cat([states.flip(1), s_in.unsqueeze(1)], dim=1)


def _block_grads(
    blk: _Block,
    s: Tensor,
    beta: Tensor,
    positions: Tensor,
    use_mask: bool,
    dbeta_acc: Optional[Tensor],
) -> None:
    """Reverse loop over the block from carries ``s`` (updated in place: on return, the
    gradient leaving each chunk's first token backwards), writing dq, dv, dalpha, ddecay."""
    q, v, al, a, g = blk["q"], blk["v"], blk["alpha"], blk["decay"], blk["g"]
    dq, dv, dal, da, hp = blk["dq"], blk["dv"], blk["dalpha"], blk["ddecay"], blk["hprev"]
    D = s.shape[-1]
    for i in reversed(range(blk.C)):
        gi = g[:, :, i]
        K, m = _mask_rows(positions, blk, i, D, use_mask, s.dtype)
        if K < blk.n:
            s[:, K:].add_(gi[:, K:])
        if K:
            s[:, :K].addcmul_(gi[:, :K], m)
        # s is now r_t = dL/dh_t
        qi, vi = q[:, :, i], v[:, :, i]
        z = qi * vi if (dal is not None or dbeta_acc is not None) else None
        if dal is not None:
            if dal.shape[-1] == 1:
                dal[:, :, i, 0].copy_(torch.linalg.vecdot(s, z))
            else:
                torch.mul(s, z, out=dal[:, :, i])
        if dbeta_acc is not None:
            dbeta_acc.addcmul_(gi, z)
        if dq is not None or dv is not None:
            dz = s * al[:, :, i]
            dz.addcmul_(gi, beta)
            if dq is not None:
                torch.mul(dz, vi, out=dq[:, :, i])
            if dv is not None:
                torch.mul(dz, qi, out=dv[:, :, i])
        if a is not None:
            if da is not None:
                if da.shape[-1] == 1:
                    da[:, :, i, 0].copy_(torch.linalg.vecdot(s, hp[:, :, i]))
                else:
                    torch.mul(s, hp[:, :, i], out=da[:, :, i])
            s.mul_(a[:, :, i])


class _ScanFunction(torch.autograd.Function):
    """Fused forward and hand-written backward (docs/design.md §1) of the causal scan."""

    @staticmethod
    def forward(ctx, q, v, alpha, beta, h0, decay, positions, use_mask):
        need_states = decay is not None and ctx.needs_input_grad[5]
        ctx.compiled = _compiled(q)
        if ctx.compiled:
            y, final, states = cpu_scan.forward(q, v, alpha, beta, h0, positions, use_mask, decay, need_states)
        else:
            y, final, states = _scan_forward(q, v, alpha, beta, h0, positions, use_mask, decay, save_states=need_states)
        ctx.save_for_backward(q, v, alpha, beta, h0, decay, positions, states)
        ctx.use_mask = use_mask
        return y, final

    @staticmethod
    def backward(ctx, gy, gfinal):
        q, v, alpha, beta, h0, decay, positions, states = ctx.saved_tensors
        nq, nv, nal, nbeta, nh0, nd = ctx.needs_input_grad[:6]
        B, L, D = q.shape
        if ctx.compiled:
            needs = ctx.needs_input_grad[:6]
            dq, dv, dal, dbeta, dh0, dd = cpu_scan.backward(
                q, v, alpha, beta, h0, positions, ctx.use_mask, decay, states, gy, gfinal, needs)
            return (dq, dv, _batch_sum(dal, alpha, B), dbeta, dh0 if nh0 else None, _batch_sum(dd, decay, B),
                    None, None)
        dq = torch.empty_like(q) if nq else None
        dv = torch.empty_like(v) if nv else None
        dal = torch.empty(B, L, alpha.shape[-1], dtype=q.dtype, device=q.device) if nal else None
        dd = torch.empty(B, L, decay.shape[-1], dtype=q.dtype, device=q.device) if nd else None
        hprev = None
        if nd:
            hprev = torch.cat([h0.unsqueeze(1), states[:, :-1]], dim=1)
        gy = gy.contiguous()
        tensors = {
            "q": q, "v": v, "alpha": alpha, "decay": decay, "g": gy,
            "dq": dq, "dv": dv, "dalpha": dal, "ddecay": dd, "hprev": hprev,
        }
        C = choose_chunk(B, L, D)
        blocks = _blocks(L, C, tensors, positions)
        s_in = gfinal.to(q.dtype).clone()
        dbeta = None
        for blk in reversed(blocks):  # the leftover chunk (end of the sequence) first
            if blk.n == 1:
                s = s_in.unsqueeze(1).clone()
            else:
                totals = _block_rev_totals(blk, positions, ctx.use_mask)
                s = _rev_carries(totals, blk["decay"], s_in)
            dbeta_acc = torch.zeros_like(s) if nbeta else None
            _block_grads(blk, s, beta, positions, ctx.use_mask, dbeta_acc)
            if nbeta:
                part = dbeta_acc.sum(dim=(0, 1))
                part = part.sum() if beta.dim() == 0 else part
                dbeta = part if dbeta is None else dbeta + part
            s_in = s[:, 0]
        dh0 = s_in if nh0 else None
        return dq, dv, _batch_sum(dal, alpha, B), dbeta, dh0, _batch_sum(dd, decay, B), None, None


def _batch_sum(grad: Optional[Tensor], gate: Optional[Tensor], B: int) -> Optional[Tensor]:
    """The gradient of a gate shared by the batch ((1, L, .)) is the sum over the batch."""
    if grad is not None and gate.shape[0] == 1 and B != 1:
        return grad.sum(dim=0, keepdim=True)
    return grad


def scan_chunk(
    q: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    initial_state: Tensor,
    positions: Tensor,
    use_rank_mask: bool,
    decay: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """Causal VMI-SA from q and v (never materialising z = q * v); returns (y, h_L) in the
    dtype of q (the accumulation dtype: the caller converts)."""
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, v, alpha, beta, initial_state, decay)
    )
    if grad:
        return _ScanFunction.apply(q, v, alpha, beta, initial_state, decay, positions, use_rank_mask)
    if _compiled(q):
        return cpu_scan.forward(q, v, alpha, beta, initial_state, positions, use_rank_mask, decay)[:2]
    y, final, _ = _scan_forward(q, v, alpha, beta, initial_state, positions, use_rank_mask, decay)
    return y, final


def global_chunk(
    z: Tensor, alpha: Tensor, beta0: Tensor, beta1: Tensor, use_rank_mask: bool, overwrite_z: bool = False
) -> Tensor:
    """Non-causal VMI-SA (Eq. 10), vectorised: one weighted sum over tokens.

    alpha (B|1, L, 1) (one weight per token) takes the sum as one batched matrix-vector
    product (no (B, L, D) temporary); the rank mask only touches the first min(L, D) tokens.
    ``overwrite_z``: z is a scratch tensor the caller no longer needs (and autograd does not
    track): the output is written into it, saving a (B, L, D) allocation.
    """
    B, L, D = z.shape
    n_masked = min(L, D) if use_rank_mask else 0  # token t feeds only channels c <= t
    if alpha.shape[-1] == 1:
        a = alpha.transpose(1, 2).expand(B, 1, L)  # (B, 1, L)
        s = torch.bmm(a[:, :, n_masked:], z[:, n_masked:])  # (B, 1, D)
        if n_masked > 0:
            t = torch.arange(n_masked, device=z.device)
            zm = z[:, :n_masked] * rank_mask(t, D).to(z.dtype)
            s = s + torch.bmm(a[:, :, :n_masked], zm)
    else:
        w = alpha * z
        s = w[:, n_masked:].sum(dim=1)
        if n_masked > 0:
            t = torch.arange(n_masked, device=z.device)
            s = s + (w[:, :n_masked] * rank_mask(t, D).to(w.dtype)).sum(dim=1)
        s = s.unsqueeze(1)
    # y = beta0 * s + beta1 * z in one pass
    if overwrite_z:
        return torch.addcmul(beta0 * s, beta1, z, out=z)
    return torch.addcmul(beta0 * s, beta1, z)
