"""Plots of ``bench_capability.py``: MQAR heat maps, a task x mixer heat map, accuracy against
copy distance, and MQAR accuracy against state bytes (recall per byte of state)."""
from __future__ import annotations

import math
from pathlib import Path

from common import save_plot


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    print(f"wrote {path}")
    return path


def _heat(ax, grid: list[list[float]], rows: list, cols: list, title: str) -> None:
    """One annotated heat map of accuracies in [0, 1] (NaN cells blank)."""
    masked = [[float("nan") if v is None else v for v in row] for row in grid]
    im = ax.imshow(masked, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    for i, row in enumerate(masked):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_title(title, fontsize=9)
    return im


def plot_mqar(results: list[dict], path: Path) -> Path:
    plt = _plt()
    lens = sorted({c["seq_len"] for r in results for c in r["mqar"]})
    pairs = sorted({c["pairs"] for r in results for c in r["mqar"]})
    n = len(results)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), squeeze=False, constrained_layout=True)
    for ax, r in zip(axes.flat, results):
        acc = {(c["seq_len"], c["pairs"]): c["accuracy"] for c in r["mqar"]}
        im = _heat(ax, [[acc.get((L, N)) for N in pairs] for L in lens], lens, pairs, f"{r['mixer']} (width {r['width']})")
        ax.set_xlabel("key-value pairs", fontsize=8)
        ax.set_ylabel("sequence length", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label="MQAR accuracy")
    fig.suptitle("MQAR test accuracy per cell (one model per mixer and width, trained on all cells)")
    return _save(fig, path)


def plot_summary(results: list[dict], path: Path) -> Path:
    plt = _plt()
    full = [r for r in results if "copy" in r]
    dists = [c["distance"] for c in full[0]["copy"]]
    nan = {"accuracy": None, "accuracy_4x": None}
    tasks = ["MQAR mean", "selective copy", "induction", "induction 4x"] + [f"copy d={d}" for d in dists]
    grid = []
    for r in full:
        copy = {c["distance"]: c["accuracy"] for c in r["copy"]}
        sel, ind = r.get("selective_copy", nan), r.get("induction", nan)
        grid.append([r.get("mqar_mean"), sel["accuracy"], ind["accuracy"], ind["accuracy_4x"]] + [copy.get(d) for d in dists])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(tasks), 0.9 + 0.45 * len(full)))
    im = _heat(ax, grid, [r["mixer"] for r in full], tasks, f"Test accuracy per task (width {full[0]['width']}; blank: not run)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_state(results: list[dict], path: Path) -> Path:
    """MQAR mean accuracy against state bytes per sequence (at the longest MQAR length)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_mixer: dict[str, list[tuple[int, float, int]]] = {}
    for r in results:
        L = max(r["state_bytes"])
        by_mixer.setdefault(r["mixer"], []).append((r["state_bytes"][L], r["mqar_mean"], r["width"]))
    for name, pts in by_mixer.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for b, a, w in pts:
            ax.annotate(f"w{w}", (b, a), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)  # the whole accuracy range: chance-level runs must look like it
    ax.set_xlabel(f"state bytes per sequence (after {L} tokens; attention: its KV cache)")
    ax.set_ylabel("MQAR accuracy (mean over cells)")
    ax.set_title("Recall per byte of state")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_all(results: list[dict], stem: Path) -> list[Path]:
    """Every plot, next to the JSON: ``<stem>_mqar.png``, ``_summary``, ``_copy``, ``_state``."""
    with_mqar = [r for r in results if "mqar" in r]
    out = [plot_mqar(with_mqar, Path(f"{stem}_mqar.png")), plot_state(with_mqar, Path(f"{stem}_state.png"))] if with_mqar else []
    full = [r for r in results if "copy" in r]
    if full:
        out.append(plot_summary(results, Path(f"{stem}_summary.png")))
        dists = [c["distance"] for c in full[0]["copy"]]
        series = {r["mixer"]: [c["accuracy"] for c in r["copy"]] for r in full}
        out.append(save_plot(Path(f"{stem}_copy.png"), dists, series, xlabel="distance d", ylabel="test accuracy",
                             title="Copy at distance d (one model per d)", logx=True))
    return [p for p in out if p is not None]
