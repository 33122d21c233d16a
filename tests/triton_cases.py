"""Shared cases and checks of the Triton kernel tests (``test_triton*.py``): random inputs,
one forward+backward through ``vmisa_scan``, and the stated tolerances (see test_triton.py).
Import it after ``TRITON_INTERPRET`` is set (``conftest.py`` does that without a GPU)."""
from __future__ import annotations

import torch

from vmiseq.kernels import triton_scan
from vmiseq.ops import vmisa_scan

DEVICE = "cuda" if torch.cuda.is_available() and not triton_scan.INTERPRET else "cpu"
B = 2

TOL_FP32 = 2e-5
TOL_BF16_RMS = 1e-2
TOL_FP64 = 1e-12


# --------------------------------------------------------------------------- helpers
def make_case(L, D, alpha, decay, offset, init, dtype, beta="scalar", seed=0, batch=B):
    """Random inputs. alpha: "L" | "BL" | "BLD"; decay: None | "BL" | "BLD";
    offset: int or "per_seq" (a (B,) tensor); beta: "scalar" | "D"."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, lo=None):
        x = torch.rand(*shape, generator=g) if lo is not None else torch.randn(*shape, generator=g)
        if lo is not None:
            x = lo + (1 - lo) * x
        return x.to(dtype).to(DEVICE)

    case = {
        "q": rnd(batch, L, D),
        "v": rnd(batch, L, D),
        "alpha": {"L": rnd(L, lo=0.0), "BL": rnd(batch, L, lo=0.0), "BLD": rnd(batch, L, D, lo=0.0)}[alpha],
        "beta": rnd(()) if beta == "scalar" else rnd(D),
        "initial_state": rnd(batch, D) if init else None,
        "decay": None if decay is None else {"BL": rnd(batch, L, lo=0.5), "BLD": rnd(batch, L, D, lo=0.5)}[decay],
        "offset": torch.arange(batch, device=DEVICE) * 7 + 3 if offset == "per_seq" else offset,
    }
    return case


DIFF = ("q", "v", "alpha", "beta", "initial_state", "decay")


def run(case, backend, dtype=None, rank_mask=True, grad_y=True, grad_final=True, requires=DIFF):
    """Outputs and gradients (dict) of vmisa_scan on a copy of ``case`` cast to ``dtype``."""
    leaves = {}
    for k in DIFF:
        x = case[k]
        if x is not None:
            x = x.detach().clone()
            if dtype is not None:
                x = x.to(dtype)
            x.requires_grad_(k in requires)
        leaves[k] = x
    y, final = vmisa_scan(
        leaves["q"], leaves["v"], leaves["alpha"], leaves["beta"],
        initial_state=leaves["initial_state"], offset=case["offset"], rank_mask=rank_mask,
        decay=leaves["decay"], output_final_state=True, backend=backend,
    )
    g = torch.Generator().manual_seed(123)
    gy = torch.randn(y.shape, generator=g).to(y.dtype).to(y.device)
    gf = torch.randn(final.shape, generator=g).to(final.dtype).to(final.device)
    outs, grads = [], []
    if grad_y:
        outs.append(y)
        grads.append(gy)
    if grad_final:
        outs.append(final)
        grads.append(gf)
    torch.autograd.backward(outs, grads)
    res = {"y": y.detach(), "final": final.detach()}
    for k, x in leaves.items():
        if x is not None and x.requires_grad:  # None when no path leads to the loss: zero
            res["d" + k] = torch.zeros_like(x) if x.grad is None else x.grad
    return res


def check(actual: dict, ref: dict, dtype: torch.dtype) -> None:
    assert actual.keys() == ref.keys()
    for k in ref:
        a, r = actual[k].double().cpu(), ref[k].double().cpu()
        assert a.shape == r.shape, k
        assert torch.isfinite(a).all(), f"{k}: non-finite values (an unwritten NaN-filled element?)"
        if dtype in (torch.bfloat16, torch.float16):
            rms = (a - r).norm() / r.norm().clamp_min(1e-30)
            assert rms <= TOL_BF16_RMS, f"{k}: relative RMS error {rms:.2e} > {TOL_BF16_RMS}"
        else:
            tol = TOL_FP64 if dtype == torch.float64 else TOL_FP32
            err = (a - r).abs().max().item() if a.numel() else 0.0
            scale = max(1.0, r.abs().max().item() if r.numel() else 0.0)
            assert err <= tol * scale, f"{k}: max error {err:.2e} > {tol:.0e} * {scale:.2f}"


def compare_to_naive(case, dtype, **kw):
    ref = run(case, "naive", dtype=torch.float64, **kw)
    out = run(case, "triton", **kw)
    assert out["y"].dtype == dtype and out["final"].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    check(out, ref, dtype)
