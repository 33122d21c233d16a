"""vmiseq.ops.linear_attn: the non-causal MLLA attention and the causal forget-gate scan
(shared with the GLA baseline) against their plain references: outputs, final states and
gradients of every input in float64; strict causality of the causal forms."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vmiseq.layers.mlla import LinearAttention, MLLABlock, apply_rope, rope_tables
from vmiseq.ops.linear_attn import (
    causal_linear_attn,
    causal_linear_attn_chunk,
    causal_linear_attn_naive,
    causal_normalised,
    linear_attn_global,
    linear_attn_global_naive,
)

f64 = torch.float64


def _features(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.elu(torch.randn(*shape, generator=g, dtype=f64)) + 1.0).requires_grad_()


def _grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g)


@pytest.mark.parametrize("rot", [False, True])
def test_global_equals_attention_matrix(rot):
    B, H, L, dk, dv = 2, 3, 37, 8, 5
    q, k = _features(B, H, L, dk, seed=0), _features(B, H, L, dk, seed=1)
    v = torch.randn(B, H, L, dv, dtype=f64, requires_grad=True)
    extra = [torch.randn(B, H, L, dk, dtype=f64, requires_grad=True) for _ in range(2)] if rot else [None, None]
    a = linear_attn_global(q, k, v, *extra)
    b = linear_attn_global_naive(q, k, v, *extra)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    inputs = [q, k, v] + [t for t in extra if t is not None]
    for ga, gb in zip(_grads(a, inputs), _grads(b, inputs)):
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10)


def test_global_bad_input_errors():
    q = torch.rand(1, 2, 4, 8)
    with pytest.raises(ValueError, match="k: expected the shape of q"):
        linear_attn_global(q, torch.rand(1, 2, 5, 8), torch.rand(1, 2, 4, 3))
    with pytest.raises(ValueError, match="v: expected shape"):
        linear_attn_global(q, q, torch.rand(1, 2, 5, 3))
    with pytest.raises(ValueError, match="q_rot"):
        linear_attn_global(q, q, torch.rand(1, 2, 4, 3), q_rot=torch.rand(1, 2, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        linear_attn_global(q.long(), q, q)


@pytest.mark.parametrize("L", [1, 5, 16, 45])
def test_causal_chunk_equals_loop_with_state_and_grads(L):
    B, H, dk, dv = 2, 2, 4, 3
    g = torch.Generator().manual_seed(L)
    q, k = (torch.randn(B, H, L, dk, generator=g, dtype=f64, requires_grad=True) for _ in range(2))
    v = torch.randn(B, H, L, dv, generator=g, dtype=f64, requires_grad=True)
    log_a = (F.logsigmoid(torch.randn(B, H, L, dk, generator=g, dtype=f64)) / 4).requires_grad_()
    S0 = torch.randn(B, H, dk, dv, generator=g, dtype=f64, requires_grad=True)
    o1, s1 = causal_linear_attn(q, k, v, log_a, S0, output_final_state=True, backend="naive")
    o2, s2 = causal_linear_attn(q, k, v, log_a, S0, output_final_state=True, backend="torch")
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(s1, s2)
    inputs = [q, k, v, log_a, S0]
    go, gs = torch.randn(o1.shape, generator=g, dtype=f64), torch.randn(s1.shape, generator=g, dtype=f64)
    d1 = torch.autograd.grad((o1 * go).sum() + (s1 * gs).sum(), inputs)
    d2 = torch.autograd.grad((o2 * go).sum() + (s2 * gs).sum(), inputs)
    for a, b in zip(d1, d2):
        torch.testing.assert_close(a, b)


def test_causal_functions_are_one_implementation_with_gla():
    from vmiseq.layers import gla

    assert gla.gla_naive is causal_linear_attn_naive and gla.gla_chunk is causal_linear_attn_chunk


def test_causal_chunked_prefill_carries_state():
    B, H, L, d = 1, 2, 40, 4
    q, k, v = (torch.randn(B, H, L, d, dtype=f64) for _ in range(3))
    log_a = F.logsigmoid(torch.randn(B, H, L, d, dtype=f64))
    o, S = causal_linear_attn(q, k, v, log_a, output_final_state=True)
    o1, S1 = causal_linear_attn(q[:, :, :23], k[:, :, :23], v[:, :, :23], log_a[:, :, :23], output_final_state=True)
    o2, S2 = causal_linear_attn(q[:, :, 23:], k[:, :, 23:], v[:, :, 23:], log_a[:, :, 23:], S1, output_final_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], 2), o)
    torch.testing.assert_close(S2, S)
    with pytest.raises(ValueError, match="initial_state"):
        causal_linear_attn(q, k, v, initial_state=torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="backend"):
        causal_linear_attn(q, k, v, backend="triton")


def test_causal_normalised_is_global_attention_over_each_prefix():
    """Without a forget gate, token t of the causal form = the last token of the non-causal
    form applied to tokens 0..t (an independent reference: the attention matrix per prefix)."""
    B, H, L, dk, dv = 2, 2, 21, 4, 3
    q, k = _features(B, H, L, dk, seed=3), _features(B, H, L, dk, seed=4)
    qr, kr, v = (torch.randn(B, H, L, n, dtype=f64) for n in (dk, dk, dv))
    out = causal_normalised(q, k, v, None, qr, kr)
    for t in range(L):
        s = slice(0, t + 1)
        ref = linear_attn_global_naive(q[:, :, s], k[:, :, s], v[:, :, s], qr[:, :, s], kr[:, :, s])[:, :, -1]
        torch.testing.assert_close(out[:, :, t], ref)


def test_rope_tables_match_the_official_complex_rotation():
    H, W, C = 5, 7, 16
    k_max = C // 4
    theta = 1 / (10000 ** (torch.arange(k_max, dtype=f64) / k_max))
    grid = torch.meshgrid(torch.arange(H, dtype=f64), torch.arange(W, dtype=f64), indexing="ij")
    angles = torch.cat([t.unsqueeze(-1) * theta for t in grid], dim=-1)
    x = torch.randn(2, H, W, C, dtype=f64)
    ref = torch.view_as_real(torch.polar(torch.ones_like(angles), angles) * torch.view_as_complex(x.reshape(2, H, W, -1, 2)))
    cos, sin = rope_tables((H, W), C, dtype=f64)
    torch.testing.assert_close(apply_rope(x, cos, sin), ref.flatten(-2))
    with pytest.raises(ValueError, match="multiple of 4"):
        rope_tables((H, W), 18)


@pytest.mark.parametrize("forget_gate", [False, True])
def test_causal_block_is_strictly_causal_and_backends_agree(forget_gate):
    torch.manual_seed(0)
    block = MLLABlock(16, 2, causal=True, forget_gate=forget_gate).double()
    ref = MLLABlock(16, 2, causal=True, forget_gate=forget_gate, backend="naive").double()
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 30, 16, dtype=f64, requires_grad=True)
    y = block(x)
    torch.testing.assert_close(y, ref(x))
    for t in (0, 11, 29):
        x2 = x.detach().clone()
        x2[:, t + 1:] += torch.randn_like(x2[:, t + 1:])
        torch.testing.assert_close(block(x2)[:, : t + 1], y[:, : t + 1].detach())
    (gx,) = torch.autograd.grad(y[:, 7].sum(), x)
    assert gx[:, 8:].abs().max() == 0 and gx[:, :8].abs().max() > 0


def test_attention_errors():
    with pytest.raises(ValueError, match="num_heads"):
        LinearAttention(16, 3)
    with pytest.raises(ValueError, match="forget_gate"):
        LinearAttention(16, 2, forget_gate=True)
    with pytest.raises(ValueError, match="dim: expected a multiple of 4"):
        LinearAttention(18, 2)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        LinearAttention(16, 2)(torch.randn(2, 10, 16))
