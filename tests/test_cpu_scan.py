"""The two CPU paths of the torch backend against the naive loop: the compiled one-pass scan
(numba, ``ops/cpu_scan.py``) including its chunk-parallel two-level form at small batch, and
the vectorised torch loops (``ops/chunk.py``) that run where numba is missing."""
from __future__ import annotations

import pytest
import torch
from test_ops import assert_backends_agree, make_inputs

from vmiseq.ops import chunk, cpu_scan, vmisa_scan

needs_numba = pytest.mark.skipif(not cpu_scan.available(), reason="numba not installed")


@pytest.fixture
def torch_loops(monkeypatch, small_chunks):
    monkeypatch.setattr(chunk, "CPU_KERNEL", False)


@pytest.fixture(params=[1, 2, 3, 7])
def forced_chunks(request, monkeypatch):
    """Chunks per sequence of the compiled scan: 1 (one pass) .. 7 (two-level, ragged)."""
    monkeypatch.setattr(cpu_scan, "FORCE_CHUNKS", request.param)
    return request.param


@needs_numba
@pytest.mark.parametrize("B,L,D", [(1, 1, 3), (1, 50, 7), (2, 37, 5), (1, 23, 24), (3, 45, 20)])
@pytest.mark.parametrize("alpha_shape", ["L", "BL", "BLD"])
def test_compiled_matches_naive_shapes(B, L, D, alpha_shape, forced_chunks):
    """L not a multiple of the chunk count, D > L (mask active throughout), B = 1."""
    inputs, offset = make_inputs(B, L, D, alpha_shape=alpha_shape)
    assert_backends_agree(inputs, offset)


@needs_numba
@pytest.mark.parametrize("decay_shape", [None, "BL", "BLD"])
@pytest.mark.parametrize("offset", [0, "per-sequence"])
@pytest.mark.parametrize("beta_shape", ["scalar", "D"])
@pytest.mark.parametrize("rank_mask", [True, False])
def test_compiled_matches_naive_options(decay_shape, offset, beta_shape, rank_mask, forced_chunks):
    B, L, D = 2, 41, 20
    if offset == "per-sequence":
        offset = [3, 30]
    inputs, offset = make_inputs(B, L, D, "BLD" if decay_shape == "BLD" else "BL", decay_shape, beta_shape, offset)
    assert_backends_agree(inputs, offset, rank_mask)


@needs_numba
def test_compiled_default_chunking_two_threads():
    """The chunk count the compiled scan picks by itself at B = 1 on two threads (> 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert cpu_scan.n_chunks(1, 2 * cpu_scan.MIN_CHUNK_TOKENS + 5, 2) > 1
        inputs, offset = make_inputs(1, 2 * cpu_scan.MIN_CHUNK_TOKENS + 5, 16, "BL", "BL")
        assert_backends_agree(inputs, offset)
    finally:
        torch.set_num_threads(n)


@needs_numba
def test_compiled_float32_matches_torch_loops(monkeypatch):
    """float32 (the dtype models train in): the two CPU paths agree to float32 rounding."""
    g = torch.Generator().manual_seed(0)
    q, v = (torch.randn(2, 300, 64, generator=g) for _ in range(2))
    alpha, beta = torch.rand(2, 300, generator=g), torch.rand(64, generator=g)
    y1, h1 = vmisa_scan(q, v, alpha, beta, output_final_state=True, backend="torch")
    monkeypatch.setattr(chunk, "CPU_KERNEL", False)
    y2, h2 = vmisa_scan(q, v, alpha, beta, output_final_state=True, backend="torch")
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("B,L,D", [(1, 1, 3), (2, 37, 5), (1, 300, 7)])
@pytest.mark.parametrize("alpha_shape", ["L", "BLD"])
def test_torch_loops_match_naive_shapes(B, L, D, alpha_shape, torch_loops):
    inputs, offset = make_inputs(B, L, D, alpha_shape=alpha_shape)
    assert_backends_agree(inputs, offset)


@pytest.mark.parametrize("decay_shape", [None, "BL", "BLD"])
@pytest.mark.parametrize("beta_shape", ["scalar", "D"])
@pytest.mark.parametrize("rank_mask", [True, False])
def test_torch_loops_match_naive_options(decay_shape, beta_shape, rank_mask, torch_loops):
    inputs, offset = make_inputs(3, 45, 20, "BL", decay_shape, beta_shape, [0, 7, 30])
    assert_backends_agree(inputs, offset, rank_mask)
