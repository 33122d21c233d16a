"""The command line of every experiment script: shared flags, one-line argument errors, quiet output."""
from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence


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
