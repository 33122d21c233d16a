"""DLinear (Zeng et al., AAAI 2023): the standard linear forecasting baseline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..saving import PretrainedMixin
from .config import ModelConfig
from .scaler_file import ScalerFileMixin


@dataclass
class DLinearConfig(ModelConfig):
    """DLinear (Zeng et al., AAAI 2023): moving-average trend + remainder, one linear map each."""

    n_vars: int = 7
    seq_len: int = 96
    pred_len: int = 96
    kernel_size: int = 25
    individual: bool = False

    def __post_init__(self) -> None:
        self._check_positive_ints("n_vars", "seq_len", "pred_len", "kernel_size")


class DLinear(ScalerFileMixin, PretrainedMixin, nn.Module):
    """The official DLinear: series decomposition by a replicate-padded moving average, then
    ``Linear(seq_len -> pred_len)`` on the seasonal and trend parts (shared across variables
    unless ``individual``), summed. Input (B, seq_len, N) -> (B, pred_len, N).

    A StandardScaler attached as ``model.scaler`` is saved and restored with the weights.
    """

    config_class = DLinearConfig

    def __init__(self, config: Optional[DLinearConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = cfg = DLinearConfig.resolve(config, kwargs)
        self.scaler = None
        L, H = cfg.seq_len, cfg.pred_len
        n = cfg.n_vars if cfg.individual else 1
        self.seasonal = nn.ModuleList([nn.Linear(L, H) for _ in range(n)])
        self.trend = nn.ModuleList([nn.Linear(L, H) for _ in range(n)])
        for lin in (*self.seasonal, *self.trend):  # the official initialisation: an average
            nn.init.constant_(lin.weight, 1.0 / L)

    def decompose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, L, N) -> (seasonal, trend), trend = moving average with replicated ends."""
        k = self.config.kernel_size
        front = x[:, :1].repeat(1, (k - 1) // 2, 1)
        back = x[:, -1:].repeat(1, (k - 1) // 2, 1)
        padded = torch.cat([front, x, back], dim=1)
        trend = F.avg_pool1d(padded.transpose(1, 2), kernel_size=k, stride=1).transpose(1, 2)
        return x - trend, trend

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if not isinstance(x, Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != (cfg.seq_len, cfg.n_vars):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (B, seq_len, N) = (B, {cfg.seq_len}, {cfg.n_vars}), got {shape}")
        seasonal, trend = self.decompose(x)
        s, t = seasonal.transpose(1, 2), trend.transpose(1, 2)  # (B, N, L)
        if cfg.individual:
            out = torch.stack([self.seasonal[i](s[:, i]) + self.trend[i](t[:, i]) for i in range(cfg.n_vars)], dim=1)
        else:
            out = self.seasonal[0](s) + self.trend[0](t)
        return out.transpose(1, 2)
