"""Kernels for VMI-SA, installed as ``vmiseq.kernels``.

* :mod:`.op` registers the causal scan as the PyTorch custom ops ``vmiseq::scan_fwd`` /
  ``vmiseq::scan_bwd`` (one opaque node for ``torch.compile``, our own backward) with two
  implementations: ``"torch"`` (:func:`vmiseq.ops.varlen.scan_torch`) and ``"triton"``
  (:mod:`.triton_scan`).
* :mod:`.triton_kernels` (+ :mod:`.triton_tiles`) hold the Triton kernels, :mod:`.triton_scan`
  their launchers, :mod:`.geometry` the launch plan (pure Python: one pass or the small-batch
  split into segments), :mod:`.tuning` the configs and the tuner (``set_autotune(False)`` or
  ``VMISEQ_TRITON_AUTOTUNE=0`` for CUDA graphs), :mod:`.compile_check` the sm_90 build check.
* Triton is imported lazily, the first time the triton backend runs: importing this
  package never needs it. ``TRITON_INTERPRET=1`` (set before that first run) makes the
  Triton kernels run on CPU tensors through Triton's interpreter.
"""
from __future__ import annotations

import sys as _sys

if __name__ == "kernels":
    # Imported as a top-level ``kernels`` because a checkout's root is on sys.path (``python -m
    # pytest``, a script run from the checkout). That name belongs to an unrelated PyPI package,
    # which transformers imports: load that package when it is installed, and otherwise stand in
    # for the installed ``vmiseq.kernels`` (a second copy would register the custom ops again).
    import importlib as _importlib
    import importlib.machinery as _machinery
    import importlib.util
    import os as _os

    _checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _elsewhere = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _checkout]
    _spec = _machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is not None and _spec.loader is not None:
        _module = _importlib.util.module_from_spec(_spec)
        _sys.modules[__name__] = _module
        _spec.loader.exec_module(_module)
    else:
        _sys.modules[__name__] = _importlib.import_module("vmiseq.kernels")
else:
    from torch import Tensor

    from .op import triton_available, vmisa_scan_op

    __all__ = ["triton_available", "vmisa_scan_op", "vmisa_scan_triton"]


    def vmisa_scan_triton(
        q: Tensor,
        v: Tensor,
        alpha: Tensor,
        beta: Tensor,
        h0: Tensor,
        positions: Tensor,
        rank_mask: bool,
        decay: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Differentiable Triton scan on inputs normalised by :func:`vmiseq.ops.vmisa_scan`.

        Returns (y (B, L, D) in q's dtype, final states (N, D) in h0's dtype).
        Raises ImportError when triton is missing.
        """
        return vmisa_scan_op(q, v, alpha, beta, h0, positions, rank_mask, decay, cu_seqlens, backend="triton")
