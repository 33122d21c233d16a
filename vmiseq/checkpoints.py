"""Reading Lightning checkpoints without unpickling code.

:func:`load_checkpoint` opens a ``.ckpt`` with ``torch.load(weights_only=True)`` and refuses,
with a ValueError naming the file, anything beyond tensors and plain containers;
:func:`load_module_from_checkpoint` and :class:`SafeCheckpointIO` put Lightning's own reads
(``load_from_checkpoint``, ``Trainer.fit/validate/test(ckpt_path=...)``) through it. The
experiments read every checkpoint this way (``--resume``, ``--checkpoint``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


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
