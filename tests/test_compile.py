"""torch.compile of the causal VMI-SA layer on CPU with the torch backend: one graph
(``fullgraph=True``: a graph break is an error), the scan as the single opaque custom op
``vmiseq::scan_fwd``, and the same outputs and gradients as eager mode.

The default run uses the ``aot_eager`` compiler backend (traces forward and backward
through AOTAutograd, the part that needs the op's fake and autograd registrations, in a few
seconds); the Inductor run (C++ code generation, ~10 s or more on 2 cores) is marked slow.
Tolerance: max |compiled - eager| <= 1e-5 * max(1, max |eager|).
"""
from __future__ import annotations

import pytest
import torch

from vmiseq.ops import scan_op
from vmiseq.layers.vmisa import VMISALayer


def _close(a: torch.Tensor, b: torch.Tensor, name: str, tol: float = 1e-5) -> None:
    err = (a - b).abs().max().item()
    scale = max(1.0, b.abs().max().item())
    assert err <= tol * scale, f"{name}: max error {err:.2e} (scale {scale:.2f})"


def _grads(layer, x, fn):
    layer.zero_grad()
    xx = x.clone().requires_grad_(True)
    y = fn(xx)
    (y.square().mean() + y.sum() * 1e-2).backward()
    return y.detach(), xx.grad, {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}


def _compare(layer, x, compiled):
    y_e, dx_e, g_e = _grads(layer, x, layer)
    y_c, dx_c, g_c = _grads(layer, x, compiled)
    _close(y_c, y_e, "y")
    _close(dx_c, dx_e, "dx")
    assert g_c.keys() == g_e.keys()
    for n in g_e:
        _close(g_c[n], g_e[n], n)


LAYERS = [
    dict(alpha="input", decay=None),
    dict(alpha="input", decay="input"),
    dict(alpha="position", max_len=64, decay="scalar", beta_per_channel=True),
    dict(alpha="constant", decay=None, rank_mask=False),
]


@pytest.mark.parametrize("kw", LAYERS, ids=lambda kw: f"{kw['alpha']}-{kw['decay']}")
def test_layer_compiles_to_one_graph_with_the_scan_op(kw):
    torch.manual_seed(0)
    layer = VMISALayer(8, expand=2, causal=True, backend="torch", **kw)
    x = torch.randn(2, 37, 8)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward

    torch._dynamo.reset()
    _compare(layer, x, torch.compile(layer, fullgraph=True, backend=capture))
    assert len(graphs) == 1, f"expected one graph, got {len(graphs)}"
    assert sum("vmiseq.scan_fwd" in t for t in graphs[0]) == 1, graphs[0]


@pytest.mark.parametrize("kw", LAYERS[:3], ids=lambda kw: f"{kw['alpha']}-{kw['decay']}")
def test_layer_aot_eager_matches_eager(kw):
    torch.manual_seed(1)
    layer = VMISALayer(8, expand=2, causal=True, backend="torch", **kw)
    torch._dynamo.reset()
    _compare(layer, torch.randn(2, 37, 8), torch.compile(layer, fullgraph=True, backend="aot_eager"))


def test_streaming_with_state_compiles():
    """Chunked prefill: a state (per-sequence positions as a tensor offset) through the graph."""
    torch.manual_seed(2)
    layer = VMISALayer(8, expand=2, decay="input", backend="torch")
    x = torch.randn(2, 40, 8)

    def two_pieces(x):
        y1, st = layer(x[:, :25], output_state=True)
        y2, st = layer(x[:, 25:], st, output_state=True)
        return torch.cat([y1, y2], dim=1), st

    torch._dynamo.reset()
    compiled = torch.compile(two_pieces, fullgraph=True, backend="aot_eager")
    y_e, st_e = two_pieces(x)
    y_c, st_c = compiled(x)
    _close(y_c, y_e, "y")
    _close(st_c.h, st_e.h, "state.h")
    assert torch.equal(st_c.position, st_e.position)
    _close(layer(x), y_e, "one piece")


@pytest.mark.slow
@pytest.mark.parametrize("kw", LAYERS[:2], ids=lambda kw: f"{kw['alpha']}-{kw['decay']}")
def test_layer_inductor_matches_eager(kw):
    torch.manual_seed(3)
    layer = VMISALayer(8, expand=2, causal=True, backend="torch", **kw)
    torch._dynamo.reset()
    _compare(layer, torch.randn(2, 37, 8), torch.compile(layer, fullgraph=True))


# --------------------------------------------------------------------------- the op itself
def _op_inputs(decay: bool, varlen: bool, dtype=torch.float32, L=40, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    nb = 1 if varlen else 2
    cu = torch.tensor([0, 9, 9, L], dtype=torch.int32) if varlen else None
    n = 3 if varlen else nb
    mk = lambda *s, pos=False: (torch.rand(*s, generator=g) if pos else torch.randn(*s, generator=g)).to(dtype).requires_grad_(True)  # noqa: E731
    return (mk(nb, L, D), mk(nb, L, D), mk(nb, L, 1, pos=True), mk(D), mk(n, D), torch.tensor([[2]]),
            mk(nb, L, D, pos=True) if decay else None, cu)


@pytest.mark.parametrize("decay,varlen", [(False, False), (True, False), (True, True)])
def test_opcheck_torch_backend(decay, varlen):
    """torch.library.opcheck: schema, fake (meta) shapes, autograd registration, AOT tracing."""
    torch.library.opcheck(scan_op.scan_fwd, (*_op_inputs(decay, varlen), True, "torch"))


@pytest.mark.parametrize("decay,varlen", [(False, False), (True, True)])
def test_op_backward_gradcheck(decay, varlen):
    """The op's torch backward (recompute + autograd inside the op) by finite differences."""
    q, v, alpha, beta, h0, pos, dec, cu = _op_inputs(decay, varlen, torch.float64, L=12, D=3)
    inputs = [q, v, alpha, beta, h0] + ([dec] if decay else [])

    def f(q, v, alpha, beta, h0, *rest):
        return scan_op.vmisa_scan_op(q, v, alpha, beta, h0, pos, True, rest[0] if rest else None, cu,
                                backend="torch", force_op=True)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8)
