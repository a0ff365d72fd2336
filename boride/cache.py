"""A content-addressed cache of processor outputs (``--cache``): unchanged work is not redone.

A processor step's **key** covers everything its output can depend on (:func:`step_key`): the
component's identity (on Docker its image id; locally its command, the content of the files
the command names and of the folder it runs in: :func:`local_identity`), the step's config and
globs, and the content of the whole template (:func:`tree_digest`: a processor may read any
template file, so a key per glob would be unsound).

An **entry** is the output as a ``.tar.gz`` (what :meth:`boride.area.Area.archive` makes of it)
followed by a fixed trailer holding the payload's SHA-256. Entries are written to a temporary
file and renamed into place (concurrent builds never see half an entry), checked in full
before use (a corrupt or truncated entry is a miss, and is removed), and the least recently
used go first when the cache outgrows its size (:meth:`Cache.trim`). Each namespace (an API
tenant) has a folder of its own under the cache's root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from boride import aio
from boride.errors import BorideError

__all__ = ["Cache", "CacheInfo", "default_root", "local_identity", "step_key", "tree_digest"]

#: bumped whenever what a key covers or how an entry is laid out changes
VERSION = 1
_MAGIC = b"\nBORIDE-CACHE-1 "
TRAILER = len(_MAGIC) + 64 + 1  # magic, hex digest, newline
DEFAULT_MAX_BYTES = 2 << 30
_CHUNK = 1 << 20
#: never part of a local component's identity: byte-code caches and version-control metadata
IGNORED_NAMES = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".ruff_cache",
                           ".pytest_cache"})


class CacheError(BorideError):
    """The cache folder cannot be used; the message is for the user."""


def cache_namespace(token: str | None) -> str:
    """The namespace of an API tenant: its token's digest (never the token), else
    ``default``."""
    if token is None:
        return "default"
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:24]


def default_root(env: dict[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/boride``, else ``~/.cache/boride``."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "boride"


# -- keys ------------------------------------------------------------------------------------

class _FileDigests:
    """SHA-256 of files, remembered by (device, inode, size, mtime, ctime): a file is read
    again only once it changed (a watch loop hashes its template and components each build)."""

    def __init__(self, limit: int = 200_000) -> None:
        self._seen: dict[tuple[int, ...], str] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def of(self, fd: int, st: os.stat_result) -> str:
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            found = self._seen.get(ident)
        if found is not None:
            return found
        h = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
        digest = h.hexdigest()
        with self._lock:
            if len(self._seen) >= self._limit:
                self._seen.clear()
            self._seen[ident] = digest
        return digest


_DIGESTS = _FileDigests()


def tree_digest(root: Path, *, skip: Iterable[Path] = (),
                ignored: frozenset[str] = frozenset()) -> str:
    """A digest of everything below ``root`` that a program reading it could tell apart: each
    entry's path, type, executable bit, file content, link target (links are not followed).
    Folders in ``skip`` (and names in ``ignored``) are left out. Raises ``OSError``."""
    skipped = {os.path.realpath(p) for p in skip}
    h = hashlib.sha256(b"tree\0")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _digest_dir(h, root_fd, os.path.realpath(root), "", skipped, ignored)
    finally:
        os.close(root_fd)
    return h.hexdigest()


def _digest_dir(h: Any, dir_fd: int, real: str, rel: str, skipped: set[str],
                ignored: frozenset[str]) -> None:
    for name in sorted(os.listdir(dir_fd)):
        if name in ignored or os.path.join(real, name) in skipped:
            continue
        path = f"{rel}/{name}" if rel else name
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            h.update(b"L\0%s\0%s\0" % (path.encode(errors="surrogateescape"),
                                      os.readlink(name, dir_fd=dir_fd).encode(
                                          errors="surrogateescape")))
        elif stat.S_ISDIR(st.st_mode):
            h.update(b"D\0%s\0" % path.encode(errors="surrogateescape"))
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dir_fd)
            try:
                _digest_dir(h, fd, os.path.join(real, name), path, skipped, ignored)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                digest = _DIGESTS.of(fd, os.fstat(fd))
            finally:
                os.close(fd)
            x = b"x" if st.st_mode & 0o111 else b"-"
            h.update(b"F\0%s\0%s\0%s\0" % (path.encode(errors="surrogateescape"), x,
                                           digest.encode()))
        else:  # FIFOs, sockets, devices: only that they are there
            h.update(b"S\0%s\0%o\0" % (path.encode(errors="surrogateescape"),
                                       stat.S_IFMT(st.st_mode)))


def local_identity(command: tuple[str, ...], cwd: Path, *, skip: Iterable[Path] = ()) -> str:
    """A local component's identity: its command, the content of every file the command names
    (relative to ``cwd`` or absolute; the program found on ``PATH`` too), and the content of
    ``cwd``, the folder it runs in (less ``skip`` and :data:`IGNORED_NAMES`). Libraries
    installed elsewhere (site-packages, node's global folders) are not in it."""
    h = hashlib.sha256(b"local\0")
    h.update(json.dumps(list(command)).encode())
    for i, arg in enumerate(command):
        found = shutil.which(arg) if i == 0 and os.sep not in arg else None
        path = Path(found) if found else (cwd / arg)
        with contextlib.suppress(OSError, ValueError):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    h.update(b"%d\0%s\0" % (i, _DIGESTS.of(fd, os.fstat(fd)).encode()))
                finally:
                    os.close(fd)
    h.update(tree_digest(cwd, skip=skip, ignored=IGNORED_NAMES).encode())
    return h.hexdigest()


def step_key(identity: str, kind: str, config: Any, files: Iterable[Any], template: str) -> str:
    """The key of one processor step: the component's identity, the step's config and globs,
    and the template's digest."""
    body = {"v": VERSION, "kind": kind, "component": identity, "config": config,
            "files": list(files), "template": template}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- the store -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheInfo:
    root: Path
    entries: int
    bytes: int
    max_bytes: int

    def as_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "entries": self.entries, "bytes": self.bytes,
                "max_bytes": self.max_bytes}


class Cache:
    """Entries of one namespace under ``root`` (made private to the user), at most
    ``max_bytes`` of them once :meth:`trim` ran."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 namespace: str = "default") -> None:
        if not namespace.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"not a cache namespace: {namespace!r}")
        self.root = root
        self.folder = root / namespace
        self.max_bytes = max_bytes

    def _entries(self) -> Path:
        return self.folder / "entries"

    def _path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self._entries() / key[:2] / key

    def _prepare(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for folder in (self.folder, self._entries(), self.folder / "tmp"):
                folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot use the cache folder {self.root}: "
                             f"{exc.strerror or exc}") from None

    # -- reading -------------------------------------------------------------------------
    def open(self, key: str) -> IO[bytes] | None:
        """The entry's payload (``.tar.gz``), checked in full and positioned at its start, or
        None: no entry, or a corrupt one (removed). Marks the entry used (its mtime)."""
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - handed to the caller
        except OSError:
            return None
        try:
            if not _intact(f):
                with contextlib.suppress(OSError):
                    path.unlink()
                f.close()
                return None
            with contextlib.suppress(OSError):
                os.utime(path)
            f.seek(0)
            return f
        except OSError:
            f.close()
            return None

    # -- writing -------------------------------------------------------------------------
    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """Store ``chunks`` as ``key``'s entry; nothing is stored when the stream fails (its
        error is raised)."""
        path = self._path(key)
        await aio.to_thread(self._prepare)
        tmp = self.folder / "tmp" / f"{key[:16]}.{uuid.uuid4().hex[:8]}"
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    h.update(chunk)
                    await aio.to_thread(f.write, chunk)
                f.write(_MAGIC + h.hexdigest().encode() + b"\n")

            def place() -> None:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                os.replace(tmp, path)

            await aio.to_thread(place)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def remove(self, key: str) -> None:
        """Forget ``key``'s entry (none: nothing to do)."""
        with contextlib.suppress(OSError):
            self._path(key).unlink()

    # -- housekeeping --------------------------------------------------------------------
    def _walk(self) -> Iterator[tuple[Path, os.stat_result]]:
        entries = self._entries()
        if not entries.is_dir():
            return
        for sub in os.scandir(entries):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                with contextlib.suppress(OSError):
                    yield Path(entry.path), entry.stat(follow_symlinks=False)

    def trim(self) -> int:
        """Remove the least recently used entries until the namespace fits ``max_bytes`` (and
        temporary files of writers gone for an hour); the number of entries removed."""
        found = sorted(self._walk(), key=lambda e: e[1].st_mtime_ns)
        total = sum(st.st_size for _, st in found)
        removed = 0
        for path, st in found:
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
            total -= st.st_size
        _remove_stale(self.folder / "tmp")
        return removed

    def info(self) -> CacheInfo:
        found = list(self._walk())
        return CacheInfo(self.folder, len(found), sum(st.st_size for _, st in found),
                         self.max_bytes)


def _intact(f: IO[bytes]) -> bool:
    size = os.fstat(f.fileno()).st_size
    if size < TRAILER:
        return False
    left = size - TRAILER
    h = hashlib.sha256()
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            return False
        h.update(chunk)
        left -= len(chunk)
    return f.read(TRAILER) == _MAGIC + h.hexdigest().encode() + b"\n"


async def payload_chunks(f: IO[bytes]) -> AsyncIterator[bytes]:
    """An entry's payload (opened by :meth:`Cache.open`) in chunks; closes ``f`` at the end.
    Read on the event loop, not in a thread: the entry is a local file (in the page cache after
    :meth:`Cache.open` checked it), and its reader may be a thread of the loop's pool waiting
    for these very chunks (:func:`boride.output.unpack_folder`)."""
    try:
        left = os.fstat(f.fileno()).st_size - TRAILER
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
            await asyncio.sleep(0)
    finally:
        f.close()


def _remove_stale(tmp: Path, age: float = 3600.0) -> None:
    with contextlib.suppress(OSError):
        for entry in os.scandir(tmp):
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > age:
                    os.unlink(entry.path)


def clear(root: Path) -> tuple[int, int]:
    """Remove every entry of every namespace under ``root``: (entries, bytes) removed."""
    entries = size = 0
    if not root.is_dir():
        return 0, 0
    for ns in os.scandir(root):
        if not ns.is_dir(follow_symlinks=False):
            continue
        cache = Cache(root, namespace=ns.name) if _valid_namespace(ns.name) else None
        if cache is None:
            continue
        for path, st in list(cache._walk()):
            with contextlib.suppress(OSError):
                path.unlink()
                entries += 1
                size += st.st_size
        _remove_stale(cache.folder / "tmp")
    return entries, size


def namespaces(root: Path) -> list[Cache]:
    """The caches under ``root``, one per namespace."""
    if not root.is_dir():
        return []
    return [Cache(root, namespace=ns.name) for ns in sorted(os.scandir(root), key=lambda e: e.name)
            if ns.is_dir(follow_symlinks=False) and _valid_namespace(ns.name)]


def _valid_namespace(name: str) -> bool:
    return name.replace("-", "").replace("_", "").isalnum()
