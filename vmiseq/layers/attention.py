"""Causal softmax self-attention (nanoGPT-like, SDPA) with a KV cache: the Transformer baseline.

Same API as ``VMISALayer``'s causal path so the baselines drop into the same models:
``forward(x, state=None, output_state=False)``, ``init_state(batch_size)``, ``step(x_t, state)``.
Unlike VMI-SA, the state (the KV cache) grows with every token: O(L) memory, O(L) work per
decoded token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .dropout import Dropout, dropout_active
from .state import BatchedState, StreamingMixer


@dataclass
class KVCache(BatchedState):
    """Keys and values seen so far, per sequence.

    Attributes:
        k, v: (B, T_cap, H, hd) buffers; row b holds valid entries in ``[:position[b]]``
            (the rest is padding or spare capacity, never attended to).
        position: (B,) int64 number of tokens seen = absolute position of the next token.
    """

    k: Tensor
    v: Tensor
    position: Tensor

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def nbytes(self) -> int:
        """Bytes of the cache actually in use (valid keys and values, all sequences)."""
        used = int(self.position.sum())
        per_token = self.k.shape[2] * self.k.shape[3] * self.k.element_size() * 2
        return used * per_token + self.position.numel() * self.position.element_size()

    @classmethod
    def cat(cls, states: list["KVCache"]) -> "KVCache":
        """Concatenate caches along the batch (padding the time axis to the longest)."""
        cap = max(s.capacity for s in states)

        def pad(t: Tensor) -> Tensor:
            return F.pad(t, (0, 0, 0, 0, 0, cap - t.shape[1]))

        return KVCache(
            torch.cat([pad(s.k) for s in states]),
            torch.cat([pad(s.v) for s in states]),
            torch.cat([s.position for s in states]),
        )


class CausalSelfAttention(StreamingMixer):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``.

    Args:
        dim: channels C (input and output). n_heads: heads (C must divide evenly).
        dropout: attention and output dropout. bias: biases in the projections.
    """

    state_class = KVCache

    def __init__(self, dim: int, n_heads: int = 4, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        if not isinstance(n_heads, int) or n_heads <= 0 or dim % n_heads:
            raise ValueError(f"n_heads: expected a positive divisor of dim={dim}, got {n_heads!r}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = dropout
        self.drop = Dropout(dropout)

    # ------------------------------------------------------------------ state
    def state_fields(self, batch_size: int, dtype: torch.dtype) -> dict:
        shape = (batch_size, "T", self.n_heads, self.head_dim)  # T: the cache's capacity
        return {"k": (shape, dtype), "v": (shape, dtype)}

    def init_state(self, batch_size: int, device=None, dtype=None, capacity: int = 0) -> KVCache:
        """An empty cache at position 0 (``capacity`` pre-allocates that many tokens)."""
        return super().init_state(batch_size, device, dtype, T=capacity)

    def _append(self, state: KVCache, k: Tensor, v: Tensor) -> tuple[KVCache, Tensor]:
        """Write k, v (B, L, H, hd) at each row's position; returns the new cache and the
        absolute positions of the new tokens (B, L)."""
        B, L = k.shape[:2]
        pos = state.position.unsqueeze(1) + torch.arange(L, device=k.device)  # (B, L)
        need = int(state.position.max()) + L
        kb, vb = state.k.to(k.dtype), state.v.to(v.dtype)
        if torch.is_grad_enabled() and (k.requires_grad or kb.requires_grad):
            # Training through the cache: stay functional (no in-place writes autograd saved).
            if need > kb.shape[1]:
                extra = need - kb.shape[1]
                kb = F.pad(kb, (0, 0, 0, 0, 0, extra))
                vb = F.pad(vb, (0, 0, 0, 0, 0, extra))
            rows = torch.arange(B, device=k.device).unsqueeze(1)
            kb = kb.index_put((rows, pos), k)
            vb = vb.index_put((rows, pos), v)
        else:
            if need > kb.shape[1]:  # grow geometrically: amortised O(1) copies per token
                cap = max(need, 2 * kb.shape[1], 16)
                kb = F.pad(kb, (0, 0, 0, 0, 0, cap - kb.shape[1]))
                vb = F.pad(vb, (0, 0, 0, 0, 0, cap - vb.shape[1]))
            rows = torch.arange(B, device=k.device).unsqueeze(1)
            if bool((state.position == state.position[0]).all()):
                p0 = int(state.position[0])
                kb[:, p0 : p0 + L] = k
                vb[:, p0 : p0 + L] = v
            else:
                kb[rows, pos] = k
                vb[rows, pos] = v
        return KVCache(kb, vb, state.position + L), pos

    # ------------------------------------------------------------------ API
    def forward(self, x: Tensor, state: Optional[KVCache] = None, output_state: bool = False):
        """Attend causally over ``x`` (B, L, C) and, with a state, over the cached tokens.

        Returns y (B, L, C), or (y, new_state) when ``output_state=True``.
        """
        self.check_sequence(x)
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).unbind(2)  # (B, L, H, hd)
        p = self.dropout if dropout_active(self) else 0.0
        if state is None:
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=p, is_causal=True
            )
            new_state = None
            if output_state:
                new_state = KVCache(k, v, torch.full((B,), L, dtype=torch.long, device=x.device))
        else:
            self.check_state(state, x)
            new_state, pos = self._append(state, k, v)
            T = int(new_state.position.max())
            keys = new_state.k[:, :T].transpose(1, 2)
            vals = new_state.v[:, :T].transpose(1, 2)
            if L == 1 and bool((new_state.position == T).all()):
                # decoding one token with every row at the same position: all T keys are visible
                y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, vals, dropout_p=p)
            else:
                # key j is visible to the query at absolute position p iff j <= p
                mask = torch.arange(T, device=x.device).view(1, 1, T) <= pos.unsqueeze(-1)  # (B, L, T)
                y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, vals, attn_mask=mask.unsqueeze(1), dropout_p=p)
        y = self.drop(self.proj(y.transpose(1, 2).reshape(B, L, self.dim)))
        return (y, new_state) if output_state else y

    def step(self, x_t: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """Advance one token: x_t (B, C) -> (y_t (B, C), new cache). Cost grows with position."""
        return super().step(x_t, state)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_heads={self.n_heads}, dropout={self.dropout}"
