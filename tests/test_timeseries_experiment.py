"""experiments/timeseries.py end to end on a small synthetic CSV (seconds, CPU)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import experiment_scripts

pytest.importorskip("lightning")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "timeseries.py"


def load_script():
    return experiment_scripts.load_script("timeseries")


def synthetic_csv(path: Path, rows: int = 900) -> Path:
    t = np.arange(rows)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2020-01-01", periods=rows, freq="h").astype(str),
            "a": np.sin(2 * np.pi * t / 24) + 0.1 * rng.normal(size=rows),
            "b": np.cos(2 * np.pi * t / 12) + 0.01 * t + 0.1 * rng.normal(size=rows),
        }
    )
    frame.to_csv(path, index=False)
    return path


def common(tmp_path: Path, csv: Path) -> list[str]:
    return [
        "--data", str(csv), "--seq-len", "48", "--d-model", "16", "--n-layers", "1", "--patch-len", "8",
        "--stride", "8", "--epochs", "2", "--batch-size", "64", "--out-dir", str(tmp_path / "run"),
        "--no-progress", "--plot-windows", "2", "--log-every", "2",
    ]  # fmt: skip


def test_help_runs():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--horizon" in out.stdout and "--model" in out.stdout


def test_trains_tests_and_saves_vmisa(tmp_path):
    exp = load_script()
    rows = exp.main(common(tmp_path, synthetic_csv(tmp_path / "s.csv")) + ["--horizon", "12,24"])
    assert [r["horizon"] for r in rows] == [12, 24]
    for r in rows:
        assert np.isfinite(r["mse"]) and np.isfinite(r["mae"]) and r["mse"] < 1.5
        # the default linear_path="average" also reports each path alone; the mean of two
        # forecasts is never worse than the worse one (MSE is convex)
        assert max(r["mse_blocks"], r["mse_linear"]) >= r["mse"] - 1e-6
    run = tmp_path / "run"
    out = run / "vmisa_h12"
    for f in ("forecasts.png", "metrics.png", "logs/metrics.csv", "checkpoints/last.ckpt", "model/config.json", "model/scaler.json"):
        assert (out / f).is_file(), f
    payload = json.loads((run / "results_vmisa.json").read_text())
    assert payload["split"] == "ratio" and len(payload["results"]) == 2
    # The saved model reloads with the training scaler and the daily cycle found from the dates.
    from vmiseq.models import VMISAForecaster

    model = VMISAForecaster.from_pretrained(out / "model")
    assert model.config.cycle_len == 24 and model.scaler is not None and model.scaler.mean.shape == (2,)


@pytest.mark.parametrize("model", ["dlinear", "transformer", "gla"])
def test_baselines_run_in_the_same_harness(tmp_path, model):
    exp = load_script()
    rows = exp.main(common(tmp_path, synthetic_csv(tmp_path / "s.csv")) + ["--horizon", "12", "--model", model, "--epochs", "1"])
    assert np.isfinite(rows[0]["mse"])
    assert (tmp_path / "run" / f"{model}_h12" / "forecasts.png").is_file()


def test_bad_data_gives_a_clear_error(tmp_path):
    ArgumentProblem = experiment_scripts.harness().ArgumentProblem  # run_script prints it as one line, exit 2

    exp = load_script()
    csv = synthetic_csv(tmp_path / "s.csv", rows=100)
    with pytest.raises(ArgumentProblem, match=r"seq_len \+ pred_len"):
        exp.main(common(tmp_path, csv) + ["--horizon", "96"])
    with pytest.raises(ArgumentProblem, match=r"missing column\(s\) \['OT'\]"):
        exp.main(common(tmp_path, csv) + ["--columns", "a,OT"])
    with pytest.raises(ArgumentProblem, match="--horizon"):
        exp.main(common(tmp_path, csv) + ["--horizon", "soon"])


def test_rows_per_day_from_dates():
    exp = load_script()
    from vmiseq.data.timeseries import SeriesTable

    def table(freq):
        dates = pd.date_range("2020-01-01", periods=10, freq=freq).astype(str).tolist()
        return SeriesTable(np.zeros((10, 1), np.float32), ["x"], dates)

    assert exp.rows_per_day(table("h")) == 24
    assert exp.rows_per_day(table("15min")) == 96
    assert exp.rows_per_day(table("D")) == 0
    assert exp.rows_per_day(SeriesTable(np.zeros((10, 1), np.float32), ["x"], None)) == 0
