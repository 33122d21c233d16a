"""``ForecasterConfig``: the hyper-parameters of :class:`~vmiseq.models.forecaster.VMISAForecaster`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .blocks import MIXERS
from .config import ModelConfig, is_int
from .forecast_norm import SERIES_NORMS

LINEAR_PATHS = ("average", "sum", "none")


@dataclass
class ForecasterConfig(ModelConfig):
    """Hyper-parameters of :class:`VMISAForecaster` (defaults: the ETTh1 recipe of docs/timeseries.md).

    Attributes:
        n_vars: N, variables per time step.
        pred_len: H, steps forecast.
        seq_len: the input length the model is trained with (informational: the model accepts
            any history of at least ``patch_len`` observations).
        patch_len / stride: observations per token and between consecutive tokens.
        d_model / n_layers: width and depth of the block stack.
        expand: VMI-SA inner width factor (D = expand * d_model).
        mlp_ratio: hidden width of the per-block MLP (0 disables it).
        mixer: "vmisa" (the library's layer), "attention" (causal SDPA, Transformer baseline)
            or "gla" (gated linear attention baseline).
        n_heads: heads of the baseline mixers.
        channel_independent: one sequence per variable (True) or one token for all (False).
        norm: "window" (equal weights on the last ``norm_window`` observations: the statistics
            a ``seq_len`` training window had, however long the history), "ema" (causal
            exponentially weighted), "expanding" (equal weights over the whole history: after
            a long stream these are global statistics the model never saw in training) or
            "none". See :mod:`vmiseq.models.forecast_norm`.
        norm_window: observations in the "window" statistics (0 = ``seq_len``; then a
            ``seq_len`` history is normalised exactly as with "expanding").
        norm_halflife: half-life in observations of the "ema" statistics.
        norm_affine: learnable per-variable affine after normalisation (RevIN's).
        norm_eps: added to the variance.
        decay / rank_mask / alpha / conv_kernel: forwarded to ``VMISALayer``. The rank mask is
            off by default: with a dozen tokens per window it would keep most channels from
            ever seeing context.
        dropout / drop_path / head_dropout: regularisation.
        cycle_len: length of a learned periodic profile (24 for hourly data with a daily
            cycle; 0 turns it off). As in CycleNet (Lin et al. 2024), the profile, in
            normalised units, is subtracted from the input before the blocks and added to
            the forecast; it needs the absolute time index of the first observation
            (``start`` in :meth:`VMISAForecaster.forward` and ``init_state``).
        linear_path: a linear forecaster beside the blocks, ``Linear(seq_len -> pred_len)``
            of the last ``seq_len`` normalised observations minus the cycle (RLinear /
            CycleNet-Linear). "average" (the default): the forecast is the mean of the two
            paths' forecasts, and training fits each path on its own loss
            (:meth:`VMISAForecaster.forward` with ``return_branches=True``), so the two act as
            a two-member ensemble inside one model; "sum": the head and the linear map are
            added and trained together; "none": the blocks alone. Online the linear path
            needs a buffer of ``seq_len`` observations -- constant, but it makes ``seq_len``
            the minimum history.
    """

    # the data and the patch tokens
    n_vars: int = 7
    pred_len: int = 96
    seq_len: int = 96
    patch_len: int = 16
    stride: int = 16
    channel_independent: bool = True
    # the block stack
    d_model: int = 64
    n_layers: int = 2
    mixer: str = "vmisa"
    n_heads: int = 4
    expand: int = 2
    mlp_ratio: float = 2.0
    decay: Optional[str] = "input"
    rank_mask: bool = False
    alpha: str = "input"
    conv_kernel: int = 4
    # the causal instance normalisation
    norm: str = "window"
    norm_window: int = 0
    norm_halflife: float = 96.0
    norm_affine: bool = True
    norm_eps: float = 1e-5
    # regularisation
    dropout: float = 0.3
    drop_path: float = 0.0
    head_dropout: float = 0.0
    # beside the blocks
    cycle_len: int = 0
    linear_path: str = "average"

    def __post_init__(self) -> None:
        self._check_choice("linear_path", LINEAR_PATHS)
        self._check_positive_ints(
            "n_vars", "pred_len", "seq_len", "patch_len", "stride", "d_model", "n_layers", "expand", "n_heads", "conv_kernel"
        )
        self._check_choice("mixer", MIXERS)
        self._check_choice("norm", SERIES_NORMS)
        if not is_int(self.norm_window) or self.norm_window < 0:
            raise ValueError(f"norm_window: expected an int >= 0 (0 = seq_len), got {self.norm_window!r}")
        if self.norm == "ema" and not (self.norm_halflife > 0):
            raise ValueError(f"norm_halflife: expected a positive number of observations, got {self.norm_halflife!r}")
        if self.seq_len < self.patch_len:
            raise ValueError(f"seq_len: expected at least patch_len={self.patch_len} observations, got {self.seq_len}")
        self._check_rates("dropout", "drop_path", "head_dropout")
        if not is_int(self.cycle_len) or self.cycle_len < 0:
            raise ValueError(f"cycle_len: expected an int >= 0 (0 = no cycle), got {self.cycle_len!r}")
        if self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio: expected >= 0, got {self.mlp_ratio!r}")
        if self.mixer != "vmisa" and self.d_model % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={self.d_model}, got {self.n_heads}")

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "linear_skip" in data and "linear_path" not in data:  # configs saved before linear_path
            data["linear_path"] = "sum" if data.pop("linear_skip") else "none"
        return data

    @property
    def stats_window(self) -> int:
        """Observations in the "window" statistics (``norm_window``, or ``seq_len`` when 0)."""
        return self.norm_window or self.seq_len

    @property
    def decay_factor(self) -> float:
        """Per-observation weight factor lambda of the running statistics (1 = expanding)."""
        if self.norm == "ema":
            return 0.5 ** (1.0 / self.norm_halflife)
        return 1.0
