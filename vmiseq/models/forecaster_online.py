"""The online path of :class:`~vmiseq.models.forecaster.VMISAForecaster`: one observation at a time.

``init_state`` -> ``update`` (per observation) -> ``forecast`` (any time after the first
``min_history`` observations). Each observation updates the running sums of the causal
statistics and completes exactly one patch (the last ``patch_len`` observations, kept in a
buffer), which advances the block states of its phase (T mod stride) by one token; so every
forecast costs one token step and equals the batch ``forward`` over the whole history.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .forecast_norm import moments_to_stats, update_sums


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


class OnlineForecastMixin:
    """``init_state`` / ``update`` / ``forecast`` for ``VMISAForecaster``; uses its config,
    blocks and the per-token pieces it shares with the batch path (``_normalise``,
    ``_cycle_at``, ``_tokens``, ``_decode``, ``_check_start``)."""

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
