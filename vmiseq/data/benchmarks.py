"""The standard long-term forecasting data sets by name: ``--data ETTh1`` ... ``--data ILI``.

``dataset_path("ETTh1")`` returns a local CSV (date column + variables), downloading it once
into the cache (:func:`vmiseq.download.cache_dir`, sub-folder ``data``) from the data set's
public source and checking its SHA-256 (pinned where the project has verified the file,
recorded at first download otherwise). Later uses work offline from the cache; a local
copy can be dropped into the cache folder under the same name, or passed as a path.

| name | source | split (``vmiseq.data.timeseries.split_borders``) |
|---|---|---|
| ETTh1, ETTh2 | github zhouhaoyi/ETDataset, ETT-small | ``ett_hour``: 12 / 4 / 4 months |
| ETTm1, ETTm2 | the same | ``ett_minute``: 12 / 4 / 4 months at 15 min |
| Weather, Electricity, Traffic, Exchange, ILI | Autoformer's ``all_six_datasets.zip`` | ``ratio``: 7 : 1 : 2 |

The ETT files are CC BY-ND 4.0 (Zhou et al., ETDataset); the others carry their
publishers' terms (see the Autoformer repository). None of them is shipped with vmiseq.
"""
from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..download import cache_dir, fetch, sha256_of
from ..files import atomic_write

__all__ = ["ForecastDataset", "DATASETS", "dataset_path", "resolve_data"]

_ETT = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small"
# Autoformer's bundle of the non-ETT sets (the link the Time-Series-Library family points to).
_ALL_SIX = "https://www.dropbox.com/s/rlc1qmprpvuqrsv/all_six_datasets.zip?dl=1"
_ALL_SIX_FILE = "all_six_datasets.zip"


@dataclass(frozen=True)
class ForecastDataset:
    """One named data set: where it comes from, the CSV it becomes, its benchmark split."""

    name: str
    url: str
    filename: str  # the CSV in the cache
    split: str  # "ett_hour", "ett_minute" or "ratio"
    member: Optional[str] = None  # the CSV's file name inside a zip archive at ``url``
    sha256: Optional[str] = None  # pinned digest of the CSV (None: recorded at first download)
    description: str = ""


DATASETS: dict[str, ForecastDataset] = {
    d.name: d
    for d in (
        ForecastDataset(
            "ETTh1", f"{_ETT}/ETTh1.csv", "ETTh1.csv", "ett_hour",
            sha256="f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
            description="electricity transformer, hourly, 7 variables, 17,420 rows",
        ),
        ForecastDataset("ETTh2", f"{_ETT}/ETTh2.csv", "ETTh2.csv", "ett_hour", description="second transformer, hourly"),
        ForecastDataset("ETTm1", f"{_ETT}/ETTm1.csv", "ETTm1.csv", "ett_minute", description="ETTh1's transformer every 15 min"),
        ForecastDataset("ETTm2", f"{_ETT}/ETTm2.csv", "ETTm2.csv", "ett_minute", description="ETTh2's transformer every 15 min"),
        ForecastDataset("Weather", _ALL_SIX, "weather.csv", "ratio", member="weather.csv", description="21 weather indicators, 10 min"),
        ForecastDataset("Electricity", _ALL_SIX, "electricity.csv", "ratio", member="electricity.csv", description="321 clients, hourly kWh"),
        ForecastDataset("Traffic", _ALL_SIX, "traffic.csv", "ratio", member="traffic.csv", description="862 road sensors, hourly occupancy"),
        ForecastDataset("Exchange", _ALL_SIX, "exchange_rate.csv", "ratio", member="exchange_rate.csv", description="8 exchange rates, daily"),
        ForecastDataset("ILI", _ALL_SIX, "national_illness.csv", "ratio", member="national_illness.csv", description="influenza-like illness, weekly"),
    )
}
_BY_LOWER = {k.lower(): k for k in DATASETS}


def dataset_path(name: str, directory: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Local path of the named data set's CSV (downloaded and checked on first use).

    Args:
        name: a key of ``DATASETS`` (case-insensitive).
        directory: keep the files here instead of the cache folder.

    Raises:
        ValueError: an unknown name (the message lists the known ones) or a checksum mismatch.
        vmiseq.download.DownloadError: not cached and not downloadable (says what to fetch, where).
    """
    key = _BY_LOWER.get(str(name).lower())
    if key is None:
        raise ValueError(f"data: unknown data set {name!r}; expected a file path or one of {sorted(DATASETS)}")
    entry = DATASETS[key]
    folder = Path(directory) if directory is not None else cache_dir("data")
    if entry.member is None:
        return fetch(entry.url, entry.filename, entry.sha256, directory=folder)
    target = folder / entry.filename
    if target.is_file():
        return fetch(entry.url, entry.filename, entry.sha256, directory=folder)  # checks the hash
    archive = fetch(entry.url, _ALL_SIX_FILE, None, directory=folder)
    _extract(archive, entry.member, target)
    if entry.sha256 is None:  # record the extracted file's hash: later uses are checked against it
        atomic_write(target.with_name(target.name + ".sha256"), (sha256_of(target) + "\n").encode())
    return fetch(entry.url, entry.filename, entry.sha256, directory=folder)


def _extract(archive: Path, member: str, target: Path) -> None:
    """Copy the archive entry whose file name is ``member`` to ``target`` (atomic; the
    archive's own paths are never used as paths here, so it cannot write elsewhere)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == member and "__MACOSX" not in n]
            if not names:
                raise ValueError(f"{archive}: no {member} inside the archive; delete it and download it again")
            with zf.open(names[0]) as src:
                atomic_write(target, lambda out: shutil.copyfileobj(src, out, 1 << 20))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{archive}: not a zip archive ({exc}); delete it and download it again") from exc


def resolve_data(value: str) -> tuple[Path, Optional[str]]:
    """A ``--data`` argument: an existing file, else a data set name -> (CSV path, its split).

    The split is ``None`` for a plain file (the caller picks one from the file name).
    """
    path = Path(value)
    if path.exists() or str(value).lower() not in _BY_LOWER:
        return path, None
    entry = DATASETS[_BY_LOWER[str(value).lower()]]
    return dataset_path(entry.name), entry.split
