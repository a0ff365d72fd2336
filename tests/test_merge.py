"""Unit tests of boride.merge with real files: every rule of the module docstring."""

from __future__ import annotations

import asyncio
import os
import random
import stat
import threading
from pathlib import Path

import pytest

from boride.merge import (
    Conflict,
    MergeError,
    MergeResult,
    ResolveFn,
    ResolverRule,
    Version,
    merge,
)

# ---------------------------------------------------------------------------------------------
# helpers


def put(root: Path, rel: str, content: bytes | str = b"", *, exe: bool = False) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(0o755 if exe else 0o644)
    return path


def snapshot(root: Path) -> dict[str, object]:
    """rel -> (content, executable) for files, "<dir>" for folders; fails on anything else."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                assert stat.S_IMODE(st.st_mode) == 0o755, rel
                out[rel] = "<dir>"
            else:
                assert stat.S_ISREG(st.st_mode), f"{rel} is not a regular file"
                assert stat.S_IMODE(st.st_mode) in (0o644, 0o755), rel
                out[rel] = (path.read_bytes(), bool(st.st_mode & 0o111))
    return out


async def never(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
    raise AssertionError(f"resolver called for {conflict.path}")


async def concat(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
    parts = [f"{rule.name}:{v.layer}:".encode() + v.content for v in conflict.versions]
    return conflict.path, b"|".join(parts)


def outputs(tmp_path: Path, n: int) -> list[Path]:
    outs = [tmp_path / f"out{i}" for i in range(n)]
    for o in outs:
        o.mkdir()
    return outs


# ---------------------------------------------------------------------------------------------
# plain copies


async def test_single_output_copied_as_is(tmp_path: Path) -> None:
    (o,) = outputs(tmp_path, 1)
    put(o, "a.txt", "alpha")
    put(o, "bin/run.sh", "#!/bin/sh\n", exe=True)
    put(o, "src/deep/b.py", "beta")
    (o / "empty" / "nested").mkdir(parents=True)
    (o / "also-empty").mkdir()
    result = await merge([o], tmp_path / "t", [], never)
    assert snapshot(tmp_path / "t") == {
        "a.txt": (b"alpha", False),
        "bin": "<dir>",
        "bin/run.sh": (b"#!/bin/sh\n", True),
        "src": "<dir>",
        "src/deep": "<dir>",
        "src/deep/b.py": (b"beta", False),
        "empty": "<dir>",
        "empty/nested": "<dir>",
        "also-empty": "<dir>",
    }
    assert result.files == 3 and result.conflicts == 0 and result.resolved == 0
    assert result.seconds >= 0


async def test_disjoint_outputs_are_unioned_and_dirs_merge(tmp_path: Path) -> None:
    a, b, c = outputs(tmp_path, 3)
    put(a, "src/a.txt", "A")
    put(b, "src/b.txt", "B", exe=True)
    put(c, "docs/c.md", "C")
    (c / "src" / "empty").mkdir(parents=True)
    result = await merge([a, b, c], tmp_path / "t", [], never)
    assert snapshot(tmp_path / "t") == {
        "src": "<dir>", "src/a.txt": (b"A", False), "src/b.txt": (b"B", True),
        "src/empty": "<dir>", "docs": "<dir>", "docs/c.md": (b"C", False),
    }
    assert result == MergeResult(files=3, conflicts=0, resolved=0, seconds=result.seconds)


async def test_unicode_names_and_deep_paths(tmp_path: Path) -> None:
    a, b = outputs(tmp_path, 2)
    deep = "/".join(f"d{i}-é" for i in range(60))
    put(a, f"{deep}/日本語.txt", "jp")
    put(b, "ünïcödé/файл.md", "ru", exe=True)
    put(b, "emoji/🙂 space.txt", "smile")
    put(b, f"{deep}/x", "deep")
    await merge([a, b], tmp_path / "t", [], never)
    snap = snapshot(tmp_path / "t")
    assert snap[f"{deep}/日本語.txt"] == (b"jp", False)
    assert snap[f"{deep}/x"] == (b"deep", False)
    assert snap["ünïcödé/файл.md"] == (b"ru", True)
    assert snap["emoji/🙂 space.txt"] == (b"smile", False)


async def test_exec_bit_kept_whatever_the_umask(tmp_path: Path) -> None:
    a, b = outputs(tmp_path, 2)
    put(a, "x.sh", "x", exe=True)
    put(a, "conflict.sh", "1")
    put(b, "conflict.sh", "2", exe=True)
    (a / "group-exec").write_text("g")
    (a / "group-exec").chmod(0o610)  # any x bit counts; read-only sources become 0644
    (a / "readonly").write_text("r")
    (a / "readonly").chmod(0o444)
    old = os.umask(0o077)
    try:
        await merge([a, b], tmp_path / "t", [], never)
    finally:
        os.umask(old)
    snap = snapshot(tmp_path / "t")  # also checks the exact modes 0644/0755
    assert snap["x.sh"] == (b"x", True)
    assert snap["conflict.sh"] == (b"2", True)
    assert snap["group-exec"] == (b"g", True)
    assert snap["readonly"] == (b"r", False)


async def test_large_file_copied_exactly(tmp_path: Path) -> None:
    (o,) = outputs(tmp_path, 1)
    data = random.Random(3).randbytes(5 << 20) + b"tail"
    put(o, "big.bin", data)
    put(o, "zero", b"")
    await merge([o], tmp_path / "t", [], never)
    assert (tmp_path / "t" / "big.bin").read_bytes() == data
    assert (tmp_path / "t" / "zero").read_bytes() == b""


async def test_copies_are_independent_of_the_outputs(tmp_path: Path) -> None:
    """A plugin editing the merged tree in place must never change a processor's output."""
    (o,) = outputs(tmp_path, 1)
    src = put(o, "f.txt", "original")
    await merge([o], tmp_path / "t", [], never)
    dst = tmp_path / "t" / "f.txt"
    assert dst.stat().st_ino != src.stat().st_ino
    with open(dst, "r+") as f:
        f.write("EDITED")
    with open(dst, "a") as f:
        f.write("+more")
    assert src.read_text() == "original"
    assert dst.read_text() == "EDITEDal+more"


async def test_no_outputs_gives_an_empty_tree(tmp_path: Path) -> None:
    result = await merge([], tmp_path / "t", [], never)
    assert list((tmp_path / "t").iterdir()) == []
    assert result.files == 0


# ---------------------------------------------------------------------------------------------
# conflicts


async def test_conflict_without_rule_last_layer_wins(tmp_path: Path) -> None:
    a, b, c = outputs(tmp_path, 3)
    put(a, "f.txt", "first", exe=True)
    put(b, "f.txt", "second", exe=True)
    put(c, "f.txt", "third")
    put(a, "g.txt", "only a")
    rules = [ResolverRule("md", ("**/*.md",))]
    result = await merge([a, b, c], tmp_path / "t", rules, never)
    assert snapshot(tmp_path / "t") == {"f.txt": (b"third", False), "g.txt": (b"only a", False)}
    assert (result.files, result.conflicts, result.resolved) == (2, 1, 0)


async def test_first_matching_rule_decides_with_every_version(tmp_path: Path) -> None:
    a, b, c = outputs(tmp_path, 3)
    put(a, "docs/x.md", "a")
    put(c, "docs/x.md", "c", exe=True)
    put(b, "src/y.md", "b")
    put(c, "src/y.md", "c")
    put(a, "src/z.txt", "a")
    put(b, "src/z.txt", "b")
    seen: list[tuple[str, Conflict]] = []

    async def resolve(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        seen.append((rule.name, conflict))
        return await concat(rule, conflict)

    rules = [ResolverRule("nothing", ("*.none",)), ResolverRule("src", ("src/**",)),
             ResolverRule("md", ("**/*.md",))]
    result = await merge([a, b, c], tmp_path / "t", rules, resolve)
    snap = snapshot(tmp_path / "t")
    assert snap["docs/x.md"] == (b"md:0:a|md:2:c", True)  # exec bit of the last version
    assert snap["src/y.md"] == (b"src:1:b|src:2:c", False)  # "src" comes before "md"
    assert snap["src/z.txt"] == (b"src:0:a|src:1:b", False)
    by_path = {c.path: (name, c) for name, c in seen}
    assert by_path["docs/x.md"] == ("md", Conflict("docs/x.md", (
        Version(0, a / "docs/x.md"), Version(2, c / "docs/x.md"))))
    assert by_path["src/y.md"][1].versions == (Version(1, b / "src/y.md"),
                                               Version(2, c / "src/y.md"))
    assert (result.files, result.conflicts, result.resolved) == (3, 3, 3)


@pytest.mark.parametrize(("glob", "path", "matches"), [
    ("**/*.md", "a.md", True),
    ("**/*.md", "x/y/.hidden.md", True),
    ("**/*.md", "a.mdx", False),
    ("src/**", "src/a/b/c.txt", True),
    ("src/**", "srcx/a.txt", False),
    ("*.txt", "a.txt", True),
    ("*.txt", "d/a.txt", False),
    ("{a,b}/*.txt", "b/f.txt", True),
    ("[ab].txt", "c.txt", False),
    ("**", ".env", True),
])
async def test_glob_semantics(tmp_path: Path, glob: str, path: str, matches: bool) -> None:
    a, b = outputs(tmp_path, 2)
    put(a, path, "a")
    put(b, path, "b")
    await merge([a, b], tmp_path / "t", [ResolverRule("r", (glob,))], concat)
    expected = b"r:0:a|r:1:b" if matches else b"b"
    assert (tmp_path / "t" / path).read_bytes() == expected


async def test_a_resolution_is_written_at_the_conflicts_own_path(tmp_path: Path) -> None:
    a, b = outputs(tmp_path, 2)
    put(a, "src/x.txt", "a")
    put(b, "src/x.txt", "b", exe=True)

    async def dotted(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        return "./src//x.txt", b"merged"  # the same path, written loosely: accepted

    result = await merge([a, b], tmp_path / "t", [ResolverRule("r", ("**",))], dotted)
    assert snapshot(tmp_path / "t") == {"src": "<dir>", "src/x.txt": (b"merged", True)}
    assert result.files == 1 and result.resolved == 1


async def test_a_resolution_for_another_path_is_refused_naming_both(tmp_path: Path) -> None:
    """As the Go coordinator: a resolver decides the paths its globs match, never another
    file (a plain file, another conflict, a folder, below a file, a new path)."""
    a, b = outputs(tmp_path, 2)
    put(a, "README.md", "plain")
    put(a, "dir/inside.txt", "i")
    for rel in ("src/a.txt", "src/b.txt", "c1", "c2", "c3"):
        put(a, rel, "1")
        put(b, rel, "2")
    answers = {"src/a.txt": "README.md", "src/b.txt": "src/a.txt", "c1": "dir",
               "c2": "README.md/below", "c3": "new/c3"}

    async def elsewhere(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        return answers[conflict.path], b"x"

    with pytest.raises(MergeError) as info:
        await merge([a, b], tmp_path / "t", [ResolverRule("pick", ("**",))], elsewhere)
    assert info.value.errors == [  # in conflict path order
        f"conflict {asked!r}, resolver 'pick': answered for another path: expected "
        f"{asked!r}, got {answers[asked]!r}" for asked in sorted(answers)]
    assert (tmp_path / "t" / "README.md").read_bytes() == b"plain"  # never overwritten


async def test_several_resolutions_for_one_other_path_are_each_refused(tmp_path: Path) -> None:
    a, b = outputs(tmp_path, 2)
    for rel in ("b.txt", "a.txt", "c.txt"):
        put(a, rel, "1")
        put(b, rel, "2")

    async def to_one(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        await asyncio.sleep({"a.txt": 0.05, "b.txt": 0.0, "c.txt": 0.02}[conflict.path])
        return "out.txt", conflict.path.encode()

    with pytest.raises(MergeError) as info:
        await merge([a, b], tmp_path / "t", [ResolverRule("r", ("*",))], to_one)
    assert [e.split(":")[0] for e in info.value.errors] == [
        "conflict 'a.txt', resolver 'r'", "conflict 'b.txt', resolver 'r'",
        "conflict 'c.txt', resolver 'r'"]
    assert not (tmp_path / "t" / "out.txt").exists()


async def test_random_resolver_delays_give_the_same_tree(tmp_path: Path) -> None:
    n_out = 4
    outs = outputs(tmp_path, n_out)
    rng = random.Random(0)
    for i in range(60):
        for o in rng.sample(outs, rng.randrange(1, n_out + 1)):
            put(o, f"d{i % 5}/f{i}.txt", f"{o.name}:{i}", exe=rng.random() < 0.3)
    active = 0
    peak = 0

    def make(seed: int) -> ResolveFn:
        delays = random.Random(seed)

        async def resolve(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                await asyncio.sleep(delays.random() / 200)
            finally:
                active -= 1
            return conflict.path, b"+".join(v.content for v in conflict.versions)

        return resolve

    snaps = []
    for run in range(5):
        await merge(outs, tmp_path / f"t{run}", [ResolverRule("r", ("d[0-3]/**",))], make(run),
                    limit=3)
        snaps.append(snapshot(tmp_path / f"t{run}"))
    assert all(s == snaps[0] for s in snaps)
    assert 1 < peak <= 3


# ---------------------------------------------------------------------------------------------
# resolver failures


async def test_every_failing_resolution_is_reported(tmp_path: Path) -> None:
    a, b = outputs(tmp_path, 2)
    for rel in ("bad1.txt", "bad2.txt", "good.txt", "crash.txt"):
        put(a, rel, "1")
        put(b, rel, "2")

    class Crash(BaseException):
        pass

    async def flaky(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        if conflict.path.startswith("bad"):
            raise RuntimeError(f"cannot merge {conflict.path}")
        if conflict.path == "crash.txt":
            # contained by the engine, reported like any failure (all but KeyboardInterrupt
            # and SystemExit, which end the process: tests/test_parallel.py)
            raise Crash
        return conflict.path, b"ok"

    with pytest.raises(MergeError) as info:
        await merge([a, b], tmp_path / "t", [ResolverRule("flaky", ("*.txt",))], flaky)
    errors = info.value.errors
    assert len(errors) == 3
    assert "'bad1.txt'" in errors[0] and "flaky" in errors[0]
    assert "cannot merge bad1.txt" in errors[0]
    assert "'bad2.txt'" in errors[1]
    assert "'crash.txt'" in errors[2] and "Crash" in errors[2]
    text = str(info.value)
    assert "3 error(s)" in text and "bad1.txt" in text and "bad2.txt" in text


@pytest.mark.parametrize("returned", [
    ("../escape.txt", b"x"),
    ("a/../../escape.txt", b"x"),
    ("/etc/evil", b"x"),
    ("a\0b", b"x"),
    ("", b"x"),
    (".", b"x"),
    ("ok.txt", "not bytes"),
    ("ok.txt",),
    (b"bytes-path", b"x"),
    None,
])
async def test_unsafe_or_invalid_resolution_is_an_error(tmp_path: Path, returned: object) -> None:
    a, b = outputs(tmp_path, 2)
    put(a, "c.txt", "1")
    put(b, "c.txt", "2")

    async def bad(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        return returned  # type: ignore[return-value]

    with pytest.raises(MergeError) as info:
        await merge([a, b], tmp_path / "area" / "t", [ResolverRule("bad", ("*",))], bad)
    assert len(info.value.errors) == 1
    assert "'c.txt'" in info.value.errors[0] and "bad" in info.value.errors[0]
    assert not (tmp_path / "area" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


# ---------------------------------------------------------------------------------------------
# file / directory clashes, symlinks, special files


async def test_file_against_directory_is_an_error_naming_both(tmp_path: Path) -> None:
    a, b, c = outputs(tmp_path, 3)
    put(a, "x", "a file")
    put(b, "x/inside.txt", "in a folder")
    (c / "y").mkdir()
    put(a, "y", "file again")
    put(c, "fine.txt", "fine")
    with pytest.raises(MergeError) as info:
        await merge([a, b, c], tmp_path / "t", [ResolverRule("r", ("**",))], never)
    assert info.value.errors == [
        "'x' is a file in processor 0 and a directory in processor 1",
        "'y' is a file in processor 0 and a directory in processor 2",
    ]
    assert list((tmp_path / "t").iterdir()) == []  # detected before writing anything


async def test_symlinks_escaping_or_unsupported_are_errors(tmp_path: Path) -> None:
    a, b = outputs(tmp_path, 2)
    secret = put(tmp_path, "secret.txt", "secret")
    put(a, "ok.txt", "ok")
    (a / "abs").symlink_to(secret)
    (a / "sub").mkdir()
    (a / "sub" / "rel").symlink_to("../../secret.txt")
    (b / "chain").symlink_to("hop")
    (b / "hop").symlink_to(secret)
    (b / "dangling").symlink_to("nowhere")
    (b / "to-dir").symlink_to("d")
    (b / "d").mkdir()
    (b / "loop").symlink_to("loop")
    with pytest.raises(MergeError) as info:
        await merge([a, b], tmp_path / "t", [], never)
    text = "\n".join(info.value.errors)
    assert len(info.value.errors) == 7, text
    for name in ("'abs'", "'sub/rel'", "'chain'", "'hop'", "'dangling'", "'to-dir'", "'loop'"):
        assert name in text
    assert "processor 0" in text and "processor 1" in text and "outside" in text
    assert list((tmp_path / "t").iterdir()) == []
    assert secret.read_text() == "secret"


async def test_symlink_to_a_file_inside_is_copied_as_a_file(tmp_path: Path) -> None:
    a, b = outputs(tmp_path, 2)
    put(a, "real/tool.sh", "#!/bin/sh", exe=True)
    (a / "link.sh").symlink_to("real/tool.sh")
    (a / "real" / "self").symlink_to("../real/./tool.sh")
    put(b, "link.sh", "plain")
    rules = [ResolverRule("r", ("link.sh",))]
    seen = []

    async def resolve(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        seen.append(conflict)
        return await concat(rule, conflict)

    await merge([a, b], tmp_path / "t", rules, resolve)
    snap = snapshot(tmp_path / "t")  # asserts there is no symlink
    assert snap["real/self"] == (b"#!/bin/sh", True)
    assert snap["link.sh"] == (b"r:0:#!/bin/sh|r:1:plain", False)
    assert seen[0].versions[0].path.read_bytes() == b"#!/bin/sh"


async def test_special_files_are_errors(tmp_path: Path) -> None:
    (a,) = outputs(tmp_path, 1)
    os.mkfifo(a / "pipe")
    with pytest.raises(MergeError, match=r"'pipe'.*not a regular file"):
        await merge([a], tmp_path / "t", [], never)


async def test_missing_output_is_an_error_naming_the_processor(tmp_path: Path) -> None:
    a, _ = outputs(tmp_path, 2)
    missing = tmp_path / "nope"
    not_dir = put(tmp_path, "file", "x")
    with pytest.raises(MergeError) as info:
        await merge([a, missing, not_dir], tmp_path / "t", [], never)
    assert len(info.value.errors) == 2
    assert f"processor 1 ({missing})" in info.value.errors[0]
    assert f"processor 2 ({not_dir})" in info.value.errors[1]


# ---------------------------------------------------------------------------------------------
# the target


async def test_target_must_be_empty_and_apart_from_the_outputs(tmp_path: Path) -> None:
    (a,) = outputs(tmp_path, 1)
    put(a, "f", "x")
    full = tmp_path / "full"
    put(full, "old", "x")
    with pytest.raises(MergeError, match="not empty"):
        await merge([a], full, [], never)
    with pytest.raises(MergeError, match="not a directory"):
        await merge([a], put(tmp_path, "afile", "x"), [], never)
    with pytest.raises(MergeError, match="overlap"):
        await merge([a], a / "inside", [], never)
    with pytest.raises(MergeError, match="overlap"):
        (tmp_path / "outer").mkdir()
        await merge([tmp_path], tmp_path / "outer", [], never)
    existing = tmp_path / "existing-empty"
    existing.mkdir()
    await merge([a], existing, [], never)
    assert (existing / "f").read_text() == "x"
    await merge([a], tmp_path / "new" / "parents" / "t", [], never)
    assert (tmp_path / "new" / "parents" / "t" / "f").read_text() == "x"


async def test_invalid_limit(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await merge([], tmp_path / "t", [], never, limit=0)


async def test_cancellation_stops_cleanly(tmp_path: Path) -> None:
    a, b = outputs(tmp_path, 2)
    for i in range(200):
        put(a, f"f{i}.txt", "1")
        put(b, f"f{i}.txt", "2")
    put(a, "plain/big.bin", os.urandom(1 << 20))
    started = asyncio.Event()
    cancelled = 0

    async def slow(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return conflict.path, b""

    task = asyncio.create_task(merge([a, b], tmp_path / "t", [ResolverRule("r", ("*",))], slow,
                                     limit=4))
    await started.wait()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task, 0.2)
    assert cancelled == 4  # every call in flight was cancelled, none was left running
    assert not [t for t in threading.enumerate() if t.name.startswith("boride-merge")]
