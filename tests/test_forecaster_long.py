"""VMISAForecaster on long streams: sliding-window statistics (online == batch), and states or
observations that do not belong to the model give clear errors."""
from __future__ import annotations

import pytest
import torch

from vmiseq.models import ForecasterConfig, VMISAForecaster
from vmiseq.models.forecast_norm import moments_to_stats, window_moments


def small(**kw) -> VMISAForecaster:
    base = dict(n_vars=3, pred_len=5, seq_len=24, patch_len=4, stride=2, d_model=16, n_layers=2, dropout=0.0, cycle_len=5)
    base.update(kw)
    torch.manual_seed(0)
    return VMISAForecaster(ForecasterConfig(**base)).eval()


def walk(B=1, T=700, N=3, seed=1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, N, generator=g, dtype=torch.float64).cumsum(1) + 5.0
    return x.to(dtype)


# ---------------------------------------------------------------------------- the statistics
def test_window_moments_match_a_plain_loop():
    x = torch.randn(2, 41, 3, dtype=torch.float64) * 3 + 10
    s0, s1, s2 = window_moments(x, 7)
    mean, std = moments_to_stats(s0.view(1, -1, 1), s1, s2, 0.0)
    for t in range(41):
        w = x[:, max(0, t - 6) : t + 1]
        assert s0[t].item() == w.shape[1]
        torch.testing.assert_close(mean[:, t], w.mean(1))
        torch.testing.assert_close(std[:, t], w.std(1, unbiased=False))


def test_window_equals_expanding_on_a_seq_len_history():
    """The default ("window" over seq_len) changes nothing on the benchmark's windows."""
    window, expanding = small(), small(norm="expanding")
    x = walk(B=2, T=24)
    with torch.no_grad():
        torch.testing.assert_close(window(x, start=3), expanding(x, start=3), atol=1e-5, rtol=1e-5)
        assert (window(walk(B=2, T=200), start=3) - expanding(walk(B=2, T=200), start=3)).abs().max() > 1e-3


@pytest.mark.parametrize("kw", [dict(), dict(linear_path="none", norm_window=9)], ids=["seq_len", "9-blocks-only"])
def test_online_equals_batch_over_a_long_history_float64(kw):
    """Hundreds of observations, many window lengths: the O(1) add-and-subtract sums stay equal to the batch sums."""
    model = small(**kw).double()
    x = walk(T=300, dtype=torch.float64)
    state = model.init_state(1, start=11)
    for t in range(300):
        state = model.update(x[:, t], state)
        if t + 1 in (30, 157):
            with torch.no_grad():
                torch.testing.assert_close(model.forecast(state), model(x[:, : t + 1], start=11), atol=1e-9, rtol=1e-9)
    with torch.no_grad():
        ref = model(x, start=11)
    torch.testing.assert_close(model.forecast(state), ref, atol=1e-9, rtol=1e-9)


def test_window_statistics_forget_a_level_shift():
    """After a level shift of 1000, "window" statistics are those of the new level once the
    window has passed; "expanding" ones still carry the old level."""
    x = walk(T=120, dtype=torch.float64)
    x[:, :60] += 1000.0
    for norm, far in (("window", False), ("expanding", True)):
        model = small(norm=norm).double()
        state = model.init_state(1, start=0)
        for t in range(120):
            state = model.update(x[:, t], state)
        recent = x[:, -24:].mean(1)
        assert ((state.last_mean - recent).abs().max() > 100) == far


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "field, value",
    [("patch_len", 3), ("stride", 4), ("seq_len", 30), ("pred_len", 7), ("n_layers", 1), ("n_vars", 4),
     ("d_model", 8), ("linear_path", "none"), ("norm", "expanding")],
)  # fmt: skip
def test_a_state_from_another_model_is_a_clear_error(field, value):
    model, other = small(), small(**{field: value})
    state = other.init_state(1, start=0)
    msg = rf"state: expected a state of a model with {field}={getattr(model.config, field)!r}.*got one made by a model with {field}={value!r}"
    with pytest.raises(ValueError, match=msg):
        model.update(torch.zeros(1, 3), state)
    for t in range(other.min_history):
        state = other.update(torch.randn(1, other.config.n_vars), state)
    with pytest.raises(ValueError, match=msg):
        model.forecast(state)


def test_init_state_needs_a_floating_dtype():
    with pytest.raises(TypeError, match=r"dtype: expected a floating-point torch.dtype.*torch.int64"):
        small().init_state(1, start=0, dtype=torch.long)


def test_an_observation_beyond_the_state_dtype_is_an_error_not_a_nan_forecast():
    """1e200 is finite in float64 but inf in the float32 state: rejected, state unchanged."""
    model = small()
    state = model.init_state(1, start=0)
    for t in range(24):
        state = model.update(torch.randn(1, 3), state)
    bad = torch.tensor([[1.0, 1e200, 2.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"observation: expected finite values representable in torch.float32, got 1e\+200"):
        model.update(bad, state)
    assert torch.isfinite(model.forecast(state)).all()
    with pytest.raises(ValueError, match="norm_window"):
        ForecasterConfig(norm_window=-1)


@pytest.mark.parametrize("kw", [dict(), dict(channel_independent=False, stride=3)], ids=["default", "mixing-stride3"])
def test_forecast_prefixes_equal_the_online_forecasts(kw):
    """Every end of a long stream at once (one pass per phase) == update + forecast there."""
    model = small(**kw)
    x = walk(T=70)
    ends = [24, 25, 31, 50, 69, 70]
    got = model.forecast_prefixes(x, torch.tensor(ends), start=2)
    state = model.init_state(1, start=2)
    for t in range(70):
        state = model.update(x[:, t], state)
        if t + 1 in ends:
            torch.testing.assert_close(got[ends.index(t + 1)], model.forecast(state)[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="ends"):
        model.forecast_prefixes(x, torch.tensor([10]), start=2)
