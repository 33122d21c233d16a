"""The Triton kernels' launch paths against the naive loop (float64): the small-batch split
path (segment summaries, carry scan, replay) forward and backward, with both in-chunk scans;
the backward's reverse recurrence (forward scans over reversed rows); bf16 gates loaded
natively; the fp16 overflow policy; a packed batch on the 1-D grid, and the 1-D grid of
70,000 packed sequences. Tolerances: those of ``test_triton.py``. Without a GPU the kernels
run through Triton's interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py``).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed: the Triton backend cannot be tested")

from triton_cases import DEVICE, check, compare_to_naive, make_case, run  # noqa: E402

from vmiseq.kernels import geometry, triton_scan  # noqa: E402
from vmiseq.ops import vmisa_scan  # noqa: E402


@pytest.fixture(autouse=True)
def nan_filled_buffers(monkeypatch):
    monkeypatch.setenv(triton_scan.NAN_ENV, "1")


@pytest.fixture
def split(monkeypatch):
    """Force the split path on tiny inputs: a 2-SM 'device' and split='always' cut a
    300-token sequence into segments of 2, 2 and 1 chunks (the last one partial)."""
    monkeypatch.setattr(triton_scan, "SETTINGS", triton_scan.LaunchSettings(sm_count=2, split="always"))
    plans = []
    real = triton_scan.plan_for

    def spy(*args, **kw):
        plans.append(real(*args, **kw))
        return plans[-1]

    monkeypatch.setattr(triton_scan, "plan_for", spy)
    yield plans


def test_interpreter_default_is_one_pass():
    plan = triton_scan.plan_for("fwd", torch.empty(0), 1, 300, 20, False)
    assert not plan.split and plan.n_work == 1


SPLIT_CASES = [
    # L, D, alpha, decay, offset, init, dtype, beta, batch
    (300, 20, "BL", None, 5, True, torch.float32, "D", 1),
    (300, 20, "BLD", "BL", 0, True, torch.float32, "scalar", 1),
    (300, 20, "L", "BLD", "per_seq", False, torch.float32, "D", 2),
    (257, 48, "BL", "BLD", 3, True, torch.float32, "D", 1),
    (300, 20, "BL", "BL", 5, True, torch.bfloat16, "D", 1),
    (300, 20, "BLD", "BLD", 2, True, torch.float64, "D", 1),
]


@pytest.mark.parametrize("L,D,alpha,decay,offset,init,dtype,beta,batch", SPLIT_CASES)
def test_split_path_matches_naive(split, L, D, alpha, decay, offset, init, dtype, beta, batch):
    compare_to_naive(make_case(L, D, alpha, decay, offset, init, dtype, beta, batch=batch), dtype)
    assert split and all(p.split and p.n_seg == 3 and p.seg_chunks == 2 for p in split)


@pytest.mark.parametrize("decay", ["BLD"])
def test_split_path_native_scan(split, monkeypatch, decay):
    """The GPU's in-chunk scan (tl.associative_scan, forward only) in every split pass,
    the carry scan included."""
    monkeypatch.setenv(triton_scan.SCAN_ENV, "native")
    compare_to_naive(make_case(200, 16, "BL", decay, 1, True, torch.float32, "D", batch=1), torch.float32)
    assert all(p.split for p in split)


@pytest.mark.parametrize("grad_y,grad_final", [(False, True), (True, False)])
def test_split_path_single_upstream_gradient(split, grad_y, grad_final):
    case = make_case(300, 20, "BL", "BLD", 1, True, torch.float32, "D", batch=1)
    kw = dict(grad_y=grad_y, grad_final=grad_final)
    check(run(case, "triton", **kw), run(case, "naive", dtype=torch.float64, **kw), torch.float32)


def test_split_path_decay_without_gradient(split):
    case = make_case(300, 20, "BL", "BL", 0, True, torch.float32, batch=1)
    req = ("q", "v", "alpha", "beta", "initial_state")
    check(run(case, "triton", requires=req), run(case, "naive", dtype=torch.float64, requires=req), torch.float32)


def test_reverse_scan_with_strong_decay():
    """The backward's reverse recurrence with decays far from 1 (a wrong order of the
    non-commutative combine shows at once), a partial last chunk, one pass."""
    case = make_case(150, 16, "BLD", "BLD", 0, True, torch.float32, "D", batch=1)
    case["decay"] = torch.rand(case["decay"].shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    compare_to_naive(case, torch.float32)


def test_bf16_gates_are_loaded_natively(monkeypatch):
    """bf16 alpha / decay reach the kernel as bf16 (no host cast), their gradients come back
    in bf16, and the results match the naive loop."""
    seen = []
    real = triton_scan.launch_fwd

    def spy(q, v, alpha, beta, h0, positions, decay, *rest):
        seen.append((alpha.dtype, decay.dtype))
        return real(q, v, alpha, beta, h0, positions, decay, *rest)

    monkeypatch.setattr(triton_scan, "launch_fwd", spy)
    case = make_case(70, 24, "BLD", "BL", 2, True, torch.bfloat16, "D", batch=1)
    out = run(case, "triton")
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    assert out["dalpha"].dtype == torch.bfloat16 and out["ddecay"].dtype == torch.bfloat16
    check(out, run(case, "naive", dtype=torch.float64), torch.bfloat16)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_fp16_overflow_policy():
    """fp16 y is the float32 result rounded to fp16 (IEEE): past 65,504 it is inf, exactly
    where the naive loop's is, never NaN; the float32 final state stays exact."""
    L, D = 80, 16
    q = torch.full((1, L, D), 40.0, dtype=torch.float16, device=DEVICE)
    alpha = torch.ones(1, L, device=DEVICE)
    res = {}
    for backend in ("naive", "torch", "triton"):
        y, f = vmisa_scan(q, q, alpha, 0.0, output_final_state=True, backend=backend)
        res[backend] = (y, f)
    y_ref, f_ref = res["naive"]
    assert torch.isinf(y_ref).any() and torch.isfinite(f_ref).all()
    for backend in ("torch", "triton"):
        y, f = res[backend]
        assert not torch.isnan(y).any()
        assert torch.equal(torch.isinf(y), torch.isinf(y_ref)), backend
        fin = torch.isfinite(y_ref)
        assert torch.allclose(y[fin].double(), y_ref[fin].double(), rtol=1e-3), backend
        assert torch.allclose(f.double(), f_ref.double(), rtol=1e-6), backend


def test_packed_sequences_on_the_1d_grid():
    """Many short packed sequences (lengths 0-2) with a small D: program id -> (D-block,
    sequence) decoding, empty sequences and decay, against the naive loop. The same code
    decodes 70,000 sequences (the 1-D grid has no 65,535 limit; see the next test)."""
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(0, 3, (48,), generator=g)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(torch.int32).to(DEVICE)
    T, N, D = int(lens.sum()), len(lens), 4
    base = {"q": torch.randn(1, T, D, generator=g), "v": torch.randn(1, T, D, generator=g),
            "alpha": torch.rand(1, T, generator=g), "decay": 0.5 + 0.5 * torch.rand(1, T, generator=g),
            "initial_state": torch.randn(N, D, generator=g), "beta": torch.randn(D, generator=g)}
    res = {}
    for backend, dt in (("naive", torch.float64), ("triton", torch.float32)):
        xs = {k: x.to(dt).to(DEVICE).requires_grad_(True) for k, x in base.items()}
        y, f = vmisa_scan(xs["q"], xs["v"], xs["alpha"], xs["beta"], initial_state=xs["initial_state"],
                          decay=xs["decay"], offset=1, cu_seqlens=cu, output_final_state=True, backend=backend)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dt).to(DEVICE)
        torch.autograd.backward([y, f], [gy, torch.ones_like(f)])
        res[backend] = {"y": y.detach(), "final": f.detach(), **{"d" + k: x.grad for k, x in xs.items()}}
    check(res["triton"], res["naive"], torch.float32)


class _GridSpy:
    """Stands in for a jitted kernel: records the launch grid, runs nothing."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *args, **kw: None


def test_70000_packed_sequences_launch_a_1d_grid(monkeypatch):
    """70,000 packed sequences launch one 1-D grid of 70,000 x D-blocks programs (axis y of a
    CUDA grid stops at 65,535). Running them through the interpreter would take hours:
    benchmarks/gpu_check.py runs the full case on a GPU against the naive loop."""
    spy = _GridSpy()
    monkeypatch.setattr(triton_scan, "vmisa_fwd_kernel", spy)
    N, D = 70_000, 4
    cu = torch.arange(N + 1, dtype=torch.int32, device=DEVICE)
    q = torch.zeros(1, N, D, device=DEVICE)
    h0 = torch.zeros(N, D, device=DEVICE)
    pos = torch.zeros(1, 1, dtype=torch.long, device=DEVICE)
    triton_scan.launch_fwd(q, q, torch.ones(1, N, 1, device=DEVICE), torch.tensor(1.0), h0, pos, None, cu, True)
    assert len(spy.grids) == 1 and len(spy.grids[0]) == 1
    plan = triton_scan.plan_for("fwd", q, N, N, D, True)
    assert not plan.split and spy.grids[0][0] == N * geometry.cdiv(D, max(plan.block_ds)) >= 70_000
