"""Shared pieces of the Lightning experiments: CLI flags, the Trainer, schedules, plots.

Imported only by ``experiments/*.py`` (it needs the ``train`` extra: lightning, matplotlib).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shlex
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

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
    g.add_argument("--kill-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: SIGKILL before step N
    return parser


def parse_devices(value: str):
    """'auto' | '2' | '0,1' -> what Lightning's ``devices`` accepts."""
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value)


# Extra globals (beyond torch's weights-only allow-list of tensors, dtypes and plain
# containers) that our checkpoints hold. Inspected with
# ``torch.serialization.get_unsafe_globals_in_checkpoint`` on the last/best checkpoints of
# experiments/lm.py, imagenet.py and timeseries.py: none -- hyper-parameters are saved as
# plain dicts of str/int/float/bool/None, optimiser and scheduler states as dicts of tensors.
# The experiments' resume / eval-only / best-checkpoint tests (tests/test_*_experiment.py)
# read fresh checkpoints through load_checkpoint, so one needing more would fail them.
CHECKPOINT_GLOBALS: tuple = ()


def load_checkpoint(path: "os.PathLike | str", map_location="cpu", what: str = "checkpoint") -> dict:
    """Load a Lightning checkpoint without ever unpickling code.

    ``torch.load(weights_only=True)`` with exactly :data:`CHECKPOINT_GLOBALS` allowed; a file
    that needs any other Python object (a crafted pickle, a checkpoint holding custom classes)
    is refused with a ValueError naming them, as is a corrupt file or one with no
    ``state_dict``. ``what`` names the argument in error messages (e.g. ``"--resume"``).
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: expected a checkpoint file, got {str(path)!r} (not found)")
    if not zipfile.is_zipfile(path):  # torch.save's format; raw/legacy pickles are refused outright
        raise ValueError(f"{what}: {str(path)!r} is not a readable checkpoint (corrupt or truncated, or not written by torch.save)")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - a zip without torch's layout
        raise ValueError(f"{what}: {str(path)!r} is not a readable checkpoint (corrupt or truncated): {exc}") from exc
    needed = sorted(set(unsafe) - {_qualname(g) for g in CHECKPOINT_GLOBALS})
    if needed:
        raise ValueError(
            f"{what}: {str(path)!r} holds Python objects beyond tensors and plain containers ({', '.join(needed)}); "
            "vmiseq loads checkpoints with torch.load(weights_only=True) and never unpickles them "
            "(unpickling can run arbitrary code). Expected a checkpoint written by a vmiseq experiment."
        )
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_GLOBALS)):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the restricted unpickler refused it, or the data is damaged
        first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{what}: {str(path)!r} is not a readable checkpoint (corrupt or truncated): {first}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{what}: {str(path)!r} is not a Lightning checkpoint (expected a dict with 'state_dict')")
    return ckpt


def _qualname(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def resolve_resume(resume: Optional[str], out_dir: str) -> Optional[str]:
    """Turn ``--resume`` into a checkpoint path, checked with :func:`load_checkpoint` (clear
    errors for missing, corrupt or unsafe files)."""
    if resume is None:
        return None
    path = Path(out_dir) / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    load_checkpoint(path, what="--resume")
    return str(path)


def load_module_from_checkpoint(cls, path: "os.PathLike | str", what: str = "--checkpoint", **kwargs):
    """``cls.load_from_checkpoint`` (a LightningModule class) through the safe loader: the file
    is checked by :func:`load_checkpoint`, then Lightning reads it with ``weights_only=True``."""
    load_checkpoint(path, what=what)
    with torch.serialization.safe_globals(list(CHECKPOINT_GLOBALS)):
        return cls.load_from_checkpoint(str(path), map_location=kwargs.pop("map_location", "cpu"), weights_only=True, **kwargs)


def safe_checkpoint_io():
    """A Lightning ``CheckpointIO`` whose reads go through :func:`load_checkpoint`, so
    ``Trainer.fit/validate/test(ckpt_path=...)`` never unpickle code. (Lightning passes
    ``weights_only=None`` by default, which torch turns into ``False`` when the environment
    sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.)"""
    cls = globals().get("SafeCheckpointIO") or __getattr__("SafeCheckpointIO")  # built on first use
    return cls()


def __getattr__(name: str):
    # The CheckpointIO subclass needs Lightning, which this module imports lazily; defined on
    # first access, under its module-level name so that ddp_spawn can pickle a Trainer using it.
    if name != "SafeCheckpointIO":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class SafeCheckpointIO(TorchCheckpointIO):
        """Lightning's torch CheckpointIO, reading through :func:`load_checkpoint`."""

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return load_checkpoint(path, map_location=map_location, what="ckpt_path")

    SafeCheckpointIO.__qualname__ = name
    globals()[name] = SafeCheckpointIO
    return SafeCheckpointIO


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
    (``vmiseq.callbacks.HistoryCSVLogger``); ``ResumePosition.of(trainer)`` says where it started.
    """
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from vmiseq.callbacks import HistoryCSVLogger, KillAtStep, ResumePosition

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


# ---------------------------------------------------------------------------- running a script
class ArgumentProblem(ValueError):
    """A bad argument or missing data: ``run_script`` reports it as one line and exits with 2."""


@contextlib.contextmanager
def argument_errors(flag: Optional[str] = None, aliases: Sequence[str] = ()) -> Iterator[None]:
    """Report what goes wrong inside as a bad argument (``ArgumentProblem``).

    Wrap the work that reads the arguments and the data (not the training: an error there is a
    bug and keeps its traceback). ``flag`` (e.g. ``"--data"``) names the argument at fault in
    messages that do not already name a flag; a message that names it by a library parameter
    (``"data: ..."``, or an ``aliases`` entry such as ``"path: ..."``) gets the flag instead.
    """
    try:
        yield
    except ArgumentProblem:
        raise
    except _user_error_types() as exc:
        msg = str(exc) or type(exc).__name__
        if flag and not msg.startswith("--"):  # a message that names a flag already is left alone
            for name in (flag.lstrip("-"), *aliases):
                if msg.startswith(name + ": "):
                    msg = msg[len(name) + 2 :]
                    break
            msg = f"{flag}: {msg}"
        raise ArgumentProblem(msg) from exc


def _user_error_types() -> tuple[type, ...]:
    types: tuple[type, ...] = (ValueError, TypeError, OSError, ImportError)
    try:  # Lightning's error for impossible --accelerator/--devices/--strategy combinations
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:
        return types
    return types + (MisconfigurationException,)


def run_script(main: Callable[[], Any]) -> None:
    """The ``__main__`` entry of every experiment script.

    Hides Lightning's noise (``quiet_lightning``) and reports an ``ArgumentProblem`` the way
    argparse reports a bad flag: one line ``<script>: error: <message>`` on stderr, exit
    status 2. Any other exception keeps its traceback.
    """
    quiet_lightning()
    try:
        main()
    except ArgumentProblem as exc:
        one_line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"{Path(sys.argv[0]).name}: error: {one_line}", file=sys.stderr)
        raise SystemExit(2) from None


# Lightning's adverts and lines about hardware this project never uses; progress, metrics,
# results and real warnings still show.
_NOISE_PREFIXES = ("💡 Tip:", "Seed set to", "TPU available", "HPU available")
_NOISE_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # torch deprecation inside Lightning itself
    r".*does not have many workers",  # advice for GPU input pipelines; CPU runs use the main process
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOISE_PREFIXES)


def quiet_lightning() -> None:
    """Keep a run's output to what the user needs (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in lg.filters):
            lg.addFilter(_DropNoise())
    for message in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def console_command(script: str, module: str) -> str:
    """How to run this environment's console script ``script`` (entry module ``module``) from a
    shell: its name when it is on PATH, else its path next to the running python (a venv
    not activated), else ``python -m module``."""
    beside = Path(sys.executable).parent / script
    found = shutil.which(script)
    if beside.is_file() and found and Path(found).resolve() == beside.resolve():
        return script
    if beside.is_file():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m {module}"
