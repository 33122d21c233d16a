"""What the experiment scripts share: flags, the Trainer, callbacks, running a script.

Lives beside the scripts, not in the library: ``python experiments/lm.py`` has this folder on
``sys.path``, so a script imports it as ``harness``. It needs the ``train`` extra (Lightning,
matplotlib, pandas). Checkpoints are read through the library's :mod:`vmiseq.checkpoints`.
"""
from .callbacks import HistoryCSVLogger, KillAtStep, ResumePosition, SeedEachBatch, StepTimer, StopAfterEpochs
from .cli import ArgumentProblem, add_trainer_args, argument_errors, console_command, parse_devices, quiet_lightning, run_script
from .plots import plot_forecasts, plot_metrics
from .trainer import build_trainer, cosine_with_warmup, resolve_resume

__all__ = [
    "ArgumentProblem", "HistoryCSVLogger", "KillAtStep", "ResumePosition", "SeedEachBatch", "StepTimer", "StopAfterEpochs",
    "add_trainer_args", "argument_errors", "build_trainer", "console_command", "cosine_with_warmup", "parse_devices",
    "plot_forecasts", "plot_metrics", "quiet_lightning", "resolve_resume", "run_script",
]
