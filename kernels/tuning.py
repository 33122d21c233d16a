"""Launch configurations of the scan kernels: the autotuning space, a pinned fallback, and a
small thread-safe tuner (in place of ``triton.autotune``) that

* keys its cache on what changes the best config: the kernel variant (decay, layouts,
  varlen, summary, whether the decay gradient is needed), the dtypes, the device, D, and
  power-of-two buckets of the number of work items (N) and of their length (L);
* returns the config it launched, to the caller (nothing is read back from shared state
  after the launch, so threads cannot see each other's choice);
* skips configs that fail to compile or launch, and falls back to the pinned config when
  all fail;
* never tunes while a CUDA graph is being captured, nor when ``VMISEQ_TRITON_AUTOTUNE=0``
  (or :func:`set_autotune` ``(False)``): it then launches the config tuned earlier for the
  key, or the pinned one.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Callable

import torch
import triton

AUTOTUNE_ENV = "VMISEQ_TRITON_AUTOTUNE"  # "0": never benchmark configs (CUDA graphs, reproducibility)

# (BLOCK_D, num_warps, register cap), measured with kernels/compile_check.py for sm_90, bf16,
# LOOP_STAGES=2: forward 80-165 registers, backward 104-215 uncapped, never spilling. Uncapped,
# ptxas may take up to 255 registers and a 256-thread program then fills a whole SM; the caps
# allow 2 programs per SM. Capped, only the forward at (64, 8, 128) without decay (60 bytes)
# and the backward at (32, 8, 128) with a per-channel decay (12 bytes) spill: the tuner weighs
# that on the device. The per-thread share of a (64, BLOCK_D) tile stays at 8-16 elements.
FWD_SHAPES = ((16, 4, None), (32, 4, None), (32, 8, 96), (64, 8, 128))
BWD_SHAPES = ((16, 4, None), (16, 8, 128), (32, 8, None), (32, 8, 128))
# The config used without tuning (4 warps, no register cap: never spills, pipelined two
# chunks deep), at the widest planned BLOCK_D up to this one.
PINNED_BLOCK_D = {"fwd": 32, "bwd": 16}
# Under the interpreter: no tuning; the widest block the plan allows (16 for D <= 16: the
# interpreter's cost grows with the tile, masked lanes included).
INTERPRETER_CONFIGS = tuple(
    triton.Config({"BLOCK_D": bd, "LOOP_STAGES": 1}, num_warps=4, num_stages=1) for bd in (16, 64)
)


def configs(kernel: str, gpu: bool) -> list[triton.Config]:
    """Autotuning space of one kernel (``"fwd"`` / ``"bwd"``); one config without a GPU.
    ``LOOP_STAGES`` is the software-pipelining depth of the chunk loop (cp.async prefetch)."""
    if not gpu:
        return list(INTERPRETER_CONFIGS)
    shapes = FWD_SHAPES if kernel == "fwd" else BWD_SHAPES
    return [
        triton.Config({"BLOCK_D": bd, "LOOP_STAGES": st}, num_warps=w, num_stages=1, maxnreg=reg)
        for bd, w, reg in shapes
        for st in (1, 2, 3)
    ]


def block_ds(kernel: str, gpu: bool) -> tuple[int, ...]:
    return tuple(sorted({c.kwargs["BLOCK_D"] for c in configs(kernel, gpu)}))


def pinned(kernel: str, planned: tuple[int, ...], gpu: bool) -> triton.Config:
    """The untuned config for a launch whose plan allows the BLOCK_D values ``planned``."""
    if not gpu:
        return next(c for c in INTERPRETER_CONFIGS[::-1] if c.kwargs["BLOCK_D"] <= max(planned))
    bd = max([b for b in planned if b <= PINNED_BLOCK_D[kernel]] or [min(planned)])
    return triton.Config({"BLOCK_D": bd, "LOOP_STAGES": 2}, num_warps=4, num_stages=1)


_enabled = [True]


def set_autotune(enabled: bool) -> None:
    """Turn config benchmarking on or off for the process (off: tuned-earlier or pinned configs)."""
    _enabled[0] = bool(enabled)


def autotune_enabled() -> bool:
    return _enabled[0] and os.environ.get(AUTOTUNE_ENV, "1").strip() != "0"


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class Tuner:
    """Chooses and launches a config for one kernel. ``launch(config)`` must run the kernel
    with that config; it is idempotent (the kernels only overwrite their outputs), so
    benchmarking it is harmless."""

    def __init__(self, name: str):
        self.name = name
        self.cache: dict[tuple, triton.Config] = {}
        self._lock = threading.Lock()
        self._warned = False

    def run(self, key: tuple, candidates: list[triton.Config], launch: Callable[[triton.Config], None],
            pinned: triton.Config) -> triton.Config:
        """Launch the best config for ``key`` among ``candidates``; returns the one launched."""
        with self._lock:
            cfg = self.cache.get(key)
        if cfg is None:
            if len(candidates) == 1:
                cfg = candidates[0]
            elif autotune_enabled() and not _capturing():
                cfg = self._tune(key, candidates, launch, pinned)
            else:
                cfg = pinned
        try:
            launch(cfg)
        except Exception as err:  # e.g. out of shared memory / registers on this device
            if cfg is pinned:
                raise
            self._warn(f"config {cfg} failed ({type(err).__name__}: {err}); using the pinned config")
            launch(pinned)
            cfg = pinned
        return cfg

    def _tune(self, key, candidates, launch, pinned) -> triton.Config:
        from triton.testing import do_bench

        times = {}
        for cfg in candidates:
            try:
                times[cfg] = do_bench(lambda: launch(cfg), warmup=5, rep=20)
            except Exception:  # a config this device cannot run: skip it
                continue
        if not times:
            self._warn("every tuned config failed; using the pinned config")
            return pinned
        best = min(times, key=times.get)
        with self._lock:
            self.cache[key] = best
        return best

    def _warn(self, msg: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"vmiseq triton {self.name} kernel: {msg}", RuntimeWarning, stacklevel=3)
