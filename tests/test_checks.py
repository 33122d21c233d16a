"""Inputs that are valid though unusual are computed correctly (docs/core.md, "Input checks"):
negative alpha, a decay of exactly 0, mixed precision under autocast, shape-only runs on the
meta device; ``inference_context`` switches dropout off for one context only; and the
layer's constructor checks its settings from one table (``layers.vmisa.COMBINATIONS``)."""
from __future__ import annotations

import threading

import pytest
import torch

from vmiseq import VMISALayer, vmisa_scan
from vmiseq.layers.dropout import Dropout, inference_context
from vmiseq.layers.vmisa import CHOICES, COMBINATIONS

B, L, D = 2, 37, 5


def _scan_both(alpha, decay):
    torch.manual_seed(0)
    q, v = torch.randn(B, L, D, dtype=torch.float64), torch.randn(B, L, D, dtype=torch.float64)
    h0 = torch.randn(B, D, dtype=torch.float64)
    inputs = [q, v, alpha, h0] + ([decay] if decay is not None else [])
    results = []
    for backend in ("naive", "torch"):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        dec = leaves[4] if decay is not None else None
        y, h = vmisa_scan(leaves[0], leaves[1], leaves[2], 0.7, initial_state=leaves[3], decay=dec,
                          output_final_state=True, backend=backend, offset=2)
        g = torch.autograd.grad((y * torch.cos(y)).sum() + (h * h).sum(), leaves)
        results.append((y, h, g))
    return results


@pytest.mark.parametrize("with_decay", [False, True])
def test_negative_alpha_is_computed_exactly(with_decay):
    """alpha may be negative (the official position table is signed): torch = naive, float64,
    outputs, final state and the gradient of every input."""
    alpha = torch.rand(B, L, dtype=torch.float64) * 2 - 1
    decay = torch.rand(B, L, D, dtype=torch.float64) if with_decay else None
    (y0, h0, g0), (y1, h1, g1) = _scan_both(alpha, decay)
    assert bool((alpha < 0).any())
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    torch.testing.assert_close(h1, h0, rtol=0, atol=1e-12)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_decay_zero_resets_the_state_exactly():
    """decay = 0 (allowed: [0, 1]) forgets everything before that token, in every backend."""
    torch.manual_seed(1)
    q, v, alpha = torch.randn(B, L, D, dtype=torch.float64), torch.randn(B, L, D, dtype=torch.float64), torch.rand(B, L, dtype=torch.float64)
    decay = torch.rand(B, L, dtype=torch.float64)
    decay[:, 20] = 0.0
    (y0, h0, _), (y1, h1, _) = _scan_both(alpha, decay)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    # from token 20 on, the same as starting there from a zero state
    y, h = vmisa_scan(q, v, alpha, 1.0, decay=decay, output_final_state=True)
    y_tail, h_tail = vmisa_scan(q[:, 20:], v[:, 20:], alpha[:, 20:], 1.0, decay=decay[:, 20:], offset=20, output_final_state=True)
    torch.testing.assert_close(y[:, 20:], y_tail, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_tail, rtol=0, atol=1e-12)


def test_mixed_precision_runs_under_autocast_and_same_dtype_runs_anywhere():
    torch.manual_seed(2)
    layer = VMISALayer(8, decay="input")
    x = torch.randn(2, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(x, output_state=True)
        y_t, _ = layer.step(torch.randn(2, 8), state)
    assert y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all()) and bool(torch.isfinite(y_t).all())
    ref = layer(x)
    assert (y.float() - ref).abs().max() < 0.05  # bf16 rounding only
    half = VMISALayer(8).to(torch.bfloat16)
    assert half(x.bfloat16()).dtype == torch.bfloat16  # layer and input agree: no error


def test_shape_only_runs_on_the_meta_device_skip_value_checks():
    """MAC counting runs image models on the meta device: the output check must not read values."""
    layer = VMISALayer(8, causal=False).to("meta")
    y = layer(torch.empty(2, 8, 5, 5, device="meta"))
    assert y.shape == (2, 8, 5, 5) and y.device.type == "meta"
    y = vmisa_scan(*(torch.empty(2, 6, 4, device="meta") for _ in range(2)), torch.empty(2, 6, device="meta"), 1.0,
                   decay=torch.empty(2, 6, device="meta"), offset=torch.zeros(2, dtype=torch.long, device="meta"), backend="naive")
    assert y.shape == (2, 6, 4)


def test_inference_context_switches_dropout_off_for_this_context_only():
    drop = Dropout(0.5).train()
    x = torch.ones(1000)
    seen = {}

    def other_thread():
        seen["other"] = drop(x)

    with inference_context():
        assert torch.equal(drop(x), x) and drop.training  # no dropout, flag untouched
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        with inference_context():  # nests
            assert torch.equal(drop(x), x)
        assert torch.equal(drop(x), x)
    assert not torch.equal(seen["other"], x)  # another thread still trains
    assert not torch.equal(drop(x), x)  # and so does this one, after the context


# ----------------------------------------------------------------------- the constructor's table
@pytest.mark.parametrize("rule", COMBINATIONS, ids=[f"{r[0]}-with-{r[1]}={r[2]}" for r in COMBINATIONS])
def test_each_combination_rule_raises_naming_the_argument(rule):
    """Every row of ``COMBINATIONS`` rejects a value outside its allowed set, in a ValueError
    naming the argument, the setting that restricts it, the allowed values and the value
    given; every allowed value builds a layer."""
    name, key, value, allowed, _ = rule
    bad = next(c for c in CHOICES.get(name, (True, False)) if c not in allowed)
    with pytest.raises(ValueError) as info:
        VMISALayer(8, **{key: value, name: bad})
    msg = str(info.value)
    for piece in (f"{name}:", f"{key}={value!r}", repr(allowed), f"got {name}={bad!r}"):
        assert piece in msg, f"{msg!r} lacks {piece!r}"
    for ok in allowed:
        VMISALayer(8, **{key: value, name: ok})


@pytest.mark.parametrize("causal,expected", [(True, ("input", "layernorm", 1, 4)), (False, (None, "batchnorm", 2, 7))])
def test_form_defaults(causal, expected):
    """Arguments left at their default take the form's: decay, norm, conv_dims, conv_kernel."""
    layer = VMISALayer(8, causal=causal)
    assert (layer.decay_mode, layer.norm_name, layer.conv_dims, layer.kernel) == expected


@pytest.mark.parametrize("name,value", [("dim", 0), ("expand", 1.5), ("conv_kernel", 0), ("conv_dims", 3), ("backend", "gpu")])
def test_settings_out_of_range_name_the_argument(name, value):
    kwargs = {"dim": 8, name: value}
    with pytest.raises(ValueError, match=f"{name}: expected .*got {value!r}"):
        VMISALayer(**kwargs)
