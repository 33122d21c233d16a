#!/usr/bin/env python
"""Streaming decode speed and state size: VMI-SA vs the Transformer (KV cache) and GLA.

For each model the prompt is prefilled (parallel path, in chunks) up to a position, then
``--steps`` tokens are decoded one at a time; tokens/s is the median over ``--repeats``.
VMI-SA's cost per token should not depend on the position (flat from 100 to 100k); the
Transformer's grows with its KV cache. State bytes are per sequence at that position.

    flock /tmp/vmiseq-cpu.lock python benchmarks/bench_decode.py
    python benchmarks/bench_decode.py --quick      # small sizes, a few seconds
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, fmt, parse_size, print_table, progress, save_plot, time_fn, write_json  # noqa: E402

from vmiseq.models import VMISAConfig, VMISAForCausalLM  # noqa: E402


def build(mixer: str, args, max_len: int) -> VMISAForCausalLM:
    torch.manual_seed(0)
    cfg = VMISAConfig(
        vocab_size=args.vocab, dim=args.dim, depth=args.depth, mixer=mixer, n_heads=args.heads,
        mlp_ratio=4.0, expand=2, max_len=max_len if mixer == "attention" else None,
    )
    return VMISAForCausalLM(cfg).eval()


@torch.no_grad()
def advance(model: VMISAForCausalLM, state, tokens: int, chunk: int, gen: torch.Generator):
    """Prefill ``tokens`` random tokens after ``state`` (None: from scratch) in chunks."""
    done = 0
    while done < tokens:
        n = min(chunk, tokens - done)
        ids = torch.randint(0, model.config.vocab_size, (args_batch, n), generator=gen)
        state = model(ids, state, output_state=True).state
        done += n
    return state


@torch.no_grad()
def decode_rate(model: VMISAForCausalLM, state, steps: int, repeats: int) -> tuple[float, object]:
    """Tokens/s of ``steps`` greedy-free decode steps starting from ``state`` (median)."""
    tok = torch.zeros(args_batch, dtype=torch.long)
    # one step first: the KV cache grows its buffer here, not inside the timed loop
    _, state = model.step(tok, state)

    def run():
        s = state
        for _ in range(steps):
            _, s = model.step(tok, s)
        return s

    t = time_fn(run, warmup=1, repeats=repeats)
    return args_batch * steps / t["median"], state


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256, help="model width (default: %(default)s)")
    p.add_argument("--depth", type=int, default=4, help="blocks (default: %(default)s)")
    p.add_argument("--heads", type=int, default=4, help="attention / GLA heads (default: %(default)s)")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default: %(default)s)")
    p.add_argument("--positions", default="100,1k,10k,100k", help="VMI-SA / GLA positions (default: %(default)s)")
    p.add_argument("--attn-positions", default="100,1k,8k", help="Transformer positions (default: %(default)s)")
    p.add_argument("--steps", type=int, default=64, help="decode steps timed per repeat (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=2048, help="prefill chunk (default: %(default)s)")
    p.add_argument("--mixers", default="vmisa,attention,gla", help="models to run (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    p.add_argument("--out", default=str(RESULTS_DIR / "bench_decode.json"), help="JSON results (default: %(default)s)")
    args = p.parse_args(argv)
    global args_batch
    args_batch = args.batch
    if args.quick:
        args.dim, args.depth, args.steps, args.repeats = 64, 2, 16, 3
        args.positions, args.attn_positions = "100,2k", "100,2k"
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    pos_v = [parse_size(s) for s in args.positions.split(",")]
    pos_a = [parse_size(s) for s in args.attn_positions.split(",")]
    rows = []
    for mixer in args.mixers.split(","):
        positions = pos_a if mixer == "attention" else pos_v
        model = build(mixer, args, max_len=max(positions) + args.steps * (args.repeats + 2) + 8)
        state, at = None, 0
        for pos in progress(positions, desc=mixer):
            state = advance(model, state, pos - at, args.chunk, gen)
            at = pos
            rate, s1 = decode_rate(model, state, args.steps, args.repeats)
            rows.append({
                "mixer": mixer, "position": pos, "tokens/s": rate, "ms/token": 1000 * args.batch / rate,
                "state bytes/seq": state.nbytes() // args.batch, "params": model.num_parameters(),
            })
            print(f"{mixer:9s} position {pos:>7d}: {rate:8.1f} tokens/s, state {fmt(rows[-1]['state bytes/seq'])} B/seq")
    print_table(rows, ["mixer", "position", "tokens/s", "ms/token", "state bytes/seq", "params"],
                title=f"Decode, batch {args.batch}, dim {args.dim}, depth {args.depth}")

    summary = {}
    vm = [r for r in rows if r["mixer"] == "vmisa"]
    if vm:
        rates = [r["tokens/s"] for r in vm]
        summary["vmisa_flatness_max_over_min"] = max(rates) / min(rates)
    att = {r["position"]: r for r in rows if r["mixer"] == "attention"}
    if vm and att:
        ref_pos = max(att)
        a = att[ref_pos]
        v_rate = min(rates)  # VMI-SA's slowest position, conservative
        v_state = max(r["state bytes/seq"] for r in vm)
        summary.update({
            "compare_position": ref_pos,
            "speedup_vs_attention": v_rate / a["tokens/s"],
            "state_ratio_attention_over_vmisa": a["state bytes/seq"] / v_state,
        })
    print_table([summary], list(summary), title="Summary")
    write_json(args.out, rows, args, summary=summary)
    series = {}
    for mixer in dict.fromkeys(r["mixer"] for r in rows):
        series[mixer] = {r["position"]: r["tokens/s"] for r in rows if r["mixer"] == mixer}
    xs = sorted({r["position"] for r in rows})
    save_plot(Path(args.out).with_suffix(".png"), xs, {m: [s.get(x) for x in xs] for m, s in series.items()},
              xlabel="position", ylabel="tokens/s", title="Streaming decode speed", logx=True)


args_batch = 1

if __name__ == "__main__":
    main()
