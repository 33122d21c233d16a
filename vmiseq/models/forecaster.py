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

``DLinear`` (Zeng et al. 2023, the standard linear baseline) is in :mod:`vmiseq.models.dlinear`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..saving import PretrainedMixin
from ..layers import MLP, DropPath, VMISABlock
from .dlinear import DLinear, DLinearConfig, load_scaler, save_scaler  # noqa: F401  (DLinear re-exported)
from .forecast_norm import history_moments, moments_to_stats, running_moments, update_sums  # noqa: F401

NORMS = ("window", "ema", "expanding", "none")
MIXERS = ("vmisa", "attention", "gla")
LINEAR_PATHS = ("average", "sum", "none")


# ---------------------------------------------------------------------------- config
@dataclass
class ForecasterConfig:
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

    n_vars: int = 7
    pred_len: int = 96
    seq_len: int = 96
    patch_len: int = 16
    stride: int = 16
    d_model: int = 64
    n_layers: int = 2
    expand: int = 2
    mlp_ratio: float = 2.0
    mixer: str = "vmisa"
    n_heads: int = 4
    channel_independent: bool = True
    norm: str = "window"
    norm_window: int = 0
    norm_halflife: float = 96.0
    norm_affine: bool = True
    norm_eps: float = 1e-5
    decay: Optional[str] = "input"
    rank_mask: bool = False
    alpha: str = "input"
    conv_kernel: int = 4
    dropout: float = 0.3
    drop_path: float = 0.0
    head_dropout: float = 0.0
    cycle_len: int = 0
    linear_path: str = "average"

    def __post_init__(self) -> None:
        if self.linear_path not in LINEAR_PATHS:
            raise ValueError(f"linear_path: expected one of {LINEAR_PATHS}, got {self.linear_path!r}")
        for name in ("n_vars", "pred_len", "seq_len", "patch_len", "stride", "d_model", "n_layers", "expand", "n_heads", "conv_kernel"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer: expected one of {MIXERS}, got {self.mixer!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {self.norm!r}")
        if not isinstance(self.norm_window, int) or isinstance(self.norm_window, bool) or self.norm_window < 0:
            raise ValueError(f"norm_window: expected an int >= 0 (0 = seq_len), got {self.norm_window!r}")
        if self.norm == "ema" and not (self.norm_halflife > 0):
            raise ValueError(f"norm_halflife: expected a positive number of observations, got {self.norm_halflife!r}")
        if self.seq_len < self.patch_len:
            raise ValueError(f"seq_len: expected at least patch_len={self.patch_len} observations, got {self.seq_len}")
        for name in ("dropout", "drop_path", "head_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
        if not isinstance(self.cycle_len, int) or isinstance(self.cycle_len, bool) or self.cycle_len < 0:
            raise ValueError(f"cycle_len: expected an int >= 0 (0 = no cycle), got {self.cycle_len!r}")
        if self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio: expected >= 0, got {self.mlp_ratio!r}")
        if self.mixer != "vmisa" and self.d_model % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model={self.d_model}, got {self.n_heads}")

    @classmethod
    def from_dict(cls, d: dict) -> "ForecasterConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        if "linear_skip" in d and "linear_path" not in d:  # configs saved before linear_path
            d["linear_path"] = "sum" if d.pop("linear_skip") else "none"
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown ForecasterConfig field(s) {unknown}")
        return cls(**d)

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


# ---------------------------------------------------------------------------- blocks
class PreNormBlock(nn.Module):
    """``x + DropPath(mixer(LayerNorm(x)))`` then an optional MLP: the block for the baseline mixers.

    (``VMISABlock`` needs no pre-norm: ``VMISALayer`` normalises after its local convolution.)
    The mixer's state API (``forward(x, state, output_state)``, ``init_state``) passes through.
    """

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, drop_path: float, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path)
        self.mlp: Optional[MLP] = None
        if mlp_ratio > 0:
            self.mlp_norm = nn.LayerNorm(dim)
            self.mlp = MLP(dim, int(round(mlp_ratio * dim)), dropout)

    def init_state(self, batch_size: int, device=None, dtype=None):
        return self.mixer.init_state(batch_size, device, dtype)

    def forward(self, x: Tensor, state=None, output_state: bool = False):
        out = self.mixer(self.norm(x), state, output_state=output_state)
        y, new_state = out if output_state else (out, None)
        x = x + self.drop_path(y)
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.mlp_norm(x)))
        return (x, new_state) if output_state else x


def _make_block(cfg: ForecasterConfig) -> nn.Module:
    if cfg.mixer == "vmisa":
        return VMISABlock(
            cfg.d_model,
            mlp_ratio=cfg.mlp_ratio,
            drop_path=cfg.drop_path,
            dropout=cfg.dropout,
            expand=cfg.expand,
            causal=True,
            alpha=cfg.alpha,
            decay=cfg.decay,
            rank_mask=cfg.rank_mask,
            conv_kernel=cfg.conv_kernel,
        )
    if cfg.mixer == "attention":
        from ..layers.attention import CausalSelfAttention

        mixer = CausalSelfAttention(cfg.d_model, n_heads=cfg.n_heads, dropout=cfg.dropout)
    else:
        from ..layers.gla import GatedLinearAttention

        mixer = GatedLinearAttention(cfg.d_model, n_heads=cfg.n_heads, dropout=cfg.dropout)
    return PreNormBlock(cfg.d_model, mixer, cfg.mlp_ratio, cfg.drop_path, cfg.dropout)


# ---------------------------------------------------------------------------- online state
@dataclass
class ForecasterState:
    """Everything :meth:`VMISAForecaster.update` needs; its size never depends on the history
    length (with the "vmisa" and "gla" mixers).

    Attributes:
        count: observations seen so far (the same for every series of the batch).
        buffer: (B, K, N) the last K observations (raw), oldest first; K =
            :attr:`VMISAForecaster.buffer_len` (the patch, the linear path's window, the
            window of the "window" statistics).
        s0: () float64 running weight sum; s1, s2: (B, N) float64 running sums of x and x^2.
        phases: ``stride`` lists (one per phase T mod stride) of per-layer mixer states.
        last_hidden: (B', d_model) features of the newest token (None before the first patch).
        last_mean / last_std: (B, N) float64 statistics at the newest observation.
        start: (B,) absolute time index of the first observation (with a cycle), else None.
        signature: the settings of the model that made the state (checked by ``update`` and
            ``forecast``: a state from another model is an error, not a wrong forecast).
    """

    count: int
    buffer: Tensor
    s0: Tensor
    s1: Tensor
    s2: Tensor
    phases: list
    last_hidden: Optional[Tensor] = None
    last_mean: Optional[Tensor] = None
    last_std: Optional[Tensor] = None
    start: Optional[Tensor] = None
    signature: Optional[dict] = None

    @property
    def batch_size(self) -> int:
        return self.buffer.shape[0]


# ---------------------------------------------------------------------------- model
class VMISAForecaster(PretrainedMixin, nn.Module):
    """Patch-token forecaster built from causal VMI-SA blocks (see the module docstring).

    ``forward(x)`` maps a history (B, T, N) with T >= patch_len to a forecast (B, H, N).
    ``init_state`` / ``update`` / ``forecast`` do the same one observation at a time.
    A :class:`~vmiseq.data_timeseries.StandardScaler` attached as ``model.scaler`` is saved
    and restored with the weights (``scaler.json``).
    """

    config_class = ForecasterConfig

    def __init__(self, config: Optional[ForecasterConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = ForecasterConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        if not isinstance(config, ForecasterConfig):
            raise TypeError(f"config: expected a ForecasterConfig, got {type(config).__name__}")
        self.config = cfg = config
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

    # ------------------------------------------------------------------ online
    def init_state(self, batch_size: int, device=None, dtype=None, start=None) -> ForecasterState:
        """An empty history for ``batch_size`` series (feed observations with :meth:`update`).

        ``start``: absolute time index of the first observation to come (cycle only).
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        cfg = self.config
        ref = self.embed.weight
        device = device if device is not None else ref.device
        start = self._check_start(start, batch_size, device)
        dtype = dtype if dtype is not None else ref.dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point torch.dtype (e.g. torch.float32), got {dtype!r}")
        inner_batch = batch_size * cfg.n_vars if cfg.channel_independent else batch_size
        phases = [[blk.init_state(inner_batch, device, dtype) for blk in self.blocks] for _ in range(cfg.stride)]
        return ForecasterState(
            count=0,
            buffer=torch.zeros(batch_size, self.buffer_len, cfg.n_vars, device=device, dtype=dtype),
            s0=torch.zeros((), dtype=torch.float64, device=device),
            s1=torch.zeros(batch_size, cfg.n_vars, dtype=torch.float64, device=device),
            s2=torch.zeros(batch_size, cfg.n_vars, dtype=torch.float64, device=device),
            phases=phases,
            start=start,
            signature=self._state_signature(),
        )

    _SIGNATURE_FIELDS = (
        "n_vars", "patch_len", "stride", "seq_len", "pred_len", "n_layers", "d_model", "expand", "mixer",
        "channel_independent", "linear_path", "norm", "cycle_len",
    )  # fmt: skip

    def _state_signature(self) -> dict:
        cfg = self.config
        sig = {name: getattr(cfg, name) for name in self._SIGNATURE_FIELDS}
        sig["norm_window"] = cfg.stats_window if cfg.norm == "window" else None
        sig["decay_factor"] = cfg.decay_factor
        return sig

    def _check_state(self, state) -> None:
        """A state made by :meth:`init_state` of a model with these settings, else a clear error."""
        if not isinstance(state, ForecasterState):
            raise TypeError(f"state: expected a ForecasterState from init_state, got {type(state).__name__}")
        if not isinstance(state.signature, dict):
            raise ValueError("state: expected a ForecasterState from this model's init_state, got one without model settings")
        for name, want in self._state_signature().items():
            got = state.signature.get(name)
            if got != want:
                raise ValueError(
                    f"state: expected a state of a model with {name}={want!r} (this model), "
                    f"got one made by a model with {name}={got!r}"
                )
        want_shape = (state.batch_size, self.buffer_len, self.config.n_vars)
        if not isinstance(state.buffer, Tensor) or tuple(state.buffer.shape) != want_shape:
            got = tuple(state.buffer.shape) if isinstance(state.buffer, Tensor) else type(state.buffer).__name__
            raise ValueError(f"state.buffer: expected shape (B, K, N) = {want_shape}, got {got}")

    @torch.no_grad()
    def update(self, observation: Tensor, state: ForecasterState) -> ForecasterState:
        """Advance ``state`` by one observation (B, N); returns the new state.

        Work per call is constant: the running sums, the patch buffer, and one token step of
        the block stack for the phase whose patch this observation completes.
        """
        cfg = self.config
        self._check_state(state)
        B = state.batch_size
        if not isinstance(observation, Tensor) or tuple(observation.shape) != (B, cfg.n_vars):
            shape = tuple(observation.shape) if isinstance(observation, Tensor) else type(observation).__name__
            raise ValueError(f"observation: expected shape (B, N) = {(B, cfg.n_vars)}, got {shape}")
        obs = observation.to(state.buffer.dtype)  # cast first: a value beyond the dtype's range becomes inf here
        if not torch.isfinite(obs).all():
            bad = observation[~torch.isfinite(obs)][0].item()
            raise ValueError(f"observation: expected finite values representable in {obs.dtype}, got {bad!r}")
        od = obs.to(torch.float64)  # the sums see exactly the values the buffer keeps (as the batch path)
        leaving = None
        if cfg.norm == "window" and state.count >= cfg.stats_window:
            leaving = state.buffer[:, state.buffer.shape[1] - cfg.stats_window].to(torch.float64)
        s0, s1, s2 = update_sums((state.s0, state.s1, state.s2), od, leaving, cfg.decay_factor)
        buffer = torch.cat([state.buffer[:, 1:], obs.unsqueeze(1)], dim=1)
        count = state.count + 1
        new = ForecasterState(
            count, buffer, s0, s1, s2, state.phases, state.last_hidden, state.last_mean, state.last_std, state.start,
            state.signature,
        )
        if count < cfg.patch_len:
            return new
        mean = std = None
        if cfg.norm != "none":
            mean, std = moments_to_stats(s0, s1, s2, cfg.norm_eps)  # (B, N)
        patch = buffer[:, buffer.shape[1] - cfg.patch_len :].transpose(1, 2).unsqueeze(1)  # (B, 1, N, P)
        z = self._normalise(patch, None if mean is None else mean.unsqueeze(1), None if std is None else std.unsqueeze(1))
        if state.start is not None:
            idx = state.start.view(B, 1) + (count - cfg.patch_len) + torch.arange(cfg.patch_len, device=z.device)
            z = z - self._cycle_at(idx).transpose(1, 2).unsqueeze(1)  # (B, P, N) -> (B, 1, N, P)
        h = self._tokens(z)
        phase = count % cfg.stride
        layer_states = []
        for blk, st in zip(self.blocks, state.phases[phase]):
            h, st = blk(h, st, output_state=True)
            layer_states.append(st)
        phases = list(state.phases)
        phases[phase] = layer_states
        new.phases, new.last_hidden, new.last_mean, new.last_std = phases, h[:, -1], mean, std
        return new

    @torch.no_grad()
    def forecast(self, state: ForecasterState) -> Tensor:
        """The next ``pred_len`` steps after the observations fed so far: (B, H, N)."""
        self._check_state(state)
        cfg = self.config
        if state.last_hidden is None or state.count < self.min_history:
            what = f"seq_len (linear_path={cfg.linear_path!r})" if cfg.linear_path != "none" else "patch_len"
            raise ValueError(
                f"state: expected at least {what}={self.min_history} observations before a forecast, got {state.count}"
            )
        next_index = None if state.start is None else state.start + state.count
        window = state.buffer[:, state.buffer.shape[1] - cfg.seq_len :] if cfg.linear_path != "none" else None
        return self._decode(state.last_hidden, state.last_mean, state.last_std, state.batch_size, next_index, window)

    # ------------------------------------------------------------------ save / load
    def _save_extra(self, directory: Path) -> None:
        save_scaler(self, directory)

    def _load_extra(self, directory: Path) -> None:
        load_scaler(self, directory)


