"""Shared helpers for every benchmark: fair timing, peak memory, tables, JSON and plots.

Usage from a script in ``benchmarks/``::

    from common import time_interleaved, memory_in_child, print_table, write_json, save_plot

Timing rules (see the project's CPU etiquette): warm up first, time every side of a
comparison in interleaved rounds (A, B, A, B, ... with the order rotating each round) so
machine noise hits them alike, report the min and median over rounds and every figure as a
ratio against a baseline timed in the same run, and record the machine load
(``os.getloadavg``) with the numbers.

Peak memory on CPU is measured as the process's peak resident set size (``VmHWM`` in
``/proc/self/status``) above the resident size just before the call, after resetting the
high-water mark through ``/proc/self/clear_refs``. So that freed tensors really leave the
resident set (and the next call's growth is visible), glibc is told to serve every
allocation above 64 KiB with its own ``mmap`` (``mallopt(M_MMAP_THRESHOLD)``), which it
returns to the OS on free. That setting makes every large allocation a fresh mmap with page
faults, a cost that would fall on the side with more temporaries: so memory is measured in a
process of its own (:func:`memory_in_child`) and the timing helpers refuse to run in a
process where the setting was made. This counts every byte torch, BLAS and Python touch --
activations, saved tensors, workspaces -- and agrees with a known allocation to within a few
hundred KiB (checked by ``calibrate_memory``). Linux only; elsewhere the peak is NaN.
"""
from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_allocator_touched = False  # set once mallopt changed glibc's thresholds in this process


def _check_fair() -> None:
    if _allocator_touched:
        raise RuntimeError("timing in a process whose allocator was reconfigured for a memory measurement: "
                           "measure memory in its own process (memory_in_child)")


def load() -> float:
    """The machine's 1-minute load average (NaN where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# ---------------------------------------------------------------------------- timing
def time_fn(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = 5,
    budget_s: float | None = None,
    min_repeats: int = 1,
) -> dict[str, float]:
    """Time ``fn()`` robustly: ``warmup`` untimed calls, then the median of ``repeats`` calls.

    Args:
        fn: the work to time (no arguments; wrap with a lambda).
        warmup: untimed calls first (allocator, caches, lazy initialisation, compilation).
        repeats: timed calls at most.
        budget_s: stop repeating once this much time was spent in timed calls (long
            baselines such as a naive loop at 64k tokens), but never before ``min_repeats``.
        min_repeats: timed calls at least.

    Returns:
        dict with ``median``, ``min``, ``max`` (seconds) and ``n`` (timed calls).
    """
    _check_fair()
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    for i in range(max(repeats, min_repeats)):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if budget_s is not None and spent >= budget_s and i + 1 >= min_repeats:
            break
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 5,
    warmup: int = 1,
    budget_s: float | None = None,
    min_rounds: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, float]]:
    """Time several functions in interleaved rounds: every round calls each once, in an
    order rotated by one each round, so load changes and cache state hit all sides alike.

    Args:
        fns: name -> work (no arguments).
        rounds: rounds at most. warmup: untimed calls of each first.
        budget_s: stop once the rounds took this long in all (but never before ``min_rounds``).
        clock: ``time.perf_counter`` (wall time, default) or ``time.process_time`` (CPU time
            of this process: on one thread, the work itself, less disturbed by other
            processes on a busy machine; with more threads it sums them).

    Returns:
        name -> dict with ``min``, ``median``, ``max`` (seconds), ``n`` (rounds) and ``all``
        (the time of every round, in round order: pair them with :func:`paired_ratio`).
    """
    _check_fair()
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    spent = 0.0
    for r in range(max(rounds, min_rounds)):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            gc.collect()
            t0 = clock()
            fns[name]()
            dt = clock() - t0
            times[name].append(dt)
            spent += dt
        if budget_s is not None and spent >= budget_s and r + 1 >= min_rounds:
            break
    return {n: {"min": min(t), "median": statistics.median(t), "max": max(t), "n": len(t), "all": t}
            for n, t in times.items()}


def paired_ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Median over rounds of a's time / b's time in the same round (from ``time_interleaved``):
    a load change between rounds cancels out, which a ratio of two minima does not."""
    return statistics.median(x / y for x, y in zip(a["all"], b["all"]))


# ---------------------------------------------------------------------------- memory
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
_libc = None


def _glibc():
    global _libc, _allocator_touched
    if _libc is None:
        _allocator_touched = True
        try:
            _libc = ctypes.CDLL("libc.so.6")
            # Fixed thresholds (this also turns off glibc's dynamic threshold growth).
            _libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
            _libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        except OSError:
            _libc = False
    return _libc


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_supported() -> bool:
    """True where the peak-RSS method works (Linux with a writable clear_refs)."""
    if not sys.platform.startswith("linux") or not _glibc():
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any]) -> float:
    """Peak resident memory (MiB) that ``fn()`` adds above the current resident set.

    Call ``fn`` once before (warm-up), so lazily built caches are not counted.
    """
    if not memory_supported():
        return float("nan")
    gc.collect()
    _glibc().malloc_trim(0)
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    peak = _status_kib("VmHWM")
    return max(0, peak - base) / 1024.0


def memory_in_child(argv: Sequence[str], timeout_s: float = 1800) -> Any:
    """Run ``python argv...`` (a benchmark script in its memory-only mode) in a fresh
    process and return the JSON it prints on its last stdout line. The child may change the
    allocator (``peak_memory_mb``); the parent that times stays untouched."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {argv} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def calibrate_memory(mb: int = 64) -> float:
    """Measured peak of allocating and filling ``mb`` MiB: should read about ``mb``."""
    n = mb * 1024 * 1024 // 4
    return peak_memory_mb(lambda: torch.ones(n))


# ---------------------------------------------------------------------------- reporting
def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # other processes competing for the cores distort fine-grained parallel ops most
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def fmt(value: Any) -> str:
    """Compact human formatting for table cells."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
        return f"{value:.2e}"
    return str(value)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> str:
    """Print ``rows`` (dicts) as a Markdown table and return the text."""
    if not rows:
        return ""
    columns = list(columns) if columns is not None else list(rows[0].keys())
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(f"\n{title}\n")
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(v.rjust(w) for v, w in zip(row, widths)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: str | Path, results: Any, args: Any = None, **extra: Any) -> Path:
    """Write ``results`` with the machine info and the script's arguments as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(), "args": vars(args) if args is not None and hasattr(args, "__dict__") else args}
    payload.update(extra)
    payload["results"] = results
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def save_plot(
    path: str | Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    kind: str = "line",
) -> Path | None:
    """Save a line (or grouped bar, ``kind="bar"``) plot of ``series`` against ``x`` as PNG.

    Returns None (with a note) when matplotlib is missing: plots are a convenience.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping the plot")
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if kind == "bar":
        n = len(series)
        width = 0.8 / max(n, 1)
        pos = range(len(x))
        for i, (name, ys) in enumerate(series.items()):
            ax.bar([p + (i - (n - 1) / 2) * width for p in pos], ys, width, label=name)
        ax.set_xticks(list(pos))
        ax.set_xticklabels([str(v) for v in x], rotation=15)
    else:
        for name, ys in series.items():
            pts = [(a, b) for a, b in zip(x, ys) if b is not None and not (isinstance(b, float) and math.isnan(b))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        if logx:
            ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def loglog_slope(xs: Iterable[float], ys: Iterable[float]) -> float:
    """Least-squares slope of log(y) against log(x): the empirical cost exponent."""
    lx = [math.log(a) for a in xs]
    ly = [math.log(b) for b in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den


def progress(iterable: Iterable, desc: str = "", total: int | None = None):
    """tqdm when installed, else the iterable itself (benchmarks print as they go anyway)."""
    try:
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False)
    except ImportError:
        return iterable


def parse_size(text: str) -> int:
    """'16k' -> 16384, '2048' -> 2048."""
    text = text.strip().lower()
    if text.endswith("k"):
        return int(float(text[:-1]) * 1024)
    return int(text)
