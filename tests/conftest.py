"""Shared pytest fixtures (keep this file small: several test modules use it)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton decides at decoration time whether its kernels run in the interpreter, so the
    # flag must be set before ANY test module imports vmiseq.kernels (test_compile imports
    # the op module first in a full run): without a GPU, the kernels run on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (reproducible failures)."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def small_chunks(monkeypatch):
    """Make the torch backend cut even tiny inputs into many multi-token chunks, so its
    chunk carries, leftover chunk and in-chunk loop are all exercised on small shapes."""
    from vmiseq.ops import chunk

    monkeypatch.setattr(chunk, "SLICE_ELEMENTS", 16)
    yield


@pytest.fixture
def one_thread():
    """Torch on one thread for this test (kill-and-resume tests: the killed run is a subprocess
    with OMP_NUM_THREADS=1, the runs compared with it run in-process the same way)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def script_error(capsys, monkeypatch):
    """For an experiment's in-process ``run_script``: the one error line it printed to stderr
    (asserting there is exactly one, last, and no traceback). Lightning's info lines are off:
    its log handler is bound to the stderr of whichever test imported it first."""
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        monkeypatch.setattr(logging.getLogger(name), "disabled", True)

    def error_line() -> str:
        lines = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in lines if ": error: " in line]
        assert len(errors) == 1 and lines[-1] == errors[0] and not any("Traceback" in line for line in lines), "\n".join(lines)
        return errors[0]

    return error_line
