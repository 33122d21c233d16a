"""VMISALayer / VMISABlock: strict causality, streaming (step and chunked forward with a
carried state) equal to one full forward, the image path equal to the flattened sequence,
and gradcheck in float64; and the layer's parts: the one-token recurrence (ops.recurrent)
against the naive scan, the causal conv buffer, BatchNorm folding, the shared state protocol."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.func import functional_call

from vmiseq import VMISABlock, VMISALayer, vmisa_global
from vmiseq.layers import CausalSelfAttention, GatedLinearAttention
from vmiseq.layers.conv import causal_depthwise_conv
from vmiseq.layers.fusion import fold_batchnorm, fold_batchnorm_into
from vmiseq.ops.naive import scan_naive
from vmiseq.ops.recurrent import vmisa_step

F64 = torch.float64

# (alpha, decay, extra layer kwargs): every alpha mode and every decay mode at least once.
CAUSAL_CONFIGS = [
    ("input", None, {}),
    ("position", None, {"max_len": 4096}),
    ("constant", None, {"beta_per_channel": True}),
    ("input", "input", {}),
    ("input", "scalar", {"norm": "rmsnorm"}),
    ("position", "input", {"max_len": 4096, "rank_mask": False}),
]


def stream_tol(decay) -> float:
    """Max abs error allowed between streamed and full float32 outputs: 1e-5. The "scalar"
    decay spreads half-lives up to 4,096 tokens, so over 2k tokens its state grows to ~50
    where one float32 ulp is ~4e-6: there step and forward each sit ~2e-5 from the float64
    result (measured), so they are compared at 5e-5 instead."""
    return 5e-5 if decay == "scalar" else 1e-5


def causal_layer(alpha, decay, kw, dim=8, dtype=torch.float32, **more):
    layer = VMISALayer(dim, alpha=alpha, decay=decay, **{**kw, **more}).to(dtype).eval()
    with torch.no_grad():  # move parameters off their init so every path carries signal
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("alpha,decay,kw", CAUSAL_CONFIGS)
@pytest.mark.parametrize("j", [0, 5, 23])
def test_strict_causality(alpha, decay, kw, j):
    """Perturbing x_j leaves y_t (t < j) unchanged -- through the depthwise conv, the scan
    and the mask -- and does change y_j."""
    layer = causal_layer(alpha, decay, kw, dtype=F64, conv_kernel=4)
    x = torch.randn(2, 40, 8, dtype=F64)
    x2 = x.clone()
    x2[:, j] += torch.randn(2, 8, dtype=F64)
    y, y2 = layer(x), layer(x2)
    torch.testing.assert_close(y[:, :j], y2[:, :j], rtol=0, atol=1e-13)
    assert (y[:, j] - y2[:, j]).abs().max() > 1e-6
    # the conv window reaches K-1 tokens ahead of j: those change too
    assert (y[:, j + 3] - y2[:, j + 3]).abs().max() > 1e-6


def test_block_causality():
    block = VMISABlock(8, mlp_ratio=2.0).double().eval()
    x = torch.randn(1, 30, 8, dtype=F64)
    x2 = x.clone()
    x2[:, 17] += 1.0
    torch.testing.assert_close(block(x)[:, :17], block(x2)[:, :17], rtol=0, atol=1e-13)


@pytest.mark.parametrize("alpha,decay,kw", CAUSAL_CONFIGS)
def test_step_equals_forward(alpha, decay, kw):
    """step() token by token over 2,048 tokens == one full forward (float32)."""
    L = 2048
    layer = causal_layer(alpha, decay, kw, dim=8)
    x = torch.randn(2, L, 8)
    with torch.no_grad():
        full, full_state = layer(x, output_state=True)
        state = layer.init_state(2)
        ys = []
        for t in range(L):
            y_t, state = layer.step(x[:, t], state)
            ys.append(y_t)
    stepped = torch.stack(ys, dim=1)
    assert (stepped - full).abs().max().item() <= stream_tol(decay)
    assert (state.h - full_state.h).abs().max().item() <= 1e-3 * max(1.0, full_state.h.abs().max().item())
    assert torch.equal(state.position, full_state.position)
    torch.testing.assert_close(state.conv, full_state.conv)


@pytest.mark.parametrize("alpha,decay,kw", CAUSAL_CONFIGS)
def test_chunked_forward_equals_full(alpha, decay, kw):
    """forward over random-size chunks (including empty ones) with the carried state ==
    one full forward (float32)."""
    L = 2500
    layer = causal_layer(alpha, decay, kw, dim=8)
    x = torch.randn(3, L, 8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        full = layer(x)
        state, ys, t = None, [], 0
        while t < L:
            n = int(torch.randint(0, 400, (1,), generator=g))
            y, state = layer(x[:, t : t + n], state, output_state=True)
            ys.append(y)
            t += n
    assert (torch.cat(ys, dim=1) - full).abs().max().item() <= stream_tol(decay)
    assert state.position.tolist() == [L] * 3


def test_streaming_per_sequence_positions():
    """Sequences of a batch at different positions: each row equals its own stream."""
    layer = causal_layer("position", None, {"max_len": 512}, dim=8, dtype=F64)
    x = torch.randn(2, 300, 8, dtype=F64)
    with torch.no_grad():
        _, s_a = layer(x[:1, :40], output_state=True)
        _, s_b = layer(x[1:, :100], output_state=True)
        both = type(s_a).cat([s_a, s_b])
        y_a = layer(x[:1, 40:140])
        y, _ = layer(torch.cat([x[:1, 40:140], x[1:, 100:200]]), both, output_state=True)
        ref_a = layer(x[:1, :140])[:, 40:]
        ref_b = layer(x[1:, :200])[:, 100:]
    torch.testing.assert_close(y[:1], ref_a)
    torch.testing.assert_close(y[1:], ref_b)
    assert not torch.allclose(y_a, ref_a)  # position alpha: the offset matters


def test_state_gradients_flow_across_chunks():
    """Training through a carried (not detached) state: gradients equal the full pass."""
    layer = causal_layer("input", "input", {}, dim=6, dtype=F64)
    x = torch.randn(2, 90, 6, dtype=F64, requires_grad=True)
    w = torch.randn(2, 90, 6, dtype=F64)
    full = (layer(x) * w).sum()
    g_full = torch.autograd.grad(full, [x, *layer.parameters()])
    y1, s = layer(x[:, :37], output_state=True)
    y2 = layer(x[:, 37:], s)
    chunked = (torch.cat([y1, y2], 1) * w).sum()
    g_chunk = torch.autograd.grad(chunked, [x, *layer.parameters()])
    for a, b in zip(g_full, g_chunk):
        torch.testing.assert_close(a, b)


def test_block_step_equals_forward():
    block = VMISABlock(8, mlp_ratio=2.0, decay="input").eval()
    x = torch.randn(2, 300, 8)
    with torch.no_grad():
        full = block(x)
        state, ys = block.init_state(2), []
        for t in range(300):
            y_t, state = block.step(x[:, t], state)
            ys.append(y_t)
    assert (torch.stack(ys, 1) - full).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------- non-causal
def test_image_equals_flattened_computation():
    """A (B, C, H, W) input == the same computation written out on the raster-order
    flattened sequence (2-D depthwise conv, BatchNorm, f1/f2, Eq. 10 with the position
    alpha table, g)."""
    B, C, H, W = 2, 6, 5, 7
    layer = VMISALayer(C, causal=False, alpha="position", grid_size=(H, W)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
        layer.norm.running_mean.normal_()
        layer.norm.running_var.uniform_(0.5, 2.0)
    layer.eval()
    x = torch.randn(B, C, H, W, dtype=F64)
    with torch.no_grad():
        u = layer.norm(layer.conv(x))
        seq = rearrange(u, "b c h w -> b (h w) c")  # raster order l = h * W + w
        q, v = layer.f12(seq).chunk(2, dim=-1)
        y = vmisa_global(F.relu6(q), v, layer.alpha_table, layer.beta0, layer.beta1, backend="naive")
        ref = rearrange(layer.g(F.relu6(y)), "b (h w) c -> b c h w", h=H)
        out = layer(x)
    torch.testing.assert_close(out, ref)


def test_image_equals_sequence_layer():
    """With a pointwise conv (kernel 1) the 2-D layer on an image equals the 1-D non-causal
    layer, with the same weights, on the flattened sequence."""
    B, C, H, W = 2, 4, 3, 5
    img = VMISALayer(C, causal=False, conv_kernel=1, norm="layernorm", alpha="input").double().eval()
    seq = VMISALayer(C, causal=False, conv_kernel=1, norm="layernorm", alpha="input", conv_dims=1).double().eval()
    state = {k: (v.reshape(seq.state_dict()[k].shape) if k.startswith("conv.weight") else v) for k, v in img.state_dict().items()}
    seq.load_state_dict(state)
    x = torch.randn(B, C, H, W, dtype=F64)
    with torch.no_grad():
        a = img(x)
        b = seq(rearrange(x, "b c h w -> b (h w) c"))
    torch.testing.assert_close(a, rearrange(b, "b (h w) c -> b c h w", h=H))


def test_noncausal_sees_the_future():
    layer = VMISALayer(4, causal=False, conv_dims=1, norm="layernorm", conv_kernel=1).double().eval()
    x = torch.randn(1, 10, 4, dtype=F64)
    x2 = x.clone()
    x2[:, 9] += 1.0
    assert (layer(x)[:, 0] - layer(x2)[:, 0]).abs().max() > 1e-6


# ----------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("alpha", ["input", "position", "constant"])
@pytest.mark.parametrize("decay", [None, "input", "scalar"])
def test_gradcheck_layer(alpha, decay):
    """Finite differences vs autograd (the hand-written scan backward included) for the
    input and every parameter, in float64; D = 8 > L = 6 so the rank mask is active."""
    layer = VMISALayer(4, alpha=alpha, decay=decay, max_len=16, conv_kernel=3, backend="torch").double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    x = torch.randn(2, 6, 4, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 8, dtype=F64)

    def fn(x, *ps):
        state = layer.init_state(2, dtype=F64)
        state.h = h0
        state.position = torch.tensor([0, 3])
        y, s = functional_call(layer, dict(zip(names, ps)), (x, state), {"output_state": True})
        return y, s.h

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_gradcheck_image_layer():
    layer = VMISALayer(3, causal=False, alpha="position", grid_size=(3, 4), norm="layernorm").double()
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    x = torch.randn(1, 3, 3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *ps: functional_call(layer, dict(zip(names, ps)), (x,)), (x, *params))


# ----------------------------------------------------------------------- the parts
@pytest.mark.parametrize("rank_mask", [True, False])
@pytest.mark.parametrize("alpha_kind", ["token", "channel", "table"])
@pytest.mark.parametrize("decay_kind", [None, "token", "channel"])
def test_recurrent_step_equals_the_naive_scan(rank_mask, alpha_kind, decay_kind):
    """ops.recurrent.vmisa_step run token by token == ops.naive.scan_naive (float64, outputs
    and final state), with per-row positions on both sides of the rank mask's edge (D = 12)."""
    torch.manual_seed(0)
    B, L, D = 3, 29, 12
    q, v = torch.randn(B, L, D, dtype=F64), torch.randn(B, L, D, dtype=F64)
    alpha = {"token": torch.rand(B, L, 1), "channel": torch.randn(B, L, D), "table": torch.randn(1, L, 1)}[alpha_kind].to(F64)
    decay = None if decay_kind is None else torch.rand(B, L, 1 if decay_kind == "token" else D, dtype=F64)
    beta, h0 = torch.randn(D, dtype=F64), torch.randn(B, D, dtype=F64)
    positions = torch.tensor([0, 5, 40])
    y_ref, h_ref = scan_naive(q * v, alpha, beta, h0, positions.unsqueeze(1), rank_mask, decay)
    h, ys = h0.clone(), []
    for t in range(L):
        y_t, h = vmisa_step(q[:, t], v[:, t], alpha[:, t], beta, h, positions + t, rank_mask=rank_mask,
                            decay=None if decay is None else decay[:, t])
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)
    assert not torch.equal(h, h0)


def test_recurrent_step_keeps_its_inputs_and_dtypes():
    """A pure function: the state passed in is not modified; y in q's dtype, h in the
    accumulation dtype; the rank mask is all ones from position D - 1 on (the layer skips it)."""
    q, v = torch.randn(2, 6).bfloat16(), torch.randn(2, 6).bfloat16()
    h0 = torch.randn(2, 6)
    kept = h0.clone()
    y, h = vmisa_step(q, v, torch.rand(2, 1), 1.0, h0, torch.tensor([0, 2]), decay=torch.rand(6))
    assert torch.equal(h0, kept) and y.dtype == torch.bfloat16 and h.dtype == torch.float32
    alpha, late, early = torch.rand(2, 1), torch.tensor([5, 9]), torch.tensor([0, 2])
    masked, _ = vmisa_step(q, v, alpha, 0.5, h0, late, rank_mask=True)
    plain, _ = vmisa_step(q, v, alpha, 0.5, h0, late, rank_mask=False)
    torch.testing.assert_close(masked, plain, rtol=0, atol=0)
    assert not torch.equal(vmisa_step(q, v, alpha, 0.5, h0, early)[0], plain)


@pytest.mark.parametrize("K", [1, 2, 4])
def test_causal_conv_buffer_continues_a_stream(K):
    """layers.conv.causal_depthwise_conv == a left-padded F.conv1d; chunks of a stream
    (empty and single-token ones included) with the carried buffer == the whole sequence."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(5, 5, K, groups=5).double()
    x = torch.randn(2, 23, 5, dtype=F64)
    ref = conv(F.pad(x.transpose(1, 2), (K - 1, 0))).transpose(1, 2)
    full, buffer = causal_depthwise_conv(x, None, conv.weight, conv.bias)
    torch.testing.assert_close(full, ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(buffer, x[:, 23 - (K - 1):].transpose(1, 2), rtol=0, atol=0)
    assert buffer.untyped_storage().nbytes() == buffer.numel() * 8  # a copy, not a view of x
    buffer, ys, t = torch.zeros(2, 5, K - 1, dtype=F64), [], 0
    for n in (0, 1, 7, 2, 13):
        y, buffer = causal_depthwise_conv(x[:, t : t + n], buffer, conv.weight, conv.bias)
        ys.append(y)
        t += n
    torch.testing.assert_close(torch.cat(ys, 1), full, rtol=0, atol=0)


@pytest.mark.parametrize("affine", [True, False])
def test_fold_batchnorm_into_conv_and_linear(affine):
    """fold_batchnorm is the eval-mode BatchNorm as x * scale + shift; folded into the conv
    or Linear that feeds it, outputs are unchanged (float64)."""
    torch.manual_seed(0)
    for layer, bn, x in [
        (torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6, affine=affine), torch.randn(2, 3, 5, 5)),
        (torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6, affine=affine), torch.randn(7, 4)),
    ]:
        layer, bn, x = layer.double(), bn.double().eval(), x.double()
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            if affine:
                bn.weight.normal_()
                bn.bias.normal_()
            scale, shift = fold_batchnorm(bn)
            y = layer(x)
            view = (-1,) + (1,) * (y.dim() - 2)
            torch.testing.assert_close(bn(y), y * scale.reshape(view) + shift.reshape(view))
            ref = bn(layer(x))
            fold_batchnorm_into(layer, bn)
            torch.testing.assert_close(layer(x), ref)


STATEFUL = {
    "vmisa": lambda: VMISALayer(8, alpha="position", max_len=64),
    "gla": lambda: GatedLinearAttention(8, 2),
    "attention": lambda: CausalSelfAttention(8, 2),
}


@pytest.mark.parametrize("name", list(STATEFUL))
def test_state_protocol_shared_by_every_causal_mixer(name):
    """init_state / check_state / step (layers.state.StreamingMixer): a fresh state at
    position 0, step == forward (float64), and errors that name the field and the batch."""
    torch.manual_seed(0)
    layer = STATEFUL[name]().double().eval()
    x = torch.randn(2, 9, 8, dtype=F64)
    state = layer.init_state(2)
    assert state.position.tolist() == [0, 0] and all(not t.any() for t in state._fields())
    assert state._fields()[0].dtype == F64  # the first field (conv window, keys) takes the parameters' dtype
    with torch.no_grad():
        full, full_state = layer(x, output_state=True)
        ys = []
        for t in range(9):
            y_t, state = layer.step(x[:, t], state)
            ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), full)
    assert state.position.tolist() == full_state.position.tolist() == [9, 9]
    with pytest.raises(ValueError, match=r"state\.\w+: expected shape .*batch 3"):
        layer.check_state(state, torch.randn(3, 1, 8, dtype=F64))
    with pytest.raises(TypeError, match=f"state: expected a {type(state).__name__}, got dict"):
        layer(x, {"h": 0})
    state.position = state.position.float()
    with pytest.raises(TypeError, match="state.position: expected an integer tensor"):
        layer.check_state(state, x)
    with pytest.raises(ValueError, match=r"x_t: expected one token per sequence, shape \(B, C\)"):
        layer.step(x, layer.init_state(2))
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        layer.init_state(0)
