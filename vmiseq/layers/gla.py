"""Multi-head gated linear attention (GLA) with a forget gate: the linear-attention baseline.

The "Mamba-inspired linear attention" of MILA / GLA (Yang et al. 2024): per head a matrix
state S (dk x dv) that forgets through a data-dependent gate and adds the key-value product,

    S_t = diag(a_t) S_{t-1} + k_t^T v_t ,     o_t = q_t S_t
    y_t = W_o( RMSNorm(o_t) * SiLU(W_g x_t) )

with a_t = sigmoid(W_a x_t)^(1/16) in (0, 1) per (head, key channel). Training runs a chunked
parallel form (intra-chunk matmuls, a short loop over chunks); decoding carries S: O(1) state.
Same API as ``VMISALayer``: ``forward(x, state=None, output_state=False)``, ``init_state``, ``step``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops.linear_attn import causal_linear_attn_chunk, causal_linear_attn_naive, linear_attn_uses_naive
from .conv import causal_depthwise_conv
from .dropout import Dropout
from .state import BatchedState, StreamingMixer, next_position

GATE_TEMPERATURE = 16.0  # GLA's normaliser: log a = logsigmoid(.) / 16 keeps forgetting slow
MIN_LOG_DECAY = -4.0  # per-token clamp: exp(+-64) over a 16-token chunk (ops.linear_attn.CHUNK) stays inside float32


@dataclass
class GLAState(BatchedState):
    """Streaming state of a GLA layer; its size never grows.

    Attributes:
        conv: (B, C, K-1) last inputs of the short causal convolution.
        S: (B, H, dk, dv) float32 key-value memory.
        position: (B,) int64 absolute position of the next token.
    """

    conv: Tensor
    S: Tensor
    position: Tensor


# The recurrence itself is the library's shared causal linear attention (also the causal
# form of the MLLA mixer): one implementation, re-exported here under GLA's names.
gla_naive = causal_linear_attn_naive
gla_chunk = causal_linear_attn_chunk


class GatedLinearAttention(StreamingMixer):
    """Multi-head gated linear attention token mixer.

    Args:
        dim: channels C. n_heads: heads. expand_k / expand_v: key / value widths as
            multiples of C (GLA uses 0.5 and 1). conv_kernel: short causal depthwise conv
            before the projections (1 disables it). gate_rank: rank of the forget-gate
            projection. dropout: output dropout. backend: "auto", "torch" or "naive" (reference loop).
    """

    state_class = GLAState

    def __init__(
        self,
        dim: int,
        n_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        conv_kernel: int = 4,
        gate_rank: int = 16,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        kd, vd = int(dim * expand_k), int(dim * expand_v)
        if not isinstance(n_heads, int) or n_heads <= 0 or kd % n_heads or vd % n_heads:
            raise ValueError(f"n_heads: expected a positive divisor of the key ({kd}) and value ({vd}) widths, got {n_heads!r}")
        if conv_kernel < 1:
            raise ValueError(f"conv_kernel: expected >= 1, got {conv_kernel}")
        linear_attn_uses_naive(backend)  # a ValueError for a name outside vmiseq.ops.BACKENDS
        self.dim, self.n_heads, self.key_dim, self.value_dim = dim, n_heads, kd, vd
        self.dk, self.dv = kd // n_heads, vd // n_heads
        self.kernel, self.backend = conv_kernel, backend
        self.conv = nn.Conv1d(dim, dim, conv_kernel, groups=dim, bias=True)
        self.q_proj = nn.Linear(dim, kd, bias=False)
        self.k_proj = nn.Linear(dim, kd, bias=False)
        self.v_proj = nn.Linear(dim, vd, bias=False)
        self.g_proj = nn.Linear(dim, vd, bias=False)  # output gate
        self.gk = nn.Sequential(nn.Linear(dim, gate_rank, bias=False), nn.Linear(gate_rank, kd, bias=True))
        self.o_norm = nn.RMSNorm(self.dv, eps=1e-5)
        self.o_proj = nn.Linear(vd, dim, bias=False)
        self.drop = Dropout(dropout)

    def state_fields(self, batch_size: int, dtype: torch.dtype) -> dict:
        return {
            "conv": ((batch_size, self.dim, self.kernel - 1), dtype),
            "S": ((batch_size, self.n_heads, self.dk, self.dv), torch.float32),
        }

    def forward(self, x: Tensor, state: Optional[GLAState] = None, output_state: bool = False):
        """Mix tokens of ``x`` (B, L, C); returns y, or (y, new_state) when ``output_state``."""
        self.check_sequence(x)
        B, L, _ = x.shape
        if state is not None:
            self.check_state(state, x)
        u, conv_buffer = causal_depthwise_conv(x, None if state is None else state.conv, self.conv.weight, self.conv.bias)
        u = F.silu(u)

        def heads(t: Tensor, d: int) -> Tensor:
            return t.view(B, L, self.n_heads, d).transpose(1, 2).float()

        q = heads(self.q_proj(u), self.dk) * self.dk**-0.5
        k = heads(self.k_proj(u), self.dk)
        v = heads(self.v_proj(u), self.dv)
        log_a = (F.logsigmoid(heads(self.gk(u), self.dk)) / GATE_TEMPERATURE).clamp(min=MIN_LOG_DECAY)
        S0 = state.S if state is not None else q.new_zeros(B, self.n_heads, self.dk, self.dv)
        fn = gla_naive if (L == 1 or linear_attn_uses_naive(self.backend)) else gla_chunk
        o, S = fn(q, k, v, log_a, S0)
        o = self.o_norm(o.to(x.dtype)).transpose(1, 2).reshape(B, L, self.value_dim)
        y = self.drop(self.o_proj(o * F.silu(self.g_proj(u))))
        if not output_state:
            return y
        return y, GLAState(conv_buffer, S, next_position(state, x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_heads={self.n_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}, kernel={self.kernel}"
