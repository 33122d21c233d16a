#!/usr/bin/env python
"""Online forecasting cost: time per observation from 100 to 100,000 observations of history.

Streams one long multivariate series through ``VMISAForecaster.update`` (one observation at
a time, then ``forecast``) and reports, at each checkpoint position, the median time of the
updates around it -- as a ratio to the time at position 100 (flat = O(1) per observation) --
and the time of recomputing the same forecast from the whole history with the batch
``forward`` (what a model without a recurrent state has to do), timed in the same run.
Optionally streams the same forecaster with the causal-attention mixer (a KV cache) for
contrast.

    flock /tmp/vmiseq-cpu.lock python benchmarks/bench_online.py            # 100 .. 100,000
    python benchmarks/bench_online.py --max-len 2000 --positions 100,1000  # a quick look
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
    p.add_argument("--window", type=int, default=64, help="updates timed around each position (default: %(default)s)")
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


def stream(model: VMISAForecaster, x: torch.Tensor, positions: list[int], window: int, desc: str) -> dict[int, dict]:
    """Feed x step by step; time update+forecast for the ``window`` observations ending at each position."""
    want = {p: (max(model.config.patch_len + 1, p - window + 1), p) for p in positions}
    timed: dict[int, list[float]] = {p: [] for p in positions}
    timed_update: dict[int, list[float]] = {p: [] for p in positions}
    state = model.init_state(x.shape[0], start=0)
    last = max(positions)
    with torch.no_grad():
        for t in progress(range(last), desc=desc, total=last):
            count = t + 1
            in_window = [p for p, (a, b) in want.items() if a <= count <= b]
            if in_window:
                t0 = time.perf_counter()
                state = model.update(x[:, t], state)
                t1 = time.perf_counter()
                model.forecast(state)
                t2 = time.perf_counter()
                for p in in_window:
                    timed_update[p].append(t1 - t0)
                    timed[p].append(t2 - t0)
            else:
                state = model.update(x[:, t], state)
    return {
        p: {"update_s": statistics.median(timed_update[p]), "update_forecast_s": statistics.median(timed[p]), "n": len(timed[p])}
        for p in positions
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    positions = sorted(int(p) for p in args.positions.split(","))
    if positions[0] < 17:
        raise SystemExit(f"--positions: expected positions >= 17 (one 16-observation patch first), got {positions[0]}")
    x = series(args, max(positions))
    rows = []
    for mixer in [m.strip() for m in args.mixers.split(",") if m.strip()]:
        model = make_model(args, mixer)
        online = stream(model, x, positions, args.window, f"stream {mixer}")
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
