"""Reproducible ``.tar.gz`` of a tree, compressed on several cores, streamed in bounded memory.

``write_archive(src, dest)`` writes the archive of the tree ``src`` to the file ``dest``;
``iter_archive(src)`` yields the very same bytes in chunks, never holding the whole archive.

The archive
===========

* Entries are named relative to ``src``, without a leading ``./`` (``src`` itself has no entry);
  directories end in ``/``. Every directory is an entry, so empty directories survive.
* Order: sorted by the UTF-8 (file-system) bytes of the relative path: stable, and every
  directory comes before its contents.
* Normalised metadata: uid/gid 0, uname/gname empty, mtime 0, modes 0755 for directories,
  0755/0644 for files (executable iff the file has any ``x`` bit), 0777 for symlinks.
  So two archives of trees with the same names, contents, exec bits and links are identical
  byte for byte, whatever the files' owners, mtimes and the order the file system lists them in.
* Format: POSIX ustar headers; a PAX extended header only where ustar cannot hold a value
  (non-ASCII or long names, files of 8 GiB and more), as :mod:`tarfile` writes them.
* Symlinks are stored as symlinks only if their target, resolved within ``src`` (see
  :func:`boride.fsutil.resolve_link`), lies inside it; the stored target is then rewritten
  relative to the link (so it stays inside after extraction). A symlink leading outside ``src``
  (an absolute target elsewhere, ``..`` above it, also through other links) is an error naming
  it. Other special files (FIFOs, sockets, devices) are errors. These are detected by a scan
  before the first byte is produced (:class:`ArchiveError` lists all of them). Names can never
  be absolute or contain ``..``: they come from directory listings. With ``copy_links`` (the
  HTTP API's builds: the CyanPrint CLI's unpacker turns links into empty files), an in-tree
  symlink is stored as what it leads to instead: a file's content, a folder's entries below the
  link's name; links that would repeat forever (to a folder above them, or in a ring) are
  errors naming the link.
* Nothing outside ``src`` is ever read: the tree is walked and read through directory
  descriptors only, so a component renaming folders meanwhile cannot lead the archiver out.

Compression
===========

The tar stream is cut into blocks of :data:`BLOCK_SIZE` bytes; each block is raw-deflated on
its own with the previous block's last 32 KiB as preset dictionary, ended by a sync flush, the
last one by a finish: their concatenation is *one* standard deflate stream, wrapped in one
gzip member whose CRC-32 is combined from the blocks' CRCs (the way pigz works). The deflater
is zlib-ng (:mod:`zlib_ng.zlib_ng`; it releases the GIL), a hard dependency pinned exactly in
pyproject.toml and installed in the helper image too: its bytes differ from stdlib zlib's and
may change from one zlib-ng version to the next, and an archive's bytes must not change from
one install to the next. Any gunzip, ``tar xzf`` and :mod:`tarfile` (also in its streaming
``r|gz`` mode) read it.
Blocks are compressed through :func:`boride.parallel.stream` (ordered outcomes, bounded window)
on ``threads`` threads (default: the CPU count); the bytes do not depend on the thread count.
The default level is 4 (:data:`DEFAULT_LEVEL`): on source-like text it needs about a third of
the CPU time of gzip's default level 6 for an archive about 12% larger, so it beats
``tar czf`` even on one core; level 6 matches ``tar czf``'s size and, on two cores, is still
faster than it. See docs/benchmarks.md for the measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import queue
import stat
import struct
import tarfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from zlib_ng import zlib_ng

from boride import aio, parallel
from boride.errors import BorideError, describe, shown
from boride.fsutil import (
    DirCache,
    UnsafePath,
    is_within,
    link_text,
    lstat_below,
    open_dir,
    open_subdir,
    resolve_link,
    walk,
)

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_LEVEL",
    "ArchiveError",
    "ArchiveResult",
    "crc32_combine",
    "iter_archive",
    "write_archive",
]

DEFAULT_LEVEL = 4  # see the module docstring
BLOCK_SIZE = 1 << 20  # uncompressed bytes per independently compressed block
WINDOW = 1 << 15  # deflate's window: the preset dictionary taken from the previous block
RECORD_SIZE = 20 * 512  # the tar stream is padded to a multiple of this, like tar and tarfile
READ_CHUNK = 1 << 20


class ArchiveError(BorideError):
    """The tree cannot be archived; ``errors`` lists every problem, each naming its path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors, message=shown(f"cannot archive: {len(errors)} error(s):",
                                               errors, 50))


class ArchiveResult(NamedTuple):
    files: int  # regular files in the archive
    bytes_written: int  # size of the .tar.gz
    seconds: float


# --------------------------------------------------------------------------------------------
# Scanning


@dataclass(frozen=True, slots=True)
class _Entry:
    key: bytes  # sort key: the relative path's file-system bytes
    rel: str  # the name in the archive
    kind: bytes  # tar type flag: REGTYPE, DIRTYPE or SYMTYPE
    link: str = ""  # stored link target (symlinks)
    src: str = ""  # files: where to read the content, relative to the root (default: rel)


def _open_root(src: Path, within: Path | None) -> int:
    try:
        return open_dir(src, within)
    except UnsafePath as exc:
        raise ArchiveError([str(exc)]) from None
    except NotADirectoryError:
        raise ArchiveError([f"{src} is not a directory"]) from None
    except OSError as exc:
        raise ArchiveError([f"{src} cannot be read: {exc.strerror or exc}"]) from None


@dataclass
class _Tree:
    """An open tree to archive: its root's descriptor (owned) and its scanned entries."""

    fd: int
    entries: list[_Entry]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _load(src: Path, within: Path | None, copy_links: bool) -> _Tree:
    fd = _open_root(src, within)
    try:
        return _Tree(fd, _scan(fd, src, copy_links))
    except BaseException:
        os.close(fd)
        raise


def _scan(root_fd: int, src: Path, copy_links: bool = False) -> list[_Entry]:
    """Every entry of the tree, through descriptors only (see :func:`boride.fsutil.walk`)."""
    scanner = _Scanner(root_fd, src, copy_links)
    scanner.walk(root_fd, "", "", ("",))
    if scanner.errors:
        raise ArchiveError(sorted(scanner.errors))
    return sorted(scanner.entries, key=lambda e: e.key)


@dataclass
class _Scanner:
    """The scan of a tree. With ``copy_links``, an in-tree symlink is stored as what it leads
    to: a file's content, or a folder's entries (walked again below the link's name); a
    cycle of links is an error naming the link."""

    root_fd: int
    src: Path
    copy_links: bool
    entries: list[_Entry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def walk(self, dir_fd: int, prefix: str, real: str, expanding: tuple[str, ...]) -> None:
        """Entries below ``dir_fd``, named ``prefix`` + their path; ``real`` is the folder's
        own path from the root; ``expanding``: the folders being walked through links."""
        def unlistable(rel_dir: str, exc: OSError) -> None:
            self.errors.append(f"{prefix + rel_dir or '.'!r}: cannot list: "
                               f"{exc.strerror or exc}")

        for e in walk(dir_fd, unlistable):
            name, source = prefix + e.rel, posixpath.join(real, e.rel)
            if e.kind == "dir":
                self._add(name, tarfile.DIRTYPE)
            elif e.kind == "file":
                self._add(name, tarfile.REGTYPE, src=source)
            elif e.kind == "link":
                self._link(name, source, expanding)
            else:
                self.errors.append(f"{name!r}: not a regular file, directory or symlink")

    def _add(self, name: str, kind: bytes, link: str = "", src: str = "") -> None:
        self.entries.append(_Entry(os.fsencode(name), name, kind, link, src or name))

    def _link(self, name: str, source: str, expanding: tuple[str, ...]) -> None:
        try:
            target, exists = resolve_link(self.root_fd, source)
            if not self.copy_links:
                self._add(name, tarfile.SYMTYPE, link=link_text(source, target))
                return
            if not exists:
                raise UnsafePath(f"symlink {name!r} leads to {target!r}, which does not exist")
            st = lstat_below(self.root_fd, target)
            if stat.S_ISREG(st.st_mode):
                self._add(name, tarfile.REGTYPE, src=target)
            elif stat.S_ISDIR(st.st_mode):
                self._expand(name, source, target, expanding)
            else:
                self.errors.append(f"{name!r}: symlink to a special file")
        except UnsafePath as exc:
            self.errors.append(f"{exc} ({self.src})")
        except OSError as exc:
            self.errors.append(f"{name!r}: cannot read: {exc.strerror or exc}")

    def _expand(self, name: str, source: str, target: str, expanding: tuple[str, ...]) -> None:
        """The folder ``target`` stored again under ``name``, unless that never ends."""
        around = (*expanding, posixpath.dirname(source))
        if any(_at_or_above(target, folder) for folder in around):
            self.errors.append(f"{name!r}: symlink to {target or '.'!r} makes a cycle")
            return
        self._add(name, tarfile.DIRTYPE)
        fd = open_subdir(self.root_fd, target)
        try:
            self.walk(fd, name + "/", target, (*expanding, target))
        finally:
            os.close(fd)


def _at_or_above(folder: str, path: str) -> bool:
    """Whether ``folder`` is ``path`` or one of its parents (paths relative to one root)."""
    return folder == "" or path == folder or path.startswith(folder + "/")


# --------------------------------------------------------------------------------------------
# The tar stream

_MODES = {0o644: b"0000644\0", 0o755: b"0000755\0", 0o777: b"0000777\0"}
_IDS = b"0000000\0" * 2  # uid, gid
_MTIME = b"%011o\0" % 0
_TAIL = b"ustar\x0000" + b"\0" * (64 + 16 + 167)  # magic, version, owners, dev, prefix, pad


def _header(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> bytes:
    """The tar header(s) of one entry: plain ustar when it fits, else tarfile's PAX headers."""
    if kind == tarfile.DIRTYPE:
        name += "/"
    try:
        name_b = name.encode("ascii")
        link_b = link.encode("ascii")
    except UnicodeEncodeError:
        pass
    else:
        if len(name_b) <= 100 and len(link_b) <= 100 and size < 8**11:
            head = (name_b.ljust(100, b"\0") + _MODES[mode] + _IDS + b"%011o\0" % size
                    + _MTIME)
            tail = kind + link_b.ljust(100, b"\0") + _TAIL
            check = sum(head) + sum(tail) + 8 * 32  # the checksum field counts as spaces
            return head + b"%06o\0 " % check + tail
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _tar_blocks(entries: list[_Entry], root_fd: int, block_size: int
                ) -> Iterator[tuple[bytes, bytes, bool]]:
    """The uncompressed tar stream as (block, preset dictionary, is last) triples; files are
    opened below ``root_fd`` through descriptors."""
    with DirCache(root_fd) as dirs:
        yield from _tar_stream(entries, dirs, block_size)


def _tar_stream(entries: list[_Entry], dirs: DirCache, block_size: int
                ) -> Iterator[tuple[bytes, bytes, bool]]:
    blocks = _Blocks(block_size)
    total = 0
    for e in entries:
        for piece in _entry_bytes(e, dirs):
            total += len(piece)
            yield from blocks.add(piece)
    yield from blocks.add(bytes(1024 + (-(total + 1024) % RECORD_SIZE)))  # two zero blocks, pad
    yield from blocks.finish()


def _entry_bytes(e: _Entry, dirs: DirCache) -> Iterator[bytes]:
    """One entry of the tar stream: its header, then a file's content padded to 512 bytes."""
    if e.kind != tarfile.REGTYPE:
        yield _header(e.rel, e.kind, 0o755 if e.kind == tarfile.DIRTYPE else 0o777, link=e.link)
        return
    try:
        fd = dirs.open_file(e.src)
    except OSError as exc:
        raise ArchiveError([f"{e.rel!r}: cannot open: {exc.strerror or exc}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError([f"{e.rel!r}: no longer a regular file"])
        yield _header(e.rel, e.kind, 0o755 if st.st_mode & 0o111 else 0o644, st.st_size)
        left = st.st_size
        while left:
            chunk = os.read(fd, min(left, READ_CHUNK))
            if not chunk:
                raise ArchiveError([f"{e.rel!r}: shrank while being archived"])
            yield chunk
            left -= len(chunk)
    except OSError as exc:
        raise ArchiveError([f"{e.rel!r}: cannot read: {exc.strerror or exc}"]) from None
    finally:
        os.close(fd)
    yield bytes(-st.st_size % 512)


class _Blocks:
    """Cuts a byte stream into (block, preset dictionary, is last) triples: blocks of ``size``
    bytes, each with the previous block's last 32 KiB as its dictionary."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = bytearray()
        self.pending: bytes | None = None
        self.zdict = b""

    def add(self, data: bytes) -> Iterator[tuple[bytes, bytes, bool]]:
        self.buf += data
        while len(self.buf) >= self.size:
            block = bytes(self.buf[:self.size])
            del self.buf[:self.size]
            yield from self._hold(block)

    def finish(self) -> Iterator[tuple[bytes, bytes, bool]]:
        if self.buf:
            yield from self._hold(bytes(self.buf))
        assert self.pending is not None  # the stream is at least one record long
        yield self.pending, self.zdict, True

    def _hold(self, block: bytes) -> Iterator[tuple[bytes, bytes, bool]]:
        """Keep ``block`` back (it may be the last) and emit the one held before."""
        if self.pending is not None:
            yield self.pending, self.zdict, False
            self.zdict = self.pending[-WINDOW:]
        self.pending = block


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``a + b`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)``."""
    return zlib_ng.crc32_combine(crc1, crc2, len2)


def _deflate(item: tuple[bytes, bytes, bool], level: int) -> tuple[bytes, int, int]:
    z = zlib_ng
    data, zdict, last = item
    if zdict:
        c = z.compressobj(level, z.DEFLATED, -15, 8, z.Z_DEFAULT_STRATEGY, zdict)
    else:
        c = z.compressobj(level, z.DEFLATED, -15, 8, z.Z_DEFAULT_STRATEGY)
    out = c.compress(data) + c.flush(z.Z_FINISH if last else z.Z_SYNC_FLUSH)
    return out, z.crc32(data), len(data)


def _gzip_header(level: int) -> bytes:
    xfl = 2 if level == 9 else 4 if level == 1 else 0  # as zlib sets it
    return b"\x1f\x8b\x08\x00" + b"\0\0\0\0" + bytes([xfl, 255])  # no name, mtime 0, OS unknown


async def _produce(tree: _Tree, level: int, threads: int, block_size: int,
                   emit: Callable[[bytes], None]) -> None:
    """Compress the tar stream on ``threads`` threads; ``emit`` the gzip bytes in order."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="boride-gzip")

    async def compress(item: tuple[bytes, bytes, bool]) -> tuple[bytes, int, int]:
        return await aio.in_thread(pool, _deflate, item, level)

    try:
        emit(_gzip_header(level))
        crc = 0
        total = 0
        async with parallel.stream(compress, _tar_blocks(tree.entries, tree.fd, block_size),
                                   limit=threads) as outcomes:
            async for outcome in outcomes:
                if not outcome.ok or outcome.value is None:
                    error = outcome.error
                    if isinstance(error, ArchiveError):
                        raise error
                    raise ArchiveError([f"compression failed: {describe(error)}"])
                data, block_crc, length = outcome.value
                crc = zlib_ng.crc32_combine(crc, block_crc, length)
                total += length
                emit(data)
        emit(struct.pack("<II", crc, total & 0xFFFFFFFF))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Closed(BorideError):
    """The consumer stopped reading."""


def _gzip_stream(tree: _Tree, level: int, threads: int,
                 block_size: int) -> Iterator[bytes]:
    """Run :func:`_produce` on a private event loop in its own thread (so that this works from
    any thread, whether it runs an event loop or not) and yield what it emits."""
    out: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=2 * threads + 2)
    closing = threading.Event()

    def emit(data: bytes) -> None:
        while True:
            if closing.is_set():
                raise _Closed
            try:
                out.put(("data", data), timeout=0.05)
                return
            except queue.Full:
                continue

    def run() -> None:
        try:
            asyncio.run(_produce(tree, level, threads, block_size, emit))
        except _Closed:
            return
        except BaseException as exc:
            result: tuple[str, object] = ("error", exc)
        else:
            result = ("end", None)
        while not closing.is_set():
            try:
                out.put(result, timeout=0.05)
                return
            except queue.Full:
                continue

    worker = threading.Thread(target=run, name="boride-archive", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = out.get()
            if kind == "data":
                assert isinstance(value, bytes)
                yield value
            elif kind == "end":
                return
            else:
                assert isinstance(value, BaseException)
                raise value
    finally:
        closing.set()
        while worker.is_alive():
            try:
                while True:
                    out.get_nowait()
            except queue.Empty:
                pass
            worker.join(0.05)
        tree.close()


def _rechunk(pieces: Iterator[bytes], chunk_size: int) -> Iterator[bytes]:
    pending = bytearray()
    for piece in pieces:
        if not pending and len(piece) == chunk_size:
            yield piece
            continue
        pending += piece
        while len(pending) >= chunk_size:
            yield bytes(pending[:chunk_size])
            del pending[:chunk_size]
    if pending:
        yield bytes(pending)


def _check_args(chunk_size: int, level: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if not 0 <= level <= 9:
        raise ValueError(f"level must be 0-9, got {level}")


def iter_archive(src: Path, chunk_size: int = 1 << 16, *, level: int = DEFAULT_LEVEL,
                 threads: int | None = None, within: Path | None = None,
                 copy_links: bool = False) -> Iterator[bytes]:
    """The ``.tar.gz`` of ``src`` in chunks of ``chunk_size`` bytes (the last may be shorter).

    The tree is scanned now: :class:`ArchiveError` (symlinks leading out, special files) is
    raised by this call, before any byte. Reading and compressing happen while iterating,
    with a bounded number of blocks in memory; closing the iterator early stops the work.
    With ``within``, ``src`` must really lie at or below that folder when it is opened. With
    ``copy_links``, in-tree symlinks are stored as what they lead to (for unpackers that
    cannot make links, like the CyanPrint CLI's)."""
    _check_args(chunk_size, level)
    tree = _load(src, within, copy_links)
    stream = _gzip_stream(tree, level, threads or parallel.default_limit(), BLOCK_SIZE)
    weakref.finalize(stream, tree.close)  # an iterator dropped before its first chunk
    return _rechunk(stream, chunk_size)


def write_archive(src: Path, dest: Path, *, level: int = DEFAULT_LEVEL,
                  threads: int | None = None, within: Path | None = None,
                  copy_links: bool = False) -> ArchiveResult:
    """Write the ``.tar.gz`` of ``src`` to ``dest`` (the same bytes as :func:`iter_archive`)."""
    start = time.perf_counter()
    _check_args(1, level)
    real_dest = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(dest))),
                             os.path.basename(dest))
    if is_within(real_dest, os.path.realpath(src)):
        raise ArchiveError([f"the archive {dest} would be inside the tree {src}"])
    tree = _load(src, within, copy_links)
    files = sum(1 for e in tree.entries if e.kind == tarfile.REGTYPE)
    written = 0
    try:
        with open(dest, "wb") as f:
            for chunk in _gzip_stream(tree, level, threads or parallel.default_limit(),
                                      BLOCK_SIZE):
                f.write(chunk)
                written += len(chunk)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(dest)  # no truncated archive left behind
        raise
    finally:
        tree.close()
    return ArchiveResult(files, written, time.perf_counter() - start)
