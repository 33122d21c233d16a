#!/usr/bin/env python
"""Streaming decode speed and state size: VMI-SA vs the Transformer (KV cache) and GLA.

For each model the prompt is prefilled (parallel path, in chunks) up to every position and
the state there is kept. The timing then goes round-robin: in each of ``--rounds`` rounds,
every (model, position) cell decodes ``--steps`` tokens from its saved state, so load from
other processes spreads evenly over the cells instead of biasing whichever position was
timed during a noisy moment. A cell's figure is the median over rounds. Subnormal floats
are flushed to zero (``--keep-denormals`` to keep them): GLA's forget gates drive state
entries into float32 subnormals, which x86 CPUs process at a small fraction of full speed. VMI-SA's cost per
token should not depend on the position (flat from 100 to 100k); the Transformer's grows
with its KV cache. State bytes are per sequence at that position.

    python benchmarks/bench_decode.py
    python benchmarks/bench_decode.py --quick      # small sizes, a few seconds
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, parse_size, print_table, progress, save_plot, time_fn, write_json  # noqa: E402

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
def decode_seconds(model: VMISAForCausalLM, state, steps: int) -> float:
    """Seconds per decode step over ``steps`` steps starting from ``state`` (left unchanged)."""
    tok = torch.zeros(args_batch, dtype=torch.long)

    def run():
        s = state
        for _ in range(steps):
            _, s = model.step(tok, s)

    return time_fn(run, warmup=0, repeats=1)["median"] / steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256, help="model width (default: %(default)s)")
    p.add_argument("--depth", type=int, default=4, help="blocks (default: %(default)s)")
    p.add_argument("--heads", type=int, default=4, help="attention / GLA heads (default: %(default)s)")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default: %(default)s)")
    p.add_argument("--positions", default="100,1k,10k,100k", help="VMI-SA / GLA positions (default: %(default)s)")
    p.add_argument("--attn-positions", default="100,1k,8k", help="Transformer positions (default: %(default)s)")
    p.add_argument("--steps", type=int, default=32, help="decode steps per cell and round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=15, help="round-robin rounds, median reported (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads; one sequence decodes fastest on one (default: %(default)s)")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush float32 subnormals to zero (GLA's decayed state entries then hit the CPU's slow path)")
    p.add_argument("--chunk", type=int, default=2048, help="prefill chunk (default: %(default)s)")
    p.add_argument("--mixers", default="vmisa,attention,gla", help="models to run (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    p.add_argument("--out", default=str(RESULTS_DIR / "bench_decode.json"), help="JSON results (default: %(default)s)")
    args = p.parse_args(argv)
    global args_batch
    args_batch = args.batch
    if args.quick:
        args.dim, args.depth, args.steps, args.rounds = 64, 2, 8, 3
        args.positions, args.attn_positions = "100,2k", "100,2k"
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    pos_v = [parse_size(s) for s in args.positions.split(",")]
    pos_a = [parse_size(s) for s in args.attn_positions.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.keep_denormals:
        torch.set_flush_denormal(True)  # fair to GLA: values below 1e-38 are zero either way
    models, states = {}, {}
    for mixer in args.mixers.split(","):
        positions = pos_a if mixer == "attention" else pos_v
        model = models[mixer] = build(mixer, args, max_len=max(positions) + args.steps + 8)
        state, at = None, 0
        for pos in progress(positions, desc=f"prefill {mixer}"):
            state = advance(model, state, pos - at, args.chunk, gen)
            at = pos
            # Time from the state one step later: that step grows the KV cache's buffer
            # (geometrically, so the timed steps never have to) and does every lazy
            # initialisation outside the timed samples. Prefilling continues from `state`.
            _, states[(mixer, pos)] = model.step(torch.zeros(args.batch, dtype=torch.long), state)
    samples = {cell: [] for cell in states}
    for _ in progress(range(args.rounds), desc="rounds"):
        for (mixer, pos), state in states.items():
            samples[(mixer, pos)].append(decode_seconds(models[mixer], state, args.steps))
    rows = []
    for (mixer, pos), state in states.items():
        sec = statistics.median(samples[(mixer, pos)])
        rows.append({
            "mixer": mixer, "position": pos, "tokens/s": args.batch / sec, "ms/token": 1000 * sec,
            "state bytes/seq": state.nbytes() // args.batch, "params": models[mixer].num_parameters(),
        })
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
