"""Benchmark data by name: download once from a server on 127.0.0.1, checksums, zip members,
the split each set uses, offline use, and ``experiments/timeseries.py --data NAME``."""
from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vmiseq.data import benchmarks as benchmark_data
from vmiseq.data.benchmarks import dataset_path, resolve_data
from vmiseq.data.timeseries import load_csv, split_borders
from vmiseq.download import DownloadError

ETTH1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ETTh1.csv"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1 holding ETTh1.csv and an all_six-style zip; the table
    entries point at it and the cache is a fresh folder."""
    root = tmp_path / "www"
    root.mkdir()
    if ETTH1.is_file():
        (root / "ETTh1.csv").write_bytes(ETTH1.read_bytes())
    rows = ["date,a,b,OT"] + [f"2020-01-{1 + i // 144:02d} {i % 144 // 6:02d}:{i % 6 * 10:02d}:00,{i},{np.sin(i)},{i % 7}" for i in range(2000)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("all_six_datasets/weather/weather.csv", "\n".join(rows) + "\n")
        zf.writestr("__MACOSX/all_six_datasets/weather/._weather.csv", "junk")
    (root / "all_six.zip").write_bytes(buf.getvalue())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    for name, url in (("ETTh1", f"{base}/ETTh1.csv"), ("Weather", f"{base}/all_six.zip")):
        monkeypatch.setitem(benchmark_data.DATASETS, name, dataclasses.replace(benchmark_data.DATASETS[name], url=url))
    monkeypatch.setenv("VMISEQ_CACHE", str(tmp_path / "cache"))
    yield base
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.skipif(not ETTH1.is_file(), reason="needs ../shared/data/ETTh1.csv")
def test_etth1_by_name_pinned_and_offline_after(served, tmp_path, monkeypatch):
    path, split = resolve_data("etth1")
    assert split == "ett_hour" and path.read_bytes() == ETTH1.read_bytes()
    assert path.parent == tmp_path / "cache" / "data"
    table = load_csv(path)
    assert (table.n_rows, table.n_vars) == (17420, 7)
    assert split_borders(table.n_rows, 96, split).part("test") == (12 * 30 * 24 + 4 * 30 * 24 - 96, 20 * 30 * 24)
    dead = dataclasses.replace(benchmark_data.DATASETS["ETTh1"], url="http://127.0.0.1:9/ETTh1.csv")
    monkeypatch.setitem(benchmark_data.DATASETS, "ETTh1", dead)
    assert dataset_path("ETTh1") == path  # offline: from the cache
    path.write_bytes(path.read_bytes().replace(b"30.531", b"31.531", 1))
    with pytest.raises(ValueError, match="SHA-256"):
        dataset_path("ETTh1")


def test_zip_member_ratio_split_and_recorded_hash(served, tmp_path):
    path, split = resolve_data("Weather")
    assert split == "ratio" and path.name == "weather.csv"
    assert (path.parent / "weather.csv.sha256").is_file()
    table = load_csv(path)
    assert (table.n_rows, table.n_vars) == (2000, 3)
    borders = split_borders(table.n_rows, 96, split)
    assert borders.part("train") == (0, 1400)
    path.write_text(path.read_text().replace("OT", "XX"))
    with pytest.raises(ValueError, match="does not match"):
        dataset_path("Weather")


def test_unknown_name_and_offline_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("VMISEQ_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="unknown data set 'nope'.*ETTh1"):
        dataset_path("nope")
    assert resolve_data(str(tmp_path / "nope.csv")) == (tmp_path / "nope.csv", None)  # a path stays a path
    dead = dataclasses.replace(benchmark_data.DATASETS["ETTm2"], url="http://127.0.0.1:9/ETTm2.csv")
    monkeypatch.setitem(benchmark_data.DATASETS, "ETTm2", dead)
    with pytest.raises(DownloadError, match=r"ETTm2\.csv.*put the file at .*cache/data/ETTm2\.csv"):
        dataset_path("ETTm2")


@pytest.mark.skipif(not ETTH1.is_file(), reason="needs ../shared/data/ETTh1.csv")
def test_timeseries_experiment_takes_a_name(served):
    from experiment_scripts import load_script

    mod = load_script("timeseries")
    table, split = mod.load_table(mod.build_parser().parse_args(["--data", "ETTh1"]))
    assert split == "ett_hour" and table.n_rows == 17420
    table, split = mod.load_table(mod.build_parser().parse_args(["--data", "weather"]))
    assert split == "ratio" and table.n_vars == 3
