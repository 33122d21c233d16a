"""Released weights by name: download once from a server on 127.0.0.1, checksum, safe load,
conversion, offline use, ``vmiseq convert``."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import http.server
import importlib.util
import threading
from pathlib import Path

import pytest
import torch

from vmiseq import pretrained
from vmiseq.cli import main as cli_main
from vmiseq.download import DownloadError, fetch
from vmiseq.models import create_model
from vmiseq.models.vminet import convert_official_state_dict

ROOT = Path(__file__).resolve().parents[1]


def _official_module():
    spec = importlib.util.spec_from_file_location("official_vminet", ROOT / "benchmarks" / "official_vminet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    """An XS checkpoint written the way the official timm training script writes it."""
    torch.manual_seed(0)
    ref = _official_module().OfficialVMINet(base_dim=48, expand=2, version=1).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics so the comparison means something
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    # the official code names the depthwise ConvBN "dwconv"
    sd = {k.replace(".conv.conv.", ".dwconv.conv.").replace(".conv.bn.", ".dwconv.bn."): v for k, v in ref.state_dict().items()}
    ckpt = {
        "epoch": 299,
        "arch": "vminet_XS",
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
        "version": 2,
        "args": argparse.Namespace(model="vminet_XS", lr=1e-3, aa="rand-m1-mstd0.5-inc1"),
        "metric": 76.5,
    }
    folder = tmp_path_factory.mktemp("release")
    torch.save(ckpt, folder / "XS-ckpt.pth.tar")
    return ref, folder


@pytest.fixture
def server(official_checkpoint):
    """Serve the release folder on 127.0.0.1 (a random free port)."""
    _, folder = official_checkpoint
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _assert_official_weights(model, ref) -> None:
    """Every tensor of ``model`` is the converted official one (that conversion gives the
    official outputs is tested in test_vminet.py)."""
    expected = convert_official_state_dict(ref.state_dict(), model)
    got = model.state_dict()
    assert set(expected) <= set(got)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def _point_at(monkeypatch, url: str, sha256=None):
    entry = dataclasses.replace(pretrained.OFFICIAL_WEIGHTS["vminet_xs"], url=url, sha256=sha256)
    monkeypatch.setitem(pretrained.OFFICIAL_WEIGHTS, "vminet_xs", entry)
    return entry


def test_download_once_convert_and_match_official(official_checkpoint, server, tmp_path, monkeypatch):
    ref, folder = official_checkpoint
    monkeypatch.setenv("VMISEQ_CACHE", str(tmp_path / "cache"))
    entry = _point_at(monkeypatch, f"{server}/XS-ckpt.pth.tar")
    model = create_model("vminet_xs", pretrained="official").eval()
    cached = tmp_path / "cache" / "weights" / entry.filename
    assert cached.is_file() and (cached.parent / (entry.filename + ".sha256")).is_file()
    _assert_official_weights(model, ref)
    # second use: from the cache, no server needed
    _point_at(monkeypatch, "http://127.0.0.1:9/unreachable")
    again = create_model("vminet_xs", pretrained="official", num_classes=10)
    assert again.config.num_classes == 10


def test_pinned_checksum_mismatch_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VMISEQ_CACHE", str(tmp_path / "cache"))
    entry = _point_at(monkeypatch, f"{server}/XS-ckpt.pth.tar", sha256="0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        create_model("vminet_xs", pretrained="official")
    folder = tmp_path / "cache" / "weights"
    assert not (folder / entry.filename).exists()
    assert not list(folder.iterdir())  # no partial or temp file left


def test_changed_cached_file_is_caught(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VMISEQ_CACHE", str(tmp_path / "cache"))
    entry = _point_at(monkeypatch, f"{server}/XS-ckpt.pth.tar")
    path = fetch(entry.url, entry.filename, None, subdir="weights")
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="does not match"):
        create_model("vminet_xs", pretrained="official")


def test_offline_error_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("VMISEQ_CACHE", str(tmp_path / "cache"))
    entry = _point_at(monkeypatch, "http://127.0.0.1:9/XS-ckpt.pth.tar")
    with pytest.raises(DownloadError) as info:
        create_model("vminet_xs", pretrained="official")
    msg = str(info.value)
    assert "http://127.0.0.1:9/XS-ckpt.pth.tar" in msg and str(tmp_path / "cache" / "weights" / entry.filename) in msg


def test_unreleased_model_is_a_clear_error():
    with pytest.raises(ValueError, match="no official weights.*vminet_ti"):
        create_model("vminet_ti", pretrained="official")


def test_malicious_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, bad)
    with pytest.raises(ValueError, match="refuses to unpickle"):
        pretrained.read_checkpoint(bad)
    assert cli_main(["convert", str(bad), str(tmp_path / "out")]) == 2
    assert not marker.exists()


def test_convert_cli_writes_a_loadable_folder(official_checkpoint, tmp_path, capsys):
    ref, folder = official_checkpoint
    out = tmp_path / "xs"
    assert cli_main(["convert", str(folder / "XS-ckpt.pth.tar"), str(out)]) == 0
    assert "saved" in capsys.readouterr().out
    _assert_official_weights(create_model("vminet_xs", pretrained=out), ref)
