"""experiments/lm.py end to end: a tiny run, kill -9 mid-run and --resume last, clear errors."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from experiment_scripts import harness, load_script
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "lm.py"
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 60)
# 12 steps, a checkpoint every 4; dropout so that resuming must also restore the random draws
ARGS = ["--dim", "16", "--depth", "1", "--block-size", "16", "--batch-size", "4", "--max-steps", "12",
        "--eval-interval", "4", "--eval-batches", "2", "--log-every", "1", "--no-progress", "--lr", "3e-3",
        "--warmup-steps", "2", "--dropout", "0.1"]
NOISE = ("💡", "litlogger", "litmodels", "LeafSpec", "Seed set to", "Traceback")


def _script():
    return load_script("lm")


def _args(tmp_path: Path, out: str, *extra: str) -> list[str]:
    data = tmp_path / "corpus.txt"
    if not data.exists():
        data.write_text(TEXT)
    return ["--data", str(data), "--out-dir", str(tmp_path / out), *ARGS, *extra]


def run(tmp_path: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *_args(tmp_path, out, *extra)],
                          capture_output=True, text=True, env=env, timeout=900)


def test_kill_9_mid_run_then_resume_last_equals_an_uninterrupted_run(tmp_path, one_thread, capsys):
    lm = _script()
    full = lm.main(_args(tmp_path, "full", "--sample-tokens", "20"))
    assert {"val_loss", "val_ppl", "val_bpc", "train_seconds", "sample"} <= set(full)
    assert "----- sample -----" in capsys.readouterr().out
    assert (tmp_path / "full" / "curves.png").is_file()

    # SIGKILL before step 10: steps 8 and 9 ran and were logged after the step-8 checkpoint
    killed = run(tmp_path, "crash", "--sample-tokens", "0", "--kill-at-step", "10")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "crash" / "results.json").exists()
    logged = pd.read_csv(tmp_path / "crash" / "logs" / "metrics.csv")["step"]
    assert logged.max() == 9
    output = killed.stdout + killed.stderr
    assert not [n for n in NOISE if n in output], output[-3000:]  # only what the user needs

    again = lm.main(_args(tmp_path, "crash", "--sample-tokens", "0", "--resume", "last"))
    assert again["resumed_from_step"] == 8

    a = pd.read_csv(tmp_path / "full" / "logs" / "metrics.csv")
    b = pd.read_csv(tmp_path / "crash" / "logs" / "metrics.csv")
    train_b = b.dropna(subset=["train/loss"])
    assert list(train_b["step"]) == list(range(12))  # no lost and no repeated steps
    assert list(b["step"]) == list(a["step"]) and list(b.columns) == list(a.columns)  # same rows, lr and val too
    for col in ("train/loss", "val/loss", "lr-AdamW/pg1"):
        x, y = a.dropna(subset=[col])[col].values, b.dropna(subset=[col])[col].values
        assert torch.allclose(torch.tensor(x), torch.tensor(y), rtol=1e-5, atol=1e-6), col
    assert again["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)
    wa = load_file(tmp_path / "full" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6), k


def test_printed_generate_command_runs_without_an_activated_venv(tmp_path, monkeypatch):
    """lm.py ends with 'try: <command> generate ...': the command must run as printed."""
    console_command = harness().console_command

    bin_dir = Path(sys.executable).parent
    monkeypatch.setenv("PATH", str(tmp_path))  # the README's commands do not activate .venv
    cmd = console_command("vmiseq", "vmiseq.cli")
    proc = subprocess.run(shlex.split(cmd) + ["generate", "--help"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "--model" in proc.stdout, (cmd, proc.stderr[-2000:])
    if (bin_dir / "vmiseq").is_file():
        assert cmd == shlex.quote(str(bin_dir / "vmiseq"))
        monkeypatch.setenv("PATH", str(bin_dir))  # activated: the plain name
        assert console_command("vmiseq", "vmiseq.cli") == "vmiseq"
    assert console_command("no-such-script", "vmiseq.cli") == f"{shlex.quote(sys.executable)} -m vmiseq.cli"


def test_missing_data_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lm.py: error: --data: expected") and repr(str(tmp_path / "missing")) in lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--resume", "last"], "--resume: expected a checkpoint file"),
    (["--block-size", "100000"], "block_size"),
    (["--mixer", "vmisa", "--dim", "0"], "dim"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, script_error, extra, message):
    run_script = harness().run_script

    lm = _script()
    with pytest.raises(SystemExit) as exc:
        run_script(lambda: lm.main(_args(tmp_path, "bad", *extra)))
    assert exc.value.code == 2
    assert message in script_error()


def test_resume_from_a_corrupt_checkpoint_fails_clearly(tmp_path, script_error):
    run_script = harness().run_script

    ckpt = tmp_path / "broken" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    lm = _script()
    with pytest.raises(SystemExit) as exc:
        run_script(lambda: lm.main(_args(tmp_path, "broken", "--resume", "last")))
    assert exc.value.code == 2
    line = script_error()
    assert "error: --resume" in line and str(ckpt) in line, line


def test_help_runs():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "--mixer" in proc.stdout and "--resume" in proc.stdout
    assert "--kill-at-step" not in proc.stdout  # a test hook, not a user option
