"""``VMISABlock``: a residual block around ``VMISALayer`` that stacks into models."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from einops import rearrange
from torch import Tensor

from .dropout import Dropout, dropout_active
from .state import VMISAState
from .vmisa import VMISALayer


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p: expected a drop probability in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not dropout_active(self):
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    """Channel MLP (Linear -> GELU -> Linear) on the last dimension."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act, self.drop = nn.GELU(), Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class VMISABlock(nn.Module):
    """``x + DropPath(VMISALayer(x))``, then optionally ``+ DropPath(MLP(LayerNorm(x)))``.

    With ``mlp_ratio=0`` (the default) this is exactly the official VMINet block. The
    state API of the layer passes through, so a stack of blocks streams token by token.

    Args:
        dim: channels. mlp_ratio: hidden width of the optional MLP as a multiple of dim
        (0 disables it). drop_path: stochastic-depth rate. **layer_kwargs: for VMISALayer.
    """

    def __init__(self, dim: int, mlp_ratio: float = 0.0, drop_path: float = 0.0, dropout: float = 0.0, **layer_kwargs) -> None:
        super().__init__()
        self.mixer = VMISALayer(dim, dropout=dropout, **layer_kwargs)
        self.drop_path = DropPath(drop_path)
        self.mlp: Optional[MLP] = None
        if mlp_ratio > 0:
            self.mlp_norm = nn.LayerNorm(dim)
            self.mlp = MLP(dim, int(round(mlp_ratio * dim)), dropout)

    def init_state(self, batch_size: int, device=None, dtype=None) -> VMISAState:
        return self.mixer.init_state(batch_size, device, dtype)

    def _mlp(self, x: Tensor) -> Tensor:
        if self.mlp is None:
            return x
        if x.dim() == 4:  # images: the MLP acts on channels
            y = rearrange(x, "b c h w -> b h w c")
            y = y + self.drop_path(self.mlp(self.mlp_norm(y)))
            return rearrange(y, "b h w c -> b c h w")
        return x + self.drop_path(self.mlp(self.mlp_norm(x)))

    def forward(self, x: Tensor, state: Optional[VMISAState] = None, output_state: bool = False):
        if self.mixer.fused and not self.training and state is None and not output_state:
            return self._mlp(self.mixer.residual_forward(x))  # deployment: residual in g's epilogue
        if output_state:
            y, new_state = self.mixer(x, state, output_state=True)
            return self._mlp(x + self.drop_path(y)), new_state
        return self._mlp(x + self.drop_path(self.mixer(x, state)))

    def step(self, x_t: Tensor, state: VMISAState) -> tuple[Tensor, VMISAState]:
        """One token: x_t (B, C) -> (y_t (B, C), new state), through the layer's fast step."""
        y, new_state = self.mixer.step(x_t, state)
        return self._mlp(x_t + self.drop_path(y)), new_state
