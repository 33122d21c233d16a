"""Download a public file once into a cache folder, check it, and find it offline later.

Used for released model weights (:mod:`vmiseq.pretrained`) and named benchmark data sets
(:mod:`vmiseq.data.benchmarks`). The cache folder is ``$VMISEQ_CACHE`` or, when unset,
``$XDG_CACHE_HOME/vmiseq`` (``~/.cache/vmiseq``). A file is written to a temporary file
created exclusively in the target folder (:func:`vmiseq.files.atomic_write`), hashed while it
streams, checked and renamed into place, so a crash never leaves a partial file under the
final name.

Checksums: a file whose SHA-256 is pinned in the library is refused when it differs. For a
file whose hash is not pinned yet, the hash of the first download is recorded beside it
(``<name>.sha256``) and every later use is checked against that record, so a file that
changes after the first download is still caught.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from .files import atomic_write

__all__ = ["cache_dir", "fetch", "sha256_of", "DownloadError"]

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be downloaded (no network, a server error): the message names the
    file to fetch by hand and where to put it."""


def cache_dir(sub: str = "") -> Path:
    """The vmiseq cache folder (``$VMISEQ_CACHE``, else ``$XDG_CACHE_HOME/vmiseq``)."""
    root = os.environ.get("VMISEQ_CACHE")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmiseq"
    return base / sub if sub else base


def sha256_of(path: Union[str, os.PathLike]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, sha256: Optional[str]) -> None:
    """Compare ``path`` with the pinned hash, or with the hash recorded at first download."""
    record = path.with_name(path.name + ".sha256")
    expected = sha256
    if expected is None and record.is_file():
        expected = record.read_text().split()[0] if record.read_text().strip() else None
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ValueError(
            f"{path}: SHA-256 {actual} does not match the expected {expected.lower()}; the file is corrupt or "
            "not the released one. Delete it and fetch it again."
        )


def fetch(
    url: str,
    filename: str,
    sha256: Optional[str] = None,
    subdir: str = "",
    directory: Optional[Union[str, os.PathLike]] = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Return the path of ``filename`` in the cache, downloading it from ``url`` the first time.

    Args:
        url: where the file is published.
        filename: its name in the cache folder.
        sha256: the pinned hex digest (``None``: record the first download's hash, check later uses).
        subdir: a folder inside the cache (``"weights"``, ``"data"``).
        directory: use this folder instead of the cache.
        timeout: seconds before a stalled connection is given up.
        progress: a tqdm bar while downloading (when tqdm is installed).

    Raises:
        DownloadError: no file in the cache and the download failed; the message says which
            file to fetch and where to put it to work offline.
        ValueError: the file's checksum does not match.
    """
    folder = Path(directory) if directory is not None else cache_dir(subdir)
    target = folder / filename
    if target.is_file():
        _check(target, sha256)
        return target
    folder.mkdir(parents=True, exist_ok=True)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - https URLs from our tables
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(
            f"could not download {filename} from {url} ({exc}). To work offline, fetch that URL by hand and "
            f"put the file at {target}"
        ) from exc
    h = hashlib.sha256()

    def copy(out) -> None:  # streams into atomic_write's exclusive temp file, hashing as it goes
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = _bar(total, filename) if progress else None
        for block in iter(lambda: response.read(_CHUNK), b""):
            out.write(block)
            h.update(block)
            if bar is not None:
                bar.update(len(block))
        if bar is not None:
            bar.close()
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise ValueError(f"{url}: downloaded file has SHA-256 {h.hexdigest()}, expected {sha256.lower()}; it was not kept")

    with response:
        atomic_write(target, copy)
    if sha256 is None:
        atomic_write(target.with_name(target.name + ".sha256"), (h.hexdigest() + "\n").encode())
    return target


def _bar(total: Optional[int], name: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False)
