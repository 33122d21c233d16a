"""Kernels for VMI-SA, installed as ``vmiseq.kernels``.

* :mod:`.triton_kernels` (+ :mod:`.triton_tiles`) hold the Triton kernels, :mod:`.triton_scan`
  their launchers, :mod:`.geometry` the launch plan (pure Python: one pass or the small-batch
  split into segments), :mod:`.tuning` the configs and the tuner (``set_autotune(False)`` or
  ``VMISEQ_TRITON_AUTOTUNE=0`` for CUDA graphs), :mod:`.compile_check` the sm_90 build check,
  :mod:`.availability` whether a recent enough triton is installed.
* This package sits below ``vmiseq.ops`` and imports nothing from it: the custom ops
  ``vmiseq::scan_fwd`` / ``vmiseq::scan_bwd`` that run these launchers (or the chunked torch
  scan) live in ``vmiseq/ops/scan_op.py``.
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
    # for the installed ``vmiseq.kernels`` (a second copy would keep its own launch settings,
    # tuning cache and Triton kernels).
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
    from .availability import triton_available, triton_unavailable_reason

    __all__ = ["triton_available", "triton_unavailable_reason"]
