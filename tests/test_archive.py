"""Tests of boride.archive: real tar and Python's tarfile read it; reproducible bytes."""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import subprocess
import tarfile
import threading
import zlib
from pathlib import Path
from typing import Literal

import pytest

from boride import archive
from boride.archive import ArchiveError, crc32_combine, iter_archive, write_archive

DEEP = "/".join(f"level{i}" for i in range(30))  # > 100 bytes: needs a PAX header


def put(root: Path, rel: str, content: bytes | str = b"", *, mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


def make_tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    put(root, "README.md", "# hello\n")
    put(root, "bin/run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    put(root, "src/a.py", "print('a')\n" * 100)
    put(root, "src/empty.txt", "")
    put(root, "src/exact512", b"x" * 512)
    put(root, "ünïcödé/日本語 файл.txt", "unicode\n")
    put(root, f"{DEEP}/deep.txt", "deep\n")
    put(root, "big/random.bin", random.Random(1).randbytes(3 << 20 | 123))
    (root / "empty-dir" / "nested").mkdir(parents=True)
    (root / "links").mkdir()
    (root / "links" / "to-readme").symlink_to("../README.md")
    (root / "links" / "abs-inside").symlink_to(root / "src" / "a.py")
    (root / "links" / "to-dir").symlink_to("../src")
    return root


def expected_names(root: Path) -> list[str]:
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            names.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(names, key=os.fsencode)


Entries = dict[str, tuple[tarfile.TarInfo, bytes | None]]


def read_all(data: bytes, mode: Literal["r:gz", "r|gz"] = "r:gz") -> Entries:
    out: Entries = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tar:
        for info in tar:
            f = tar.extractfile(info) if info.isreg() else None
            out[info.name] = (info, f.read() if f else None)
    return out


# ---------------------------------------------------------------------------------------------


def test_archive_matches_the_tree(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dest = tmp_path / "out.tar.gz"
    result = write_archive(src, dest)
    data = dest.read_bytes()
    assert result.bytes_written == len(data)
    assert result.files == 8 and result.seconds >= 0
    modes: tuple[Literal["r:gz", "r|gz"], ...] = ("r:gz", "r|gz")
    for mode in modes:  # random access and streaming readers
        entries = read_all(data, mode)
        assert list(entries) == expected_names(src)  # sorted, directories included
        for name, (info, content) in entries.items():
            path = src / name
            assert not name.startswith(("/", "./")) and ".." not in name.split("/")
            assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", 0)
            if path.is_symlink():
                assert info.issym()
                assert (path.parent / info.linkname).resolve() == path.resolve()
                assert not os.path.isabs(info.linkname)
            elif path.is_dir():
                assert info.isdir() and info.mode == 0o755
            else:
                assert info.isreg() and content == path.read_bytes()
                assert info.mode == (0o755 if path.stat().st_mode & 0o111 else 0o644)
    assert entries["bin/run.sh"][0].mode == 0o755
    assert entries["links/abs-inside"][0].linkname == "../src/a.py"
    assert entries["links/to-dir"][0].linkname == "../src"


def test_gnu_tar_lists_and_extracts_it(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dest = tmp_path / "out.tar.gz"
    write_archive(src, dest)
    listing = subprocess.run(["tar", "-tzvf", str(dest)], capture_output=True, text=True,
                             check=True, env={**os.environ, "TZ": "UTC"})
    assert listing.stderr == ""
    lines = listing.stdout.splitlines()
    assert len(lines) == len(expected_names(src))
    assert all(" 0/0 " in line for line in lines)
    assert all(" 1970-01-01 00:00 " in line for line in lines)
    assert lines[0].startswith("-rw-r--r-- 0/0") and lines[0].endswith(" README.md")
    assert any(line.startswith("lrwxrwxrwx") and "links/to-readme -> ../README.md" in line
               for line in lines)
    names = subprocess.run(["tar", "-tzf", str(dest)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert [n.rstrip("/") for n in names] == expected_names(src)
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(dest), "-C", str(out)], check=True)
    subprocess.run(["gzip", "-t", str(dest)], check=True)  # CRC and length are right
    assert subprocess.run(["diff", "-r", str(src), str(out)]).returncode == 0
    assert os.readlink(out / "links" / "abs-inside") == "../src/a.py"


def test_same_bytes_whatever_mtimes_owners_and_creation_order(tmp_path: Path) -> None:
    first = make_tree(tmp_path / "one")
    second = tmp_path / "two"
    second.mkdir()
    # the same tree built in another order, with other mtimes, owners and permissions
    for name in reversed(expected_names(first)):
        src, dst = first / name, second / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            link = Path(os.readlink(src))
            dst.symlink_to(second / link.relative_to(first) if link.is_absolute() else link)
        elif src.is_dir():
            dst.mkdir(exist_ok=True)
        else:
            shutil.copyfile(src, dst)
            dst.chmod(0o700 if src.stat().st_mode & 0o111 else 0o600)
    for i, name in enumerate(expected_names(second)):
        path = second / name
        os.utime(path, (1_000_000 + i, 2_000_000_000 - i), follow_symlinks=False)
        os.chown(path, 1000 + i, 2000 + i, follow_symlinks=False)
    a = b"".join(iter_archive(first))
    assert a == b"".join(iter_archive(first))  # twice the same tree
    assert a == b"".join(iter_archive(second))


@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("chunk_size", [1, 1000, 1 << 16])
def test_iter_archive_equals_write_archive(tmp_path: Path, threads: int, chunk_size: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "BLOCK_SIZE", 1 << 17)  # many blocks
    src = tmp_path / "src"
    put(src, "big.bin", random.Random(2).randbytes(1 << 20))
    for i in range(50):
        put(src, f"d{i % 7}/f{i}.txt", f"file {i}\n" * i)
    dest = tmp_path / "out.tar.gz"
    write_archive(src, dest)
    chunks = list(iter_archive(src, chunk_size if chunk_size > 1 else 997, threads=threads))
    assert b"".join(chunks) == dest.read_bytes()
    size = chunk_size if chunk_size > 1 else 997
    assert all(len(c) == size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= size


def test_one_gzip_member_with_the_right_crc(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "BLOCK_SIZE", 10_000)  # blocks not aligned to tar blocks
    src = tmp_path / "src"
    put(src, "a.bin", random.Random(3).randbytes(250_000))
    put(src, "b.txt", "text " * 20_000)
    data = b"".join(iter_archive(src))
    d = zlib.decompressobj(16 + 15)
    raw = d.decompress(data) + d.flush()
    assert d.eof and d.unused_data == b""  # a single member, with a valid CRC and length
    assert raw == gzip.decompress(data)
    assert len(raw) % (20 * 512) == 0
    assert data[:4] == b"\x1f\x8b\x08\x00" and data[4:8] == b"\0\0\0\0"  # mtime 0


def test_level_changes_size_not_content(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src, "a.txt", "compressible " * 50_000)
    fast = b"".join(iter_archive(src, level=1))
    small = b"".join(iter_archive(src, level=9))
    assert gzip.decompress(fast) == gzip.decompress(small)
    assert len(small) <= len(fast)
    with pytest.raises(ValueError):
        iter_archive(src, level=10)
    with pytest.raises(ValueError):
        iter_archive(src, chunk_size=0)


def test_empty_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    result = write_archive(src, tmp_path / "out.tar.gz")
    assert result.files == 0
    assert read_all((tmp_path / "out.tar.gz").read_bytes()) == {}


def test_symlinks_leading_out_are_errors_before_any_byte(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src, "ok.txt", "ok")
    secret = put(tmp_path, "secret.txt", "secret")
    (src / "abs").symlink_to(secret)
    (src / "sub").mkdir()
    (src / "sub" / "rel").symlink_to("../../secret.txt")
    (src / "hop").symlink_to("sub/rel")
    with pytest.raises(ArchiveError) as info:
        iter_archive(src)  # raised by the call itself, not while iterating
    text = "\n".join(info.value.errors)
    assert len(info.value.errors) == 3
    assert "'abs'" in text and "'sub/rel'" in text and "'hop'" in text
    dest = tmp_path / "out.tar.gz"
    with pytest.raises(ArchiveError):
        write_archive(src, dest)
    assert not dest.exists()


def test_special_files_are_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(ArchiveError, match="'pipe'"):
        iter_archive(src)


def test_hard_links_are_stored_as_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src, "a.txt", "shared")
    os.link(src / "a.txt", src / "b.txt")
    entries = read_all(b"".join(iter_archive(src)))
    assert entries["a.txt"][1] == entries["b.txt"][1] == b"shared"
    assert entries["b.txt"][0].isreg()


def test_dest_inside_the_tree_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src, "a.txt", "a")
    with pytest.raises(ArchiveError, match="inside"):
        write_archive(src, src / "out.tar.gz")
    with pytest.raises(ArchiveError, match="not a directory"):
        iter_archive(src / "a.txt")


def test_closing_early_stops_the_work(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "BLOCK_SIZE", 1 << 16)
    src = tmp_path / "src"
    put(src, "big.bin", random.Random(4).randbytes(8 << 20))
    chunks = iter_archive(src, 1024)
    assert len(next(chunks)) == 1024
    chunks.close()  # type: ignore[attr-defined]
    assert not [t for t in threading.enumerate()
                if t.name.startswith(("boride-archive", "boride-gzip"))]


def test_file_changing_size_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src, "a.txt", "x" * 1000)
    chunks = iter_archive(src)  # scanned: now the file disappears
    (src / "a.txt").unlink()
    with pytest.raises(ArchiveError, match=r"'a\.txt'"):
        b"".join(chunks)


def test_fast_headers_equal_tarfile_headers() -> None:
    for name, kind, mode, size, link in [
        ("a.txt", tarfile.REGTYPE, 0o644, 0, ""),
        ("x" * 100, tarfile.REGTYPE, 0o755, 8**11 - 1, ""),
        ("dir", tarfile.DIRTYPE, 0o755, 0, ""),
        ("link", tarfile.SYMTYPE, 0o777, 0, "../target"),
        ("y" * 101, tarfile.REGTYPE, 0o644, 5, ""),  # PAX
        ("ü.txt", tarfile.REGTYPE, 0o644, 5, ""),  # PAX
        ("big", tarfile.REGTYPE, 0o644, 8**11, ""),  # PAX
    ]:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.linkname = kind, mode, size, link
        info.uname = info.gname = ""
        expected = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        assert archive._header(name, kind, mode, size, link) == expected, name


def test_crc32_combine() -> None:
    rng = random.Random(5)
    for _ in range(50):
        a = rng.randbytes(rng.randrange(0, 3000))
        b = rng.randbytes(rng.randrange(0, 3000))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_failure_while_writing_leaves_no_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    put(src, "a.txt", "a")

    def broken(item: object, level: int) -> object:
        raise RuntimeError("zlib exploded")

    monkeypatch.setattr(archive, "_deflate", broken)
    dest = tmp_path / "out.tar.gz"
    with pytest.raises(ArchiveError, match="zlib exploded"):
        write_archive(src, dest)
    assert not dest.exists()
    assert not [t for t in threading.enumerate()
                if t.name.startswith(("boride-archive", "boride-gzip"))]


# -- copy_links: links stored as what they lead to (the CyanPrint CLI's unpacker) ------------

def _members(data: bytes) -> dict[str, bytes | None]:
    """Name -> content (None for folders) of every member; fails on any link member."""
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            assert not m.issym() and not m.islnk(), m.name
            f = tar.extractfile(m) if m.isfile() else None
            out[m.name] = f.read() if f is not None else None
    return out


def test_copy_links_stores_files_and_folders_links_lead_to(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "lib" / "deep").mkdir(parents=True)
    (src / "lib" / "a.txt").write_text("A")
    (src / "lib" / "deep" / "b.txt").write_text("B")
    (src / "file-link").symlink_to("lib/a.txt")
    (src / "dir-link").symlink_to("lib")
    (src / "chain").symlink_to("dir-link")
    (src / "lib" / "up-and-over").symlink_to("../lib/deep/b.txt")
    members = _members(b"".join(iter_archive(src, copy_links=True)))
    assert members["file-link"] == b"A"
    assert members["dir-link"] is None and members["dir-link/a.txt"] == b"A"
    assert members["dir-link/deep/b.txt"] == b"B"
    assert members["chain/deep/b.txt"] == b"B"
    assert members["lib/up-and-over"] == b"B"
    assert members["dir-link/up-and-over"] == b"B"


@pytest.mark.parametrize("links", [
    {"lib/loop": ".."},  # a folder above the link
    {"lib/self": "."},
    {"p/to-q": "../q", "q/to-p": "../p"},  # a ring through two folders
    {"root": "."},
])
def test_copy_links_refuses_cycles_naming_the_link(tmp_path: Path, links: dict[str, str]
                                                   ) -> None:
    src = tmp_path / "src"
    for folder in ("lib", "p", "q"):
        (src / folder).mkdir(parents=True)
        (src / folder / "f.txt").write_text("x")
    for name, target in links.items():
        (src / name).symlink_to(target)
    with pytest.raises(ArchiveError) as err:
        iter_archive(src, copy_links=True)
    assert "makes a cycle" in str(err.value)
    assert any(repr(name).strip("'") in str(err.value) for name in links)


def test_copy_links_still_refuses_links_leading_outside(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "secret").write_text("s")
    (src / "out").symlink_to("../secret")
    (src / "abs").symlink_to("/etc")
    (src / "dangling").symlink_to("nowhere")
    with pytest.raises(ArchiveError) as err:
        iter_archive(src, copy_links=True)
    text = str(err.value)
    assert "'out'" in text and "'abs'" in text and "'dangling'" in text


# -- zlib-ng: the deflater, pinned, the same bytes from one install to the next (issue 23) ---

def make_golden_tree(root: str) -> None:
    """A fixed tree of about 1.6 MB (two compression blocks): source-like text, a file of
    random bytes, an executable, a link, an empty folder. Only the standard library and no
    names from this module: it also runs, as its source, in the helper image."""
    import os
    import random

    rng = random.Random(23)
    words = ["def", "class", "return", "import", "self", "value", "template", "merge", "for"]

    def put(rel: str, data: bytes, mode: int = 0o644) -> None:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)

    for i in range(120):
        lines = ["    " * rng.randrange(4) + " ".join(rng.choice(words) for _ in range(8))
                 for _ in range(rng.randrange(20, 400))]
        put(f"src/pkg{i % 6}/mod{i}.py", "\n".join(lines).encode())
    put("assets/noise.bin", bytes(rng.randrange(256) for _ in range(300_000)))
    put("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    os.makedirs(os.path.join(root, "empty"))
    os.symlink("src/pkg0/mod0.py", os.path.join(root, "main.py"))


#: sha256 of the archive of :func:`make_golden_tree` at the default level (4) with zlib-ng
#: 1.1.0 (zlib-ng 2.3.3 inside), x86-64. It changes when the pinned zlib-ng's output changes
#: (a new pin: check that the new bytes are again the same everywhere, then update it) or
#: when the archive's format does; with stdlib zlib it would be another value.
GOLDEN_SHA256 = "1b068e835e536153ab1fcd75eca8c2c243fc364648437796cc85cd257ce28821"


def _golden_digest(root: Path) -> str:
    import hashlib

    make_golden_tree(str(root))
    return hashlib.sha256(b"".join(iter_archive(root))).hexdigest()


def test_the_archive_is_zlib_ng_deflate(tmp_path: Path) -> None:
    """One block (under BLOCK_SIZE): the archive is exactly a gzip member around zlib-ng's
    raw deflate of the tar stream at the default level, not stdlib zlib's."""
    from zlib_ng import zlib_ng

    src = tmp_path / "src"
    for i in range(40):
        put(src, f"d{i % 4}/f{i}.txt", f"line {i} of some text to compress\n" * (i + 10))
    data = b"".join(iter_archive(src))
    raw = gzip.decompress(data)
    assert len(raw) < archive.BLOCK_SIZE

    def deflated(z: object) -> bytes:
        c = z.compressobj(archive.DEFAULT_LEVEL, z.DEFLATED, -15)  # type: ignore[attr-defined]
        return bytes(c.compress(raw) + c.flush())

    body = data[10:-8]
    assert body == deflated(zlib_ng)
    assert body != deflated(zlib)  # (what stdlib zlib would give: the reason for the pin)
    assert data[-8:] == (zlib.crc32(raw).to_bytes(4, "little")
                         + len(raw).to_bytes(4, "little"))


def test_same_bytes_as_the_pinned_zlib_ng_gave(tmp_path: Path) -> None:
    """The archive of a fixed tree has a fixed digest: reproducible from one install to the
    next, not only from one run to the next."""
    assert _golden_digest(tmp_path / "golden") == GOLDEN_SHA256
    entries = read_all(b"".join(iter_archive(tmp_path / "golden")))
    assert entries["bin/run.sh"][0].mode == 0o755
    assert entries["main.py"][0].linkname == "src/pkg0/mod0.py"
    assert entries["empty"][0].isdir()


def test_zlib_ng_is_pinned_exactly_and_in_the_helper_image() -> None:
    import tomllib

    from zlib_ng import _version

    root = Path(__file__).resolve().parent.parent
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"zlib-ng=={_version.__version__}" in deps  # the installed one is the pinned one
    from tests.docker_helpers import serve_image_module

    assert f"zlib-ng=={_version.__version__}" in serve_image_module().dependencies()


@pytest.mark.docker
def test_the_helper_image_makes_the_same_bytes(tmp_path: Path) -> None:
    """boride's helper image (which archives the results of Docker builds) has the pinned
    zlib-ng too: the same tree, made and archived inside it, has the same digest."""
    import inspect

    from boride.runtime.docker.helper import helper_image

    script = "\n".join([
        inspect.getsource(make_golden_tree),
        "import hashlib, pathlib, tempfile",
        "from boride.archive import iter_archive",
        "root = tempfile.mkdtemp() + '/golden'",
        "make_golden_tree(root)",
        "print(hashlib.sha256(b''.join(iter_archive(pathlib.Path(root)))).hexdigest())",
    ])
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint",
                          "python3", helper_image(), "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == _golden_digest(tmp_path / "golden") == GOLDEN_SHA256
