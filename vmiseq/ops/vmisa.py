"""Deprecated: the dispatcher moved to :mod:`vmiseq.ops.scan` (import from ``vmiseq.ops``)."""
from __future__ import annotations

import warnings

from .checks import acc_dtype, non_finite_message, values_checkable
from .scan import BACKEND_ENV, BACKENDS, resolve_backend, vmisa_global, vmisa_scan

warnings.warn(
    "vmiseq.ops.vmisa is deprecated: import from vmiseq.ops (or vmiseq.ops.scan) instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["BACKENDS", "BACKEND_ENV", "acc_dtype", "non_finite_message", "resolve_backend", "values_checkable",
           "vmisa_global", "vmisa_scan"]
