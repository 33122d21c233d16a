"""Functional operators: VMI-SA (naive, chunked torch and Triton versions behind one call) and
multi-head linear attention (non-causal MLLA form; causal forget-gate scan shared with GLA)."""
from .linear_attn import causal_linear_attn, linear_attn_global
from .scan import BACKEND_ENV, BACKENDS, acc_dtype, resolve_backend, vmisa_global, vmisa_scan

__all__ = ["vmisa_scan", "vmisa_global", "acc_dtype", "resolve_backend", "BACKENDS", "BACKEND_ENV",
           "linear_attn_global", "causal_linear_attn"]
