"""The shared command-line behaviour of the experiment scripts (experiments/harness):
one-line argument errors with exit status 2, no Lightning noise, metrics.csv continued across
kills and resumes."""
from __future__ import annotations

import logging
import warnings

import pandas as pd
import pytest

from experiment_scripts import harness, load_script

H = harness()
ArgumentProblem, argument_errors, quiet_lightning, run_script = H.ArgumentProblem, H.argument_errors, H.quiet_lightning, H.run_script


def test_argument_errors_name_the_flag():
    with pytest.raises(ArgumentProblem, match=r"^--data: expected a file, got 'x'$"):
        with argument_errors("--data"):
            raise ValueError("data: expected a file, got 'x'")  # the library's parameter name -> the flag
    with pytest.raises(ArgumentProblem, match=r"^--data: expected a CSV file"):
        with argument_errors("--data", aliases=("path",)):
            raise FileNotFoundError("path: expected a CSV file, got 'x' (not found)")
    with pytest.raises(ArgumentProblem, match=r"^--resume: not found$"):
        with argument_errors("--data"):
            raise ValueError("--resume: not found")  # already names a flag: left alone
    with pytest.raises(ArgumentProblem, match=r"^--out: \[Errno 2\]"):
        with argument_errors("--out"):
            open("/nonexistent/dir/file")
    with pytest.raises(ZeroDivisionError):  # a bug is not a bad argument: it keeps its traceback
        with argument_errors("--data"):
            1 / 0


def test_run_script_prints_one_line_and_exits_2(capsys):
    def main():
        raise ArgumentProblem("--data: expected a file,\n  got 'x'")

    with pytest.raises(SystemExit) as exc:
        run_script(main)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith("error: --data: expected a file, got 'x'")

    def buggy():
        raise KeyError("k")

    with pytest.raises(KeyError):  # not swallowed
        run_script(buggy)


def test_quiet_lightning_drops_adverts_but_not_warnings(caplog):
    quiet_lightning()
    quiet_lightning()  # idempotent
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(1 for f in log.filters if type(f).__name__ == "_DropNoise") == 1
    record = lambda msg: logging.LogRecord(log.name, logging.INFO, __file__, 1, msg, None, None)  # noqa: E731
    assert not log.filter(record("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"))
    assert not log.filter(record("TPU available: False, using: 0 TPU cores"))
    assert log.filter(record("GPU available: False, used: False"))
    assert log.filter(record("`Trainer.fit` stopped: `max_steps=12` reached."))
    with warnings.catch_warnings(record=True) as caught:
        quiet_lightning()  # catch_warnings restored the filters on entry
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("the val loss is NaN", UserWarning)
    assert [str(w.message) for w in caught] == ["the val loss is NaN"]


def test_history_logger_keeps_rows_before_each_resumed_step(tmp_path):
    """Two kills: every step appears once, in order, whatever was logged after each checkpoint."""
    HistoryCSVLogger = H.HistoryCSVLogger

    def run(first: int, last: int, resuming: bool, resume_at: int = 0) -> None:
        logger = HistoryCSVLogger(str(tmp_path), name="logs", version="", resuming=resuming)
        if resuming:
            logger.trim_history(resume_at)
        for step in range(first, last):
            logger.log_metrics({"train/loss": float(step)}, step=step)
            if step % 3 == 2:
                logger.log_metrics({"val/loss": 100.0 + step}, step=step)  # a new column mid-run
            logger.save()

    run(0, 7, resuming=False)  # killed after step 6; last checkpoint at step 4
    run(4, 10, resuming=True, resume_at=4)  # killed after step 9; checkpoint at step 8
    run(8, 12, resuming=True, resume_at=8)
    df = pd.read_csv(tmp_path / "logs" / "metrics.csv")
    train = df.dropna(subset=["train/loss"])
    assert list(train["step"]) == list(range(12)) and list(train["train/loss"]) == [float(s) for s in range(12)]
    assert list(df.dropna(subset=["val/loss"])["step"]) == [2, 5, 8, 11]
    run(0, 2, resuming=False)  # a fresh run in the same folder starts a new file
    assert list(pd.read_csv(tmp_path / "logs" / "metrics.csv")["step"]) == [0, 1]


def test_timeseries_missing_data_is_one_line_and_exit_2(tmp_path, script_error):
    ts = load_script("timeseries")
    with pytest.raises(SystemExit) as exc:
        run_script(lambda: ts.main(["--data", str(tmp_path / "missing.csv"), "--out-dir", str(tmp_path / "o")]))
    assert exc.value.code == 2
    line = script_error()
    assert "error: --data: expected a CSV file" in line and "missing.csv" in line, line
