"""Layer benchmark: ``VMISALayer`` (causal) against a causal softmax-attention layer
(``F.scaled_dot_product_attention``, :class:`vmiseq.layers.attention.CausalSelfAttention`)
of the same width, forward + backward, over sequence lengths.

For every length the script times, in interleaved rounds (so load hits all sides alike):
the VMI-SA layer, the attention layer, the VMI-SA layer's own Linear layers alone on inputs
of the same shapes (its GEMM floor) and the scan alone; ratios come from the same run and
the load average is recorded. Peak memory (forward + backward of each layer) is measured in
a separate process (``common.memory_in_child``), so the allocator setting it needs is never
in force while timing.

    python benchmarks/bench_layer.py                # L = 256 .. 16k, 1 and 2 threads
    python benchmarks/bench_layer.py --quick        # L = 256 .. 2k, seconds

Targets (issue 13): speed-up over attention >= 2x at L = 1,024 and >= 15x at 16k; peak memory
<= attention's at every length; layer time <= 2x its Linear layers' time.
Writes ``benchmarks/results/bench_layer.json`` and ``bench_layer.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR, calibrate_memory, load, loglog_slope, memory_in_child, paired_ratio, parse_size, peak_memory_mb,
    print_table, save_plot, time_interleaved, write_json,
)

from vmiseq import VMISALayer  # noqa: E402
from vmiseq.layers.attention import CausalSelfAttention  # noqa: E402
from vmiseq.ops import vmisa_scan  # noqa: E402


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def layer_step(layer: torch.nn.Module, B: int, L: int, dim: int):
    """Forward + backward of sum(layer(x)) on x (B, L, dim), grads cleared after."""
    x = torch.randn(B, L, dim, requires_grad=True)

    def run():
        layer(x).sum().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    return run


def linears_step(layer: torch.nn.Module, B: int, L: int):
    """Forward + backward of every nn.Linear of ``layer`` alone, on (B, L, in) inputs."""
    linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(B, L, m.in_features, requires_grad=True) for m in linears]

    def run():
        for m, x in zip(linears, xs):
            m(x).sum().backward()
            x.grad = None
        layer.zero_grad(set_to_none=True)

    return run


def scan_step(B: int, L: int, D: int):
    """Forward + backward of the scan alone at the layer's shape (B, L, D = expand * dim)."""
    g = torch.Generator().manual_seed(0)
    q, v = (torch.randn(B, L, D, generator=g).requires_grad_() for _ in range(2))
    alpha = torch.rand(B, L, generator=g).requires_grad_()
    beta = torch.tensor(1.0, requires_grad=True)
    gy = torch.randn(B, L, D, generator=g)
    return lambda: torch.autograd.backward(vmisa_scan(q, v, alpha, beta, output_final_state=True)[0], gy)


def build(args):
    torch.manual_seed(args.seed)
    return VMISALayer(args.dim, expand=args.expand), CausalSelfAttention(args.dim, n_heads=args.heads)


def memory_child(args) -> None:
    """Memory-only mode (its own process): peak MiB of each layer at every length, as JSON."""
    vmisa, attn = build(args)
    out = {"calibration_64mib": calibrate_memory(64)}
    for L in args.lengths:
        for name, layer in (("vmisa", vmisa), ("attn", attn)):
            step = layer_step(layer, args.batch, L, args.dim)
            step()  # warm-up: lazily built caches are not counted
            out[f"{name}_{L}"] = peak_memory_mb(step)
    print(json.dumps(out))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=128, help="layer width C (both layers)")
    p.add_argument("--expand", type=int, default=2, help="VMI-SA inner width D = expand * C")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lengths", nargs="+", default=["256", "1k", "4k", "16k"], help="sequence lengths")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch thread counts (default: 1 2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds at most")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of rounds per length (at least 2 rounds)")
    p.add_argument("--quick", action="store_true", help="L = 256 .. 2k, few rounds: a smoke test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_layer", help="output path stem (.json and .png)")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.rounds, args.budget = ["256", "512", "1k", "2k"], 3, 3.0
    args.lengths = sorted({parse_size(str(s)) for s in args.lengths})
    if args.memory_child:
        return memory_child(args)

    vmisa, attn = build(args)
    D = args.expand * args.dim
    print(f"VMISALayer: {n_params(vmisa):,} params; CausalSelfAttention: {n_params(attn):,} params; "
          f"load average {load():.2f}", flush=True)
    child_argv = [str(Path(__file__).resolve()), "--memory-child", "--dim", str(args.dim), "--expand", str(args.expand),
                  "--heads", str(args.heads), "--batch", str(args.batch), "--seed", str(args.seed),
                  "--lengths", *map(str, args.lengths)]
    mem = memory_in_child(child_argv)
    print(f"memory (own process): 64 MiB tensor reads {mem['calibration_64mib']:.1f} MiB", flush=True)

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for L in args.lengths:
            B = args.batch
            fns = {"vmisa": layer_step(vmisa, B, L, args.dim), "attn": layer_step(attn, B, L, args.dim),
                   "linears": linears_step(vmisa, B, L), "scan": scan_step(B, L, D)}
            load_before = load()
            raw = time_interleaved(fns, rounds=args.rounds, budget_s=args.budget)
            t = {k: v["median"] for k, v in raw.items()}
            row = {"threads": threads, "L": L, "vmisa_ms": t["vmisa"] * 1e3, "attn_ms": t["attn"] * 1e3,
                   "speedup": paired_ratio(raw["attn"], raw["vmisa"]),
                   "over_linears": paired_ratio(raw["vmisa"], raw["linears"]),
                   "scan_share": paired_ratio(raw["scan"], raw["vmisa"]), "vmisa_tok_s": B * L / t["vmisa"],
                   "vmisa_mem_mb": mem[f"vmisa_{L}"], "attn_mem_mb": mem[f"attn_{L}"]}
            row["mem_vs_attn"] = row["vmisa_mem_mb"] / max(row["attn_mem_mb"], 1e-9)
            row["load"] = (load_before + load()) / 2
            rows.append(row)
            print(f"threads {threads} L={L}: vmisa {row['vmisa_ms']:.1f} ms, attention {row['attn_ms']:.1f} ms "
                  f"({row['speedup']:.2f}x), {row['over_linears']:.2f}x its Linear layers (load {row['load']:.2f})",
                  flush=True)

    def slope(key, threads):
        pts = [(r["L"], r[key]) for r in rows if r["threads"] == threads and r["L"] >= 1024]
        return loglog_slope(*zip(*pts)) if len(pts) >= 2 else float("nan")

    summary = {
        "vmisa_params": n_params(vmisa), "attention_params": n_params(attn),
        "slopes": {t: {"vmisa": slope("vmisa_ms", t), "attention": slope("attn_ms", t)} for t in args.threads},
        "memory_method": "peak RSS increase (VmHWM after clear_refs reset, glibc mmap threshold 64 KiB) "
                         "in a separate process",
        "memory_calibration_64mib": mem["calibration_64mib"],
    }
    cols = ["threads", "L", "vmisa_ms", "attn_ms", "speedup", "over_linears", "scan_share", "vmisa_mem_mb",
            "attn_mem_mb", "mem_vs_attn", "load"]
    print_table(rows, cols, title=f"forward+backward, B={args.batch}, C={args.dim} (VMI-SA D={D}, "
                                  f"{summary['vmisa_params']:,} params; attention {args.heads} heads, "
                                  f"{summary['attention_params']:,} params); ms: median, ratios: median of per-round "
                                  f"ratios over interleaved rounds")
    print(f"log-log cost slopes (L >= 1k): {summary['slopes']}")
    write_json(args.out.with_suffix(".json"), rows, args, summary=summary)
    series = {}
    for th in args.threads:
        series[f"VMISALayer, {th} thr"] = [r["vmisa_ms"] for r in rows if r["threads"] == th]
        series[f"SDPA attention, {th} thr"] = [r["attn_ms"] for r in rows if r["threads"] == th]
    save_plot(args.out.with_suffix(".png"), args.lengths, series, xlabel="sequence length L",
              ylabel="forward+backward time (ms)", title="Layer cost on CPU (log-log)", logx=True, logy=True)
    return rows


if __name__ == "__main__":
    main()
