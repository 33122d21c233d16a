"""Packed variable-length batches (``cu_seqlens``): every backend must equal running each
sequence on its own (outputs, final states and gradients), and the fast backends must
equal the naive one. Triton runs through its interpreter on CPU (TRITON_INTERPRET=1).

Tolerance: max |a - b| <= 2e-5 * max(1, max |b|) for fp32 inputs (bf16: relative RMS <= 1e-2).
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when vmiseq.kernels.triton_scan is imported

from vmiseq.ops import vmisa_scan  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [
    "naive",
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")),
]
LENS = [5, 0, 70, 1, 64, 129]  # an empty sequence, one token, exactly one chunk, several chunks
D = 40
DIFF = ("q", "v", "alpha", "beta", "initial_state", "decay")


@pytest.fixture(autouse=True)
def nan_filled_buffers(monkeypatch):
    monkeypatch.setenv("VMISEQ_DEBUG_NAN", "1")


def make_packed(alpha: str, decay, init: bool, offset, dtype=torch.float32, seed=0, lens=LENS):
    g = torch.Generator().manual_seed(seed)
    T, N = sum(lens), len(lens)

    def rnd(*shape, lo=None):
        x = torch.randn(*shape, generator=g) if lo is None else lo + (1 - lo) * torch.rand(*shape, generator=g)
        return x.to(dtype).to(DEVICE)

    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)
    return {
        "q": rnd(1, T, D),
        "v": rnd(1, T, D),
        "alpha": {"L": rnd(T, lo=0.0), "BL": rnd(1, T, lo=0.0), "BLD": rnd(1, T, D, lo=0.0)}[alpha],
        "beta": rnd(D),
        "initial_state": rnd(N, D) if init else None,
        "decay": None if decay is None else {"BL": rnd(1, T, lo=0.5), "BLD": rnd(1, T, D, lo=0.5)}[decay],
        "offset": torch.tensor([0, 3, 10, 2, 0, 39], device=DEVICE)[:N] if offset == "per_seq" else offset,
        "cu_seqlens": cu,
    }


def _leaves(case, dtype=None):
    out = {}
    for k in DIFF:
        x = case[k]
        if x is not None:
            x = x.detach().clone()
            x = x.to(dtype) if dtype is not None else x
            x.requires_grad_(True)
        out[k] = x
    return out


def _upstream(y, final):
    g = torch.Generator().manual_seed(7)
    return (torch.randn(y.shape, generator=g).to(y.dtype).to(y.device),
            torch.randn(final.shape, generator=g).to(final.dtype).to(final.device))


def _collect(y, final, leaves):
    res = {"y": y.detach(), "final": final.detach()}
    for k, x in leaves.items():
        if x is not None:
            res["d" + k] = torch.zeros_like(x) if x.grad is None else x.grad
    return res


def run_packed(case, backend, dtype=None):
    lv = _leaves(case, dtype)
    y, final = vmisa_scan(
        lv["q"], lv["v"], lv["alpha"], lv["beta"], initial_state=lv["initial_state"], offset=case["offset"],
        decay=lv["decay"], output_final_state=True, backend=backend, cu_seqlens=case["cu_seqlens"],
    )
    gy, gf = _upstream(y, final)
    torch.autograd.backward([y, final], [gy, gf])
    return _collect(y, final, lv)


def run_one_by_one(case, backend):
    """The same packed inputs, each sequence through vmisa_scan on its own (B = 1)."""
    lv = _leaves(case)
    bounds = case["cu_seqlens"].tolist()
    ys, finals = [], []
    for n in range(len(bounds) - 1):
        s, e = bounds[n], bounds[n + 1]
        off = case["offset"]
        off = int(off[n]) if isinstance(off, torch.Tensor) else off
        alpha = lv["alpha"][s:e] if lv["alpha"].dim() == 1 else lv["alpha"][:, s:e]
        h0 = None if lv["initial_state"] is None else lv["initial_state"][n : n + 1]
        dec = None if lv["decay"] is None else lv["decay"][:, s:e]
        y, f = vmisa_scan(lv["q"][:, s:e], lv["v"][:, s:e], alpha, lv["beta"], initial_state=h0, offset=off,
                          decay=dec, output_final_state=True, backend=backend)
        ys.append(y)
        finals.append(f)
    y, final = torch.cat(ys, dim=1), torch.cat(finals, dim=0)
    gy, gf = _upstream(y, final)
    torch.autograd.backward([y, final], [gy, gf])
    return _collect(y, final, lv)


def check(a: dict, b: dict, dtype=torch.float32):
    assert a.keys() == b.keys()
    for k in b:
        x, r = a[k].double().cpu(), b[k].double().cpu()
        assert x.shape == r.shape, k
        assert torch.isfinite(x).all(), f"{k}: non-finite values"
        if dtype == torch.bfloat16:
            rms = (x - r).norm() / r.norm().clamp_min(1e-30)
            assert rms <= 1e-2, f"{k}: relative RMS {rms:.2e}"
        else:
            err = (x - r).abs().max().item()
            scale = max(1.0, r.abs().max().item())
            assert err <= 2e-5 * scale, f"{k}: max error {err:.2e} (scale {scale:.2f})"


CASES = [
    # alpha, decay, initial state, offset
    ("BL", None, True, 0),
    ("L", "BL", True, "per_seq"),
    ("BLD", "BLD", False, 5),
    ("BL", "BLD", True, "per_seq"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha,decay,init,offset", CASES)
def test_packed_equals_one_by_one(backend, alpha, decay, init, offset):
    case = make_packed(alpha, decay, init, offset)
    check(run_packed(case, backend), run_one_by_one(case, backend))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=BACKENDS[2].marks)])
@pytest.mark.parametrize("alpha,decay,init,offset", CASES)
def test_packed_matches_naive(backend, alpha, decay, init, offset):
    case = make_packed(alpha, decay, init, offset, seed=1)
    check(run_packed(case, backend), run_packed(case, "naive", dtype=torch.float64))


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_packed_bf16_triton():
    case = make_packed("BL", "BL", True, "per_seq", dtype=torch.bfloat16, seed=2)
    out = run_packed(case, "triton")
    assert out["y"].dtype == torch.bfloat16 and out["final"].dtype == torch.float32
    check(out, run_packed(case, "naive", dtype=torch.float64), torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_sequences_empty(backend):
    h0 = torch.randn(2, D, device=DEVICE)
    q = torch.zeros(1, 0, D, device=DEVICE)
    cu = torch.zeros(3, dtype=torch.int32, device=DEVICE)
    y, f = vmisa_scan(q, q, torch.zeros(1, 0, device=DEVICE), 1.0, initial_state=h0, output_final_state=True,
                      backend=backend, cu_seqlens=cu)
    assert y.shape == (1, 0, D) and torch.equal(f, h0)


def _bad_call(**over):
    T = 10
    kw = dict(q=torch.randn(1, T, 4), alpha=torch.rand(1, T), cu=torch.tensor([0, 4, T], dtype=torch.int32),
              initial_state=None, offset=0)
    kw.update(over)
    q = kw["q"]
    return lambda: vmisa_scan(q, q, kw["alpha"], 1.0, initial_state=kw["initial_state"], offset=kw["offset"],
                              cu_seqlens=kw["cu"], backend="torch")


@pytest.mark.parametrize(
    "over,err,match",
    [
        ({"cu": torch.tensor([0.0, 4.0, 10.0])}, TypeError, "cu_seqlens: expected an int32"),
        ({"cu": [0, 4, 10]}, TypeError, "cu_seqlens: expected a 1-D int32 tensor"),
        ({"cu": torch.tensor([0], dtype=torch.int32)}, ValueError, "N\\+1 >= 2"),
        ({"cu": torch.tensor([1, 4, 10], dtype=torch.int32)}, ValueError, "from 0 to T=10"),
        ({"cu": torch.tensor([0, 4, 9], dtype=torch.int32)}, ValueError, "from 0 to T=10"),
        ({"cu": torch.tensor([0, 6, 4, 10], dtype=torch.int32)}, ValueError, "non-decreasing"),
        ({"q": torch.randn(2, 10, 4), "alpha": torch.rand(2, 10)}, ValueError, "packed in one batch row"),
        ({"initial_state": torch.randn(1, 4)}, ValueError, r"initial_state: expected shape \(N, D\)"),
        ({"offset": torch.tensor([1, 2, 3])}, ValueError, "offset: with cu_seqlens expected"),
        ({"offset": torch.tensor([1.0, 2.0])}, TypeError, "offset: expected an integer tensor"),
    ],
)
def test_validation(over, err, match):
    with pytest.raises(err, match=match):
        _bad_call(**over)()
