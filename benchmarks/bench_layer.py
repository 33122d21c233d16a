"""Layer benchmark: ``VMISALayer`` (causal) against a causal softmax-attention layer
(``F.scaled_dot_product_attention``, :class:`vmiseq.layers.attention.CausalSelfAttention`)
of the same width, forward + backward, over sequence lengths; tokens/s, peak memory, the
share of the VMI-SA scan in the layer's time, and the log-log cost slope of each.

    python benchmarks/bench_layer.py           # L = 256 .. 32k (attention), .. 64k (VMI-SA)
    python benchmarks/bench_layer.py --quick   # L = 256 .. 2k, seconds

Peak memory is the peak resident set size the call adds (``VmHWM`` after resetting it
through ``/proc/self/clear_refs``, with glibc returning freed blocks to the OS; see
``common.py``): every byte touched, activations, saved tensors and workspaces included.
Writes ``benchmarks/results/bench_layer.json`` and ``bench_layer.png``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR, calibrate_memory, loglog_slope, parse_size, peak_memory_mb, print_table, progress, save_plot,
    time_fn, write_json,
)

from vmiseq import VMISALayer  # noqa: E402
from vmiseq.layers.attention import CausalSelfAttention  # noqa: E402
from vmiseq.ops import vmisa_scan  # noqa: E402


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def measure(layer: torch.nn.Module, B: int, L: int, dim: int, repeats: int, budget: float) -> dict:
    """Forward + backward of sum(layer(x)) on x (B, L, dim): median seconds and peak MiB."""
    x = torch.randn(B, L, dim, requires_grad=True)

    def fwd_bwd():
        layer(x).sum().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    first = time_fn(fwd_bwd, warmup=0, repeats=1)["median"]  # also the warm-up
    t = time_fn(fwd_bwd, warmup=0, repeats=repeats, budget_s=budget) if first < budget else {"median": first, "n": 1}
    mem = peak_memory_mb(fwd_bwd)
    return {"s": t["median"], "n": t["n"], "mem_mb": mem}


def scan_time(B: int, L: int, D: int, repeats: int, budget: float) -> float:
    """Forward + backward of the scan alone at the layer's shape (B, L, D = expand * dim)."""
    g = torch.Generator().manual_seed(0)
    q, v = (torch.randn(B, L, D, generator=g).requires_grad_() for _ in range(2))
    alpha = torch.rand(B, L, generator=g).requires_grad_()
    beta = torch.tensor(1.0, requires_grad=True)
    gy = torch.randn(B, L, D, generator=g)

    def fb():
        torch.autograd.backward(vmisa_scan(q, v, alpha, beta, output_final_state=True)[0], gy)

    return time_fn(fb, warmup=1, repeats=repeats, budget_s=budget)["median"]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=128, help="layer width C (both layers)")
    p.add_argument("--expand", type=int, default=2, help="VMI-SA inner width D = expand * C")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lengths", nargs="+", default=["256", "1k", "4k", "16k", "32k"], help="sequence lengths for both layers")
    p.add_argument("--vmisa-extra", nargs="*", default=["64k"], help="lengths measured for VMI-SA only (cost slope)")
    p.add_argument("--slope-range", nargs=2, default=["1k", "64k"], help="lengths between which the log-log slope is fitted")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--budget", type=float, default=10.0, help="max seconds of timed repeats per point")
    p.add_argument("--max-attention-s", type=float, default=60.0,
                   help="skip attention at longer L once one call took longer than this")
    p.add_argument("--quick", action="store_true", help="L = 256 .. 2k and one repeat: a smoke test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_layer", help="output path stem (.json and .png)")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.vmisa_extra, args.slope_range, args.repeats = ["256", "512", "1k", "2k"], [], ["256", "2k"], 1
    torch.manual_seed(args.seed)
    lengths = sorted({parse_size(s) for s in args.lengths})
    extra = sorted({parse_size(s) for s in args.vmisa_extra} - set(lengths))
    lo, hi = (parse_size(s) for s in args.slope_range)

    vmisa = VMISALayer(args.dim, expand=args.expand)
    attn = CausalSelfAttention(args.dim, n_heads=args.heads)
    print(f"VMISALayer: {n_params(vmisa):,} params; CausalSelfAttention: {n_params(attn):,} params; "
          f"memory method check: 64 MiB tensor reads {calibrate_memory(64):.1f} MiB", flush=True)

    rows, attn_too_slow = [], False
    for L in progress(lengths + extra, desc="lengths"):
        row = {"L": L}
        v = measure(vmisa, args.batch, L, args.dim, args.repeats, args.budget)
        row.update(vmisa_ms=v["s"] * 1e3, vmisa_tok_s=args.batch * L / v["s"], vmisa_mem_mb=v["mem_mb"])
        row["scan_share"] = scan_time(args.batch, L, args.expand * args.dim, args.repeats, args.budget) / v["s"]
        if L in lengths and not attn_too_slow:
            a = measure(attn, args.batch, L, args.dim, args.repeats, args.budget)
            row.update(attn_ms=a["s"] * 1e3, attn_tok_s=args.batch * L / a["s"], attn_mem_mb=a["mem_mb"])
            row["speedup"] = a["s"] / v["s"]
            row["mem_ratio"] = a["mem_mb"] / max(v["mem_mb"], 1e-9)
            attn_too_slow = a["s"] > args.max_attention_s
        rows.append(row)
        print(f"L={L}: vmisa {row['vmisa_ms']:.1f} ms" + (f", attention {row['attn_ms']:.1f} ms ({row['speedup']:.2f}x)" if "attn_ms" in row else ""), flush=True)

    def slope(key):
        pts = [(r["L"], r[key]) for r in rows if key in r and lo <= r["L"] <= hi]
        return loglog_slope(*zip(*pts)) if len(pts) >= 2 else float("nan")

    summary = {
        "vmisa_params": n_params(vmisa), "attention_params": n_params(attn),
        "vmisa_slope": slope("vmisa_ms"), "attention_slope": slope("attn_ms"), "slope_range": [lo, hi],
        "memory_method": "peak RSS increase (VmHWM after clear_refs reset, glibc mmap threshold 64 KiB)",
    }
    cols = ["L", "vmisa_ms", "attn_ms", "speedup", "vmisa_tok_s", "attn_tok_s", "vmisa_mem_mb", "attn_mem_mb", "mem_ratio", "scan_share"]
    print_table(rows, cols, title=f"forward+backward, B={args.batch}, C={args.dim} (VMI-SA D={args.expand * args.dim}, "
                                  f"{summary['vmisa_params']:,} params; attention {args.heads} heads, {summary['attention_params']:,} params)")
    print(f"\nlog-log cost slope over L={lo}..{hi}: VMI-SA {summary['vmisa_slope']:.3f}, attention {summary['attention_slope']:.3f}")
    write_json(args.out.with_suffix(".json"), rows, args, summary=summary)
    xs = [r["L"] for r in rows]
    save_plot(args.out.with_suffix(".png"), xs,
              {"VMISALayer": [r["vmisa_ms"] for r in rows], "causal SDPA attention": [r.get("attn_ms", math.nan) for r in rows]},
              xlabel="sequence length L", ylabel="forward+backward time (ms)", title="Layer cost on CPU (log-log)",
              logx=True, logy=True)
    return rows


if __name__ == "__main__":
    main()
