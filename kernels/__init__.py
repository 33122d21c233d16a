"""Triton kernels for VMI-SA, installed as ``vmiseq.kernels``. Triton is imported lazily."""
from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def vmisa_scan_triton(*args, **kwargs):
    raise NotImplementedError("the Triton backend is not implemented yet (issue 3)")
