"""The Lightning Trainer every experiment uses (checkpoints, logs, exact resume) and its schedule."""
from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from vmiseq.checkpoints import load_checkpoint, safe_checkpoint_io

from .callbacks import HistoryCSVLogger, KillAtStep, ResumePosition
from .cli import parse_devices


def resolve_resume(resume: Optional[str], out_dir: str) -> Optional[str]:
    """Turn ``--resume`` into a checkpoint path, checked with :func:`load_checkpoint` (clear
    errors for missing, corrupt or unsafe files)."""
    if resume is None:
        return None
    path = Path(out_dir) / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    load_checkpoint(path, what="--resume")
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
    """A Lightning Trainer with last + best checkpoints, CSV logs and a progress bar.

    A run resumed with ``--resume`` continues ``OUT_DIR/logs/metrics.csv`` from the resumed step
    (:class:`HistoryCSVLogger`); ``ResumePosition.of(trainer)`` says where it started.
    """
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
    cbs = [ckpt, last, LearningRateMonitor(logging_interval="step"), ResumePosition(), *callbacks]
    if getattr(args, "kill_at_step", None) is not None:
        cbs.append(KillAtStep(args.kill_at_step))
    resuming = getattr(args, "resume", None) is not None
    if resuming:  # the folder holds the run being resumed: expected, not worth a warning
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
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
        logger=HistoryCSVLogger(str(out), name="logs", version="", resuming=resuming),
        callbacks=cbs,
        log_every_n_steps=args.log_every,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=True,
        plugins=[safe_checkpoint_io(), *kwargs.pop("plugins", ())],
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
