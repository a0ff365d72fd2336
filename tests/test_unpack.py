"""Unpacking a result stream into a folder (``--out`` on Docker, a cached output into an area):
what a hostile archive contains never lands outside the folder, and nothing half-made stays."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from boride.output import OutputError, unpack_folder


def archive(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        add(tar)
    return buf.getvalue()


def file(tar: tarfile.TarFile, name: str, data: bytes = b"x", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid = len(data), mode, 4242
    tar.addfile(info, io.BytesIO(data))


def special(tar: tarfile.TarInfo | tarfile.TarFile, name: str, kind: bytes,
            target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    assert isinstance(tar, tarfile.TarFile)
    tar.addfile(info)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 7):
        yield data[i:i + 7]


def unpack(data: bytes, out: Path) -> Path:
    return asyncio.run(unpack_folder(chunks(data), out, replace=False))


def test_files_folders_and_links_inside(tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        special(tar, "src", tarfile.DIRTYPE)
        file(tar, "src/a.txt", b"alpha")
        file(tar, "bin/run", b"#!/bin/sh", mode=0o700)
        special(tar, "src/link", tarfile.SYMTYPE, "a.txt")
        special(tar, "top", tarfile.SYMTYPE, "src/../bin/run")

    out = unpack(archive(add), tmp_path / "out")
    assert (out / "src" / "a.txt").read_bytes() == b"alpha"
    assert (out / "src" / "link").read_bytes() == b"alpha"
    assert (out / "top").read_bytes() == b"#!/bin/sh"
    assert stat.S_IMODE((out / "bin" / "run").stat().st_mode) & 0o111
    assert stat.S_IMODE((out / "src" / "a.txt").stat().st_mode) & 0o111 == 0
    assert (out / "src" / "a.txt").stat().st_uid == os.geteuid()  # not the archive's 4242


@pytest.mark.parametrize("add", [
    lambda tar: file(tar, "../escaped"),
    lambda tar: file(tar, "/tmp/escaped-absolute"),
    lambda tar: file(tar, "src/../../escaped"),
    lambda tar: special(tar, "out", tarfile.SYMTYPE, "/etc"),
    lambda tar: special(tar, "up", tarfile.SYMTYPE, "../.."),
    # each link alone stays inside; through one another they climb out (sub/y is the root)
    lambda tar: (special(tar, "sub", tarfile.DIRTYPE),
                 special(tar, "sub/y", tarfile.SYMTYPE, ".."),
                 special(tar, "x", tarfile.SYMTYPE, "sub/y/..")),
    lambda tar: (file(tar, "a"), special(tar, "hard", tarfile.LNKTYPE, "a")),
    lambda tar: special(tar, "fifo", tarfile.FIFOTYPE),
    lambda tar: special(tar, "dev", tarfile.CHRTYPE),
], ids=["dotdot", "absolute", "climbing", "link-absolute", "link-climbing", "link-chain",
        "hardlink", "fifo", "device"])
def test_hostile_entries_are_refused_and_nothing_is_left(tmp_path: Path, add: Callable[
        [tarfile.TarFile], object]) -> None:
    data = archive(lambda tar: (file(tar, "fine.txt"), add(tar)))
    with pytest.raises(OutputError) as caught:
        unpack(data, tmp_path / "area" / "out")
    assert caught.value.errors  # names the entry
    assert list((tmp_path / "area").iterdir()) == []  # no staging folder, no result
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/escaped-absolute").exists()


def test_a_broken_stream_is_an_error(tmp_path: Path) -> None:
    data = archive(lambda tar: file(tar, "a.txt", b"a" * 100_000))
    with pytest.raises(OutputError, match="could not be received"):
        unpack(data[: len(data) // 2], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_cancelled_unpacking_ends_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    """The caller is cancelled while the stream waits for its next chunk (for ever): the
    unpacking thread stops waiting instead of keeping the cancellation waiting."""
    data = archive(lambda tar: file(tar, "a.txt", os.urandom(200_000)))
    sent = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield data[: len(data) // 2]
        sent.set()
        await asyncio.Event().wait()  # the rest never comes
        yield b""

    async def main() -> None:
        task = asyncio.ensure_future(unpack_folder(stalled(), tmp_path / "area" / "out",
                                                   replace=False))
        await sent.wait()
        task.cancel()
        async with asyncio.timeout(60):  # a hang guard only
            with pytest.raises(asyncio.CancelledError):
                await task

    (tmp_path / "area").mkdir()
    asyncio.run(main())
    assert list((tmp_path / "area").iterdir()) == []  # no staging folder, no result
