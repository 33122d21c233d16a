"""Operator benchmark: ``vmisa_scan`` (torch backend, CPU) against the memory-bound floor,
one element-wise ``q * v`` of the same tensors, forward and forward+backward.

Every configuration -- shape, scalar or per-channel beta, rank mask on or off, 1 or 2
threads -- times the floor, the default CPU path (the compiled one-pass scan where numba is
installed) and the vectorised torch loops (``chunk.CPU_KERNEL = False``) in interleaved
rounds, so the ratios come from one run under the same load; the load is recorded.

    python benchmarks/bench_ops.py            # the four shapes of issue 2 (a few minutes)
    python benchmarks/bench_ops.py --quick    # small shapes, seconds

Targets (issue 13): forward <= 2x the floor, forward+backward <= 6x, at every configuration.
Writes ``benchmarks/results/bench_ops.json`` and ``bench_ops.png``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR, load, paired_ratio, parse_size, print_table, save_plot, time_interleaved, write_json,
)

from vmiseq.ops import chunk, cpu_scan, vmisa_scan  # noqa: E402

DEFAULT_SHAPES = ["1x16k x256", "1x64k x256", "4x4k x512", "8x2k x1024"]
QUICK_SHAPES = ["1x2k x256", "2x1k x512"]
FWD_TARGET, FWDBWD_TARGET = 2.0, 6.0


def parse_shape(text: str) -> tuple[int, int, int]:
    """'4x4k x512' or '4x4kx512' -> (4, 4096, 512)."""
    parts = text.replace(" ", "").lower().split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape: expected BxLxD like 4x4kx512, got {text!r}")
    return tuple(parse_size(p) for p in parts)  # type: ignore[return-value]


def with_path(compiled: bool, fn):
    """``fn`` run on the compiled scan (True) or the torch loops (False)."""
    def run():
        old, chunk.CPU_KERNEL = chunk.CPU_KERNEL, compiled
        try:
            return fn()
        finally:
            chunk.CPU_KERNEL = old
    return run


def bench_config(B: int, L: int, D: int, beta_kind: str, mask: bool, args) -> dict:
    g = torch.Generator().manual_seed(0)
    q, v, gy = (torch.randn(B, L, D, generator=g) for _ in range(3))
    alpha = torch.rand(B, L, generator=g)
    beta = torch.tensor(0.5) if beta_kind == "scalar" else torch.rand(D, generator=g)
    leaves = [t.clone().requires_grad_() for t in (q, v, alpha, beta)]

    def fwd():
        with torch.no_grad():
            return vmisa_scan(q, v, alpha, beta, rank_mask=mask, backend="torch")

    def fwd_bwd():
        torch.autograd.backward(vmisa_scan(*leaves, rank_mask=mask, backend="torch"), gy)
        for t in leaves:
            t.grad = None

    fns = {"floor": lambda: q * v}
    if cpu_scan.available():
        fns.update(fwd=with_path(True, fwd), fwdbwd=with_path(True, fwd_bwd))
    if not args.no_torch_loops or not cpu_scan.available():
        fns.update(loops_fwd=with_path(False, fwd), loops_fwdbwd=with_path(False, fwd_bwd))
    load_before = load()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    t = time_interleaved(fns, rounds=args.rounds, warmup=1, budget_s=args.budget, clock=clock)
    row = {"threads": torch.get_num_threads(), "B": B, "L": L, "D": D, "beta": beta_kind, "mask": "on" if mask else "off"}
    stat = "median" if args.stat == "paired" else args.stat
    row["floor_ms"] = t["floor"][stat] * 1e3
    for name, val in t.items():
        if name != "floor":
            row[f"{name}_ms"] = val[stat] * 1e3
            row[f"{name}_x"] = paired_ratio(val, t["floor"]) if args.stat == "paired" else val[stat] / t["floor"][stat]
    row["rounds"] = t["floor"]["n"]
    row["clock"] = args.clock
    row["load"] = (load_before + load()) / 2
    if "fwd_x" in row:
        row["met"] = "yes" if row["fwd_x"] <= FWD_TARGET and row["fwdbwd_x"] <= FWDBWD_TARGET else "no"
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", type=parse_shape, default=None,
                   help="B x L x D shapes, e.g. 1x16kx256 (default: %s)" % ", ".join(DEFAULT_SHAPES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch thread counts (default: 1 2)")
    p.add_argument("--betas", nargs="+", default=["scalar", "channel"], choices=["scalar", "channel"])
    p.add_argument("--masks", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds at most (default: 7)")
    p.add_argument("--budget", type=float, default=4.0, help="seconds of rounds per configuration (at least 2 rounds)")
    p.add_argument("--stat", default="paired", choices=["paired", "min", "median"],
                   help="ratio: median over rounds of the per-round ratio (paired, default), or of min / median times")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time (default) or this process's CPU time (steadier on a busy machine; sums threads)")
    p.add_argument("--no-torch-loops", action="store_true", help="skip the torch-loop path (the comparison)")
    p.add_argument("--quick", action="store_true", help="small shapes and few rounds: a smoke test in seconds")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_ops", help="output path stem (.json and .png)")
    args = p.parse_args(argv)
    if args.shapes is None:
        args.shapes = [parse_shape(s) for s in (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)]
    if args.quick:
        args.rounds, args.budget = 3, 1.0
    if not cpu_scan.available():
        print("numba not installed: timing the torch loops only (pip install vmiseq[fast])")
    print(f"load average at start: {load():.2f}", flush=True)

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for B, L, D in args.shapes:
            for beta_kind in args.betas:
                for mask in args.masks:
                    rows.append(bench_config(B, L, D, beta_kind, mask == "on", args))
                    r = rows[-1]
                    print(f"threads {threads} ({B}, {L}, {D}) beta {beta_kind} mask {mask}: "
                          + ", ".join(f"{k[:-2]} {r[k]:.2f}x" for k in r if k.endswith("_x"))
                          + f" (load {r['load']:.2f})", flush=True)

    cols = ["threads", "B", "L", "D", "beta", "mask", "floor_ms"]
    cols += [c for c in ("fwd_x", "fwdbwd_x", "loops_fwd_x", "loops_fwdbwd_x", "met") if c in rows[0]]
    cols += ["load"]
    print_table(rows, cols, title=f"vmisa_scan, float32, alpha (B, L): time / (q * v) time ({args.stat} over "
                                  f"interleaved rounds); targets fwd <= {FWD_TARGET}x, fwd+bwd <= {FWDBWD_TARGET}x")
    met = sum(r.get("met") == "yes" for r in rows)
    print(f"targets met at {met} of {len(rows)} configurations; load average at end: {load():.2f}")
    write_json(args.out.with_suffix(".json"), rows, args, targets={"fwd_x": FWD_TARGET, "fwdbwd_x": FWDBWD_TARGET})
    labels = [f"{r['B']}x{r['L']}x{r['D']} {r['beta'][:2]} m{r['mask']} t{r['threads']}" for r in rows]
    series = {k: [r[k] for r in rows] for k in ("fwd_x", "fwdbwd_x", "loops_fwd_x", "loops_fwdbwd_x") if k in rows[0]}
    save_plot(args.out.with_suffix(".png"), labels, series, xlabel="(B, L, D), beta, mask, threads",
              ylabel="time / (q * v) time", title="vmisa_scan on CPU, relative to the element-wise floor",
              logy=True, kind="bar")
    return rows


if __name__ == "__main__":
    main()
