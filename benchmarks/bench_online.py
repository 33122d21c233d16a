#!/usr/bin/env python
"""Online forecasting cost: time per observation from 100 to 100,000 observations of history.

Streams one long multivariate series through ``VMISAForecaster.update`` (one observation at
a time) and keeps the state at each checkpoint position. The timing then goes round-robin:
in each of ``--rounds`` rounds, every position advances its saved state by ``--window``
observations (update, then ``forecast``), so load from other processes spreads over every
position instead of biasing the one streamed during a noisy moment. Reported per position:
the median over rounds of the mean time per observation, as a ratio to position 100 (flat =
O(1) per observation), and the time of recomputing the same forecast from the whole history
with the batch ``forward`` (what a model without a recurrent state has to do), same run.
Optionally streams the same forecaster with the causal-attention mixer (a KV cache) for
contrast.

    python benchmarks/bench_online.py            # 100 .. 100,000
    python benchmarks/bench_online.py --positions 100,1000                 # a quick look
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS_DIR, print_table, progress, save_plot, time_fn, write_json  # noqa: E402

from vmiseq.models.forecaster import ForecasterConfig, VMISAForecaster  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", default="100,1000,10000,100000", help="history lengths to report (default: %(default)s)")
    p.add_argument("--window", type=int, default=32, help="observations timed from each position per round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=15, help="round-robin rounds, median reported (default: %(default)s)")
    p.add_argument("--n-vars", type=int, default=7, help="variables per observation (ETTh1 has 7)")
    p.add_argument("--pred-len", type=int, default=96, help="forecast horizon (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="series streamed together (default: %(default)s)")
    p.add_argument("--mixers", default="vmisa", help="comma list of mixers to stream: vmisa, gla, attention (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s; one observation is tiny work)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS_DIR / "online"), help="output prefix for .json and .png (default: %(default)s)")
    return p.parse_args(argv)


def make_model(args, mixer: str) -> VMISAForecaster:
    torch.manual_seed(args.seed)
    cfg = ForecasterConfig(n_vars=args.n_vars, pred_len=args.pred_len, mixer=mixer, cycle_len=24, patch_len=16, stride=16)
    return VMISAForecaster(cfg).eval()


def series(args, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(args.seed)
    t = torch.arange(length, dtype=torch.float32).view(1, -1, 1)
    walk = 0.05 * torch.randn(args.batch, length, args.n_vars, generator=g).cumsum(1)
    return torch.sin(2 * math.pi * t / 24) + walk + 0.1 * torch.randn(args.batch, length, args.n_vars, generator=g)


def stream(model: VMISAForecaster, x: torch.Tensor, positions: list[int], window: int, rounds: int, desc: str) -> dict[int, dict]:
    """Stream x once, keeping the state at each position (or at the first observation that can
    be forecast, if later); then time ``window`` update + forecast steps from every saved state,
    round-robin over the positions, ``rounds`` times."""
    first = {p: max(model.min_history, p) for p in positions}
    saved: dict[int, object] = {}
    state = model.init_state(x.shape[0], start=0)
    with torch.no_grad():
        for t in progress(range(max(first.values())), desc=desc):
            state = model.update(x[:, t], state)
            for p, f in first.items():
                if t + 1 == f:
                    saved[p] = state
        samples = {p: ([], []) for p in positions}
        for _ in progress(range(rounds), desc="rounds"):
            for p in positions:
                s, t_update, t_total = saved[p], 0.0, 0.0
                for k in range(window):
                    t0 = time.perf_counter()
                    s = model.update(x[:, first[p] + k], s)  # update returns a new state: saved[p] stays
                    t1 = time.perf_counter()
                    model.forecast(s)
                    t2 = time.perf_counter()
                    t_update, t_total = t_update + (t1 - t0), t_total + (t2 - t0)
                samples[p][0].append(t_update / window)
                samples[p][1].append(t_total / window)
    return {
        p: {"update_s": statistics.median(u), "update_forecast_s": statistics.median(f), "n": window * rounds}
        for p, (u, f) in samples.items()
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    positions = sorted(int(p) for p in args.positions.split(","))
    if positions[0] < 17:
        raise SystemExit(f"--positions: expected positions >= 17 (one 16-observation patch first), got {positions[0]}")
    x = series(args, max(positions) + args.window)
    rows = []
    for mixer in [m.strip() for m in args.mixers.split(",") if m.strip()]:
        model = make_model(args, mixer)
        online = stream(model, x, positions, args.window, args.rounds, f"stream {mixer}")
        base = online[positions[0]]["update_forecast_s"]
        for p in positions:
            with torch.no_grad():
                batch = time_fn(lambda: model(x[:, :p], start=0), warmup=1, repeats=5, budget_s=5.0)["median"]
            o = online[p]
            rows.append(
                {
                    "mixer": mixer,
                    "position": p,
                    "update_us": o["update_s"] * 1e6,
                    "update+forecast_us": o["update_forecast_s"] * 1e6,
                    "vs_position_100": o["update_forecast_s"] / base,
                    "batch_recompute_us": batch * 1e6,
                    "batch/online": batch / o["update_forecast_s"],
                    "timed_updates": o["n"],
                }
            )
    print_table(
        rows,
        ["mixer", "position", "update_us", "update+forecast_us", "vs_position_100", "batch_recompute_us", "batch/online"],
        title=f"online forecasting cost per observation (batch {args.batch}, {args.n_vars} variables, horizon {args.pred_len}, "
        f"{args.threads} thread(s))",
    )
    out = Path(args.out)
    write_json(out.with_suffix(".json"), rows, args)
    series_plot = {}
    for mixer in dict.fromkeys(r["mixer"] for r in rows):
        series_plot[f"{mixer} online (update+forecast)"] = [r["update+forecast_us"] for r in rows if r["mixer"] == mixer]
        series_plot[f"{mixer} batch recompute"] = [r["batch_recompute_us"] for r in rows if r["mixer"] == mixer]
    save_plot(
        out.with_suffix(".png"),
        positions,
        series_plot,
        xlabel="observations of history",
        ylabel="microseconds per new observation",
        title="VMISAForecaster: online update vs recomputing from the history",
        logx=True,
        logy=True,
    )
    return rows


if __name__ == "__main__":
    main()
