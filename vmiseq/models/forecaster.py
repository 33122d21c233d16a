"""``VMISAForecaster``: multivariate forecasting with causal VMI-SA blocks, batch and online.

Input (B, T, N) -> forecast (B, H, N). The pipeline (every step causal, so the same function
can be evaluated on a whole history at once or advanced one observation at a time):

1. **Causal instance normalisation** (RevIN-style; ``norm="window"`` by default). Standard RevIN
   normalises a window by the mean and deviation of the whole window; a recurrent state that
   already absorbed the old tokens cannot be re-normalised when a new observation shifts those
   statistics. So each patch token is normalised by causal statistics *as they stood when the
   token completed* -- by default those of the last ``seq_len`` observations, so that after
   months of streaming the model still sees the statistics of its training windows (see
   :mod:`vmiseq.models.forecast_norm` for "window", "expanding" and "ema") -- and the forecast
   is de-normalised with the statistics at the last observation. The statistics are three
   sums per variable: O(1) to update, and the batch path computes the very same sums over the
   same history (in float64), so both paths agree.
2. **Patching**, aligned to the *end* of the history: tokens are the ``patch_len``-long
   patches ending at T, T - stride, T - 2 stride, ... (observations before the first whole
   patch are dropped, as in the batch benchmark code). Online, the patch boundaries would move
   with every new observation; instead the model keeps ``stride`` recurrent states, one per
   phase (T mod stride): each new observation completes exactly one patch -- the last
   ``patch_len`` observations, kept in a small buffer -- and advances the state of its phase
   by one token. Every forecast is therefore fresh, costs one token step, and equals the batch
   computation over the whole history.
3. **Channel-independent** (default: every variable is its own sequence, weights shared) or
   **channel-mixing** (one token holds the patches of all variables).
4. Patch embedding -> ``n_layers`` causal blocks (``VMISABlock`` with ``VMISALayer(causal=True)``,
   or the Transformer / gated-linear-attention baselines) -> LayerNorm -> a linear head on the
   *last* token's features -> H values per variable -> de-normalised.
5. Beside the blocks (``linear_path="average"``, the default), a linear map of the last
   ``seq_len`` normalised observations (RLinear / CycleNet-Linear); the forecast is the mean
   of the two paths, each trained on its own loss (``return_branches=True``).

The head reads only the last token, so the model accepts any history of at least
``patch_len`` observations (``seq_len`` with a linear path) and its online state never grows
(with ``mixer="vmisa"`` or ``"gla"``; the attention baseline's KV cache grows by design).

This module holds the model and its batch path; the online path (``init_state`` /
``update`` / ``forecast``) is in :mod:`vmiseq.models.forecaster_online`, the config in
:mod:`vmiseq.models.forecaster_config`, the statistics in :mod:`vmiseq.models.forecast_norm`.
``DLinear`` (Zeng et al. 2023, the standard linear baseline) is in :mod:`vmiseq.models.dlinear`.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..saving import PretrainedMixin
from .blocks import PreNormBlock, make_block
from .dlinear import DLinear, DLinearConfig
from .forecast_norm import history_moments, moments_to_stats, running_moments
from .forecaster_config import ForecasterConfig
from .forecaster_online import ForecasterState, OnlineForecastMixin
from .scaler_file import ScalerFileMixin

# also importable from here, as before the split: the config, the state, DLinear, the
# statistics and the baselines' block
__all__ = [
    "VMISAForecaster", "ForecasterConfig", "ForecasterState", "DLinear", "DLinearConfig",
    "moments_to_stats", "running_moments", "PreNormBlock",
]  # fmt: skip

# config fields passed on to every VMISALayer as they are
_LAYER_FIELDS = ("expand", "alpha", "decay", "rank_mask", "conv_kernel")


def _make_block(cfg: ForecasterConfig) -> nn.Module:
    # the GLA baseline keeps its layer's default short convolution (conv_kernel is the
    # VMI-SA layer's): saved GLA forecasters depend on it
    return make_block(cfg, cfg.d_model, _LAYER_FIELDS, drop_path=cfg.drop_path)


class VMISAForecaster(OnlineForecastMixin, ScalerFileMixin, PretrainedMixin, nn.Module):
    """Patch-token forecaster built from causal VMI-SA blocks (see the module docstring).

    ``forward(x)`` maps a history (B, T, N) with T >= patch_len to a forecast (B, H, N).
    ``init_state`` / ``update`` / ``forecast`` do the same one observation at a time.
    A :class:`~vmiseq.data.timeseries.StandardScaler` attached as ``model.scaler`` is saved
    and restored with the weights (``scaler.json``).
    """

    config_class = ForecasterConfig

    def __init__(self, config: Optional[ForecasterConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = cfg = ForecasterConfig.resolve(config, kwargs)
        N, P, d = cfg.n_vars, cfg.patch_len, cfg.d_model
        self.scaler = None  # optional data scaler, saved beside the weights
        if cfg.norm_affine and cfg.norm != "none":
            self.affine_weight = nn.Parameter(torch.ones(N))
            self.affine_bias = nn.Parameter(torch.zeros(N))
        in_dim = P if cfg.channel_independent else N * P
        out_dim = cfg.pred_len if cfg.channel_independent else cfg.pred_len * N
        self.embed = nn.Linear(in_dim, d)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([_make_block(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = nn.LayerNorm(d)
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(d, out_dim)
        if cfg.cycle_len > 0:
            self.cycle = nn.Parameter(torch.zeros(cfg.cycle_len, N))
        if cfg.linear_path != "none":
            self.skip = nn.Linear(cfg.seq_len, cfg.pred_len)

    # ------------------------------------------------------------------ shared pieces
    def _check_history(self, x: Tensor) -> None:
        cfg = self.config
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a (B, T, N) tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 3 or x.shape[-1] != cfg.n_vars:
            raise ValueError(f"x: expected shape (B, T, N) with N={cfg.n_vars}, got {tuple(x.shape)}")
        if x.shape[1] < self.min_history:
            what = f"seq_len (linear_path={cfg.linear_path!r})" if cfg.linear_path != "none" else "patch_len"
            raise ValueError(f"x: expected a history of at least {what}={self.min_history} steps, got T={x.shape[1]}")

    @property
    def min_history(self) -> int:
        """Fewest observations a forecast needs."""
        cfg = self.config
        return max(cfg.patch_len, cfg.seq_len) if cfg.linear_path != "none" else cfg.patch_len

    @property
    def buffer_len(self) -> int:
        """Raw observations the online state keeps: the last patch, the linear path's window,
        and the window of the "window" statistics (the observation leaving it is subtracted)."""
        cfg = self.config
        return max(self.min_history, cfg.stats_window if cfg.norm == "window" else 0)

    def _check_start(self, start, batch: int, device) -> Optional[Tensor]:
        """The (B,) absolute time index of the first observation (needed with a cycle)."""
        if self.config.cycle_len == 0:
            return None
        if start is None:
            raise ValueError(
                f"start: cycle_len={self.config.cycle_len} needs the absolute time index of the first observation "
                "(an int or a (B,) integer tensor), got None"
            )
        if isinstance(start, bool) or not isinstance(start, (int, Tensor)):
            raise TypeError(f"start: expected an int or a (B,) integer tensor, got {type(start).__name__}")
        if isinstance(start, int):
            start = torch.full((batch,), start, dtype=torch.long, device=device)
        if start.is_floating_point() or tuple(start.shape) not in ((batch,), ()):
            raise ValueError(f"start: expected a (B,) = ({batch},) integer tensor, got dtype {start.dtype} shape {tuple(start.shape)}")
        return start.to(device=device, dtype=torch.long).expand(batch)

    def _cycle_at(self, index: Tensor) -> Tensor:
        """Cycle profile at absolute time indices (B, ...) -> (B, ..., N)."""
        return self.cycle[torch.remainder(index, self.config.cycle_len)]

    def _normalise(self, patches: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """patches (B, n, N, P) raw -> normalised with per-token stats (B, n, N)."""
        cfg = self.config
        if cfg.norm == "none":
            return patches
        z = (patches - mean.to(patches.dtype).unsqueeze(-1)) / std.to(patches.dtype).unsqueeze(-1)
        if cfg.norm_affine:
            z = z * self.affine_weight.view(1, 1, -1, 1) + self.affine_bias.view(1, 1, -1, 1)
        return z

    def _tokens(self, z: Tensor) -> Tensor:
        """Normalised patches (B, n, N, P) -> token embeddings (B', n, d)."""
        B, n, N, P = z.shape
        if self.config.channel_independent:
            z = z.permute(0, 2, 1, 3).reshape(B * N, n, P)
        else:
            z = z.reshape(B, n, N * P)
        return self.embed_drop(self.embed(z))

    def _decode(
        self,
        h_last: Tensor,
        mean: Optional[Tensor],
        std: Optional[Tensor],
        batch: int,
        next_index: Optional[Tensor],
        window: Optional[Tensor] = None,
        return_branches: bool = False,
    ):
        """Last-token features (B', d) -> forecast (B, H, N) in the data's units.

        ``next_index`` (B,): absolute time index of the first forecast step (cycle only);
        ``window`` (B, seq_len, N): the last raw observations (linear path only).
        ``return_branches``: also return {"blocks": ..., "linear": ...}, each path's own
        forecast in data units (linear_path="average"; their mean is the forecast).
        """
        cfg = self.config
        y = self.head(self.head_drop(self.final_norm(h_last)))
        if cfg.channel_independent:
            y = y.view(batch, cfg.n_vars, cfg.pred_len).transpose(1, 2)
        else:
            y = y.view(batch, cfg.pred_len, cfg.n_vars)
        paths = {"blocks": y}
        if cfg.linear_path != "none":  # RLinear path: same normalisation (final statistics), minus the cycle
            L = cfg.seq_len
            z = self._normalise(
                window.transpose(1, 2).unsqueeze(1),
                None if mean is None else mean.unsqueeze(1),
                None if std is None else std.unsqueeze(1),
            ).squeeze(1)  # (B, N, L)
            if next_index is not None:
                z = z - self._cycle_at(next_index.unsqueeze(1) - L + torch.arange(L, device=z.device)).transpose(1, 2)
            paths["linear"] = self.skip(z).transpose(1, 2)
        if cfg.linear_path == "sum":
            paths = {"blocks": paths["blocks"] + paths["linear"]}
        outs = {name: self._denormalise(v, mean, std, next_index) for name, v in paths.items()}
        forecast = outs["blocks"] if len(outs) == 1 else 0.5 * (outs["blocks"] + outs["linear"])
        if return_branches:
            if cfg.linear_path != "average":
                raise ValueError(f"return_branches: only linear_path='average' has two branches, got {cfg.linear_path!r}")
            return forecast, outs
        return forecast

    def _denormalise(self, y: Tensor, mean: Optional[Tensor], std: Optional[Tensor], next_index: Optional[Tensor]) -> Tensor:
        """A forecast in normalised units (B, H, N) -> plus the cycle -> the data's units."""
        cfg = self.config
        if cfg.cycle_len > 0:
            steps = torch.arange(cfg.pred_len, device=y.device)
            y = y + self._cycle_at(next_index.unsqueeze(1) + steps)
        if cfg.norm == "none":
            return y
        if cfg.norm_affine:  # RevIN's inverse affine
            y = (y - self.affine_bias) / (self.affine_weight + 1e-10)
        return y * std.to(y.dtype).unsqueeze(1) + mean.to(y.dtype).unsqueeze(1)

    # ------------------------------------------------------------------ batch
    def forward(self, x: Tensor, start=None, return_branches: bool = False, grad_tokens: Optional[int] = None):
        """Forecast the next ``pred_len`` steps after each history: (B, T, N) -> (B, H, N).

        ``start``: absolute time index of ``x[:, 0]`` (an int or (B,) integers); only used, and
        then required, with ``cycle_len > 0``. ``return_branches`` (linear_path="average"):
        return ``(forecast, {"blocks": ..., "linear": ...})``, for training each path on its
        own loss. ``grad_tokens`` (training on long histories): run all but the last
        ``grad_tokens`` tokens without autograd and pass their state on (truncated
        backpropagation; the forecast is the same, the cost of the prefix is a forward only).
        """
        if grad_tokens is not None and (isinstance(grad_tokens, bool) or not isinstance(grad_tokens, int) or grad_tokens <= 0):
            raise ValueError(f"grad_tokens: expected a positive int or None, got {grad_tokens!r}")
        self._check_history(x)
        cfg = self.config
        B, T, N = x.shape
        start = self._check_start(start, B, x.device)
        P, S = cfg.patch_len, cfg.stride
        n = (T - P) // S + 1
        first = T - (n - 1) * S - P  # observations before it never complete an end-aligned patch
        patches = x[:, first:].unfold(1, P, S)  # (B, n, N, P)
        mean = std = None
        if cfg.norm != "none":
            s0, s1, s2 = history_moments(x, cfg.norm, cfg.decay_factor, cfg.stats_window)
            mean_all, std_all = moments_to_stats(s0.view(1, T, 1), s1, s2, cfg.norm_eps)
            ends = first + P - 1 + S * torch.arange(n, device=x.device)  # last observation of each token
            mean, std = mean_all[:, ends], std_all[:, ends]  # (B, n, N)
        z = self._normalise(patches, mean, std)
        if start is not None:  # remove the learned cycle at each observation's time index
            idx = start.view(B, 1, 1) + first + S * torch.arange(n, device=x.device).view(1, n, 1) + torch.arange(P, device=x.device)
            z = z - self._cycle_at(idx).permute(0, 1, 3, 2)  # (B, n, P, N) -> (B, n, N, P)
        h = self._run_blocks(z, grad_tokens)
        last_mean = None if mean is None else mean[:, -1]
        last_std = None if std is None else std[:, -1]
        window = x[:, T - cfg.seq_len :] if cfg.linear_path != "none" else None
        next_index = None if start is None else start + T
        return self._decode(h[:, -1], last_mean, last_std, B, next_index, window, return_branches)

    def _run_blocks(self, z: Tensor, grad_tokens: Optional[int]) -> Tensor:
        """Normalised patches (B, n, N, P) -> the block stack's features (B', n', d); with
        ``grad_tokens`` only the last tokens are kept, the rest ran under ``no_grad``."""
        n = z.shape[1]
        states = [None] * len(self.blocks)
        if grad_tokens is not None and n > grad_tokens:
            with torch.no_grad():
                h = self._tokens(z[:, : n - grad_tokens])
                for i, block in enumerate(self.blocks):
                    h, states[i] = block(h, None, output_state=True)
            z = z[:, n - grad_tokens :]
        h = self._tokens(z)
        for block, state in zip(self.blocks, states):
            h = block(h) if state is None else block(h, state)
        return h

    @torch.no_grad()
    def forecast_prefixes(self, x: Tensor, ends: Tensor, start=None) -> Tensor:
        """The forecast after each prefix ``x[:, :e]`` for ``e`` in ``ends``: (len(ends), H, N) for
        one series x (1, T, N) -- what :meth:`update` then :meth:`forecast` give after ``e``
        observations, for every end of a long stream at once.

        Causality makes this one pass per phase: the prefixes whose ends share ``e mod stride``
        cut the same tokens, so one run of the blocks over the longest of them holds every
        shorter prefix's last token (tested equal to ``forward(x[:, :e])``).
        """
        self._check_history(x)
        cfg = self.config
        if x.shape[0] != 1:
            raise ValueError(f"x: expected one series (1, T, N), got batch {x.shape[0]}")
        ends = torch.as_tensor(ends, dtype=torch.long).flatten()
        if ends.numel() == 0 or int(ends.min()) < self.min_history or int(ends.max()) > x.shape[1]:
            raise ValueError(f"ends: expected prefix lengths in [{self.min_history}, {x.shape[1]}], got {ends.tolist()[:5]}...")
        start = self._check_start(start, 1, x.device)
        P, S, N = cfg.patch_len, cfg.stride, cfg.n_vars
        mean_all = std_all = None
        if cfg.norm != "none":
            s0, s1, s2 = history_moments(x, cfg.norm, cfg.decay_factor, cfg.stats_window)
            mean_all, std_all = moments_to_stats(s0.view(1, -1, 1), s1, s2, cfg.norm_eps)
        out = torch.empty(ends.numel(), cfg.pred_len, N, dtype=x.dtype, device=x.device)
        for phase in torch.unique(ends % S).tolist():
            pick = (ends % S == phase).nonzero().flatten()
            T = int(ends[pick].max())
            n = (T - P) // S + 1
            first = T - (n - 1) * S - P
            patches = x[:, first:T].unfold(1, P, S)  # (1, n, N, P)
            tok_end = first + P - 1 + S * torch.arange(n, device=x.device)
            mean = None if mean_all is None else mean_all[:, tok_end]
            std = None if std_all is None else std_all[:, tok_end]
            z = self._normalise(patches, mean, std)
            if start is not None:
                idx = start.view(1, 1, 1) + first + S * torch.arange(n, device=x.device).view(1, n, 1) + torch.arange(P, device=x.device)
                z = z - self._cycle_at(idx).permute(0, 1, 3, 2)
            h = self._run_blocks(z, None)  # (N or 1, n, d)
            e = ends[pick]
            k = (e - 1 - tok_end[0]) // S  # the token each prefix ends with
            h_last = h[:, k].transpose(0, 1).reshape(e.numel() * h.shape[0], -1)
            window = None
            if cfg.linear_path != "none":
                window = x[0][e.view(-1, 1) - cfg.seq_len + torch.arange(cfg.seq_len, device=x.device)]
            next_index = None if start is None else start[0] + e
            m = None if mean_all is None else mean_all[0, e - 1]
            sd = None if std_all is None else std_all[0, e - 1]
            out[pick] = self._decode(h_last, m, sd, e.numel(), next_index, window)
        return out
