"""The Triton scan on a real GPU in one command (under 10 minutes on one H100/H200).

    python benchmarks/gpu_check.py              # everything; JSON in benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --quick      # bf16 only, a shorter large case
    python benchmarks/gpu_check.py --no-autotune  # pinned configs: no tuning, far fewer compiles
    python benchmarks/gpu_check.py --dry-run    # CPU: the whole script at toy sizes through
                                                # Triton's interpreter (times meaningless)

Sections (each fails soft: its error is recorded in the JSON and the next one runs; the JSON
is rewritten after every section, so a killed run still leaves what it measured):
  env          device, versions, SM count, measured device-to-device copy bandwidth
  geometry     programs per launch at the benchmark shapes (kernels/geometry.py)
  reverse      the backward (reverse recurrence) against the float64 naive loop, strong
               decays, one pass and the forced split path
  packed       70,000 packed sequences (lengths 0-2) against the float64 torch backend
  large        (1, 2^21, 1024) bf16 against the torch backend (fp32 accumulation)
  determinism  the backward run twice, compared bitwise (one pass and split)
  bench        do_bench over (1,16k,256) (4,4k,512) (8,2k,1024) (1,64k,256) x {bf16, fp32}
               x {no decay, token decay}, forward and forward+backward, eager and
               CUDA-graphed: ms, GB/s of the op's minimal traffic, % of the measured copy,
               FLA's chunk_hgrn beside it when flash-linear-attention is installed
  tests        the Triton test files run on the device (pytest), on the budget left
  targets      forward >= 85 % of the copy bandwidth at every shape; forward+backward
               >= 2x chunk_hgrn at (1,16k,256) and (8,2k,1024)
With ``--docs`` the GPU table in docs/kernels.md (between its gpu_check markers) is rewritten.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the dry run: before the kernels are imported

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, write_json  # noqa: E402

from vmiseq.kernels import geometry  # noqa: E402
from vmiseq.ops import vmisa_scan  # noqa: E402

from gpu_check_bench import K, SHAPES, inputs, section_bench, targets, timer, write_docs_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Ctx:
    def __init__(self, args):
        self.args = args
        self.cuda = torch.cuda.is_available() and not args.dry_run
        self.dev = "cuda" if self.cuda else "cpu"
        self.copy_gbs = float("nan")
        self.start = time.perf_counter()
        self.time = timer(self)
        if args.dry_run:  # a 2-SM 'device': batch-1 toy shapes take the split path as on a GPU
            from vmiseq.kernels import triton_scan

            triton_scan.SETTINGS.sm_count = 2


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def fwd_bwd(backend, q, v, alpha, dec, dy, dtype=None, **kw):
    """(y, final, grads of q, v, alpha, decay) of one forward+backward."""
    leaves = [x.detach().clone() for x in (q, v, alpha) + ((dec,) if dec is not None else ())]
    if dtype is not None:
        leaves = [x.to(dtype) for x in leaves]
    for x in leaves:
        x.requires_grad_(True)
    d = leaves[3] if dec is not None else None
    y, f = vmisa_scan(leaves[0], leaves[1], leaves[2], 1.0, decay=d, output_final_state=True, backend=backend, **kw)
    grads = torch.autograd.grad([y, f], leaves, [dy.to(y.dtype), torch.ones_like(f)])
    return [y.detach(), f.detach()] + list(grads)


@contextlib.contextmanager
def split_forced(on: bool):
    """Force the small-batch split path on, or off (one pass), for the block."""
    from vmiseq.kernels import triton_scan

    saved = dataclasses.replace(triton_scan.SETTINGS)
    triton_scan.SETTINGS.split = "always" if on else "never"
    triton_scan.SETTINGS.sm_count = triton_scan.SETTINGS.sm_count or 2
    try:
        yield
    finally:
        triton_scan.SETTINGS = saved


# ----------------------------------------------------------------------------- sections
def section_env(ctx):
    import triton

    out = {"torch": torch.__version__, "triton": triton.__version__, "dry_run": ctx.args.dry_run}
    try:
        import fla  # noqa: F401

        out["fla"] = getattr(fla, "__version__", "installed")
    except ImportError:
        out["fla"] = None
    n = (1 << 30) if ctx.cuda else (1 << 22)
    x = torch.empty(n // 2, dtype=torch.bfloat16, device=ctx.dev)
    y = torch.empty_like(x)
    ms = ctx.time(lambda: y.copy_(x))
    ctx.copy_gbs = 2 * n / (ms * 1e-3) / 1e9
    out["copy_GBps"] = ctx.copy_gbs
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        out.update(device=p.name, sm_count=p.multi_processor_count, memory_GiB=p.total_memory / 2**30)
    else:
        out["device"] = "cpu (dry run through the Triton interpreter: times meaningless)"
    return out


def section_geometry(ctx):
    sms = torch.cuda.get_device_properties(0).multi_processor_count if ctx.cuda else 132
    rows = []
    for B, L, D in SHAPES + [(1, 64 * K, 1024)]:
        for kernel, bds in (("fwd", (16, 32, 64)), ("bwd", (16, 32))):
            p = geometry.plan_launch(B, L, D, sm_count=sms, block_ds=bds)
            rows.append({"shape": f"({B},{L},{D})", "kernel": kernel, "segments": p.n_seg, "seg_tokens":
                         p.seg_chunks * geometry.BLOCK_T, "min programs": p.min_programs_planned,
                         "x SMs": p.min_programs_planned / sms})
    return {"sm_count": sms, "rows": rows, "ok": all(r["x SMs"] >= 2 for r in rows)}


def section_tests(ctx):
    if ctx.args.dry_run:
        return {"skipped": "dry run (the tests run on CPU in CI)"}
    files = ["tests/test_triton.py", "tests/test_triton_paths.py", "tests/test_varlen.py", "tests/test_triton_launch.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files]
    if ctx.args.quick:
        cmd += ["-k", "not compile_for_h100 and not benchmark_script"]
    timeout = max(60.0, min(ctx.args.tests_timeout, ctx.args.budget_s + 60 - (time.perf_counter() - ctx.start)))
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"ok": False, "error": f"pytest still running after {timeout:.0f} s", "tail": out[-1500:]}
    return {"returncode": r.returncode, "ok": r.returncode == 0, "tail": r.stdout[-1500:] + r.stderr[-500:]}


def section_reverse(ctx):
    from vmiseq.kernels import triton_scan

    B, L, D = (2, 1000, 64) if ctx.cuda else (1, 200, 16)
    rows = []
    for decay in ("token", "channel"):
        for split in (False, True):
            q, v, a, dec, dy = inputs(B, L, D, torch.float32, ctx.dev, decay, seed=1, strong=True)
            ref = fwd_bwd("naive", q, v, a, dec, dy, torch.float64)
            with split_forced(split):
                out = fwd_bwd("triton", q, v, a, dec, dy)
                segments = triton_scan.plan_for("bwd", q, B, L, D, False).n_seg
            errs = [rel_rms(o, r) for o, r in zip(out, ref)]
            rows.append({"decay": decay, "split": split, "segments": segments, "max rel RMS": max(errs),
                         "ok": max(errs) < 1e-5 and (segments > 1) == split})
    return {"rows": rows, "ok": all(r["ok"] for r in rows)}


def section_packed(ctx):
    N, D = (70_000, 16) if ctx.cuda else (20, 4)
    g = torch.Generator().manual_seed(2)
    lens = torch.randint(0, 3, (N,), generator=g)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(torch.int32).to(ctx.dev)
    T = int(lens.sum())
    q, v, a, dec, dy = inputs(1, T, D, torch.float32, ctx.dev, "token", seed=3)
    h0 = torch.randn(N, D, device=ctx.dev)
    res = {}
    for backend, dt in (("torch", torch.float64), ("triton", None)):
        res[backend] = fwd_bwd(backend, q, v, a, dec, dy, dt, cu_seqlens=cu, initial_state=h0.to(dt or h0.dtype))
    errs = [rel_rms(o, r) for o, r in zip(res["triton"], res["torch"])]
    return {"N": N, "T": T, "D": D, "max rel RMS": max(errs), "ok": max(errs) < 1e-5}


def section_large(ctx):
    L, D = ((1 << 19) if ctx.args.quick else (1 << 21), 1024) if ctx.cuda else (1 << 10, 16)
    q, v, a, dec, dy = inputs(1, L, D, torch.bfloat16, ctx.dev, "token", seed=4)
    out = {"shape": f"(1,{L},{D})"}
    with torch.no_grad():
        yt, ft = vmisa_scan(q, v, a, 1.0, decay=dec, output_final_state=True, backend="triton")
        yr, fr = vmisa_scan(q.float(), v.float(), a, 1.0, decay=dec, output_final_state=True, backend="torch")
    out["fwd rel RMS y"], out["fwd rel RMS final"] = rel_rms(yt, yr), rel_rms(ft, fr)
    del yr, fr
    gt = fwd_bwd("triton", q, v, a, dec, dy)
    gr = fwd_bwd("torch", q, v, a, dec, dy, torch.float32)
    out["fwd+bwd max rel RMS"] = max(rel_rms(x, y) for x, y in zip(gt, gr))
    out["ok"] = max(out["fwd rel RMS y"], out["fwd+bwd max rel RMS"]) < 1e-2
    return out


def section_determinism(ctx):
    shapes = [(1, 16 * K, 256), (8, 2 * K, 1024)] if ctx.cuda else [(1, 256, 16)]
    rows = []
    for B, L, D in shapes:
        q, v, a, dec, dy = inputs(B, L, D, torch.bfloat16, ctx.dev, "token", seed=5)
        first, second = (fwd_bwd("triton", q, v, a, dec, dy) for _ in range(2))
        rows.append({"shape": f"({B},{L},{D})", "bitwise equal": all(torch.equal(x, y) for x, y in zip(first, second))})
    return {"rows": rows, "ok": all(r["bitwise equal"] for r in rows)}


# the measurements first, the (longer, tuning-heavy) device test run last, on what is left of the budget
SECTIONS = {"env": section_env, "geometry": section_geometry, "reverse": section_reverse, "packed": section_packed,
            "large": section_large, "determinism": section_determinism, "bench": section_bench,
            "tests": section_tests}


def run_sections(ctx, names, out_path) -> dict:
    results = {"sections": {}}
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        if t0 - start > ctx.args.budget_s and name != "env":
            results["sections"][name] = {"status": "skipped", "error": "time budget spent"}
            continue
        print(f"gpu_check: {name} ...", flush=True)
        try:
            res = {"status": "ok", **SECTIONS[name](ctx)}
        except Exception as e:  # fail soft: record and continue with the next section
            res = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results["sections"][name] = res
        print(f"gpu_check: {name}: {res['status']} ({res['seconds']} s){' ' + res['error'] if 'error' in res else ''}")
        if ctx.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        results["targets"] = targets(ctx, results["sections"])
        write_json(out_path, results, ctx.args)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="bf16 only, a shorter large case, fewer timings")
    p.add_argument("--dry-run", action="store_true", help="CPU (Triton interpreter), toy sizes: checks the script")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--no-autotune", action="store_true",
                   help="pinned configs only (VMISEQ_TRITON_AUTOTUNE=0): no tuning, far fewer compiles")
    p.add_argument("--budget-s", type=float, default=540.0, help="skip the remaining sections after this long")
    p.add_argument("--tests-timeout", type=float, default=300.0,
                   help="seconds for the pytest section (at most what the budget leaves, at least 60)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for gpu_check.json")
    p.add_argument("--docs", nargs="?", const=str(ROOT / "docs" / "kernels.md"), default=None,
                   help="rewrite the GPU table in this markdown file (default docs/kernels.md)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_check: no CUDA device. Run it on a GPU, or use --dry-run to check the script on CPU.")
        return 2
    if args.no_autotune:
        os.environ["VMISEQ_TRITON_AUTOTUNE"] = "0"  # read at every launch; the pytest section inherits it
    ctx = Ctx(args)
    names = ["env"] + [n for n in args.sections if n != "env"]
    out_path = Path(args.out) / ("gpu_check_dryrun.json" if args.dry_run else "gpu_check.json")
    results = run_sections(ctx, names, out_path)
    if results["targets"]:
        print_table(results["targets"], ["target", "shape", "value", "met"], title="targets")
    if args.docs:
        write_docs_table(Path(args.docs), results)
    failed = [n for n, r in results["sections"].items() if r.get("status") == "error" or r.get("ok") is False]
    print(f"gpu_check: wrote {out_path}; {'sections failing: ' + ', '.join(failed) if failed else 'all sections ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
