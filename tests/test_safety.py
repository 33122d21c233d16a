"""Crafted files never run code or get used: malicious checkpoints fed to every entry point
that reads one, and planted token caches (symlinks, wrong ids)."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from experiment_scripts import harness, load_script
from vmiseq import checkpoints
from vmiseq.data.text import tokenize_cached
from vmiseq.data.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates the file ``path``: proof that a loader ran the file's code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(path: Path, marker: Path, fmt: str = "zip") -> Path:
    """A checkpoint-shaped file whose unpickling creates ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"state_dict": {}, "global_step": 3, "epoch": 0, "pytorch-lightning_version": "2.6.0", "x": Payload(marker)}
    if fmt == "zip":
        torch.save(obj, path)
    elif fmt == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj))
    return path


def script(name: str):
    return load_script(name)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


def test_the_payload_is_live(tmp_path, marker):
    """The crafted file does run code under a plain torch.load (so the tests below can fail)."""
    torch.load(plant(tmp_path / "x.ckpt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw-pickle"])
def test_library_loaders_refuse_code(tmp_path, marker, fmt, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not turn the protection off
    ckpt = plant(tmp_path / "evil.ckpt", marker, fmt)
    calls = [
        lambda: checkpoints.load_checkpoint(ckpt, what="--resume"),
        lambda: harness().resolve_resume(str(ckpt), str(tmp_path)),
        lambda: checkpoints.safe_checkpoint_io().load_checkpoint(ckpt),
        lambda: checkpoints.load_module_from_checkpoint(object, ckpt),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="evil.ckpt"):
            call()
    assert not marker.exists()


def test_refusal_names_the_objects(tmp_path, marker):
    with pytest.raises(ValueError, match=r"--resume: .*evil.ckpt.*\(io.open\).*weights_only=True"):
        checkpoints.load_checkpoint(plant(tmp_path / "evil.ckpt", marker), what="--resume")


def test_trainer_restore_goes_through_the_safe_loader(tmp_path, marker, monkeypatch):
    """Trainer.fit(ckpt_path=...) on a build_trainer Trainer reads through load_checkpoint, even
    with the environment asking torch for unsafe loads."""
    import lightning as L

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            return (self.w - batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    parser = harness().add_trainer_args(argparse.ArgumentParser(), out_dir=str(tmp_path / "run"))
    args = parser.parse_args(["--no-progress", "--accelerator", "cpu", "--devices", "1"])
    trainer = harness().build_trainer(args, max_steps=1)
    loader = torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=2)
    with pytest.raises(ValueError, match="ckpt_path: .*evil.ckpt"):
        trainer.fit(Tiny(), loader, ckpt_path=str(plant(tmp_path / "evil.ckpt", marker)))
    assert not marker.exists()


# ---------------------------------------------------------------------------- the experiments
CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40
LM_ARGS = ["--dim", "8", "--depth", "1", "--block-size", "8", "--batch-size", "2", "--max-steps", "2", "--no-progress"]


@pytest.mark.parametrize("how", ["file", "last"])
def test_lm_resume(tmp_path, marker, how):
    (tmp_path / "c.txt").write_text(CORPUS)
    out = tmp_path / "run"
    ckpt = plant(out / "checkpoints" / "last.ckpt" if how == "last" else tmp_path / "evil.ckpt", marker)
    with pytest.raises(ValueError, match=f"--resume: .*{ckpt.name}"):
        script("lm").main(["--data", str(tmp_path / "c.txt"), "--out-dir", str(out), *LM_ARGS, "--resume", str(ckpt) if how == "file" else "last"])
    assert not marker.exists()


def test_lm_resume_last_command_line(tmp_path, marker):
    """The reported attack as a user runs it: a planted last.ckpt and ``lm.py --resume last``."""
    (tmp_path / "c.txt").write_text(CORPUS)
    plant(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    cmd = [sys.executable, str(ROOT / "experiments" / "lm.py"), "--data", str(tmp_path / "c.txt"),
           "--out-dir", str(tmp_path / "run"), *LM_ARGS, "--resume", "last"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_DATASETS_OFFLINE="1"))
    assert proc.returncode != 0 and "weights_only=True" in proc.stderr
    assert not marker.exists()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for split in ("train", "val"):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (16, 16), (200 * c, 40, 40 + i)).save(d / f"{i}.png")
    return root


def imagenet_args(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--model", "vminet_ti", "--model-kwargs", '{"depths": [1, 1, 1, 1], "base_dim": 8, "stem_dim": 8}',
            "--img-size", "16", "--batch-size", "4", "--epochs", "1", "--out-dir", str(out), "--no-progress",
            "--accelerator", "cpu", "--devices", "1"]


@pytest.mark.parametrize("how", ["resume-file", "resume-last", "eval-only"])
def test_imagenet_checkpoints(tmp_path, marker, image_folder, how):
    out = tmp_path / "run"
    ckpt = plant(out / "checkpoints" / "last.ckpt" if how == "resume-last" else tmp_path / "evil.ckpt", marker)
    extra = {"resume-file": ["--resume", str(ckpt)], "resume-last": ["--resume", "last"],
             "eval-only": ["--eval-only", "--checkpoint", str(ckpt)]}[how]
    flag = "--checkpoint" if how == "eval-only" else "--resume"
    with pytest.raises(ValueError, match=f"{flag}: .*{ckpt.name}"):
        script("imagenet").main(imagenet_args(image_folder, out) + extra)
    assert not marker.exists()


def test_timeseries_resume(tmp_path, marker):
    source = (ROOT / "experiments" / "timeseries.py").read_text()
    if "resolve_resume(" not in source:
        pytest.skip("experiments/timeseries.py does not read --resume in this checkout")
    import pandas as pd

    t = np.arange(600)
    pd.DataFrame({"date": pd.date_range("2020-01-01", periods=600, freq="h").astype(str), "a": np.sin(t / 4)}).to_csv(tmp_path / "s.csv", index=False)
    ckpt = plant(tmp_path / "evil.ckpt", marker)
    args = ["--data", str(tmp_path / "s.csv"), "--seq-len", "48", "--d-model", "8", "--n-layers", "1", "--patch-len", "8",
            "--stride", "8", "--epochs", "1", "--horizon", "12", "--out-dir", str(tmp_path / "run"), "--no-progress",
            "--plot-windows", "0", "--resume", str(ckpt)]
    with pytest.raises((ValueError, SystemExit), match=f"--resume: .*{ckpt.name}"):
        script("timeseries").main(args)
    assert not marker.exists()


# ---------------------------------------------------------------------------- the token cache
TEXT = "hello world\nthe quick brown fox\n" * 50


def cache_files(cache: Path) -> tuple[Path, Path]:
    return next(cache.glob("tokens-*.npy")), next(cache.glob("tokens-*.json"))


def test_cache_round_trip_and_manifest(tmp_path):
    tok = Tokenizer.train_char(TEXT)
    ids = tokenize_cached(TEXT, tok, tmp_path)
    npy, meta = cache_files(tmp_path)
    manifest = json.loads(meta.read_text())
    assert manifest["n_tokens"] == len(ids) == len(TEXT)
    assert np.array_equal(tokenize_cached(TEXT, tok, tmp_path), ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([npy.name, meta.name])  # no temp files left


def test_planted_cache_of_wrong_ids_is_not_used(tmp_path):
    """Wrong ids with a manifest forged to match them: the spot check against the text catches it."""
    tok = Tokenizer.train_char(TEXT)
    right = tokenize_cached(TEXT, tok, tmp_path)
    npy, meta = cache_files(tmp_path)
    wrong = np.roll(right, 1)
    np.save(npy, wrong)
    manifest = json.loads(meta.read_text())
    meta.write_text(json.dumps({**manifest, "ids_sha256": __import__("hashlib").sha256(wrong.tobytes()).hexdigest()}))
    with pytest.warns(UserWarning, match="re-tokenising the text gives other ids"):
        again = tokenize_cached(TEXT, tok, tmp_path)
    assert np.array_equal(again, right)
    assert np.array_equal(np.load(npy), right)  # rewritten


@pytest.mark.parametrize("damage", ["no-manifest", "other-tokenizer", "ids-changed"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    tok = Tokenizer.train_char(TEXT)
    right = tokenize_cached(TEXT, tok, tmp_path)
    npy, meta = cache_files(tmp_path)
    if damage == "no-manifest":
        meta.unlink()
    elif damage == "other-tokenizer":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "tokenizer_sha256": "0" * 64}))
    else:
        bad = right.copy()
        bad[len(bad) // 2] += 1  # the middle: the spot check cannot see it, the hash does
        np.save(npy, bad)
    with pytest.warns(UserWarning, match="ignoring the token cache"):
        assert np.array_equal(tokenize_cached(TEXT, tok, tmp_path), right)


def test_symlinks_planted_at_the_cache_paths_are_not_followed(tmp_path, monkeypatch):
    """Symlinks at the old predictable temp name, at the final names and at the first temp name
    mkstemp will try: the victim file stays untouched and the cache is written."""
    import hashlib

    tok = Tokenizer.train_char(TEXT)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache = tmp_path / "cache"
    cache.mkdir()
    key = hashlib.sha256(TEXT.encode()).hexdigest()[:16] + "-" + hashlib.sha256(tok._tok.to_str().encode()).hexdigest()[:12]
    for name in (f".tokens-{key}.{os.getpid()}.npy", f"tokens-{key}.npy", f"tokens-{key}.json"):
        (cache / name).symlink_to(victim)
    names = iter(["planted", "free1", "free2", "free3", "free4"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    (cache / f".tokens-{key}.npy.planted.tmp").symlink_to(victim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the planted final names are reported and replaced
        ids = tokenize_cached(TEXT, tok, cache)
    assert victim.read_text() == "precious"
    assert not (cache / f"tokens-{key}.npy").is_symlink()
    assert np.array_equal(np.load(cache / f"tokens-{key}.npy"), ids)


def test_lm_cache_lives_in_the_out_dir(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS)
    lm = script("lm")
    args = lm.parse_args(["--data", str(tmp_path / "c.txt"), "--out-dir", str(tmp_path / "run")])
    lm.prepare_data(args)
    assert list((tmp_path / "run" / ".cache" / "tokens").glob("tokens-*.npy"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "run"]
