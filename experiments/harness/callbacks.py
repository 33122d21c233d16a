"""Lightning callbacks of the experiments: exact resume, reproducible draws, test hooks, timing.

- ``HistoryCSVLogger``: Lightning's CSV logger, except that a resumed run keeps the rows
  logged before the step it resumes from (Lightning's own deletes ``metrics.csv``) and drops
  the rows the killed run logged after its last checkpoint (the resumed run logs them again).
  The file on disk always holds the whole history, however many times the run is killed.
- ``ResumePosition``: where this fit starts (step and batch count, 0 or restored from the
  checkpoint); cuts the logger's history there and moves datasets that number their batches
  (``dataset.start``) to the next batch.
- ``SeedEachBatch``: reseeds torch before every training batch from (seed, epoch, batch, rank),
  or from (seed, optimiser step, rank), so dropout / MixUp / DropPath draws do not depend on
  how many steps ran in this process.
- ``KillAtStep``: the test hook behind the hidden ``--kill-at-step N``: SIGKILL before step N.
- ``StopAfterEpochs``: a planned stop after N epochs that keeps the schedule of the whole run.
- ``StepTimer``: the wall time of every training step.
"""
from __future__ import annotations

import csv
import os
import signal
import sys
import statistics
import tempfile
import time
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class _KeepFileWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv when it starts; a resumed run keeps it
    (``HistoryCSVLogger.trim_history`` cuts it at the resumed step)."""

    def _check_log_dir_exists(self) -> None:
        pass


class HistoryCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` when ``resuming`` (see the module docstring)."""

    def __init__(self, *args: Any, resuming: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resuming = resuming

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer = _KeepFileWriter if self.resuming else ExperimentWriter
            self._experiment = writer(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def trim_history(self, step: int) -> None:
        """Keep the rows logged before ``step``; later ones belong to steps the resumed run redoes."""
        if not self.resuming:
            return
        writer = self.experiment
        writer.save()  # nothing should be pending yet; if something is, it belongs after the cut
        path = writer.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r.get("step") not in (None, "") and int(float(r["step"])) < step]
            fields = list(reader.fieldnames or [])
        _write_csv_atomically(path, fields, rows)
        writer.metrics_keys = fields  # later rows append under this header (or rewrite it with new columns)


def _write_csv_atomically(path: str, fields: list[str], rows: list[dict]) -> None:
    """Temp file in the same folder, then an atomic rename: a kill never leaves half a file."""
    fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".csv", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class ResumePosition(Callback):
    """Where a fit starts; continues the logs and the data from there.

    ``step``: optimiser steps done before this fit (0 for a fresh run); ``batches``: training
    batches done. Datasets in ``datasets`` get ``dataset.start = batches``, for data whose
    batch ``i`` is a pure function of ``i`` (``vmiseq.data.text.RandomWindows``). This happens
    while the checkpoint is restored: Lightning makes the training iterator (and prefetches its
    first batch) before any ``on_train_start``.
    """

    def __init__(self) -> None:
        self.step = 0
        self.batches = 0
        self.datasets: list = []

    @staticmethod
    def of(trainer) -> "ResumePosition":
        """The instance ``build_trainer`` gave ``trainer``."""
        return next(cb for cb in trainer.callbacks if isinstance(cb, ResumePosition))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # test/validate from a checkpoint: nothing resumes
            return
        self.step = int(checkpoint.get("global_step", 0))
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        self.batches = int(progress.get("total", {}).get("completed", self.step * trainer.accumulate_grad_batches))
        for ds in self.datasets:
            ds.start = self.batches
        for lg in trainer.loggers:
            if isinstance(lg, HistoryCSVLogger):
                lg.trim_history(self.step)


class SeedEachBatch(Callback):
    """Reseed torch before every training batch from (seed, epoch, batch index, rank), or with
    ``by_step`` from (seed, optimiser step, rank): the step count is what a resume restores
    exactly when checkpoints fall at the end of epochs (Lightning's epoch and batch counters
    around such a restart are not)."""

    def __init__(self, seed: int, by_step: bool = False) -> None:
        self.seed, self.by_step = seed, by_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.by_step:
            torch.manual_seed(self.seed * 1_000_003 + 7919 * trainer.global_step + trainer.global_rank)
        else:
            torch.manual_seed((self.seed * 1_000_003 + trainer.current_epoch) * 1_000_033 + batch_idx * 1009 + trainer.global_rank)


class KillAtStep(Callback):
    """SIGKILL this process before training step ``step`` (steps 0..step-1 done): a machine
    failure on cue -- no cleanup, no final checkpoint, the files as they were on disk."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


class StopAfterEpochs(Callback):
    """End training after ``n`` epochs (counted from the start of the run, so a resumed run
    continues to ``--epochs``) without changing the learning-rate schedule."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.n:
            trainer.should_stop = True


class StepTimer(Callback):
    """The wall time of every training step (data, forward, backward, optimiser); its median
    is robust to other jobs briefly sharing the machine."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: Optional[float] = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now

    def on_validation_start(self, trainer, pl_module) -> None:
        self._last = None  # validation time is not a training step

    def median_ms(self) -> Optional[float]:
        return 1000 * statistics.median(self.times) if self.times else None
