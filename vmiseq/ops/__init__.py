"""Functional VMI-SA operators: naive, chunked (torch) and Triton versions behind one call."""
from .vmisa import BACKEND_ENV, BACKENDS, acc_dtype, resolve_backend, vmisa_global, vmisa_scan

__all__ = ["vmisa_scan", "vmisa_global", "acc_dtype", "resolve_backend", "BACKENDS", "BACKEND_ENV"]
