"""Benchmark the Triton causal VMI-SA scan against its peers (GPU), or check it on CPU.

On CUDA (the real benchmark): bf16, B=8, D=2048, L = 1k ... 64k, forward and
forward+backward, for
  * ``triton``      -- ``vmisa_scan(..., backend="triton")`` (this repository's kernels);
  * ``torch``       -- ``vmisa_scan(..., backend="torch")`` (the chunked PyTorch backend);
  * ``fla_hgrn``    -- flash-linear-attention's ``chunk_hgrn(x, g)`` (decay on; x = alpha*q*v
                       and g = log(decay) precomputed outside the timing: favourable to FLA);
  * ``fla_cumsum``  -- FLA's ``chunk_global_cumsum`` (decay off; backward = reverse cumsum);
  * ``sdpa``        -- causal ``scaled_dot_product_attention`` with D/128 heads of 128.
Decay "none" (the paper's prefix sum), "token" (a (B, L) gate: the layer's "input" mode) and
"channel" (a (B, L, D) fp32 gate, what HGRN's g is). Times are medians from
``triton.testing.do_bench`` (CUDA events, L2 flushed). Achieved bandwidth = the op's minimal
traffic (read q, v, alpha, decay, write y; the backward reads q, v, dy, alpha, decay and
writes dq, dv, dalpha, ddecay) / time, also as a fraction of the device's peak bandwidth
(from NVML, else a table of known GPUs, else ``--peak-gbs``) and of a measured device copy.
Targets (issue 3, H100): forward >= 80 % of peak bandwidth; forward+backward >= 3x the torch
backend; forward+backward >= 1.5x ``chunk_hgrn`` with decay on.

Without CUDA it says so and runs a correctness smoke of the same kernels through Triton's
interpreter (TRITON_INTERPRET=1) against the naive loop, and writes its JSON. ``--dry-run``
runs the GPU benchmark pipeline itself on CPU at toy sizes (times meaningless) to check it.

    python benchmarks/bench_kernel.py                 # GPU benchmark, or the CPU smoke
    python benchmarks/bench_kernel.py --lengths 1k 4k 16k --methods triton torch
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton kernel import

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, parse_size, print_table, progress, save_plot, write_json  # noqa: E402

from vmiseq.ops import vmisa_scan  # noqa: E402

METHODS = ("triton", "torch", "fla_hgrn", "fla_cumsum", "sdpa")
DECAYS = ("none", "token", "channel")
# HBM peak bandwidth (GB/s) of common GPUs, when NVML cannot tell
KNOWN_PEAK_GBS = {
    "H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 NVL": 3900.0, "H100 PCIe": 2000.0,
    "H100": 3350.0, "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0, "A100": 1555.0, "L40S": 864.0,
    "A10G": 600.0, "RTX 4090": 1008.0, "RTX 3090": 936.0,
}


# ----------------------------------------------------------------------------- device facts
def peak_bandwidth_gbs(override: float | None) -> tuple[float, str]:
    """The device's memory bandwidth in GB/s and where the figure came from."""
    if override:
        return override, "--peak-gbs"
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)
        bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(h)
        return clock_mhz * 1e6 * 2 * bus_bits / 8 / 1e9, "nvml (max memory clock x bus width, DDR)"
    except Exception:
        pass
    name = torch.cuda.get_device_name()
    for key, gbs in KNOWN_PEAK_GBS.items():
        if key.lower() in name.lower():
            return gbs, f"table entry {key!r}"
    return float("nan"), "unknown (pass --peak-gbs)"


def copy_bandwidth_gbs(n_bytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (read + write), the practical ceiling."""
    import triton.testing

    x = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=5, rep=50)
    return 2 * n_bytes / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------- traffic model
def ideal_bytes(B: int, L: int, D: int, elem: int, decay: str, backward: bool) -> int:
    """Minimal memory traffic of the VMI-SA op (fp32 alpha (B, L); fp32 decay)."""
    big, tok = B * L * D, B * L
    fwd = 3 * big * elem + 4 * tok  # q, v, y; alpha
    fwd += {"none": 0, "token": 4 * tok, "channel": 4 * big}[decay]
    if not backward:
        return fwd
    bwd = 5 * big * elem + 2 * 4 * tok  # q, v, dy -> dq, dv; alpha -> dalpha
    bwd += {"none": 0, "token": 2 * 4 * tok, "channel": 2 * 4 * big}[decay]
    return fwd + bwd


# ----------------------------------------------------------------------------- workloads
def make_inputs(B, L, D, dtype, device, decay, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, L, D, device=device, dtype=dtype, generator=g)
    v = torch.randn(B, L, D, device=device, dtype=dtype, generator=g)
    alpha = torch.rand(B, L, device=device, generator=g) * 0.1
    dec = None
    if decay == "token":
        dec = 0.9 + 0.1 * torch.rand(B, L, device=device, generator=g)
    elif decay == "channel":
        dec = 0.9 + 0.1 * torch.rand(B, L, D, device=device, generator=g)
    dy = torch.randn(B, L, D, device=device, dtype=dtype, generator=g)
    return q, v, alpha, dec, dy


def build(method, B, L, D, dtype, device, decay, seed, heads):
    """(forward fn, forward+backward fn, tensors whose .grad to reset), or a reason string."""
    q, v, alpha, dec, dy = make_inputs(B, L, D, dtype, device, decay, seed)
    if method in ("triton", "torch"):
        leaves = [q, v, alpha] + ([dec] if dec is not None else [])
        for x in leaves:
            x.requires_grad_(True)

        def fwd():
            with torch.no_grad():
                return vmisa_scan(q, v, alpha, 1.0, decay=dec, backend=method)

        def fwd_bwd():
            y = vmisa_scan(q, v, alpha, 1.0, decay=dec, backend=method)
            y.backward(dy)

        return fwd, fwd_bwd, leaves
    if method in ("fla_hgrn", "fla_cumsum"):
        try:
            if method == "fla_hgrn":
                from fla.ops.hgrn import chunk_hgrn
            else:
                try:
                    from fla.ops.utils import chunk_global_cumsum
                except ImportError:
                    from fla.ops.utils.cumsum import chunk_global_cumsum
        except ImportError as e:
            return f"flash-linear-attention not installed ({e.name})"
        x = (alpha.unsqueeze(-1) * q.float() * v.float()).to(dtype).requires_grad_(True)
        if method == "fla_hgrn":
            if dec is None:
                return "chunk_hgrn always has a decay gate"
            gate = (dec if dec.dim() == 3 else dec.unsqueeze(-1).expand(B, L, D)).log().to(dtype)
            gate = gate.contiguous().requires_grad_(True)

            def fwd():
                with torch.no_grad():
                    return chunk_hgrn(x, gate)[0]

            def fwd_bwd():
                chunk_hgrn(x, gate)[0].backward(dy)

            return fwd, fwd_bwd, [x, gate]
        if dec is not None:
            return "chunk_global_cumsum has no decay"
        xs = x.detach().view(B, L, heads, D // heads)
        dys = dy.view(B, L, heads, D // heads)

        def fwd():
            return chunk_global_cumsum(xs)

        def fwd_bwd():  # no autograd in FLA's cumsum: the backward is a reverse cumsum of dy
            chunk_global_cumsum(xs)
            chunk_global_cumsum(dys, reverse=True)

        return fwd, fwd_bwd, []
    if method == "sdpa":
        if dec is not None:
            return "softmax attention has no decay"
        import torch.nn.functional as F

        hd = D // heads
        qh, kh, vh = (t.detach().view(B, L, heads, hd).transpose(1, 2).contiguous().requires_grad_(True) for t in (q, v, q))
        dyh = dy.view(B, L, heads, hd).transpose(1, 2)

        def fwd():
            with torch.no_grad():
                return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)

        def fwd_bwd():
            F.scaled_dot_product_attention(qh, kh, vh, is_causal=True).backward(dyh)

        return fwd, fwd_bwd, [qh, kh, vh]
    raise ValueError(f"--methods: unknown method {method!r}")


def timer(device: str):
    """ms per call: do_bench on CUDA (events, L2 flush); a wall-clock median on CPU (dry run)."""
    if device == "cuda":
        import triton.testing

        return lambda fn, leaves: triton.testing.do_bench(fn, warmup=10, rep=100, grad_to_none=leaves or None)

    def cpu(fn, leaves):
        fn()
        ts = []
        for _ in range(3):
            for x in leaves:
                x.grad = None
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[1] * 1e3

    return cpu


def run_benchmark(args, device: str) -> dict:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    elem = torch.finfo(dtype).bits // 8
    B, D = args.batch, args.dim
    if device == "cuda":
        peak, peak_src = peak_bandwidth_gbs(args.peak_gbs)
        copy_gbs = copy_bandwidth_gbs()
    else:
        peak, peak_src, copy_gbs = float("nan"), "dry run on CPU", float("nan")
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (dry run)'}; "
          f"peak {peak:.0f} GB/s ({peak_src}); measured copy {copy_gbs:.0f} GB/s")
    time_ms = timer(device)
    rows, skipped = [], {}
    jobs = [(L, d, m) for L in args.lengths for d in args.decays for m in args.methods]
    for L, decay, method in progress(jobs, desc="bench", total=len(jobs)):
        if method == "sdpa" and L > args.sdpa_max_len:
            continue
        try:
            built = build(method, B, L, D, dtype, device, decay, args.seed, args.heads)
        except torch.OutOfMemoryError:
            built = "out of memory (inputs)"
        if isinstance(built, str):
            if "not installed" in built:
                skipped[method] = built
            elif "has no decay" not in built and "always has a decay" not in built:
                rows.append({"L": L, "decay": decay, "method": method, "note": built})
            continue
        fwd, fwd_bwd, leaves = built
        for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            row = {"L": L, "decay": decay, "method": method, "mode": mode}
            try:
                ms = time_ms(fn, leaves)
                row["ms"] = ms
                if method in ("triton", "torch"):
                    gbs = ideal_bytes(B, L, D, elem, decay, mode == "fwd+bwd") / (ms * 1e-3) / 1e9
                    row["GB/s"] = gbs
                    row["% peak"] = 100 * gbs / peak
                    row["% copy"] = 100 * gbs / copy_gbs
            except torch.OutOfMemoryError:
                row["note"] = "out of memory"
            except Exception as e:  # a peer failing (API drift) must not stop the benchmark
                row["note"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
            rows.append(row)
        del built, fwd, fwd_bwd, leaves
        if device == "cuda":
            torch.cuda.empty_cache()
    _add_speedups(rows)
    for method, why in skipped.items():
        print(f"skipped {method}: {why}")
    return {"rows": rows, "skipped": skipped, "peak_gbs": peak, "peak_source": peak_src, "copy_gbs": copy_gbs,
            "targets": _targets(rows), "shape": {"B": B, "D": D, "dtype": args.dtype}}


def _add_speedups(rows) -> None:
    """Speed-up of triton over each other method at the same (L, decay, mode)."""
    tri = {(r["L"], r["decay"], r["mode"]): r["ms"] for r in rows if r.get("method") == "triton" and "ms" in r}
    for r in rows:
        key = (r["L"], r["decay"], r.get("mode"))
        if "ms" in r and key in tri:
            r["triton speed-up"] = r["ms"] / tri[key]


def _targets(rows) -> list[dict]:
    """The issue's targets, checked at every length where the numbers exist."""
    get = {(r["L"], r["decay"], r["method"], r.get("mode")): r for r in rows if "ms" in r}
    out = []
    for (L, decay, method, mode), r in sorted(get.items()):
        if method != "triton":
            continue
        if mode == "fwd" and decay == "none":
            out.append({"L": L, "target": "fwd >= 80% of peak bandwidth", "value": r.get("% peak"),
                        "met": bool(r.get("% peak", 0) >= 80)})
        if mode == "fwd+bwd":
            t = get.get((L, decay, "torch", mode))
            if t and decay == "none":
                out.append({"L": L, "target": "fwd+bwd >= 3x torch backend", "value": t["ms"] / r["ms"],
                            "met": t["ms"] / r["ms"] >= 3})
            f = get.get((L, decay, "fla_hgrn", mode))
            if f and decay == "channel":
                out.append({"L": L, "target": "fwd+bwd >= 1.5x FLA chunk_hgrn (decay on)", "value": f["ms"] / r["ms"],
                            "met": f["ms"] / r["ms"] >= 1.5})
    return out


def report(results, args, device) -> None:
    rows = results["rows"]
    cols = ["L", "decay", "method", "mode", "ms", "GB/s", "% peak", "% copy", "triton speed-up", "note"]
    print_table(rows, cols, title=f"VMI-SA scan, B={args.batch} D={args.dim} {args.dtype} ({device})")
    if results["targets"]:
        print_table(results["targets"], ["L", "target", "value", "met"], title="targets")
    tag = "" if device == "cuda" else "_dryrun"
    out_dir = Path(args.out)
    write_json(out_dir / f"bench_kernel{tag}.json", results, args,
               device=torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run: times meaningless)")
    for mode in ("fwd", "fwd+bwd"):
        series = {}
        for r in rows:
            if r.get("mode") == mode and "ms" in r:
                series.setdefault(f"{r['method']} ({r['decay']})", {})[r["L"]] = r["ms"]
        if series:
            Ls = sorted({L for s in series.values() for L in s})
            save_plot(out_dir / f"bench_kernel{tag}_{mode.replace('+', '_')}.png", Ls,
                      {k: [s.get(L, float("nan")) for L in Ls] for k, s in series.items()},
                      xlabel="sequence length L", ylabel="ms", logx=True, logy=True,
                      title=f"VMI-SA scan {mode}, B={args.batch} D={args.dim} {args.dtype}")


# ----------------------------------------------------------------------------- CPU smoke
def cpu_smoke(args) -> None:
    """Triton kernels (interpreter) vs the naive loop on small shapes; writes JSON."""
    from vmiseq.kernels import triton_scan

    print("bench_kernel: no CUDA device: the benchmark needs a GPU (bf16 B=8 D=2048 L=1k..64k).\n"
          "Running a correctness smoke of the same Triton kernels through Triton's interpreter instead.")
    if not triton_scan.INTERPRET:
        raise SystemExit("TRITON_INTERPRET=1 was not in effect when the kernels were imported")
    rows = []
    cases = [(L, D, decay, dt) for L in args.smoke_lengths for D in (48,) for decay in DECAYS
             for dt in ("fp32", "bf16")]
    for L, D, decay, dt in progress(cases, desc="smoke", total=len(cases)):
        dtype = torch.float32 if dt == "fp32" else torch.bfloat16
        q, v, alpha, dec, dy = make_inputs(2, L, D, dtype, "cpu", decay, args.seed)
        res = {}
        for backend in ("naive", "triton"):
            xs = [t.detach().clone().double() if backend == "naive" else t.detach().clone() for t in (q, v, alpha)]
            d = None if dec is None else (dec.double() if backend == "naive" else dec.clone())
            leaves = xs + ([d] if d is not None else [])
            for x in leaves:
                x.requires_grad_(True)
            t0 = time.perf_counter()
            y, f = vmisa_scan(*xs, 1.0, decay=d, offset=3, output_final_state=True, backend=backend)
            torch.autograd.backward([y, f], [dy.to(y.dtype), torch.ones_like(f)])
            res[backend] = ([y.detach(), f.detach()] + [x.grad for x in leaves], time.perf_counter() - t0)
        errs = [((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(res["triton"][0], res["naive"][0])]
        rows.append({"L": L, "D": D, "decay": decay, "dtype": dt, "max rel RMS err": max(errs),
                     "ok": max(errs) <= (1e-2 if dt == "bf16" else 1e-5),
                     "interpreter s": res["triton"][1], "naive s": res["naive"][1]})
    print_table(rows, title="Triton kernels (interpreter) vs naive: relative RMS error over y, final state, all gradients")
    write_json(Path(args.out) / "bench_kernel_cpu_smoke.json", rows, args,
               note="no GPU: correctness smoke through the Triton interpreter, not a benchmark")
    if not all(r["ok"] for r in rows):
        raise SystemExit("smoke FAILED: an error above its tolerance")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=parse_size, nargs="+", default=None,
                   help="sequence lengths (e.g. 1k 4k 64k); default 1k..64k (dry run: 64 128)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16, help="heads for SDPA and FLA's cumsum (D/heads per head)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--decays", nargs="+", default=list(DECAYS), choices=DECAYS)
    p.add_argument("--sdpa-max-len", type=parse_size, default=64 * 1024, help="skip SDPA above this length")
    p.add_argument("--peak-gbs", type=float, default=None, help="device memory bandwidth in GB/s (default: NVML)")
    p.add_argument("--smoke-lengths", type=parse_size, nargs="+", default=[1, 65, 300], help="CPU smoke lengths")
    p.add_argument("--dry-run", action="store_true",
                   help="on CPU: run the benchmark pipeline at toy sizes (default B=2 D=64 L=64,128) to test it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON and PNG files")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    if torch.cuda.is_available():
        args.lengths = args.lengths or [1024 * 2**i for i in range(7)]
        report(run_benchmark(args, "cuda"), args, "cuda")
    elif args.dry_run:
        if args.batch == 8 and args.dim == 2048:  # defaults: shrink to toy sizes for the interpreter
            args.batch, args.dim = 2, 64
        args.lengths = args.lengths or [64, 128]
        args.dtype = "fp32" if args.dtype == "bf16" else args.dtype
        report(run_benchmark(args, "cpu"), args, "cpu")
    else:
        cpu_smoke(args)


if __name__ == "__main__":
    main()
