"""Shared pieces of the Lightning experiments: CLI flags, the Trainer, schedules, plots.

Imported only by ``experiments/*.py`` (it needs the ``train`` extra: lightning, matplotlib).
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import torch


def add_trainer_args(parser: argparse.ArgumentParser, out_dir: str) -> argparse.ArgumentParser:
    """Flags every experiment shares (devices, precision, checkpoints, seeds)."""
    g = parser.add_argument_group("trainer")
    g.add_argument("--out-dir", default=out_dir, help="checkpoints, CSV logs and plots go here (default: %(default)s)")
    g.add_argument("--seed", type=int, default=1337, help="global seed for reproducibility (default: %(default)s)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: %(default)s)")
    g.add_argument("--devices", default="auto", help="devices per node: a count, a list or auto (default: %(default)s)")
    g.add_argument("--num-nodes", type=int, default=1, help="nodes for multi-node DDP (default: %(default)s)")
    g.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp... (default: %(default)s)")
    g.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed... (default: %(default)s)")
    g.add_argument("--accumulate-grad-batches", type=int, default=1, help="gradient accumulation (default: %(default)s)")
    g.add_argument("--resume", default=None, help="checkpoint to resume from, or 'last' for OUT_DIR/checkpoints/last.ckpt")
    g.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes (default: %(default)s)")
    g.add_argument("--log-every", type=int, default=20, help="log training metrics every N steps (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def parse_devices(value: str):
    """'auto' | '2' | '0,1' -> what Lightning's ``devices`` accepts."""
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value)


def resolve_resume(resume: Optional[str], out_dir: str) -> Optional[str]:
    """Turn ``--resume`` into a checkpoint path, with clear errors for missing or corrupt files."""
    if resume is None:
        return None
    path = Path(out_dir) / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise ValueError(f"--resume: expected a checkpoint file, got {str(path)!r} (not found)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ValueError(f"--resume: {str(path)!r} is not a readable checkpoint (corrupt or truncated): {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"--resume: {str(path)!r} is not a Lightning checkpoint (no state_dict)")
    return str(path)


def build_trainer(
    args: argparse.Namespace,
    *,
    monitor: str = "val/loss",
    mode: str = "min",
    max_epochs: Optional[int] = None,
    max_steps: int = -1,
    val_check_interval=None,
    check_val_every_n_epoch: Optional[int] = 1,
    callbacks: Sequence = (),
    **kwargs,
):
    """A Lightning Trainer with last + best checkpoints, CSV logs and a progress bar."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    out = Path(args.out_dir)
    ckpt = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best-{step}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
    )
    # A separate callback keeps last.ckpt current: Lightning >= 2.5's save_last only writes
    # when the monitored metric improved, which would leave a stale "last" to resume from.
    last = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    cbs = [ckpt, last, LearningRateMonitor(logging_interval="step"), *callbacks]
    if not args.no_progress:
        cbs.append(TQDMProgressBar(refresh_rate=10))
    return L.Trainer(
        default_root_dir=str(out),
        accelerator=args.accelerator,
        devices=parse_devices(str(args.devices)),
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        accumulate_grad_batches=args.accumulate_grad_batches,
        max_epochs=max_epochs,
        max_steps=max_steps,
        val_check_interval=val_check_interval,
        check_val_every_n_epoch=check_val_every_n_epoch,
        logger=CSVLogger(str(out), name="logs", version=""),
        callbacks=cbs,
        log_every_n_steps=args.log_every,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=True,
        **kwargs,
    )


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0, warmup_start_ratio: float = 0.0):
    """LambdaLR: linear warm-up from ``warmup_start_ratio`` then cosine decay to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return warmup_start_ratio + (1 - warmup_start_ratio) * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def plot_metrics(metrics_csv: os.PathLike, png_path: os.PathLike, groups: Optional[dict[str, Sequence[str]]] = None) -> Path:
    """Plot Lightning's CSV metrics (one panel per group of columns) to a PNG.

    ``groups`` maps a panel title to metric names; by default every column whose name
    contains "loss" goes in one panel and everything with "acc", "mse", "mae", "ppl" or "bpc"
    in another.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    if groups is None:
        cols = [c for c in df.columns if c not in ("epoch", "step") and not c.startswith("lr")]
        groups = {
            "loss": [c for c in cols if "loss" in c],
            "metrics": [c for c in cols if "loss" not in c and any(k in c for k in ("acc", "mse", "mae", "ppl", "bpc"))],
        }
        groups = {k: v for k, v in groups.items() if v}
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(6 * max(1, len(groups)), 4), squeeze=False)
    for ax, (title, names) in zip(axes[0], groups.items()):
        for name in names:
            if name in df.columns:
                s = df[["step", name]].dropna()
                ax.plot(s["step"], s[name], marker="." if len(s) < 50 else None, label=name)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def merge_resumed_metrics(earlier: str, metrics_csv: os.PathLike, start_step: int) -> None:
    """After a resumed ``fit``: keep the rows logged before the resumed step (``earlier``, the
    old file's text; the CSV logger restarts the file), then the resumed run's rows."""
    import io

    import pandas as pd

    old = pd.read_csv(io.StringIO(earlier))
    new = pd.read_csv(metrics_csv)
    merged = pd.concat([old[old["step"] < start_step], new], ignore_index=True)
    merged.to_csv(metrics_csv, index=False)
