"""Safe file writing shared by the library: atomic, exclusive temp files, the caller's umask.

Every file vmiseq writes beside user data (token caches, saved models) is first written to a
temp file created exclusively (``O_EXCL``, random name) in the target folder, so a symlink
planted at a predictable name is never followed, then renamed over the target, so readers
see either the old or the new content, never a half-written file. Folders (saved models) are
swapped into place the same way by :func:`swap_into_place`; ``vmiseq/saving.py`` describes the
scheme.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union


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


# ---------------------------------------------------------------------------- atomic folder swap
STALE_SECONDS = 24 * 3600  # a leftover of a live process elsewhere is removed after this long


def host_name() -> str:
    """This machine's name, reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def leftover_prefix(name: str, kind: str) -> str:
    """``.NAME.KIND-PID@HOST-``: mkdtemp appends a random suffix (letters, digits, ``_``)."""
    return f".{name}.{kind}-{os.getpid()}@{host_name()}-"


def _leftovers(target: Path) -> list[tuple[Path, int, str]]:
    """(path, pid, host) of every temp or backup folder of ``target``'s earlier saves."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)@(.*)-[A-Za-z0-9_]+$")
    out = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return out
    for e in entries:
        m = pattern.match(e.name)
        if m:
            out.append((Path(e.path), int(m.group(1)), m.group(2)))
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_leftovers(target: Path) -> None:
    """Remove temp/backup folders of dead processes on this host, or older than a day."""
    host, now = host_name(), time.time()
    for path, pid, owner_host in _leftovers(target):
        try:
            age = now - path.lstat().st_mtime
        except OSError:
            continue
        dead = owner_host == host and pid != os.getpid() and not _pid_alive(pid)
        if dead or age > STALE_SECONDS:
            remove_path(path)


def newest_complete_leftover(target: Path, marker: str) -> Optional[Path]:
    """The most recently completed backup/temp folder of ``target`` (recovery after a crash)."""
    best, best_time = None, -1.0
    for path, _, _ in _leftovers(target):
        done = path / marker
        try:
            t = done.stat().st_mtime
        except OSError:
            continue
        if not path.is_symlink() and t > best_time:
            best, best_time = path, t
    return best


def remove_path(path: Path) -> None:
    """Delete a folder (or a symlink/file left at its name) without following symlinks."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where the call is unavailable (other OS, old libc or kernel, a filesystem without
    it); raises OSError for a real failure (e.g. ``b`` vanished)."""
    fn = _renameat2()
    if fn is None:
        return False
    import ctypes

    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


_RENAMEAT2: list = []


def _renameat2():
    if not _RENAMEAT2:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
            except OSError:
                fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]


def swap_into_place(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target``; the previous model (if any) is removed
    only once the new one is in place. Retries when a concurrent save moves ``target``."""
    for _ in range(100):
        if not os.path.lexists(target):
            try:
                os.rename(tmp, target)
                return
            except OSError as exc:  # another save put a folder there first: swap with it
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                    raise
                continue
        try:
            swapped = exchange(tmp, target)
        except FileNotFoundError:
            continue  # target moved away by a concurrent save between the check and the swap
        if swapped:
            remove_path(tmp)  # now holds the previous model
            return
        # Two renames: keep the previous model under a unique backup name until the new one is in.
        backup = Path(tempfile.mkdtemp(prefix=leftover_prefix(target.name, "old"), dir=target.parent))
        try:
            os.replace(target, backup)  # a folder may replace the empty placeholder
        except FileNotFoundError:
            remove_path(backup)
            continue
        except OSError:  # target is a file or symlink: it cannot replace a folder
            remove_path(backup)
            os.replace(target, backup)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # a concurrent save won this slot
                remove_path(backup)
                continue
            try:
                os.rename(backup, target)  # put the previous model back
            except OSError:
                pass  # from_pretrained still finds the backup
            raise
        remove_path(backup)
        return
    raise RuntimeError(f"directory: could not move the saved model into {str(target)!r} (too many concurrent saves)")
