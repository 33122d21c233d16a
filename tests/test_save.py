"""save_pretrained / from_pretrained under failure: crashes between steps (patched renames and
kill -9 of a saving process), concurrent saves (threads and processes), the umask, planted
symlinks, and damaged folders (each a clear error naming the file)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vmiseq import files
from vmiseq.saving import PretrainedMixin

TESTS = Path(__file__).resolve().parent


@dataclasses.dataclass
class BlobConfig:
    n: int = 8
    fill: float = 0.0


class Blob(nn.Module, PretrainedMixin):
    """The smallest saveable model: one vector, every entry ``fill`` (so a loaded model says
    which save it came from)."""

    config_class = BlobConfig

    def __init__(self, config: BlobConfig) -> None:
        super().__init__()
        self.config = config
        self.w = nn.Parameter(torch.full((config.n,), float(config.fill)))


def fill_of(path: Path) -> float:
    w = Blob.from_pretrained(path).w.detach()
    assert torch.all(w == w[0]), "a loaded model mixes two saves"
    return float(w[0])


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def no_exchange(monkeypatch):
    """Force the two-rename path (systems without renameat2)."""
    monkeypatch.setattr(files, "exchange", lambda a, b: False)


@pytest.mark.parametrize("two_renames", [False, True])
def test_overwrite_keeps_one_folder_and_no_leftovers(tmp_path, monkeypatch, two_renames):
    if two_renames:
        no_exchange(monkeypatch)
    for fill in (1.0, 2.0, 3.0):
        Blob(BlobConfig(fill=fill)).save_pretrained(tmp_path / "m")
        assert fill_of(tmp_path / "m") == fill
    assert names(tmp_path) == ["m"]


def test_exchange_is_available_here(tmp_path):
    """The one-step swap works on this filesystem (else only the two-rename path is in use)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a")
    if files._renameat2() is None:
        pytest.skip("no renameat2 on this system")
    assert files.exchange(a, b) and (b / "x").read_text() == "a" and not (a / "x").exists()


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_saved_folder_follows_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = Blob(BlobConfig()).save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (path / "config.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_failed_second_rename_restores_the_previous_model(tmp_path, monkeypatch):
    no_exchange(monkeypatch)
    Blob(BlobConfig(fill=1.0)).save_pretrained(tmp_path / "m")
    real = os.rename

    def failing(src, dst, *a, **k):
        if ".tmp-" in os.fspath(src) and Path(dst).name == "m":
            raise OSError(5, "simulated I/O error")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError, match="simulated"):
        Blob(BlobConfig(fill=2.0)).save_pretrained(tmp_path / "m")
    assert fill_of(tmp_path / "m") == 1.0
    assert names(tmp_path) == ["m"]


def test_crash_between_the_two_renames_is_recovered_by_from_pretrained(tmp_path, monkeypatch):
    """A crash right after the old folder was moved aside (nothing at the target): from_pretrained
    finds the complete copy, and the next save puts a model back in place."""
    no_exchange(monkeypatch)
    Blob(BlobConfig(fill=1.0)).save_pretrained(tmp_path / "m")

    def crash(*a, **k):
        raise KeyboardInterrupt  # like the process dying: no rename after this point succeeds

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        Blob(BlobConfig(fill=2.0)).save_pretrained(tmp_path / "m")
    monkeypatch.undo()
    assert not (tmp_path / "m").exists()
    with pytest.warns(UserWarning, match="interrupted save_pretrained"):
        assert fill_of(tmp_path / "m") == 1.0
    Blob(BlobConfig(fill=3.0)).save_pretrained(tmp_path / "m")
    assert fill_of(tmp_path / "m") == 3.0


def test_failure_while_writing_leaves_the_previous_model_and_no_temp(tmp_path, monkeypatch):
    Blob(BlobConfig(fill=1.0)).save_pretrained(tmp_path / "m")

    def boom(self, directory):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Blob, "_save_extra", boom, raising=False)
    with pytest.raises(RuntimeError, match="disk full"):
        Blob(BlobConfig(fill=2.0)).save_pretrained(tmp_path / "m")
    assert fill_of(tmp_path / "m") == 1.0 and names(tmp_path) == ["m"]


def test_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "m").symlink_to(victim, target_is_directory=True)
    Blob(BlobConfig(fill=5.0)).save_pretrained(tmp_path / "out" / "m")
    assert names(victim) == ["keep.txt"] and (victim / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "out" / "m").is_symlink() and fill_of(tmp_path / "out" / "m") == 5.0


@pytest.mark.parametrize("two_renames", [False, True])
def test_concurrent_saves_from_threads(tmp_path, monkeypatch, two_renames):
    """4 threads x 5 saves to one folder, a reader loading all the while: every save succeeds,
    every load gives one whole model, and one folder is left."""
    if two_renames:
        no_exchange(monkeypatch)
    Blob(BlobConfig(n=4096, fill=-1.0)).save_pretrained(tmp_path / "m")
    errors, loaded, done = [], [], threading.Event()

    def saver(i):
        try:
            for j in range(5):
                Blob(BlobConfig(n=4096, fill=10 * i + j)).save_pretrained(tmp_path / "m")
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    def reader():
        import warnings

        while not done.is_set():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    loaded.append(fill_of(tmp_path / "m"))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=saver, args=(i,)) for i in range(4)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    r.join()
    assert not errors, errors
    assert loaded and fill_of(tmp_path / "m") in {10 * i + 4 for i in range(4)}
    assert names(tmp_path) == ["m"]


SAVER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_save import Blob, BlobConfig
n, tag, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for j in range(count):
    Blob(BlobConfig(n=n, fill=tag * 100 + j)).save_pretrained({target!r})
    print("saved", flush=True)
"""


def saver_cmd(target: Path, n: int, tag: int, count: int) -> list[str]:
    return [sys.executable, "-c", SAVER.format(tests=str(TESTS), target=str(target)), str(n), str(tag), str(count)]


def test_concurrent_saves_from_processes(tmp_path):
    procs = [subprocess.Popen(saver_cmd(tmp_path / "m", 2048, tag, 4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for tag in (1, 2, 3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert fill_of(tmp_path / "m") in {103.0, 203.0, 303.0}
    assert names(tmp_path) == ["m"]


def test_kill_9_mid_save_leaves_a_loadable_model_and_the_next_save_cleans_up(tmp_path):
    """A process saving a 16 MB model over and over is SIGKILLed at two moments: the folder
    always loads (the previous or the new model), and the next save removes the dead
    process's temp folders."""
    target, n = tmp_path / "m", 4_000_000
    Blob(BlobConfig(n=n, fill=0.0)).save_pretrained(target)
    left_behind = []
    for delay in (0.1, 0.45):
        p = subprocess.Popen(saver_cmd(target, n, 7, 1000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "saved", p.stderr.read()[-2000:]  # past the imports, one save done
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        left_behind += [name for name in names(tmp_path) if name != "m"]
        assert fill_of(target) in {0.0} | {700.0 + j for j in range(1000)}
    assert left_behind, "no kill landed inside a save (the test did not exercise an interrupted save)"
    Blob(BlobConfig(n=8, fill=1.0)).save_pretrained(target)
    assert names(tmp_path) == ["m"]


def test_leftovers_of_live_processes_are_kept(tmp_path):
    """Another process's temp folder (its save may be in progress) survives a save."""
    live = tmp_path / f".m.tmp-{os.getppid()}@{files.host_name()}-abc123"
    live.mkdir()
    Blob(BlobConfig()).save_pretrained(tmp_path / "m")
    assert live.is_dir()


# ---------------------------------------------------------------------------- damaged folders
@pytest.fixture
def saved(tmp_path) -> Path:
    return Blob(BlobConfig(n=8, fill=1.0)).save_pretrained(tmp_path / "m")


def edit_config(path: Path, **changes) -> None:
    meta = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if k == "n":
            meta["config"]["n"] = v
        elif v is None:
            meta.pop(k)
        else:
            meta[k] = v
    (path / "config.json").write_text(json.dumps(meta))


def test_config_shapes_that_disagree_with_the_weights(saved):
    edit_config(saved, n=12)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'w' expected shape \(12,\).*got \(8,\)"):
        Blob.from_pretrained(saved)


def test_non_utf8_config(saved):
    (saved / "config.json").write_bytes(b'{"config": "\xff\xfe"}')
    with pytest.raises(ValueError, match="config.json: expected UTF-8"):
        Blob.from_pretrained(saved)


def test_future_format_version(saved):
    edit_config(saved, format_version=99)
    with pytest.raises(ValueError, match="format_version expected an integer from 1 to 1.*got 99"):
        Blob.from_pretrained(saved)


def test_config_that_does_not_build(saved):
    meta = json.loads((saved / "config.json").read_text())
    meta["config"]["colour"] = "red"
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(TypeError, match="config.json: invalid BlobConfig"):
        Blob.from_pretrained(saved)


def test_deleted_tokenizer_folder_is_an_error(tmp_path):
    import shutil

    from vmiseq.models.lm import VMISAConfig, VMISAForCausalLM
    from vmiseq.data.tokenizer import Tokenizer

    model = VMISAForCausalLM(VMISAConfig(vocab_size=32, dim=8, depth=1))
    model.tokenizer = Tokenizer.train_char("abcdef\n")
    path = model.save_pretrained(tmp_path / "lm")
    shutil.rmtree(path / "tokenizer")
    with pytest.raises(ValueError, match="tokenizer/.*expected a file of .* bytes.*got no such file"):
        VMISAForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("content", ['{"mean": [0.0, 1.0]}', '{"mean": [0, 0], "std": [1, 0]}', '[1, 2]', "not json"])
def test_bad_scaler_json(tmp_path, content):
    from vmiseq.data.timeseries import StandardScaler
    from vmiseq.models import VMISAForecaster
    from vmiseq.models.forecaster import ForecasterConfig

    import numpy as np

    model = VMISAForecaster(ForecasterConfig(n_vars=2, seq_len=16, pred_len=4, patch_len=4, stride=4, d_model=8, n_layers=1))
    model.scaler = StandardScaler(np.zeros(2), np.ones(2))
    path = model.save_pretrained(tmp_path / "f")
    (path / "scaler.json").write_text(content)
    with pytest.raises(ValueError, match="scaler.json"):  # caught by the size check in config.json
        VMISAForecaster.from_pretrained(path)
    edit_config(path, files=None)  # a folder saved before config.json listed its files
    with pytest.raises(ValueError, match="scaler.json: expected"):
        VMISAForecaster.from_pretrained(path)
