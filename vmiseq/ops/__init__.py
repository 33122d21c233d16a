"""Functional operators: VMI-SA and multi-head linear attention, each form side by side.

VMI-SA: :mod:`.naive` (the reference loops), :mod:`.chunk` (the chunked torch scan, the CPU
default), :mod:`.varlen` (packed ragged batches), :mod:`.scan_op` (the scan as a torch custom
op, running the chunked scan or the Triton kernels of ``vmiseq.kernels``), :mod:`.scan` (the
public ``vmisa_scan`` / ``vmisa_global``: checks, dtype policy, backend choice) and
:mod:`.checks` (the input checks, shared with the layers). :mod:`.linear_attn`: the
non-causal MLLA form and the causal forget-gate scan shared with GLA.
"""
from .linear_attn import causal_linear_attn, linear_attn_global
from .scan import BACKEND_ENV, BACKENDS, acc_dtype, resolve_backend, vmisa_global, vmisa_scan

__all__ = ["vmisa_scan", "vmisa_global", "acc_dtype", "resolve_backend", "BACKENDS", "BACKEND_ENV",
           "linear_attn_global", "causal_linear_attn"]
