"""Causal instance statistics of the forecaster: the running sums behind its normalisation.

Every token of :class:`~vmiseq.models.forecaster.VMISAForecaster` is normalised with the mean
and deviation of the observations *up to its last observation*, computed from three sums per
variable, ``S0 = sum w``, ``S1 = sum w x``, ``S2 = sum w x^2`` (float64). The batch path
computes the sums for every time step at once; the online path adds one observation per call
(:func:`update_sums`). Both see the same numbers, so online forecasts equal batch ones.

Three weightings (``ForecasterConfig.norm``):

* ``"window"``: equal weights on the last ``W`` observations (``W = norm_window``, by default
  ``seq_len``). The statistics of the newest observation are those of the same window
  whatever the history length, so a model trained on ``seq_len`` windows sees the statistics
  it was trained on after months of streaming. On a history of exactly ``seq_len``
  observations it equals ``"expanding"``. Online: add the new observation, subtract the one
  leaving the window (kept in the forecaster's buffer) -- O(1).
* ``"expanding"``: equal weights on the whole history (RevIN on a ``seq_len`` window; after
  a long stream the statistics are global ones, which the model never saw in training).
* ``"ema"``: weights ``lambda^(t-s)`` (half-life ``norm_halflife``), bias-corrected.
"""
from __future__ import annotations

import torch
from torch import Tensor

# the causal statistics a forecaster normalises its series with (``ForecasterConfig.norm``;
# not the norm inside a layer, which is ``vmiseq.layers.vmisa.NORMS``)
SERIES_NORMS = ("window", "ema", "expanding", "none")


def running_moments(x: Tensor, lam: float, chunk: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Exponentially weighted running sums over time, all in float64.

    For x (B, T, N) returns S0 (T,), S1 (B, T, N), S2 (B, T, N) with
    ``S0_t = sum_{s<=t} lam^(t-s)``, ``S1_t = sum lam^(t-s) x_s``, ``S2_t = sum lam^(t-s) x_s^2`` --
    the same numbers :func:`update_sums` accumulates one observation at a time.
    Computed chunk by chunk (a (C, C) weight matrix per chunk plus the carried sums), so no
    power of lam ever over- or underflows, whatever T.
    """
    B, T, N = x.shape
    xd = x.to(torch.float64)
    feats = torch.cat([xd, xd * xd], dim=-1)  # (B, T, 2N)
    C = min(chunk, T)
    i = torch.arange(C, device=x.device, dtype=torch.float64)
    diff = i.view(-1, 1) - i.view(1, -1)
    W = torch.where(diff >= 0, torch.as_tensor(lam, dtype=torch.float64).pow(diff.clamp(min=0)), torch.zeros((), dtype=torch.float64))
    carry_w = torch.as_tensor(lam, dtype=torch.float64).pow(i + 1)  # lam^(t - c0 + 1)
    out = torch.empty(B, T, 2 * N, dtype=torch.float64, device=x.device)
    s0 = torch.empty(T, dtype=torch.float64, device=x.device)
    carry = torch.zeros(B, 2 * N, dtype=torch.float64, device=x.device)
    carry0 = torch.zeros((), dtype=torch.float64, device=x.device)
    for c0 in range(0, T, C):
        n = min(C, T - c0)
        Wc = W[:n, :n]
        local = torch.einsum("ts,bsf->btf", Wc, feats[:, c0 : c0 + n])
        out[:, c0 : c0 + n] = local + carry_w[:n].view(1, n, 1) * carry.unsqueeze(1)
        s0[c0 : c0 + n] = Wc.sum(1) + carry_w[:n] * carry0
        carry = out[:, c0 + n - 1]
        carry0 = s0[c0 + n - 1]
    return s0, out[..., :N], out[..., N:]


def window_moments(x: Tensor, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sums over the last ``window`` observations (fewer at the start), float64.

    For x (B, T, N): S0 (T,) = min(t + 1, window), S1 / S2 (B, T, N) = sums of x / x^2 over
    ``x[max(0, t - window + 1) .. t]``. The online path keeps the same sums by adding the new
    observation and subtracting the one that leaves the window.
    """
    B, T, N = x.shape
    xd = x.to(torch.float64)
    feats = torch.cat([xd, xd * xd], dim=-1)
    csum = feats.cumsum(1)
    out = csum.clone()
    if T > window:
        out[:, window:] = csum[:, window:] - csum[:, :-window]
    s0 = torch.arange(1, T + 1, device=x.device, dtype=torch.float64).clamp(max=window)
    return s0, out[..., :N], out[..., N:]


def history_moments(x: Tensor, norm: str, lam: float, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """The batch sums of normalisation ``norm`` ("window", "expanding" or "ema") at every step."""
    if norm == "window":
        return window_moments(x, window)
    return running_moments(x, lam)


def update_sums(
    sums: tuple[Tensor, Tensor, Tensor], new: Tensor, leaving: Tensor | None, lam: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One observation into the running sums: ``new`` (B, N) float64 enters; with a sliding
    window, ``leaving`` (B, N) float64 (the observation ``window`` steps back) leaves."""
    s0, s1, s2 = sums
    if leaving is not None:  # a full window: the weight sum stays at ``window``
        return s0, s1 + new - leaving, s2 + new * new - leaving * leaving
    return s0 * lam + 1.0, s1 * lam + new, s2 * lam + new * new


def moments_to_stats(s0: Tensor, s1: Tensor, s2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Weighted mean and standard deviation (float64) from the running sums."""
    mean = s1 / s0
    var = (s2 / s0 - mean * mean).clamp(min=0.0)
    return mean, torch.sqrt(var + eps)
