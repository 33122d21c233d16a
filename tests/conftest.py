"""Shared pytest fixtures (keep this file small: several test modules use it)."""
from __future__ import annotations

import pytest
import torch


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
