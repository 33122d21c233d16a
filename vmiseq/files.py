"""Safe file writing shared by the library: atomic, exclusive temp files, the caller's umask.

Every file vmiseq writes beside user data (token caches, saved models) is first written to a
temp file created exclusively (``O_EXCL``, random name) in the target folder, so a symlink
planted at a predictable name is never followed, then renamed over the target, so readers
see either the old or the new content, never a half-written file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Union[str, os.PathLike], data: Union[bytes, Callable[[BinaryIO], object]]) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file) to ``path`` atomically.

    The temp file is made by ``tempfile.mkstemp`` in ``path``'s folder (exclusive create,
    unpredictable name), given the mode a plain ``open`` would (0666 & ~umask), flushed to
    disk and renamed over ``path``: the rename replaces a symlink at ``path`` itself, never
    the file it points to. On any failure the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            if isinstance(data, (bytes, bytearray)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
