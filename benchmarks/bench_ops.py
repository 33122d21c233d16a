"""Operator benchmark: the torch backend of ``vmisa_scan`` against the naive loop, a
straightforward cumsum version and the memory-bound floor (one element-wise ``q * v`` of
the same tensors), forward and forward+backward, all timed in the same run.

    python benchmarks/bench_ops.py            # the four shapes of issue 2 (a few minutes)
    python benchmarks/bench_ops.py --quick    # small shapes, seconds

Writes ``benchmarks/results/bench_ops.json`` and ``bench_ops.png``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, parse_size, print_table, progress, save_plot, time_fn, write_json  # noqa: E402

from vmiseq.ops import vmisa_scan  # noqa: E402

DEFAULT_SHAPES = ["1x16k x256", "4x4k x512", "8x2k x1024", "1x64k x256"]
QUICK_SHAPES = ["1x2k x256", "2x1k x512"]


def parse_shape(text: str) -> tuple[int, int, int]:
    """'4x4k x512' or '4x4kx512' -> (4, 4096, 512)."""
    parts = text.replace(" ", "").lower().split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape: expected BxLxD like 4x4kx512, got {text!r}")
    return tuple(parse_size(p) for p in parts)  # type: ignore[return-value]


def cumsum_scan(q, v, alpha, beta):
    """The straightforward vectorised form (the baseline the issue quotes): z, alpha*z,
    a cumsum over L, the rank mask, beta*z, each a full pass through memory."""
    B, L, D = q.shape
    z = q * v
    h = torch.cumsum(alpha.unsqueeze(-1) * z, dim=1)
    M = torch.arange(D) <= torch.arange(L).unsqueeze(1)
    return h * M + beta * z


def bench_shape(B: int, L: int, D: int, args) -> dict:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, L, D, generator=g)
    v = torch.randn(B, L, D, generator=g)
    alpha = torch.rand(B, L, generator=g)
    beta = torch.tensor(0.5)
    gy = torch.randn(B, L, D, generator=g)
    grads = [t.clone().requires_grad_() for t in (q, v, alpha, beta)]
    naive_budget = args.naive_budget

    def fwd(backend):
        with torch.no_grad():
            return vmisa_scan(q, v, alpha, beta, backend=backend)

    def fwd_bwd(backend):
        y = vmisa_scan(*grads, backend=backend)
        torch.autograd.backward(y, gy)

    def cumsum_fwd_bwd():
        torch.autograd.backward(cumsum_scan(*grads), gy)

    row = {"B": B, "L": L, "D": D}
    t = {}
    t["floor"] = time_fn(lambda: q * v, warmup=2, repeats=args.repeats * 2)
    t["torch_fwd"] = time_fn(lambda: fwd("torch"), warmup=1, repeats=args.repeats)
    with torch.no_grad():
        t["cumsum_fwd"] = time_fn(lambda: cumsum_scan(q, v, alpha, beta), warmup=1, repeats=args.repeats)
    t["torch_fwdbwd"] = time_fn(lambda: fwd_bwd("torch"), warmup=1, repeats=args.repeats)
    t["cumsum_fwdbwd"] = time_fn(cumsum_fwd_bwd, warmup=1, repeats=args.repeats)
    if not args.no_naive:
        t["naive_fwd"] = time_fn(lambda: fwd("naive"), warmup=0, repeats=args.repeats, budget_s=naive_budget)
        t["naive_fwdbwd"] = time_fn(lambda: fwd_bwd("naive"), warmup=0, repeats=args.repeats, budget_s=naive_budget)
    ms = {k: val["median"] * 1e3 for k, val in t.items()}
    row.update({f"{k}_ms": val for k, val in ms.items()})
    row["repeats"] = {k: val["n"] for k, val in t.items()}
    row["torch_fwd_over_floor"] = ms["torch_fwd"] / ms["floor"]
    row["cumsum_fwd_over_floor"] = ms["cumsum_fwd"] / ms["floor"]
    if not args.no_naive:
        row["naive_over_torch_fwd"] = ms["naive_fwd"] / ms["torch_fwd"]
        row["naive_over_torch_fwdbwd"] = ms["naive_fwdbwd"] / ms["torch_fwdbwd"]
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", type=parse_shape, default=None,
                   help="B x L x D shapes, e.g. 1x16kx256 (default: %s)" % ", ".join(DEFAULT_SHAPES))
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--naive-budget", type=float, default=8.0, help="seconds of timed naive calls per measurement (at least one call)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive loop (slow at long L)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="small shapes and few repeats: a smoke test in seconds")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_ops", help="output path stem (.json and .png)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shapes is None:
        args.shapes = [parse_shape(s) for s in (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)]
    if args.quick:
        args.repeats, args.naive_budget = 2, 1.0
    torch.manual_seed(0)

    rows = []
    for B, L, D in progress(args.shapes, desc="shapes"):
        rows.append(bench_shape(B, L, D, args))
        r = rows[-1]
        print(f"(B, L, D) = ({B}, {L}, {D}): torch fwd {r['torch_fwd_ms']:.2f} ms = {r['torch_fwd_over_floor']:.2f}x floor", flush=True)

    cols = ["B", "L", "D", "floor_ms", "torch_fwd_ms", "torch_fwd_over_floor", "cumsum_fwd_over_floor"]
    if not args.no_naive:
        cols += ["naive_fwd_ms", "naive_over_torch_fwd"]
    cols += ["torch_fwdbwd_ms", "cumsum_fwdbwd_ms"]
    if not args.no_naive:
        cols += ["naive_fwdbwd_ms", "naive_over_torch_fwdbwd"]
    print_table(rows, cols, title="vmisa_scan (float32, alpha (B, L), rank mask on): times in ms, ratios from the same run")
    write_json(args.out.with_suffix(".json"), rows, args)
    labels = [f"{r['B']}x{r['L']}x{r['D']}" for r in rows]
    series = {
        "torch fwd / floor": [r["torch_fwd_over_floor"] for r in rows],
        "cumsum fwd / floor": [r["cumsum_fwd_over_floor"] for r in rows],
        "torch fwd+bwd / floor": [r["torch_fwdbwd_ms"] / r["floor_ms"] for r in rows],
    }
    if not args.no_naive:
        series["naive fwd / floor"] = [r["naive_fwd_ms"] / r["floor_ms"] for r in rows]
    save_plot(args.out.with_suffix(".png"), labels, series, xlabel="(B, L, D)", ylabel="time / (q * v) time",
              title="vmisa_scan on CPU, relative to the element-wise floor", logy=True, kind="bar")
    return rows


if __name__ == "__main__":
    main()
