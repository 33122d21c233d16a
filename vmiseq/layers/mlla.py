"""MLLA's token mixer and block ("Demystify Mamba in Vision", docs/vision.md "VMINet beside MLLA").

Mamba-like linear attention: Mamba's block design (input projection, depthwise conv, SiLU
gate) around normalised linear attention, with positional information from RoPE, LePE (a
depthwise conv of v) and CPE (a depthwise conv before the mixer and before the MLP) instead
of Mamba's forget gate::

    x = x + CPE1(x);  gate = SiLU(act_proj(LN(x)));  u = SiLU(dwc(in_proj(LN(x))))
    x = x + out_proj(LinearAttention(u) * gate);  x = x + CPE2(x);  x = x + MLP(LN(x))

Images are (B, H, W, C) channels-last maps (the depthwise convs see a free NCHW view);
``causal=True`` turns the same block into a sequence mixer over (B, L, C): causal depthwise
convs, 1-D RoPE, and the causal linear attention the GLA baseline runs on, with an optional
forget gate (MILA's analysis: Mamba is linear attention with a forget gate).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops.linear_attn import causal_normalised, linear_attn_global
from .block import MLP, DropPath
from .conv import causal_depthwise_conv
from .gla import GATE_TEMPERATURE, MIN_LOG_DECAY

__all__ = ["rope_tables", "apply_rope", "LinearAttention", "MLLABlock", "depthwise"]


def rope_tables(grid: Sequence[int], dim: int, base: float = 10000.0, device=None, dtype=None) -> tuple[Tensor, Tensor]:
    """cos / sin of the N-D rotary embedding of the official MLLA, for any grid.

    The ``dim`` channels form dim/2 rotation pairs; axis a of the grid owns pairs
    [a*k, (a+1)*k) with k = dim / (2N) frequencies 1 / base**(i/k). Returns two
    (*grid, dim/2) tensors. Built from the actual grid, so any resolution works.
    """
    n = len(grid)
    k = dim // (2 * n)
    if k == 0 or 2 * n * k != dim:
        raise ValueError(f"dim: expected a multiple of {2 * n} for a {n}-D rotary embedding, got {dim}")
    theta = 1.0 / base ** (torch.arange(k, dtype=torch.float64, device=device) / k)
    coords = torch.meshgrid([torch.arange(g, dtype=torch.float64, device=device) for g in grid], indexing="ij")
    angles = torch.cat([c.unsqueeze(-1) * theta for c in coords], dim=-1)
    dtype = dtype or torch.get_default_dtype()
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (x[2i], x[2i+1]) of x (..., C) by the angles of ``rope_tables``."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def depthwise(conv: nn.Module, x: Tensor) -> Tensor:
    """A depthwise conv on channels-last tokens: (B, H, W, C) through a 'same' Conv2d, or
    (B, L, C) through the Conv1d's weights as the library's causal conv (token t sees
    t-K+1..t; ``layers/conv.py``)."""
    if x.dim() == 4:
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return causal_depthwise_conv(x, None, conv.weight, conv.bias)[0]


def _dw(dim: int, causal: bool) -> nn.Module:
    return nn.Conv1d(dim, dim, 3, groups=dim) if causal else nn.Conv2d(dim, dim, 3, padding=1, groups=dim)


class LinearAttention(nn.Module):
    """MLLA's linear attention: q, k = ELU + 1 of one Linear, v = the input, RoPE on q and k
    in the numerator, normaliser q . mean(k), plus LePE (depthwise 3x3 conv of v).

    Args:
        dim: channels C (a multiple of 4 for images, of 2 for sequences: RoPE pairs).
        num_heads: heads (divides C). causal: sequence mode over (B, L, C).
        forget_gate: (causal only) a data-dependent decay a_t = sigmoid(W x)^(1/16) per
            (head, key channel), as the GLA baseline. rope / lepe: switch the positional parts.
        backend: "auto", "torch" or "naive" for the causal scan.
    """

    def __init__(self, dim: int, num_heads: int, causal: bool = False, forget_gate: bool = False,
                 rope: bool = True, lepe: bool = True, eps: float = 1e-6, backend: str = "auto") -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"num_heads: expected a positive divisor of dim={dim}, got {num_heads!r}")
        if rope and dim % (2 if causal else 4):
            raise ValueError(f"dim: expected a multiple of {2 if causal else 4} for RoPE, got {dim}")
        if forget_gate and not causal:
            raise ValueError("forget_gate: only defined for causal=True (a decay needs an order of tokens)")
        self.dim, self.num_heads, self.causal, self.eps, self.backend = dim, num_heads, causal, eps, backend
        self.use_rope = rope
        self.qk = nn.Linear(dim, 2 * dim)
        self.lepe = _dw(dim, causal) if lepe else None
        self.gate = nn.Linear(dim, dim) if forget_gate else None

    def _heads(self, t: Tensor) -> Tensor:
        B, C = t.shape[0], t.shape[-1]
        return t.reshape(B, -1, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, heads, L, d)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, H, W, C) (images) or (B, L, C) (causal) -> same shape."""
        expected = 3 if self.causal else 4
        if not isinstance(x, Tensor) or x.dim() != expected or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            layout = "(B, L, C)" if self.causal else "(B, H, W, C)"
            raise ValueError(f"x: expected shape {layout} with C={self.dim}, got {shape}")
        q, k = (F.elu(t) + 1.0 for t in self.qk(x).chunk(2, dim=-1))
        q_rot = k_rot = None
        if self.use_rope:
            cos, sin = rope_tables(x.shape[1:-1], self.dim, device=x.device, dtype=q.dtype)
            q_rot, k_rot = self._heads(apply_rope(q, cos, sin)), self._heads(apply_rope(k, cos, sin))
        q, k, v = self._heads(q), self._heads(k), self._heads(x)
        if self.causal:
            log_a = None
            if self.gate is not None:
                log_a = (F.logsigmoid(self._heads(self.gate(x))) / GATE_TEMPERATURE).clamp(min=MIN_LOG_DECAY)
            o = causal_normalised(q, k, v, log_a, q_rot, k_rot, self.eps, self.backend)
        else:
            o = linear_attn_global(q, k, v, q_rot, k_rot, self.eps)
        o = o.transpose(1, 2).reshape(x.shape)
        return o if self.lepe is None else o + depthwise(self.lepe, x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, causal={self.causal}, rope={self.use_rope}"


class MLLABlock(nn.Module):
    """The Mamba-like linear attention block of the official MLLA (parameter names as there).

    Args:
        dim: channels. num_heads: attention heads. mlp_ratio: MLP hidden width / dim.
        drop_path: stochastic-depth rate of both residual branches. causal / forget_gate /
            backend: see :class:`LinearAttention`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 causal: bool = False, forget_gate: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.cpe1 = _dw(dim, causal)
        self.norm1 = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, dim)
        self.act_proj = nn.Linear(dim, dim)
        self.dwc = _dw(dim, causal)
        self.attn = LinearAttention(dim, num_heads, causal=causal, forget_gate=forget_gate, backend=backend)
        self.out_proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path)
        self.cpe2 = _dw(dim, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, H, W, C) or, causal, (B, L, C) -> same shape."""
        x = x + depthwise(self.cpe1, x)
        h = self.norm1(x)
        gate = F.silu(self.act_proj(h))
        u = F.silu(depthwise(self.dwc, self.in_proj(h)))
        x = x + self.drop_path(self.out_proj(self.attn(u) * gate))
        x = x + depthwise(self.cpe2, x)
        return x + self.drop_path(self.mlp(self.norm2(x)))
