"""Streaming benchmark: latency of one ``step`` (one new token) at absolute positions 1, 1k
and 100k, ``VMISALayer`` (O(1) state) against causal softmax attention decoding with a KV
cache (O(position) work and memory per token), both timed in the same run.

    python benchmarks/bench_step.py           # positions 1, 1k, 100k
    python benchmarks/bench_step.py --quick   # positions 1, 1k, 10k

The VMI-SA state at position p is real: the layer's ``forward`` prefills p tokens (in
chunks) and hands over its state. The attention cache at position p holds p random keys
and values (decode cost depends only on the cache length; prefilling 100k tokens through
quadratic attention would take far longer than the measurement), with spare capacity so
no step pays for growing the buffer. Each timed step starts from the same state, so every
sample is at exactly position p. Writes ``benchmarks/results/bench_step.{json,png}``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, parse_size, print_table, progress, save_plot, time_fn, write_json  # noqa: E402

from vmiseq import VMISALayer  # noqa: E402
from vmiseq.layers.attention import CausalSelfAttention, KVCache  # noqa: E402


def vmisa_state_at(layer: VMISALayer, B: int, p: int, dim: int, chunk: int = 8192):
    """Prefill p tokens through ``forward`` with a carried state."""
    state = layer.init_state(B)
    done = 0
    while done < p:
        n = min(chunk, p - done)
        _, state = layer(torch.randn(B, n, dim), state, output_state=True)
        done += n
    return state


def kv_cache_at(attn: CausalSelfAttention, B: int, p: int, spare: int = 16) -> KVCache:
    """The layer's own cache type at position p (random keys/values, spare capacity)."""
    shape = (B, p + spare, attn.n_heads, attn.head_dim)
    return KVCache(torch.randn(shape), torch.randn(shape), torch.full((B,), p, dtype=torch.long))


class HeadMajorDecoder:
    """Standard KV-cache decoding with the attention layer's weights: keys and values kept
    head-major (B, H, T, hd) as most inference stacks do, the new token written in place
    at position p, one SDPA call over the p + 1 visible keys (no mask needed).

    Reported next to the layer's own ``step`` because torch's CPU flash-attention kernel
    is pathologically slow (milliseconds even at p = 1) on the strided (B, T, H, hd) cache
    slices of some capacities (seen with capacity p + 16)."""

    def __init__(self, attn: CausalSelfAttention, B: int, p: int) -> None:
        self.attn, self.B, self.p = attn, B, p
        shape = (B, attn.n_heads, p + 1, attn.head_dim)
        self.k, self.v = torch.randn(shape), torch.randn(shape)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        a, B, p = self.attn, self.B, self.p
        q, k, v = a.qkv(x).view(B, 3, a.n_heads, 1, a.head_dim).unbind(1)  # (B, H, 1, hd)
        self.k[:, :, p : p + 1] = k
        self.v[:, :, p : p + 1] = v
        y = torch.nn.functional.scaled_dot_product_attention(q, self.k, self.v)
        return a.proj(y.reshape(B, a.dim))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=128, help="layer width C (both layers)")
    ap.add_argument("--expand", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--positions", nargs="+", default=["1", "1k", "100k"])
    ap.add_argument("--steps", type=int, default=400, help="timed steps per position and layer")
    ap.add_argument("--rounds", type=int, default=20, help="round-robin rounds (median over rounds)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="positions 1, 1k, 10k and 50 steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_step")
    args = ap.parse_args(argv)
    if args.quick:
        args.positions, args.steps, args.rounds = ["1", "1k", "10k"], 50, 5
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    positions = [parse_size(s) for s in args.positions]
    B, dim = args.batch, args.dim
    vmisa = VMISALayer(dim, expand=args.expand).eval()
    attn = CausalSelfAttention(dim, n_heads=args.heads).eval()
    x = torch.randn(B, dim)

    rows = []
    with torch.no_grad():
        states = {p: vmisa_state_at(vmisa, B, p, dim) for p in progress(positions, desc="prefill")}
        caches = {p: kv_cache_at(attn, B, p) for p in positions}
        decoders = {p: HeadMajorDecoder(attn, B, p) for p in positions}
        names = ("vmisa", "attn", "attn_layer")
        samples = {(name, p): [] for name in names for p in positions}
        per_sample = max(1, args.steps // args.rounds)
        # Round-robin over positions and layers, so load from other processes spreads evenly
        # over every cell instead of biasing one position.
        for _ in progress(range(args.rounds), desc="rounds"):
            for p in positions:
                fns = {
                    "vmisa": lambda: vmisa.step(x, states[p]),
                    "attn": lambda: decoders[p].step(x),
                    "attn_layer": lambda: attn.step(x, caches[p]),
                }
                for name, fn in fns.items():
                    t = time_fn(lambda: [fn() for _ in range(per_sample)], warmup=1, repeats=1)["median"]
                    samples[(name, p)].append(t / per_sample)
        for p in positions:
            med = {name: statistics.median(samples[(name, p)]) for name in names}
            rows.append({
                "position": p,
                "vmisa_us": med["vmisa"] * 1e6,
                "attn_us": med["attn"] * 1e6,
                "attn_layer_step_us": med["attn_layer"] * 1e6,
                "attn_over_vmisa": med["attn"] / med["vmisa"],
                "vmisa_state_kib": states[p].nbytes() / 1024,
                "attn_cache_kib": caches[p].nbytes() / 1024,
            })
    base_v, base_a = rows[0]["vmisa_us"], rows[0]["attn_us"]
    for r in rows:
        r["vmisa_vs_first"] = r["vmisa_us"] / base_v
        r["attn_vs_first"] = r["attn_us"] / base_a
    flat = max(r["vmisa_us"] for r in rows) / min(r["vmisa_us"] for r in rows)
    cols = ["position", "vmisa_us", "vmisa_vs_first", "attn_us", "attn_vs_first", "attn_over_vmisa", "attn_layer_step_us",
            "vmisa_state_kib", "attn_cache_kib"]
    print_table(rows, cols, title=f"one decoding step, B={B}, C={dim}: median over {args.rounds} rounds of the mean latency (us) of {args.steps // args.rounds} steps")
    print(f"\nVMI-SA step latency max/min over positions: {flat:.3f}x (target <= 1.2x)")
    write_json(args.out.with_suffix(".json"), rows, args, summary={"vmisa_flatness": flat})
    save_plot(args.out.with_suffix(".png"), positions,
              {"VMISALayer.step": [r["vmisa_us"] for r in rows], "attention + KV cache": [r["attn_us"] for r in rows]},
              xlabel="absolute position of the new token", ylabel="latency per token (us)",
              title="Streaming decode latency on CPU", logx=True, logy=True)
    return rows


if __name__ == "__main__":
    main()
