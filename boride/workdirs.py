"""Work folders on the host (a local session's work area, its short socket folder) that the
next boride can reclaim when the one that made them was killed (SIGKILL leaves them).

Each folder holds :data:`MARKER`, a file its owner keeps an ``flock`` on for the folder's
whole life (the kernel lets go of it when the owner dies, however it dies): :func:`reclaim`
removes the folders whose lock it can take, never one of a living process. The marker is
locked before it gets its name (a reclaimer never sees it unlocked while its owner lives);
a folder without one (being made, kept with ``--keep``, or from an older boride) is never
touched. Removal goes through descriptors (:func:`boride.fsutil.remove_tree`) and follows no
link: the folders hold trees that components wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
from pathlib import Path

from boride import fsutil

__all__ = ["MARKER", "PREFIX", "OwnedFolder", "reclaim"]

log = logging.getLogger(__name__)
MARKER = ".boride-owner"
PREFIX = "boride-"


class OwnedFolder:
    """A new folder ``parent/<prefix>XXXXXXXX`` locked as this process's until :meth:`release`."""

    def __init__(self, parent: Path, prefix: str = PREFIX) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._fd: int | None = None
        try:
            self._fd = _lock_new(self.path)
        except BaseException:
            os.rmdir(self.path)
            raise

    def release(self, *, keep: bool = False) -> None:
        """Let go of the folder (after removing it); ``keep``: it stays, and is never reclaimed
        (its marker goes)."""
        if keep:
            with contextlib.suppress(OSError):
                os.unlink(self.path / MARKER)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lock_new(folder: Path) -> int:
    tmp = folder / f"{MARKER}.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(tmp, folder / MARKER)
    except BaseException:
        os.close(fd)
        raise
    return fd


def reclaim(parent: Path, prefix: str = PREFIX) -> list[Path]:
    """Remove the folders ``parent/<prefix>*`` of this user whose owner is dead (see the
    module docstring); the ones removed. What cannot be looked at or removed is logged and
    left."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    uid = os.geteuid()
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
                continue
            fd = os.open(os.path.join(entry.path, MARKER),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # no marker (or not ours): never touched
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner lives
            fsutil.remove_tree(Path(entry.path), within=parent)
            removed.append(Path(entry.path))
        except OSError as exc:
            log.warning("cannot remove %s, left by a boride that was killed: %s", entry.path,
                        exc.strerror or exc)
        finally:
            os.close(fd)
    return removed
