"""Multi-head linear attention, non-causal (MLLA's vision mixer) and causal with a forget gate
(GLA; MILA's analysis of Mamba as gated linear attention), each with a plain reference.

All tensors are (B, H, L, d): batch, heads, tokens, head channels (transposed views work).

Non-causal (docs/vision.md, "MLLA"), with optional rotated copies q~, k~ of q and k (RoPE)
used in the numerator only, as the official MLLA code does::

    o_i = (q~_i . sum_j k~_j v_j^T / L) / (q_i . mean_j k_j + eps)

Causal, with per-(head, key channel) forget gate a_t = exp(log_a_t) in (0, 1]::

    S_t = diag(a_t) S_{t-1} + k_t^T v_t ,     o_t = q_t S_t

The causal normaliser of MLLA's mixer is the same recurrence with v = 1 (see
``causal_normalised``), so GLA and the causal MLLA mixer share one scan.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan import resolve_backend

__all__ = [
    "linear_attn_global",
    "linear_attn_global_naive",
    "causal_linear_attn",
    "causal_linear_attn_naive",
    "causal_linear_attn_chunk",
    "causal_normalised",
    "linear_attn_uses_naive",
    "CHUNK",
]

CHUNK = 16


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a (B, H, L, d) tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D (B, H, L, d) tensor, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"k: expected the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v: expected shape (B, H, L) = {tuple(q.shape[:3])} before the channels, got {tuple(v.shape)}")


def linear_attn_uses_naive(backend: str) -> bool:
    """Whether ``backend`` (one of :data:`vmiseq.ops.BACKENDS`) means the reference loop here.

    Linear attention has the loop ("naive") and the chunked torch form ("torch"); there is no
    Triton kernel, so an explicit "triton" is an error, while "auto" follows ``VMISEQ_BACKEND``
    and takes the torch form when that names "triton" (it sets the VMI-SA scans' backend).
    """
    if backend == "triton":
        raise ValueError("backend: linear attention has no Triton kernel; expected 'auto', 'naive' or 'torch', "
                         "got 'triton'")
    return resolve_backend(backend, torch.device("cpu")) == "naive"


# ---------------------------------------------------------------------- non-causal
def linear_attn_global_naive(
    q: Tensor, k: Tensor, v: Tensor, q_rot: Optional[Tensor] = None, k_rot: Optional[Tensor] = None, eps: float = 1e-6
) -> Tensor:
    """Reference: build the (L, L) attention matrix explicitly, then normalise each row."""
    q_rot = q if q_rot is None else q_rot
    k_rot = k if k_rot is None else k_rot
    L = q.shape[2]
    scores = q_rot @ k_rot.transpose(-1, -2) / L  # (B, H, L, L), unnormalised
    norm = (q @ k.transpose(-1, -2)).mean(dim=-1, keepdim=True)  # q_i . mean_j k_j
    return (scores @ v) / (norm + eps)


def linear_attn_global(
    q: Tensor, k: Tensor, v: Tensor, q_rot: Optional[Tensor] = None, k_rot: Optional[Tensor] = None, eps: float = 1e-6
) -> Tensor:
    """Non-causal normalised linear attention in O(L d^2): the (d, d) context K~^T V / L first.

    Args:
        q, k: (B, H, L, dk) non-negative features (MLLA: ELU + 1). v: (B, H, L, dv).
        q_rot, k_rot: rotated q, k for the numerator (RoPE); default q, k.
        eps: added to the normaliser.
    Returns:
        (B, H, L, dv).
    """
    _check_qkv(q, k, v)
    for name, t in (("q_rot", q_rot), ("k_rot", k_rot)):
        if t is not None and (not isinstance(t, Tensor) or t.shape != q.shape):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected None or the shape of q {tuple(q.shape)}, got {shape}")
    q_rot = q if q_rot is None else q_rot
    k_rot = k if k_rot is None else k_rot
    L = q.shape[2]
    kv = (k_rot.transpose(-1, -2) * L**-0.5) @ (v * L**-0.5)  # (B, H, dk, dv); split scale as the official code
    norm = q @ k.mean(dim=2, keepdim=True).transpose(-1, -2)  # (B, H, L, 1)
    return (q_rot @ kv) * (1.0 / (norm + eps))


# ---------------------------------------------------------------------- causal, forget gate
def causal_linear_attn_naive(q: Tensor, k: Tensor, v: Tensor, log_a: Tensor, S0: Tensor) -> tuple[Tensor, Tensor]:
    """Reference loop. q, k, log_a (B, H, L, dk), v (B, H, L, dv), S0 (B, H, dk, dv) -> (o, S_L)."""
    S, outs = S0, []
    for t in range(q.shape[2]):
        S = log_a[:, :, t].exp().unsqueeze(-1) * S + k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape)
    return o, S


def causal_linear_attn_chunk(
    q: Tensor, k: Tensor, v: Tensor, log_a: Tensor, S0: Tensor, chunk: int = CHUNK
) -> tuple[Tensor, Tensor]:
    """Chunked parallel form, same contract as :func:`causal_linear_attn_naive`.

    Within a chunk the decay between tokens i >= j is exp(A_i - A_j) with A the in-chunk
    cumulative log decay, folded into q (times exp(A_i)) and k (times exp(-A_j)); callers
    clamp log a so both factors stay inside the dtype's range over one chunk. Across chunks
    the state is carried by a loop over chunks.
    """
    B, H, L, dk = q.shape
    dv = v.shape[-1]
    n = -(-L // chunk)
    pad = n * chunk - L
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_a = F.pad(log_a, (0, 0, 0, pad))  # log 1 = 0: padding neither decays nor adds
    q, k, v, log_a = (t.reshape(B, H, n, chunk, t.shape[-1]) for t in (q, k, v, log_a))
    A = torch.cumsum(log_a, dim=3)  # (B, H, n, C, dk)
    A_last = A[:, :, :, -1:]  # (B, H, n, 1, dk)
    q_in = q * A.exp()
    k_in = k * (-A).exp()
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril_()
    att = (q_in @ k_in.transpose(-1, -2)).masked_fill_(~causal, 0.0)
    o = att @ v  # (B, H, n, C, dv) intra-chunk part
    k_out = k * (A_last - A).exp()  # decay from token j to the chunk's end
    dS = k_out.transpose(-1, -2) @ v  # (B, H, n, dk, dv)
    chunk_decay = A_last.squeeze(3).exp().unsqueeze(-1)  # (B, H, n, dk, 1)
    S, enter = S0, []
    for i in range(n):
        enter.append(S)
        S = chunk_decay[:, :, i] * S + dS[:, :, i]
    o = o + q_in @ torch.stack(enter, dim=2)  # inter-chunk part
    return o.reshape(B, H, n * chunk, dv)[:, :, :L], S


def causal_linear_attn(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_a: Optional[Tensor] = None,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    backend: str = "auto",
):
    """Causal linear attention with an optional forget gate (validated public entry).

    Args:
        q, k: (B, H, L, dk). v: (B, H, L, dv). log_a: (B, H, L, dk) log forget gate (<= 0;
            None: no forgetting). initial_state: (B, H, dk, dv) S_0 (default zeros).
        output_final_state: also return S_L. backend: "auto" or "torch" (the chunked form) or
            "naive" (the reference loop); see :func:`linear_attn_uses_naive`.
    Returns:
        o (B, H, L, dv), or (o, S_L) with ``output_final_state``.
    """
    _check_qkv(q, k, v)
    naive = linear_attn_uses_naive(backend)
    B, H, L, dk = q.shape
    dv = v.shape[-1]
    if log_a is None:
        log_a = q.new_zeros(q.shape)
    elif not isinstance(log_a, Tensor) or log_a.shape != q.shape:
        shape = tuple(log_a.shape) if isinstance(log_a, Tensor) else type(log_a).__name__
        raise ValueError(f"log_a: expected None or the shape of q {tuple(q.shape)}, got {shape}")
    if initial_state is None:
        initial_state = q.new_zeros(B, H, dk, dv)
    elif not isinstance(initial_state, Tensor) or tuple(initial_state.shape) != (B, H, dk, dv):
        shape = tuple(initial_state.shape) if isinstance(initial_state, Tensor) else type(initial_state).__name__
        raise ValueError(f"initial_state: expected shape {(B, H, dk, dv)}, got {shape}")
    fn = causal_linear_attn_naive if (naive or L == 1) else causal_linear_attn_chunk
    o, S = fn(q, k, v, log_a, initial_state)
    return (o, S) if output_final_state else o


def causal_normalised(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_a: Optional[Tensor] = None,
    q_rot: Optional[Tensor] = None,
    k_rot: Optional[Tensor] = None,
    eps: float = 1e-6,
    backend: str = "auto",
) -> Tensor:
    """Causal form of :func:`linear_attn_global`: token t attends to tokens s <= t only.

        o_t = (q~_t S_t / (t + 1)) / (q_t z_t / (t + 1) + eps),
        S_t = a_t S_{t-1} + k~_t^T v_t,   z_t = a_t z_{t-1} + k_t

    (with a = 1 and t + 1 = L at the last token this is the non-causal output of that token).
    The normaliser z is the same scan with v = 1.
    """
    q_rot = q if q_rot is None else q_rot
    k_rot = k if k_rot is None else k_rot
    num = causal_linear_attn(q_rot, k_rot, v, log_a, backend=backend)
    den = causal_linear_attn(q, k, v.new_ones(*v.shape[:3], 1), log_a, backend=backend)
    count = torch.arange(1, q.shape[2] + 1, device=q.device, dtype=q.dtype).view(1, 1, -1, 1)
    return (num / count) / (den / count + eps)
