"""The Triton scan kernels against the naive reference loop.

Without a GPU the kernels run on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``, set below before the kernel module is first imported); with a GPU
the same tests run the compiled kernels on CUDA tensors.

Stated tolerances (the reference is the naive loop in float64 on the same input values):
* fp32 inputs: max |out - ref| <= 2e-5 * max(1, max |ref|), for y, the final state and
  every gradient;
* bf16 (and fp16) inputs: relative RMS error ||out - ref|| / ||ref|| <= 1e-2 (bf16 keeps
  8 bits: one rounding of the output is ~2e-3 relative);
* fp64 inputs (run in float64 inside the kernel): max error <= 1e-12 * max(1, max |ref|).
Every buffer the kernels write is NaN-filled before the launch (VMISEQ_DEBUG_NAN=1), so an
element a kernel forgets to write fails the comparison.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when vmiseq.kernels.triton_scan is imported

pytest.importorskip("triton", reason="triton is not installed: the Triton backend cannot be tested")

from vmiseq.kernels import triton_scan, tuning  # noqa: E402
from vmiseq.layers.vmisa import VMISALayer  # noqa: E402
from vmiseq.ops import scan_op  # noqa: E402
from vmiseq.ops import vmisa_scan  # noqa: E402
from vmiseq.ops.scan import resolve_backend  # noqa: E402

if not torch.cuda.is_available() and not triton_scan.INTERPRET:
    raise RuntimeError(
        "vmiseq.kernels.triton_scan was imported before TRITON_INTERPRET=1 was set, so its kernels "
        "cannot run on CPU: run this file on its own or set TRITON_INTERPRET=1 in the environment"
    )
from triton_cases import B, DEVICE, DIFF, check, compare_to_naive, make_case, run  # noqa: E402


@pytest.fixture(autouse=True)
def nan_filled_buffers(monkeypatch):
    monkeypatch.setenv(triton_scan.NAN_ENV, "1")


# --------------------------------------------------------------------------- vs naive
# Every L, D, alpha shape, decay form, offset, initial state and dtype appears at least once.
SUBSET = [
    # L, D, alpha, decay, offset, init, dtype, beta
    (1, 16, "L", None, 0, False, torch.float32, "scalar"),
    (1, 130, "BLD", "BLD", 5, True, torch.float32, "D"),
    (7, 48, "BL", "BL", 5, True, torch.float32, "scalar"),
    (63, 130, "BLD", "BLD", 0, True, torch.float32, "D"),
    (64, 16, "BL", "BLD", "per_seq", False, torch.float32, "D"),
    (65, 48, "BLD", None, 5, True, torch.float32, "scalar"),
    (65, 130, "L", "BL", 0, False, torch.float32, "D"),
    (300, 48, "L", "BLD", 5, True, torch.float32, "scalar"),
    (300, 130, "BL", None, "per_seq", True, torch.float32, "D"),
    (300, 16, "BLD", "BL", 0, True, torch.float32, "scalar"),
    (7, 16, "BL", None, 0, True, torch.bfloat16, "D"),
    (65, 130, "BLD", "BL", 5, True, torch.bfloat16, "scalar"),
    (300, 48, "L", "BLD", 0, False, torch.bfloat16, "D"),
    (64, 48, "L", None, "per_seq", True, torch.bfloat16, "scalar"),
    (65, 48, "BL", "BL", 5, True, torch.float16, "D"),
]


@pytest.mark.parametrize("L,D,alpha,decay,offset,init,dtype,beta", SUBSET)
def test_matches_naive(L, D, alpha, decay, offset, init, dtype, beta):
    compare_to_naive(make_case(L, D, alpha, decay, offset, init, dtype, beta), dtype)


FULL = list(
    itertools.product(
        (1, 7, 63, 64, 65, 300), (16, 48, 130), ("L", "BL", "BLD"), (None, "BL", "BLD"), (0, 5), (False, True),
        (torch.float32, torch.bfloat16),
    )
)


@pytest.mark.slow
@pytest.mark.parametrize("L,D,alpha,decay,offset,init,dtype", FULL)
def test_matches_naive_full(L, D, alpha, decay, offset, init, dtype):
    beta = "D" if (L + D) % 2 else "scalar"
    compare_to_naive(make_case(L, D, alpha, decay, offset, init, dtype, beta), dtype)


@pytest.mark.parametrize("decay", [None, "BLD"])
def test_float64_runs_in_float64(decay):
    compare_to_naive(make_case(70, 24, "BL", decay, 3, True, torch.float64, "D"), torch.float64)


@pytest.mark.parametrize("decay", ["BL", "BLD"])
def test_native_associative_scan_path(monkeypatch, decay):
    """The GPU's in-chunk scan (tl.associative_scan) instead of the interpreter's log-step scan."""
    monkeypatch.setenv(triton_scan.SCAN_ENV, "native")
    compare_to_naive(make_case(70, 16, "BLD", decay, 2, True, torch.float32, "D", batch=1), torch.float32)


def test_no_rank_mask():
    case = make_case(65, 48, "BL", "BL", 0, True, torch.float32)
    check(run(case, "triton", rank_mask=False), run(case, "naive", dtype=torch.float64, rank_mask=False), torch.float32)


@pytest.mark.parametrize("grad_y,grad_final", [(False, True), (True, False)])
def test_single_upstream_gradient(grad_y, grad_final):
    """Only the final state (or only y) feeds the loss: the other upstream gradient is zero."""
    case = make_case(100, 40, "BLD", "BL", 1, True, torch.float32)
    kw = dict(grad_y=grad_y, grad_final=grad_final)
    check(run(case, "triton", **kw), run(case, "naive", dtype=torch.float64, **kw), torch.float32)


def test_decay_without_gradient():
    """A fixed (non-learned) decay skips the d(decay) work; the other gradients still match."""
    case = make_case(100, 40, "BL", "BLD", 0, True, torch.float32)
    req = ("q", "v", "alpha", "initial_state")
    check(run(case, "triton", requires=req), run(case, "naive", dtype=torch.float64, requires=req), torch.float32)


def test_strided_and_broadcast_inputs():
    """The layer's layouts: q, v halves of one projection (row stride 2D), an expanded
    (stride-0) constant alpha, an expanded per-channel decay."""
    L, D = 80, 24
    g = torch.Generator().manual_seed(3)
    qv = torch.randn(B, L, 2 * D, generator=g).to(DEVICE)
    a = torch.tensor(0.7, device=DEVICE)
    logit = torch.randn(D, generator=g).to(DEVICE)
    leaves = {"qv": qv, "a": a, "logit": logit}
    res = {}
    for backend in ("naive", "triton"):
        xs = {k: x.detach().clone().double().requires_grad_(True) if backend == "naive" else x.detach().clone().requires_grad_(True) for k, x in leaves.items()}
        q, v = xs["qv"].chunk(2, dim=-1)
        decay = torch.sigmoid(xs["logit"]).expand(B, L, D)
        y, f = vmisa_scan(q, v, xs["a"].expand(L), 1.0, decay=decay, offset=2, output_final_state=True, backend=backend)
        (y.square().sum() + f.sum()).backward()
        res[backend] = {"y": y.detach(), "final": f.detach(), **{"d" + k: x.grad for k, x in xs.items()}}
    check(res["triton"], res["naive"], torch.float32)


def test_nan_debug_allocation(monkeypatch):
    x = triton_scan._alloc((3, 4), torch.float32, DEVICE)
    assert torch.isnan(x).all()
    monkeypatch.setenv(triton_scan.NAN_ENV, "0")
    assert triton_scan._alloc((3, 4), torch.float32, DEVICE).shape == (3, 4)


def test_empty_sequence_returns_initial_state():
    q = torch.randn(B, 0, 8, device=DEVICE)
    h0 = torch.randn(B, 8, device=DEVICE)
    y, f = vmisa_scan(q, q, torch.rand(B, 0, device=DEVICE), 1.0, initial_state=h0, output_final_state=True, backend="triton")
    assert y.shape == (B, 0, 8) and torch.equal(f, h0)


# --------------------------------------------------------------------------- integration
def test_gradcheck_float64():
    """Finite differences through the whole op (float64 runs in float64 in the kernel)."""
    g = torch.Generator().manual_seed(5)
    L, D = 6, 3
    xs = [torch.randn(1, L, D, generator=g, dtype=torch.float64), torch.randn(1, L, D, generator=g, dtype=torch.float64),
          torch.rand(1, L, 1, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64),
          torch.randn(1, D, generator=g, dtype=torch.float64), torch.rand(1, L, D, generator=g, dtype=torch.float64)]
    xs = [x.to(DEVICE).requires_grad_(True) for x in xs]
    pos = torch.tensor([[1]], device=DEVICE)

    def f(q, v, alpha, beta, h0, decay):
        return scan_op.vmisa_scan_op(q, v, alpha, beta, h0, pos, True, decay, None, backend="triton")

    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-8)


def test_layer_triton_matches_torch_backend_streaming():
    """A causal layer fed in two pieces (state carried, per-sequence offsets) gives the same
    outputs and gradients with the triton and torch backends."""
    torch.manual_seed(0)
    layer = VMISALayer(12, expand=2, decay="input", beta_per_channel=True).to(DEVICE)
    x = torch.randn(B, 90, 12, device=DEVICE)
    res = {}
    for backend in ("torch", "triton"):
        layer.backend = backend
        layer.zero_grad()
        xx = x.clone().requires_grad_(True)
        y1, st = layer(xx[:, :50], output_state=True)
        y2 = layer(xx[:, 50:], st)
        y = torch.cat([y1, y2], dim=1)
        y.square().sum().backward()
        res[backend] = {"y": y.detach(), "dx": xx.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    check(res["triton"], res["torch"], torch.float32)


def test_compiles_fullgraph_with_triton_backend():
    case = make_case(70, 20, "BL", "BLD", 2, True, torch.float32)

    def f(q, v, alpha, beta, h0, decay):
        y, fin = vmisa_scan(q, v, alpha, beta, initial_state=h0, decay=decay, offset=2, output_final_state=True, backend="triton")
        return y.square().sum() + fin.sum()

    args = [case[k] for k in DIFF]
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    res = {}
    for name, fn in (("eager", f), ("compiled", compiled)):
        leaves = [a.detach().clone().requires_grad_(True) for a in args]
        loss = fn(*leaves)
        loss.backward()
        res[name] = {"loss": loss.detach(), **{f"d{i}": x.grad for i, x in enumerate(leaves)}}
    check(res["compiled"], res["eager"], torch.float32)


@pytest.mark.parametrize("decay,varlen", [(False, False), (True, False), (True, True)])
def test_opcheck(decay, varlen):
    """torch.library.opcheck: schema, fake (meta) shapes, autograd registration, AOT tracing."""
    g = torch.Generator().manual_seed(0)
    L, D = 70, 20
    nb = 1 if varlen else B
    q = torch.randn(nb, L, D, generator=g).to(DEVICE).requires_grad_(True)
    v = torch.randn(nb, L, D, generator=g).to(DEVICE).requires_grad_(True)
    alpha = torch.rand(nb, L, 1, generator=g).to(DEVICE).requires_grad_(True)
    beta = torch.randn(D, generator=g).to(DEVICE).requires_grad_(True)
    cu = torch.tensor([0, 10, 10, L], dtype=torch.int32, device=DEVICE) if varlen else None
    h0 = torch.randn(3 if varlen else nb, D, generator=g).to(DEVICE).requires_grad_(True)
    dec = torch.rand(nb, L, D, generator=g).to(DEVICE).requires_grad_(True) if decay else None
    pos = torch.tensor([[2]], device=DEVICE)
    torch.library.opcheck(scan_op.scan_fwd, (q, v, alpha, beta, h0, pos, dec, cu, True, "triton"))


def test_auto_backend_and_env(monkeypatch):
    monkeypatch.delenv("VMISEQ_BACKEND", raising=False)
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"  # triton imports here
    monkeypatch.setenv("VMISEQ_BACKEND", "naive")
    assert resolve_backend("auto", torch.device("cuda")) == "naive"
    assert resolve_backend("torch", torch.device("cuda")) == "torch"  # explicit choice wins


def run_without_interpreter(code: str, timeout: int) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh python whose environment lacks TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the CPU error message without the interpreter")
def test_cpu_without_interpreter_is_a_clear_error():
    code = (
        "import torch\nfrom vmiseq.ops import vmisa_scan\n"
        "q = torch.randn(1, 4, 3)\n"
        "try:\n    vmisa_scan(q, q, torch.rand(1, 4), 1.0, backend='triton')\n"
        "except ValueError as e:\n    print('ERR', e)\n"
    )
    out = run_without_interpreter(code, timeout=120)
    assert "ERR backend: 'triton' needs CUDA tensors" in out.stdout, out.stdout + out.stderr
    assert "TRITON_INTERPRET=1" in out.stdout


def test_kernels_compile_for_h100():
    """Lower the kernels to sm_90 cubins with the bundled ptxas (no GPU needed) for every
    tuned shape, the pinned configs, the split path's summary passes and its carry scan:
    catches GPU-only lowering errors, checks loads stay vectorised and the shapes without a
    register cap never spill."""
    code = (
        "from vmiseq.kernels import tuning\n"
        "from vmiseq.kernels.compile_check import compile_variant\n"
        "for k, shapes in (('fwd', tuning.FWD_SHAPES), ('bwd', tuning.BWD_SHAPES)):\n"
        "    for bd, w, cap in shapes:\n"
        "        r = compile_variant(k, bd, w, 2, 'channel', maxnreg=cap)\n"
        "        print(k, bd, w, cap, r.registers, r.spill_bytes, r.vector_loads)\n"
        "for k in ('fwd', 'bwd'):  # the other constexpr branches: packed, per-channel alpha, summary, bf16 gates\n"
        "    r = compile_variant(k, 16, 4, 2, 'token', VARLEN=True, ALPHA_PER_CH=True, BETA_PER_CH=False,\n"
        "                        USE_MASK=False)\n"
        "    print(k, 16, 4, 'None', r.registers, r.spill_bytes, r.vector_loads)\n"
        "    r = compile_variant(k, tuning.PINNED_BLOCK_D[k], 4, 2, 'channel', gate='bf16', SUMMARY=True)\n"
        "    print(k, tuning.PINNED_BLOCK_D[k], 4, 'None', r.registers, r.spill_bytes, r.vector_loads)\n"
        "for p2 in (2, 256):  # carry scan: 16 channels x NSEG_P2 segments\n"
        "    r = compile_variant('carry', 16, 8 if p2 >= 128 else 4, p2, 'token')\n"
        "    print('carry', 16, p2, 'None', r.registers, r.spill_bytes, 'True')\n"
    )
    out = run_without_interpreter(code, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.strip().splitlines()]
    assert len(rows) == len(tuning.FWD_SHAPES) + len(tuning.BWD_SHAPES) + 4 + 2
    for kernel, bd, w, cap, regs, spill, vec in rows:
        assert vec == "True", f"{kernel} BLOCK_D={bd} warps={w}: tile loads are not vectorised"
        if cap == "None":
            assert int(spill) == 0, f"{kernel} BLOCK_D={bd} warps={w}: {spill} bytes of register spills"


@pytest.mark.skipif(DEVICE == "cuda", reason="the dry run is the CPU stand-in for the GPU benchmark")
def test_benchmark_script_dry_run(tmp_path):
    """benchmarks/bench_kernel.py's GPU pipeline (timing, traffic model, targets, JSON, plots)
    run end to end on CPU at toy sizes."""
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernel.py"
    out = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--lengths", "64", "--decays", "none", "channel",
         "--methods", "triton", "torch", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "bench_kernel_dryrun.json").read_text())["results"]
    timed = [r for r in res["rows"] if "ms" in r]
    assert {(r["method"], r["decay"], r["mode"]) for r in timed} == {
        (m, d, mode) for m in ("triton", "torch") for d in ("none", "channel") for mode in ("fwd", "fwd+bwd")
    }
    assert all(r["GB/s"] > 0 for r in timed)
    assert (tmp_path / "bench_kernel_dryrun_fwd.png").exists()


def test_gpu_autotune_space():
    """The GPU configs (not used by the interpreter) build, and the pinned config stays inside
    the BLOCK_D values a plan allows."""
    for kernel in ("fwd", "bwd"):
        configs = tuning.configs(kernel, gpu=True)
        assert len(configs) >= 6
        assert all(c.kwargs["LOOP_STAGES"] in (1, 2, 3) for c in configs)
        assert tuning.pinned(kernel, (16,), gpu=True).kwargs["BLOCK_D"] == 16
        assert tuning.pinned(kernel, (32, 64), gpu=True).kwargs["BLOCK_D"] == 32
        assert tuning.pinned(kernel, (64,), gpu=True).kwargs["BLOCK_D"] == 64
    assert tuning.pinned("fwd", (16,), gpu=False).kwargs["BLOCK_D"] == 16
    assert tuning.pinned("fwd", (16, 64), gpu=False).kwargs["BLOCK_D"] == 64
