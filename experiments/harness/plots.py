"""The experiments' figures: training curves from the CSV logs, forecasts against the truth."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch

if TYPE_CHECKING:
    from vmiseq.data.timeseries import ForecastData


def plot_metrics(metrics_csv: os.PathLike, png_path: os.PathLike, groups: Optional[dict[str, Sequence[str]]] = None) -> Path:
    """Plot Lightning's CSV metrics (one panel per group of columns) to a PNG.

    ``groups`` maps a panel title to metric names; by default every column whose name
    contains "loss" goes in one panel and everything with "acc", "mse", "mae", "ppl" or "bpc"
    in another.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    if groups is None:
        cols = [c for c in df.columns if c not in ("epoch", "step") and not c.startswith("lr")]
        groups = {
            "loss": [c for c in cols if "loss" in c],
            "metrics": [c for c in cols if "loss" not in c and any(k in c for k in ("acc", "mse", "mae", "ppl", "bpc"))],
        }
        groups = {k: v for k, v in groups.items() if v}
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(6 * max(1, len(groups)), 4), squeeze=False)
    for ax, (title, names) in zip(axes[0], groups.items()):
        for name in names:
            if name in df.columns:
                s = df[["step", name]].dropna()
                ax.plot(s["step"], s[name], marker="." if len(s) < 50 else None, label=name)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def plot_forecasts(module, data: "ForecastData", path: Path, n_windows: int, title: str) -> Optional[Path]:
    """Forecast vs truth for ``n_windows`` evenly spaced test windows (the last variable)."""
    if n_windows <= 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = data.test
    picks = torch.linspace(0, len(ds) - 1, n_windows).round().long().tolist()
    var = data.table.n_vars - 1
    fig, axes = plt.subplots(1, n_windows, figsize=(4.5 * n_windows, 3.2), squeeze=False)
    module.eval()
    with torch.no_grad():
        for ax, i in zip(axes[0], picks):
            x, y, t0 = ds[i]
            pred = module(x.unsqueeze(0), t0.view(1))[0]
            L, H = x.shape[0], y.shape[0]
            ax.plot(range(L), x[:, var], color="0.4", label="input")
            ax.plot(range(L, L + H), y[:, var], color="k", label="truth")
            ax.plot(range(L, L + H), pred[:, var], color="tab:red", label="forecast")
            ax.set_title(f"test window {i}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{title} -- variable {data.table.columns[var]!r} (standardised)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
