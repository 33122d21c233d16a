"""The functional operator: every backend equals the naive loop (values, final states and
gradients), a hand-computed example, the non-causal form against Eq. 10, dtype policy."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmiseq.ops import chunk, vmisa_global, vmisa_scan

F64 = torch.float64


def make_inputs(B, L, D, alpha_shape="BL", decay_shape=None, beta_shape="scalar", offset=0, dtype=F64, seed=0):
    """Random operator inputs (all requiring grad) for the given shape options."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, low=None):
        x = torch.rand(shape, generator=g, dtype=dtype) if low is not None else torch.randn(shape, generator=g, dtype=dtype)
        if low is not None:
            x = low + (1 - low) * x
        return x.requires_grad_()

    alpha = {"L": (L,), "BL": (B, L), "BLD": (B, L, D)}[alpha_shape]
    inputs = {
        "q": rnd(B, L, D),
        "v": rnd(B, L, D),
        "alpha": rnd(*alpha, low=0.0),
        "beta": rnd() if beta_shape == "scalar" else rnd(D),
        "initial_state": rnd(B, D),
    }
    if decay_shape is not None:
        inputs["decay"] = rnd(*((B, L) if decay_shape == "BL" else (B, L, D)), low=0.5)
    if isinstance(offset, list):
        offset = torch.tensor(offset)
    return inputs, offset


def run_with_grads(inputs, offset, backend, rank_mask=True, seed=1):
    """y, final state and the gradients of every input under random upstream gradients
    on both y and the final state."""
    kw = {k: v for k, v in inputs.items() if k not in ("q", "v", "alpha", "beta")}
    y, final = vmisa_scan(
        inputs["q"], inputs["v"], inputs["alpha"], inputs["beta"],
        offset=offset, rank_mask=rank_mask, output_final_state=True, backend=backend, **kw,
    )
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    gf = torch.randn(final.shape, generator=g, dtype=final.dtype)
    names = list(inputs)
    grads = torch.autograd.grad((y * gy).sum() + (final * gf).sum(), [inputs[n] for n in names])
    return {"y": y, "final": final, **{f"d{n}": gr for n, gr in zip(names, grads)}}


def assert_backends_agree(inputs, offset, rank_mask=True, backend="torch"):
    ref = run_with_grads(inputs, offset, "naive", rank_mask)
    out = run_with_grads(inputs, offset, backend, rank_mask)
    assert ref.keys() == out.keys()
    for name in ref:
        a, b = ref[name], out[name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        scale = max(1.0, a.abs().max().item())
        err = (a - b).abs().max().item() if a.numel() else 0.0
        assert err <= 1e-11 * scale, f"{name}: max abs error {err:.3e} (scale {scale:.3g})"


# Shapes chosen to hit every edge: L=1, L not a multiple of the chunk, D > L, D < L, L = D.
SHAPES = [(1, 1, 3), (2, 37, 5), (2, 5, 16), (3, 100, 8), (2, 24, 24), (1, 300, 7)]


@pytest.mark.parametrize("chunking", ["default", "small"])
@pytest.mark.parametrize("B,L,D", SHAPES)
@pytest.mark.parametrize("alpha_shape", ["L", "BL", "BLD"])
def test_torch_matches_naive_shapes(B, L, D, alpha_shape, chunking, request):
    if chunking == "small":
        request.getfixturevalue("small_chunks")
    inputs, offset = make_inputs(B, L, D, alpha_shape=alpha_shape)
    assert_backends_agree(inputs, offset)


@pytest.mark.parametrize("decay_shape", [None, "BL", "BLD"])
@pytest.mark.parametrize("offset", [0, 3, "per-sequence"])
@pytest.mark.parametrize("beta_shape", ["scalar", "D"])
@pytest.mark.parametrize("rank_mask", [True, False])
def test_torch_matches_naive_options(decay_shape, offset, beta_shape, rank_mask, small_chunks):
    B, L, D = 3, 45, 20
    if offset == "per-sequence":
        offset = [0, 7, 30]
    inputs, offset = make_inputs(B, L, D, "BL", decay_shape, beta_shape, offset)
    assert_backends_agree(inputs, offset, rank_mask)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    B=st.integers(1, 3),
    L=st.integers(1, 90),
    D=st.integers(1, 40),
    alpha_shape=st.sampled_from(["L", "BL", "BLD"]),
    decay_shape=st.sampled_from([None, "BL", "BLD"]),
    beta_shape=st.sampled_from(["scalar", "D"]),
    offset=st.integers(0, 50),
    per_seq=st.booleans(),
    rank_mask=st.booleans(),
    slice_elements=st.sampled_from([8, 64, 1 << 17]),
)
def test_torch_matches_naive_random(B, L, D, alpha_shape, decay_shape, beta_shape, offset, per_seq, rank_mask, slice_elements):
    old = chunk.SLICE_ELEMENTS
    chunk.SLICE_ELEMENTS = slice_elements  # from one-token to many-token chunks
    try:
        off = [offset + 3 * b for b in range(B)] if per_seq else offset
        inputs, off = make_inputs(B, L, D, alpha_shape, decay_shape, beta_shape, off, seed=L * 1000 + D)
        assert_backends_agree(inputs, off, rank_mask)
    finally:
        chunk.SLICE_ELEMENTS = old


def test_long_sequence_default_chunking():
    """A length where the default chunk size is > 1 (real multi-token chunks + leftover)."""
    B, L, D = 2, 2061, 256
    assert chunk.choose_chunk(B, L, D) == 8 and L % 8
    inputs, offset = make_inputs(B, L, D, "BL", "BL")
    assert_backends_agree(inputs, offset)


def test_gradcheck_torch_backend(small_chunks):
    inputs, offset = make_inputs(2, 9, 6, "BLD", "BLD", "D", [1, 4])

    def fn(q, v, alpha, beta, h0, decay):
        y, f = vmisa_scan(q, v, alpha, beta, initial_state=h0, decay=decay, offset=offset,
                          output_final_state=True, backend="torch")
        return y, f

    args = [inputs[k] for k in ("q", "v", "alpha", "beta", "initial_state", "decay")]
    assert torch.autograd.gradcheck(fn, args)


# ----------------------------------------------------------------------- by hand
# z = q * v = [[1, 2], [6, 1], [1, 6]]; alpha = [1, 0.5, 2]; beta = 0.5.
Q = [[[1.0, 2.0], [3.0, 1.0], [2.0, 2.0]]]
V = [[[1.0, 1.0], [2.0, 1.0], [0.5, 3.0]]]
ALPHA = [[1.0, 0.5, 2.0]]


@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_hand_computed_causal(backend):
    q, v, alpha = torch.tensor(Q, dtype=F64), torch.tensor(V, dtype=F64), torch.tensor(ALPHA, dtype=F64)
    # h_0 = [1, 2], h_1 = [1, 2] + 0.5 [6, 1] = [4, 2.5], h_2 = [4, 2.5] + 2 [1, 6] = [6, 14.5]
    # M = [[1, 0], [1, 1], [1, 1]] (c <= t);  y_t = M_t h_t + 0.5 z_t
    y, final = vmisa_scan(q, v, alpha, torch.tensor(0.5, dtype=F64), output_final_state=True, backend=backend)
    torch.testing.assert_close(y, torch.tensor([[[1.5, 1.0], [7.0, 3.0], [6.5, 17.5]]], dtype=F64))
    torch.testing.assert_close(final, torch.tensor([[6.0, 14.5]], dtype=F64))
    # Without the mask (paper v1) the first token also sees channel 1: y_0 = [1.5, 3.0].
    y1 = vmisa_scan(q, v, alpha, 0.5, rank_mask=False, backend=backend)
    torch.testing.assert_close(y1[0, 0], torch.tensor([1.5, 3.0], dtype=F64))
    # Decay a = [0.5, 1, 0.25], initial state [2, -2], offset 1 (mask all ones for D = 2):
    # h_0 = 0.5 [2, -2] + [1, 2] = [2, 1]; h_1 = [2, 1] + [3, 0.5] = [5, 1.5];
    # h_2 = 0.25 [5, 1.5] + [2, 12] = [3.25, 12.375]
    y, final = vmisa_scan(
        q, v, alpha, 0.5, initial_state=torch.tensor([[2.0, -2.0]], dtype=F64),
        decay=torch.tensor([[0.5, 1.0, 0.25]], dtype=F64), offset=1, output_final_state=True, backend=backend,
    )
    torch.testing.assert_close(y, torch.tensor([[[2.5, 2.0], [8.0, 2.0], [3.75, 15.375]]], dtype=F64))
    torch.testing.assert_close(final, torch.tensor([[3.25, 12.375]], dtype=F64))


@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_hand_computed_global(backend):
    q, v, alpha = torch.tensor(Q, dtype=F64), torch.tensor(V, dtype=F64), torch.tensor(ALPHA, dtype=F64)
    # s = sum_t alpha_t (M_t z_t) = [1, 0] + 0.5 [6, 1] + 2 [1, 6] = [6, 12.5]
    # y_t = 2 s + 0.5 z_t = [12, 25] + 0.5 z_t
    y = vmisa_global(q, v, alpha, 2.0, 0.5, backend=backend)
    torch.testing.assert_close(y, torch.tensor([[[12.5, 26.0], [15.0, 25.5], [12.5, 28.0]]], dtype=F64))


# ----------------------------------------------------------------------- non-causal
def direct_eq10(q, v, alpha, beta0, beta1, rank_mask):
    """Eq. 10 written as one einsum with an explicit (L, D) mask matrix."""
    B, L, D = q.shape
    z = q * v
    a = alpha.reshape(1, L, 1) if alpha.dim() == 1 else (alpha.unsqueeze(-1) if alpha.dim() == 2 else alpha)
    M = (torch.arange(D).unsqueeze(0) <= torch.arange(L).unsqueeze(1)).to(q.dtype) if rank_mask else torch.ones(L, D, dtype=q.dtype)
    s = torch.einsum("bld,ld->bd", (a * z).expand(B, L, D), M)
    return beta0 * s.unsqueeze(1) + beta1 * z


@pytest.mark.parametrize("backend", ["naive", "torch"])
@pytest.mark.parametrize("rank_mask", [True, False])
@pytest.mark.parametrize("alpha_shape", ["L", "BL", "BLD"])
@pytest.mark.parametrize("L,D", [(7, 12), (30, 8), (1, 1)])
def test_global_matches_eq10(backend, rank_mask, alpha_shape, L, D):
    inputs, _ = make_inputs(2, L, D, alpha_shape, beta_shape="D")
    q, v, alpha = (inputs[k].detach() for k in ("q", "v", "alpha"))
    beta0, beta1 = torch.randn(D, dtype=F64), torch.tensor(0.7, dtype=F64)
    y = vmisa_global(q, v, alpha, beta0, beta1, rank_mask=rank_mask, backend=backend)
    torch.testing.assert_close(y, direct_eq10(q, v, alpha, beta0, beta1, rank_mask))


def test_global_gradients_match_naive():
    inputs, _ = make_inputs(2, 13, 9, "BLD")
    args = [inputs[k] for k in ("q", "v", "alpha")] + [torch.randn(9, dtype=F64, requires_grad=True), torch.tensor(0.3, dtype=F64, requires_grad=True)]
    grads = {}
    for backend in ("naive", "torch"):
        y = vmisa_global(*args, backend=backend)
        grads[backend] = torch.autograd.grad((y * torch.arange(y.numel(), dtype=F64).reshape(y.shape).sin()).sum(), args)
    for a, b in zip(grads["naive"], grads["torch"]):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------- edges and dtypes
@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_empty_sequence(backend):
    q = torch.randn(2, 0, 4)
    h0 = torch.randn(2, 4)
    y, final = vmisa_scan(q, q, torch.rand(2, 0), 1.0, initial_state=h0, output_final_state=True, backend=backend)
    assert y.shape == (2, 0, 4)
    torch.testing.assert_close(final, h0)
    assert vmisa_global(q, q, torch.rand(0), 1.0, 1.0, backend=backend).shape == (2, 0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, F64])
def test_dtype_policy(dtype):
    """y comes back in q's dtype; the state accumulates (and returns) in float32 for
    float32 and half inputs, float64 for float64 inputs: as accurate as that allows."""
    q, v = torch.randn(2, 50, 8).to(dtype), torch.randn(2, 50, 8).to(dtype)
    alpha = torch.rand(2, 50).to(dtype)
    y, final = vmisa_scan(q, v, alpha, 1.0, output_final_state=True, backend="torch")
    assert y.dtype == dtype
    assert final.dtype == (F64 if dtype == F64 else torch.float32)
    _, ref = vmisa_scan(q.double(), v.double(), alpha.double(), 1.0, output_final_state=True, backend="naive")
    torch.testing.assert_close(final.double(), ref, rtol=1e-5, atol=1e-4)


def test_float32_torch_close_to_naive():
    q, v = torch.randn(2, 3000, 32), torch.randn(2, 3000, 32)
    alpha = torch.rand(2, 3000)
    a = vmisa_scan(q, v, alpha, 0.5, backend="naive")
    b = vmisa_scan(q, v, alpha, 0.5, backend="torch")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_no_grad_path_equals_grad_path():
    inputs, offset = make_inputs(2, 70, 12, "BL", "BLD")
    kw = {k: v for k, v in inputs.items() if k not in ("q", "v", "alpha", "beta")}
    args = (inputs["q"], inputs["v"], inputs["alpha"], inputs["beta"])
    with torch.no_grad():
        y0 = vmisa_scan(*args, backend="torch", **kw)
    y1 = vmisa_scan(*args, backend="torch", **kw)
    torch.testing.assert_close(y0, y1.detach(), rtol=0, atol=0)


def test_old_module_path_still_imports_with_a_deprecation_warning():
    """``vmiseq.ops.vmisa`` (the dispatcher's old home) is an alias of ``vmiseq.ops.scan`` that
    warns on import, and the public names are the ones ``vmiseq.ops`` exports."""
    import importlib
    import sys

    import vmiseq.ops as ops
    from vmiseq.ops import scan

    sys.modules.pop("vmiseq.ops.vmisa", None)
    with pytest.warns(DeprecationWarning, match=r"vmiseq.ops.vmisa is deprecated; import vmiseq.ops.scan instead"):
        old = importlib.import_module("vmiseq.ops.vmisa")
    assert old is scan
    for name in ("vmisa_scan", "vmisa_global", "acc_dtype", "resolve_backend", "BACKENDS", "BACKEND_ENV",
                 "values_checkable", "non_finite_message"):
        assert getattr(old, name) is getattr(ops, name, getattr(scan, name)), name


def test_one_backend_vocabulary(monkeypatch):
    """VMI-SA and linear attention take the same backend names (``BACKENDS``), reject any
    other the same way, and "auto" follows ``VMISEQ_BACKEND`` in both."""
    from vmiseq.ops import BACKEND_ENV, BACKENDS, causal_linear_attn
    from vmiseq.ops.linear_attn import linear_attn_uses_naive

    q = torch.rand(1, 2, 5, 3, dtype=F64)
    x = torch.rand(1, 5, 3, dtype=F64)
    ref = causal_linear_attn(q, q, q, backend="naive")
    for name in BACKENDS:
        if name != "triton":
            torch.testing.assert_close(causal_linear_attn(q, q, q, backend=name), ref)
            torch.testing.assert_close(vmisa_scan(x, x, torch.ones(1, 5, dtype=F64), 1.0, backend=name),
                                       vmisa_scan(x, x, torch.ones(1, 5, dtype=F64), 1.0, backend="naive"))
    for call in (lambda: causal_linear_attn(q, q, q, backend="chunk"),
                 lambda: vmisa_scan(x, x, torch.ones(1, 5, dtype=F64), 1.0, backend="chunk")):
        with pytest.raises(ValueError, match=r"backend: expected one of \('auto', 'naive', 'torch', 'triton'\)"):
            call()
    assert not linear_attn_uses_naive("auto")
    monkeypatch.setenv(BACKEND_ENV, "naive")
    assert linear_attn_uses_naive("auto") and not linear_attn_uses_naive("torch")
    monkeypatch.setenv(BACKEND_ENV, "triton")  # VMI-SA's kernels; linear attention has none: torch
    assert not linear_attn_uses_naive("auto")
