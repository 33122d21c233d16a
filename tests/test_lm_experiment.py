"""experiments/lm.py end to end: a tiny run, and resuming after the process is killed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "lm.py"
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 60)
ARGS = ["--dim", "16", "--depth", "1", "--block-size", "16", "--batch-size", "4", "--max-steps", "12",
        "--eval-interval", "4", "--eval-batches", "2", "--log-every", "1", "--no-progress", "--lr", "3e-3",
        "--warmup-steps", "2"]


def run(tmp_path: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    data = tmp_path / "corpus.txt"
    if not data.exists():
        data.write_text(TEXT)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(SCRIPT), "--data", str(data), "--out-dir", str(tmp_path / out), *ARGS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def train_losses(out: Path) -> pd.Series:
    df = pd.read_csv(out / "logs" / "metrics.csv")
    return df.dropna(subset=["train/loss"]).set_index("step")["train/loss"]


def test_training_resumes_after_the_process_is_killed(tmp_path):
    full = run(tmp_path, "full", "--sample-tokens", "20")
    assert full.returncode == 0, full.stderr[-2000:]
    res = json.loads((tmp_path / "full" / "results.json").read_text())
    assert {"val_loss", "val_ppl", "val_bpc", "train_seconds", "sample"} <= set(res)
    assert "----- sample -----" in full.stdout
    assert (tmp_path / "full" / "curves.png").is_file()

    crashed = run(tmp_path, "crash", "--sample-tokens", "0", "--crash-at-step", "9")
    assert crashed.returncode == 137  # killed mid-run, after the checkpoint of step 8
    assert not (tmp_path / "crash" / "results.json").exists()
    resumed = run(tmp_path, "crash", "--sample-tokens", "0", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((tmp_path / "crash" / "results.json").read_text())
    assert again["resumed_from_step"] == 8

    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "crash")
    assert list(b.index) == list(range(12))  # history before the crash kept, no gap, no repeat
    later = a.loc[8:]
    assert torch.allclose(torch.tensor(later.values), torch.tensor(b.loc[8:].values), atol=1e-5)
    assert abs(again["val_loss"] - res["val_loss"]) < 1e-5


def test_resume_from_a_corrupt_checkpoint_fails_clearly(tmp_path):
    ckpt = tmp_path / "broken" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    proc = run(tmp_path, "broken", "--resume", "last")
    assert proc.returncode != 0 and "corrupt or truncated" in proc.stderr


def test_help_runs():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--mixer" in proc.stdout and "--resume" in proc.stdout
