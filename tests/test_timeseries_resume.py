"""experiments/timeseries.py: killed mid-run and resumed equals an uninterrupted run; random-length
history training (its sampler and the truncated-gradient forward)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("lightning")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "timeseries.py"
from experiment_scripts import harness
from test_timeseries_experiment import common, load_script, synthetic_csv


def run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    tmp_path.mkdir(parents=True, exist_ok=True)
    csv = tmp_path / "s.csv"
    if not csv.exists():
        synthetic_csv(csv)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    args = common(tmp_path, csv) + ["--horizon", "12", "--epochs", "3", "--patience", "5", "--log-every", "1", "--plot-windows", "0"]
    return subprocess.run([sys.executable, str(SCRIPT), *args, *extra], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("history", [False, True], ids=["windows", "random-length-histories"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, history):
    extra = ["--history-max", "200"] if history else []
    full = run(tmp_path / "full", *extra)
    assert full.returncode == 0, full.stderr[-3000:]
    # 571 training windows, batch 64: 8 steps per epoch; SIGKILL in the middle of epoch 2
    crashed = run(tmp_path / "crash", "--crash-at-step", "12:11", *extra)
    assert crashed.returncode == -signal.SIGKILL
    out = tmp_path / "crash" / "run" / "vmisa_h12"
    assert not (out / "result.json").exists()
    resumed = run(tmp_path / "crash", "--resume", "last", *extra)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = pd.read_csv(tmp_path / "full" / "run" / "vmisa_h12" / "logs" / "metrics.csv")
    b = pd.read_csv(out / "logs" / "metrics.csv")
    la, lb = (d.dropna(subset=["train/loss"]).set_index("step")["train/loss"] for d in (a, b))
    assert list(lb.index) == list(la.index) == list(range(24))  # no lost or repeated steps
    np.testing.assert_allclose(lb.values, la.values, rtol=1e-5, atol=1e-6)
    va, vb = (d.dropna(subset=["val/mse"])["val/mse"].values for d in (a, b))
    np.testing.assert_allclose(vb, va, rtol=1e-5, atol=1e-6)
    ra = json.loads((tmp_path / "full" / "run" / "results_vmisa.json").read_text())["results"][0]
    rb = json.loads((tmp_path / "crash" / "run" / "results_vmisa.json").read_text())["results"][0]
    assert rb["resumed_from_step"] == 8 and ra["resumed_from_step"] == 0
    assert abs(ra["mse"] - rb["mse"]) < 1e-6 and abs(ra["mae"] - rb["mae"]) < 1e-6
    # a finished horizon is kept, not retrained, by a later --resume last
    again = run(tmp_path / "crash", "--resume", "last", *extra)
    assert again.returncode == 0 and "finished before the interruption" in again.stdout


def test_resume_errors_are_clear(tmp_path):
    ArgumentProblem = harness().ArgumentProblem  # run_script prints it as one line, exit 2

    exp = load_script()
    csv = synthetic_csv(tmp_path / "s.csv")
    with pytest.raises(ArgumentProblem, match=r"--resume: expected an interrupted run"):
        exp.main(common(tmp_path, csv) + ["--horizon", "12", "--resume", "last"])
    with pytest.raises(ArgumentProblem, match=r"--resume: expected a checkpoint file.*not found"):
        exp.main(common(tmp_path, csv) + ["--horizon", "12", "--resume", str(tmp_path / "missing.ckpt")])
    with pytest.raises(ArgumentProblem, match=r"--resume: a checkpoint path resumes one horizon"):
        exp.main(common(tmp_path, csv) + ["--horizon", "12,24", "--resume", str(tmp_path / "missing.ckpt")])
    with pytest.raises(ArgumentProblem, match=r"--history-max: expected 0 \(off\) or at least --seq-len=48"):
        exp.main(common(tmp_path, csv) + ["--horizon", "12", "--history-max", "20"])


def test_random_history_batches():
    from vmiseq.data.windows import RandomHistoryBatches, WindowDataset

    ds = WindowDataset(np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32), 24, 6, return_index=True)
    sampler = RandomHistoryBatches(ds, 16, 200, p_long=0.5, seed=3)
    epoch0 = sampler.batches()
    assert epoch0 == sampler.batches()  # deterministic in (seed, epoch)
    sampler.set_epoch(1)
    assert epoch0 != sampler.batches()
    assert len(epoch0) == len(sampler) == len(ds) // 16
    seen = [i for b in epoch0 for i, _ in b]
    assert len(set(seen)) == len(seen) == len(epoch0) * 16  # every window at most once
    lengths = [b[0][1] for b in epoch0]
    assert min(lengths) == 24 and max(lengths) > 96 and max(lengths) <= 200
    for batch in epoch0:
        for i, length in batch:
            assert length == batch[0][1] and i + 24 - length >= 0  # one length per batch, within the data
            x, y, t0 = ds[(i, length)]
            torch.testing.assert_close(x[-24:], ds[i][0])  # the same window, a longer past
            torch.testing.assert_close(y, ds[i][1])
            assert int(t0) == i + 24 - length
    with pytest.raises(ValueError, match="max_len"):
        RandomHistoryBatches(ds, 16, 10)


def test_truncated_gradient_forward_equals_the_full_forward():
    from vmiseq.models import ForecasterConfig, VMISAForecaster

    torch.manual_seed(0)
    model = VMISAForecaster(ForecasterConfig(n_vars=2, pred_len=4, seq_len=16, patch_len=4, stride=4, d_model=8, cycle_len=3)).eval()
    x = torch.randn(2, 80, 2)
    with torch.no_grad():
        ref = model(x, start=1)
    out = model(x, start=1, grad_tokens=4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert model.embed.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="grad_tokens"):
        model(x, start=1, grad_tokens=0)
