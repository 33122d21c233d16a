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
