#!/usr/bin/env python
"""Forecast quality against history length: does the forecaster stay good on long streams?

The trained ETTh1 forecasters (one per horizon, trained on 96-observation windows by
``experiments/timeseries.py``) forecast the same test points from histories of 96 (the
benchmark window), 384, 1,536 and 6,144 observations -- the history always *ends* at the test
point, only its start moves back -- and from the online state streamed with ``update`` from
the first row of the file through the test set (11-14k observations: months of streaming).
Reported per horizon: MSE and MAE on the standardised test windows and the ratio of each MSE
to the 96-window MSE of the same model in the same run (the baseline); with the default
two-path model also each path alone (``mse_blocks`` / ``mse_linear``).

    python benchmarks/bench_length_forecast.py --data path/to/ETTh1.csv --runs runs/timeseries
    # no trained models yet: train them first (experiments/timeseries.py defaults)
    python benchmarks/bench_length_forecast.py --data path/to/ETTh1.csv --train
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS_DIR, print_table, progress, save_plot, write_json  # noqa: E402

from vmiseq.data.timeseries import ErrorSums, load_csv, prepare_forecast_data  # noqa: E402
from vmiseq.models.forecaster import VMISAForecaster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ETTh1.csv"), help="ETTh1 CSV (default: %(default)s)")
    p.add_argument("--runs", default="runs/timeseries", help="experiments/timeseries.py --out-dir holding vmisa_h{H}/model (default: %(default)s)")
    p.add_argument("--train", action="store_true", help="train the horizons whose model is missing (experiments/timeseries.py defaults)")
    p.add_argument("--horizons", default="96,192,336,720", help="comma list (default: %(default)s)")
    p.add_argument("--lengths", default="96,384,1536,6144", help="history lengths, the first is the baseline (default: %(default)s)")
    p.add_argument("--no-online", action="store_true", help="skip the online stream from row 0")
    p.add_argument("--online-mode", default="prefixes", choices=("prefixes", "stream"),
                   help="prefixes: the online forecasts computed with forecast_prefixes (equal to update/forecast, tested; "
                        "one pass per phase); stream: the update loop itself, row by row (slow on a busy machine) (default: %(default)s)")
    p.add_argument("--every", type=int, default=1, help="use every k-th test window (1 = all; the online stream always runs every row)")
    p.add_argument("--batch-size", type=int, default=32, help="test windows per batch (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--merge", default=None, help="comma list of this script's JSON files (e.g. one per horizon, run in parallel): report them together, evaluate nothing")
    p.add_argument("--out", default=str(RESULTS_DIR / "length_forecast"), help="output prefix for .json and .png (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("horizons", "lengths"):
        try:
            values = [int(v) for v in getattr(args, name).split(",")]
        except ValueError:
            p.error(f"--{name}: expected comma-separated positive ints, got {getattr(args, name)!r}")
        if not values or min(values) <= 0:
            p.error(f"--{name}: expected positive ints, got {getattr(args, name)!r}")
        setattr(args, name, values)
    return args


def load_model(args, horizon: int) -> VMISAForecaster:
    path = Path(args.runs) / f"vmisa_h{horizon}" / "model"
    if not (path / "config.json").is_file():
        if not args.train:
            raise SystemExit(f"error: --runs: no trained model at {path} (train it with experiments/timeseries.py, or pass --train)")
        cmd = [sys.executable, str(ROOT / "experiments" / "timeseries.py"), "--data", args.data, "--horizon", str(horizon),
               "--out-dir", args.runs, "--plot-windows", "0"]
        subprocess.run(cmd, check=True)
    return VMISAForecaster.from_pretrained(path).eval()


def _finish(errors: ErrorSums) -> dict:
    out = {}
    for name, (mse, mae) in errors.pop().items():
        key = "" if name == "" else f"_{name}"
        out[f"mse{key}"], out[f"mae{key}"] = mse, mae
    return out


@torch.no_grad()
def evaluate_length(model: VMISAForecaster, series: torch.Tensor, ends: torch.Tensor, length: int, batch: int) -> Optional[dict]:
    """Metrics of the forecasts from the ``length`` observations before each end row."""
    H = model.config.pred_len
    if int(ends.min()) < length:
        return None  # the file has too few rows before the first test point
    branches = model.config.linear_path == "average"
    errors = ErrorSums()
    steps = torch.arange(length)
    for i in range(0, len(ends), batch):
        e = ends[i : i + batch]
        x = series[e.view(-1, 1) - length + steps]
        y = series[e.view(-1, 1) + torch.arange(H)]
        start = e - length
        out = model(x, start=start, return_branches=branches) if branches else model(x, start=start)
        pred, paths = out if branches else (out, {})
        errors.add("", pred, y)
        for name, p in paths.items():
            errors.add(name, p, y)
    return _finish(errors)


@torch.no_grad()
def evaluate_online(model: VMISAForecaster, series: torch.Tensor, ends: torch.Tensor, mode: str) -> dict:
    """The online forecasts after every row from 0 up to each test end row."""
    H = model.config.pred_len
    first, last = int(ends.min()), int(ends.max())
    targets = series[ends.view(-1, 1) + torch.arange(H)]
    x = series[:last].unsqueeze(0)
    if mode == "prefixes":
        preds = model.forecast_prefixes(x, ends, start=0)
    else:
        state = model.init_state(1, start=0)
        preds, wanted = [], set(ends.tolist())
        for t in progress(range(last), desc=f"online h{H}"):
            state = model.update(series[t : t + 1], state)
            if t + 1 in wanted:
                preds.append(model.forecast(state)[0])
        preds = torch.stack(preds)
    errors = ErrorSums()
    errors.add("", preds, targets)
    out = _finish(errors)
    # the last forecast against the batch forward over the same whole history (equal by construction)
    out["max_abs_diff_vs_batch"] = float((preds[-1] - model(x, start=0)[0]).abs().max())
    out["mode"], out["history_from"], out["history_to"] = mode, first, last
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.merge:
        import json

        results = [r for f in args.merge.split(",") for r in json.loads(Path(f).read_text())["results"]]
        results.sort(key=lambda r: r["horizon"])
        report(args, results)
        return {"results": results}
    table = load_csv(args.data)
    results = []
    for horizon in args.horizons:
        model = load_model(args, horizon)
        data = prepare_forecast_data(table, model.config.seq_len, horizon, "ett_hour")
        series = torch.from_numpy(data.scaled)
        ends = data.test.first_row + data.test.seq_len + torch.arange(0, len(data.test), args.every)  # first forecast row of each window
        row = {"horizon": horizon, "test_windows": len(ends), "norm": model.config.norm, "lengths": {}}
        t0 = time.perf_counter()
        for length in args.lengths:
            row["lengths"][str(length)] = evaluate_length(model, series, ends, length, args.batch_size)
        if not args.no_online:
            row["online"] = evaluate_online(model, series, ends, args.online_mode)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        base = row["lengths"][str(args.lengths[0])]["mse"]
        for res in [*row["lengths"].values(), row.get("online")]:
            if res is not None:
                res["ratio"] = res["mse"] / base
        results.append(row)
        print(f"h{horizon}: " + ", ".join(f"{k}: {v['mse']:.4f}" for k, v in row["lengths"].items() if v) +
              (f", online: {row['online']['mse']:.4f}" if "online" in row else ""), flush=True)
    report(args, results)
    return {"results": results}


def report(args, results: list[dict]) -> None:
    rows = []
    cols = [str(n) for n in args.lengths] + ([] if args.no_online else ["online"])
    for r in results:
        row = {"horizon": r["horizon"]}
        for c in cols:
            res = r["online"] if c == "online" else r["lengths"][c]
            row[c] = "-" if res is None else f"{res['mse']:.4f} ({res['ratio']:.3f}x)"
        rows.append(row)
    mean = {"horizon": "mean"}
    for c in cols:
        vals = [(r["online"] if c == "online" else r["lengths"][c]) for r in results]
        if all(v is not None for v in vals):
            m = sum(v["mse"] for v in vals) / len(vals)
            b = sum(r["lengths"][str(args.lengths[0])]["mse"] for r in results) / len(results)
            mean[c] = f"{m:.4f} ({m / b:.3f}x)"
    if len(results) > 1:
        rows.append(mean)
    print_table(rows, title="MSE on the ETTh1 test windows by history length (ratio to the 96-window MSE)")
    write_json(args.out + ".json", results, args)
    x = [float(n) for n in args.lengths]
    series = {}
    for r in results:
        ys = [r["lengths"][str(n)]["ratio"] if r["lengths"][str(n)] else None for n in args.lengths]
        if "online" in r:  # the online stream at its mean history length
            x_on = (r["online"]["history_from"] + r["online"]["history_to"]) / 2
            series[f"H={r['horizon']}"] = ys + [r["online"]["ratio"]]
        else:
            series[f"H={r['horizon']}"] = ys
    xs = x + ([x_on] if not args.no_online and results else [])
    save_plot(args.out + ".png", xs, series, xlabel="history length (observations; last point: online stream from row 0)",
              ylabel="MSE / MSE with 96 observations", title="Forecaster on ETTh1: MSE against history length", logx=True)


if __name__ == "__main__":
    main()
