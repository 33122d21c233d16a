"""VMISAForecaster: online updates equal batch recomputation, O(1) state, errors, save/load; DLinear."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vmiseq.data.timeseries import StandardScaler
from vmiseq.models import ForecasterConfig, VMISAForecaster
from vmiseq.models.forecaster import DLinear, DLinearConfig, moments_to_stats, running_moments

ATOL = 2e-5


def small(**kw) -> VMISAForecaster:
    base = dict(n_vars=3, pred_len=5, seq_len=24, patch_len=4, stride=2, d_model=16, n_layers=2, dropout=0.0)
    base.update(kw)
    torch.manual_seed(0)
    model = VMISAForecaster(ForecasterConfig(**base)).eval()
    with torch.no_grad():  # non-trivial affine and cycle so their paths are really exercised
        for name, p in model.named_parameters():
            if name in ("affine_weight", "affine_bias", "cycle"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name == "affine_weight" else 0.0))
    return model


def history(B=2, T=40, N=3, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, N, generator=g).cumsum(1) + 5.0


def online_vs_batch(model: VMISAForecaster, x: torch.Tensor, start=None) -> float:
    """Feed x one observation at a time; compare every forecast with the batch forward
    (worst error relative to the forecast's scale)."""
    P = model.min_history
    state = model.init_state(x.shape[0], start=start)
    worst = 0.0
    for t in range(x.shape[1]):
        state = model.update(x[:, t], state)
        if t + 1 < P:
            with pytest.raises(ValueError, match="patch_len|seq_len"):
                model.forecast(state)
            continue
        with torch.no_grad():
            ref = model(x[:, : t + 1], start=start)
        # relative to the forecast's scale: float32 rounding grows with it (the float64 test
        # further down checks a long stream to 1e-9)
        err = (model.forecast(state) - ref).abs().max().item() / (1.0 + ref.abs().max().item())
        worst = max(worst, err)
    return worst


# ---------------------------------------------------------------------------- online == batch
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(linear_path="none"),
        dict(linear_path="none", norm="ema", norm_halflife=7.0, cycle_len=5),
        dict(norm="ema", norm_halflife=7.0),
        dict(norm="none"),
        dict(channel_independent=False),
        dict(cycle_len=5),
        dict(linear_path="sum", cycle_len=5),
        dict(patch_len=3, stride=3, decay=None),
        dict(patch_len=4, stride=6),  # stride > patch: observations between patches are skipped
        dict(decay="scalar", rank_mask=True),
        dict(mixer="gla"),
        dict(mixer="attention"),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default",
)
def test_online_updates_equal_batch_recomputation(kw):
    model = small(**kw)
    start = torch.tensor([3, 17]) if kw.get("cycle_len") else None
    assert online_vs_batch(model, history(), start) < ATOL


def test_online_long_history_matches_batch_float64():
    """Hundreds of observations (beyond the chunk of running_moments): still equal, in float64."""
    model = small(norm="ema", norm_halflife=20.0).double()
    x = history(B=1, T=700).double()
    state = model.init_state(1)
    for t in range(700):
        state = model.update(x[:, t], state)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(model.forecast(state), ref, atol=1e-9, rtol=1e-9)


def test_online_state_size_does_not_grow():
    model = small()
    x = history(B=2, T=300)
    state = model.init_state(2)
    sizes = []
    for t in range(300):
        state = model.update(x[:, t], state)
        if t + 1 in (50, 300):
            nbytes = sum(s.nbytes() for phase in state.phases for s in phase)
            nbytes += sum(t_.numel() * t_.element_size() for t_ in (state.buffer, state.s1, state.s2))
            sizes.append(nbytes)
    assert sizes[0] == sizes[1]


def test_cycle_needs_start_and_shifts_with_it():
    model = small(cycle_len=5)
    x = history()
    with pytest.raises(ValueError, match="start"):
        model(x)
    with pytest.raises(ValueError, match="start"):
        model.init_state(2)
    with torch.no_grad():
        a, b, c = model(x, start=0), model(x, start=5), model(x, start=1)
    torch.testing.assert_close(a, b)  # a whole period later: the same phase
    assert (a - c).abs().max() > 1e-3


# ---------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("lam", [1.0, 0.9])
def test_running_moments_match_a_plain_loop(lam):
    x = torch.randn(2, 37, 3, dtype=torch.float64)
    s0, s1, s2 = running_moments(x, lam, chunk=8)  # several chunks, a ragged last one
    r0, r1, r2 = 0.0, torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    for t in range(37):
        r0, r1, r2 = lam * r0 + 1, lam * r1 + x[:, t], lam * r2 + x[:, t] ** 2
        assert math.isclose(s0[t].item(), r0, rel_tol=1e-12)
        torch.testing.assert_close(s1[:, t], r1)
        torch.testing.assert_close(s2[:, t], r2)
    mean, std = moments_to_stats(s0.view(1, -1, 1), s1, s2, 0.0)
    if lam == 1.0:  # expanding statistics are the plain mean and population std
        torch.testing.assert_close(mean[:, -1], x.mean(1))
        torch.testing.assert_close(std[:, -1], x.std(1, unbiased=False))


def test_forecast_is_invariant_to_level_and_scale():
    """Instance normalisation: shifting and scaling the history does the same to the forecast."""
    model = small()
    x = history()
    with torch.no_grad():
        y = model(x)
        y2 = model(x * 3.0 + 100.0)
    torch.testing.assert_close(y2, y * 3.0 + 100.0, atol=1e-3, rtol=1e-4)


def test_batch_forward_is_per_series():
    model = small()
    x = history(B=3)
    with torch.no_grad():
        full = model(x)
        one = model(x[1:2])
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=1e-5)


def test_end_aligned_patches_ignore_only_the_norm_of_leading_rows():
    """With norm='none', observations before the first whole patch do not matter."""
    model = small(norm="none", patch_len=4, stride=4, linear_path="none")  # the blocks see patches only
    x = history(T=23)  # 23 = 3 + 5 * 4: the first 3 rows never complete a patch
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[:, 3:]))
        x2 = x.clone()
        x2[:, :3] = 0.0
        torch.testing.assert_close(model(x), model(x2))


def test_learns_a_periodic_signal():
    """A real training signal: a few hundred Adam steps fit a noisy sine far better than at init."""
    torch.manual_seed(0)
    model = VMISAForecaster(ForecasterConfig(n_vars=2, pred_len=8, seq_len=32, patch_len=8, stride=8, d_model=32, n_layers=1))
    t = torch.arange(2000, dtype=torch.float32)
    series = torch.stack([torch.sin(2 * math.pi * t / 24), torch.cos(2 * math.pi * t / 12)], -1)
    series = series + 0.05 * torch.randn_like(series)
    idx = torch.randint(0, 2000 - 40, (300, 64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch(i):
        w = torch.stack([series[j : j + 40] for j in idx[i]])
        return w[:, :32], w[:, 32:]

    with torch.no_grad():
        x, y = batch(0)
        before = F.mse_loss(model(x), y).item()
    for i in range(150):
        x, y = batch(i)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x, y = batch(299)
        after = F.mse_loss(model(x), y).item()
    assert after < 0.2 * before, (before, after)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_vars=0), "n_vars"),
        (dict(mixer="lstm"), "mixer"),
        (dict(norm="batch"), "norm"),
        (dict(norm="ema", norm_halflife=0.0), "norm_halflife"),
        (dict(seq_len=8, patch_len=16), "seq_len"),
        (dict(dropout=1.0), "dropout"),
        (dict(cycle_len=-1), "cycle_len"),
        (dict(mixer="attention", d_model=30, n_heads=4), "n_heads"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        ForecasterConfig(**kw)


def test_bad_inputs():
    model = small(linear_path="none")  # minimum history = patch_len
    with pytest.raises(ValueError, match=r"N=3"):
        model(torch.randn(2, 24, 4))
    with pytest.raises(ValueError, match="patch_len=4"):
        model(torch.randn(2, 3, 3))
    with pytest.raises(TypeError, match="floating"):
        model(torch.ones(2, 24, 3, dtype=torch.long))
    state = model.init_state(2)
    with pytest.raises(ValueError, match=r"observation: expected shape \(B, N\) = \(2, 3\)"):
        model.update(torch.randn(3, 3), state)
    with pytest.raises(ValueError, match="finite"):
        model.update(torch.full((2, 3), float("nan")), state)
    with pytest.raises(TypeError, match="ForecasterState"):
        model.forecast(None)
    with pytest.raises(ValueError, match="batch_size"):
        model.init_state(0)
    skip = small(linear_path="sum")
    with pytest.raises(ValueError, match="seq_len"):
        skip(torch.randn(2, 20, 3))
    with pytest.raises(ValueError, match="return_branches"):
        skip(torch.randn(2, 24, 3), return_branches=True)
    with pytest.raises(ValueError, match="linear_path"):
        ForecasterConfig(linear_path="mean")
    with pytest.raises(ValueError, match="unknown"):
        ForecasterConfig.from_dict({"n_vars": 3, "wings": 2})


def test_linear_path_average_is_the_mean_of_two_separately_trainable_branches():
    """linear_path="average": the forecast is the mean of the blocks' and the linear map's own
    forecasts (each de-normalised, with the cycle), and each branch's parameters get gradients
    only from its own output (the shared normalisation and cycle from both)."""
    model = small(cycle_len=5).train()
    x, start = history(T=30), torch.tensor([3, 17])
    forecast, paths = model(x, start=start, return_branches=True)
    assert set(paths) == {"blocks", "linear"}
    torch.testing.assert_close(forecast, 0.5 * (paths["blocks"] + paths["linear"]))
    torch.testing.assert_close(model(x, start=start), forecast)
    paths["linear"].sum().backward()
    assert model.skip.weight.grad.abs().sum() > 0 and model.cycle.grad.abs().sum() > 0
    assert model.head.weight.grad is None and model.embed.weight.grad is None
    # the blocks alone (linear_path="none") are the "blocks" branch of the same weights
    alone = small(cycle_len=5, linear_path="none").train()
    alone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("skip.")})
    torch.testing.assert_close(alone(x, start=start), paths["blocks"])


def test_configs_saved_with_linear_skip_still_load():
    assert ForecasterConfig.from_dict({"n_vars": 3, "linear_skip": True}).linear_path == "sum"
    assert ForecasterConfig.from_dict({"n_vars": 3, "linear_skip": False}).linear_path == "none"


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip_with_scaler(tmp_path):
    model = small(cycle_len=5)
    model.scaler = StandardScaler(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    model.save_pretrained(tmp_path / "fc")
    loaded = VMISAForecaster.from_pretrained(tmp_path / "fc").eval()
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.scaler.mean, model.scaler.mean)
    np.testing.assert_array_equal(loaded.scaler.std, model.scaler.std)
    x = history()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, start=4), model(x, start=4))
    with pytest.raises(ValueError, match="DLinear"):
        DLinear.from_pretrained(tmp_path / "fc")


def test_dlinear_matches_the_reference_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = DLinearConfig(n_vars=3, seq_len=24, pred_len=6, kernel_size=5)
    model = DLinear(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = history(T=24)
    # Reference: the official moving_avg (replicate-pad (k-1)//2 each side, AvgPool1d) by hand.
    pad = torch.cat([x[:, :1].repeat(1, 2, 1), x, x[:, -1:].repeat(1, 2, 1)], 1)
    trend = torch.stack([pad[:, i : i + 5].mean(1) for i in range(24)], 1)
    seasonal = x - trend
    ref = (
        seasonal.transpose(1, 2) @ model.seasonal[0].weight.T
        + model.seasonal[0].bias
        + trend.transpose(1, 2) @ model.trend[0].weight.T
        + model.trend[0].bias
    ).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "dl")
    loaded = DLinear.from_pretrained(tmp_path / "dl")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.randn(2, 20, 3))
    individual = DLinear(DLinearConfig(n_vars=3, seq_len=24, pred_len=6, individual=True))
    assert individual(x).shape == (2, 6, 3)
