"""Property tests: boride.merge against a small pure-Python model of the merge rules.

Hypothesis draws processor outputs (files with contents and exec bits, folders, empty folders,
unicode names, deep paths; conflicts and file/folder clashes across outputs), resolver rules
(globs that match or not) and resolver behaviours (merge, fail, return an unsafe path, return
the conflict's own path written loosely, answer for another path: the top folder's entry of the
same name, one path for all, the parent folder; refused unless it happens to be the conflict's
own). The model decides, with plain string operations and dicts, what the merged tree (or the
list of errors) must be.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from boride.merge import Conflict, MergeError, ResolverRule, merge
from tests.helpers import tree

NAMES = ["a", "b", "é", "日本", ".h", "x.md", "y.txt", "ü b"]
DEEP = "/".join(["deep"] + [f"n{i}" for i in range(40)])

# Globs, each with the model's own matcher (plain string operations, no glob library).
GLOBS: dict[str, Callable[[str], bool]] = {
    "**": lambda p: True,
    "**/*.md": lambda p: p.rsplit("/", 1)[-1].endswith(".md"),
    "a/**": lambda p: p.startswith("a/"),
    "*.txt": lambda p: "/" not in p and p.endswith(".txt"),
    "**/x.md": lambda p: p.rsplit("/", 1)[-1] == "x.md",
    "a/b": lambda p: p == "a/b",
    "日本/**": lambda p: p.startswith("日本/"),
    "deep/**": lambda p: p.startswith("deep/"),
}
BEHAVIOURS = ["merge", "fail", "unsafe", "dotted", "to_top", "to_one", "to_parent"]

File = tuple[bytes, bool]  # content, executable
Layer = dict[str, File | None]  # path -> file, or None for a folder


@st.composite
def paths(draw: st.DrawFn, names: list[str] = NAMES, depth: int = 4, deep: bool = True) -> str:
    parts = draw(st.lists(st.sampled_from(names), min_size=1, max_size=depth))
    path = "/".join(parts)
    return f"{DEEP}/{path}" if deep and draw(st.sampled_from([False] * 7 + [True])) else path


def normal(path: str) -> str:
    """A relative path without empty and ``.`` components (as the merge compares them)."""
    return "/".join(p for p in path.split("/") if p not in ("", "."))


def ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def add(layer: Layer, path: str, f: File | None) -> None:
    """Add an entry unless a real directory could not hold it next to the others."""
    files = {p for p, v in layer.items() if v is not None}
    dirs = {a for p in layer for a in ancestors(p)} | {p for p, v in layer.items() if v is None}
    if path in layer or any(a in files for a in ancestors(path)):
        return
    if f is not None and path in dirs:
        return
    layer[path] = f


@st.composite
def outputs_strategy(draw: st.DrawFn, shallow: bool = False) -> list[Layer]:
    """Processor outputs drawing most of their paths from one shared pool (so that conflicts
    are common); a path's kind (file or folder) mostly agrees across outputs. ``shallow``:
    few names, at most two levels, so that moved resolutions often meet other entries."""
    pool_paths = paths(["a", "b", "y.txt", "x.md"], 2, False) if shallow else paths()
    pool = draw(st.lists(st.tuples(pool_paths, st.integers(0, 3).map(bool)), min_size=1,
                         max_size=6))
    # a pool path above another one is a folder (clashes come from the flips below)
    pool = [(p, f and not any(q.startswith(p + "/") for q, _ in pool)) for p, f in pool]
    contents = st.sampled_from([b"", b"1", b"2", b"same", "ü".encode()])
    result = []
    for n in range(draw(st.integers(2, 4) if shallow else st.integers(1, 4) | st.integers(2, 4))):
        layer: Layer = {}
        for path, is_file in pool:
            if not draw(st.booleans()):
                continue
            if draw(st.sampled_from([False] * 29 + [True])):
                is_file = not is_file  # now and then a file/folder clash
            add(layer, path, (draw(contents), draw(st.booleans())) if is_file else None)
        for path, is_file in draw(st.lists(st.tuples(paths(), st.booleans()), max_size=2)):
            path = f"only{n}/{path}"  # this output's own files and folders
            add(layer, path, (draw(contents), draw(st.booleans())) if is_file else None)
        result.append(layer)
    return result


@dataclass(frozen=True)
class Rule:
    name: str
    globs: tuple[str, ...]
    behaviour: str


@st.composite
def rules_strategy(draw: st.DrawFn, min_size: int = 0) -> list[Rule]:
    """Up to three rules with distinct names and behaviours (a permutation: hypothesis would
    otherwise mostly draw the first behaviour of a list)."""
    behaviours = draw(st.permutations(BEHAVIOURS))
    globs = st.lists(st.sampled_from([*sorted(GLOBS), "**", "**"]), min_size=1, max_size=2,
                     unique=True).map(tuple)
    return [Rule(f"r{i}", draw(globs), behaviours[i])
            for i in range(draw(st.integers(min_size, 3)))]


def content_of(rule: Rule, versions: list[tuple[int, bytes]]) -> bytes:
    return rule.name.encode() + b":" + b"+".join(b"%d=%s" % (i, c) for i, c in versions)


def destination(rule: Rule, path: str) -> str | None:
    """The path the resolver answers for, None if it fails (raises or returns nonsense)."""
    if rule.behaviour == "merge":
        return path
    if rule.behaviour == "dotted":  # the same path, written loosely
        return "./" + path.replace("/", "//")
    if rule.behaviour == "to_top":  # the top folder's entry of the same name (a top one's own)
        return path.rsplit("/", 1)[-1]
    if rule.behaviour == "to_one":  # one path for all, which plain files have too
        return "y.txt"
    if rule.behaviour == "to_parent":
        return path.rsplit("/", 1)[0] if "/" in path else "top.txt"
    return None


# ---------------------------------------------------------------------------------------------
# the model


@dataclass
class Expected:
    tree: dict[str, object] | None  # path -> (content, exec) or "<dir>"
    error_paths: list[str]  # paths each error names, in order (when tree is None)
    answered: dict[str, str] = field(default_factory=dict)  # conflict -> other path answered


def model(outputs: list[Layer], rules: list[Rule]) -> Expected:
    file_layers: dict[str, list[int]] = {}
    dir_paths: set[str] = set()
    for i, layer in enumerate(outputs):
        for path, f in layer.items():
            if f is None:
                dir_paths.add(path)
            else:
                file_layers.setdefault(path, []).append(i)
            dir_paths.update(ancestors(path))
    if any(len(v) > 1 for v in file_layers.values()):
        event("has conflicts")
    clashes = sorted(set(file_layers) & dir_paths)
    if clashes:
        event("file/folder clash")
        return Expected(None, clashes)

    final: dict[str, File] = {}
    resolutions: dict[str, File] = {}  # conflict path -> its resolved file
    failed: list[str] = []  # conflicts whose resolution failed or answered for another path
    answered: dict[str, str] = {}
    for path in sorted(file_layers):
        found = file_layers[path]
        last = outputs[found[-1]][path]
        assert last is not None
        rule = None
        if len(found) > 1:
            rule = next((r for r in rules if any(GLOBS[g](path) for g in r.globs)), None)
        if rule is None:
            final[path] = last
            continue
        dest = destination(rule, path)
        if dest is None or normal(dest) != path:
            event("resolver failed" if dest is None else "answered for another path")
            failed.append(path)
            if dest is not None:
                answered[path] = normal(dest)
            continue
        versions = []
        for i in found:
            f = outputs[i][path]
            assert f is not None
            versions.append((i, f[0]))
        resolutions[path] = (content_of(rule, versions), last[1])
    if resolutions:
        event("resolved")
    if any(len(v) > 1 and all(not GLOBS[g](p) for r in rules for g in r.globs)
           for p, v in file_layers.items()):
        event("conflict matching no rule")
    if failed:  # every problem is reported, in conflict path order
        return Expected(None, failed, answered)

    final.update(resolutions)
    tree: dict[str, object] = dict(final)
    for path in dir_paths | {a for p in final for a in ancestors(p)}:
        tree[path] = "<dir>"
    return Expected(tree, [])


# ---------------------------------------------------------------------------------------------
# the real thing


def materialise(root: Path, outputs: list[Layer]) -> list[Path]:
    dirs = []
    for i, layer in enumerate(outputs):
        out = root / f"out{i}"
        out.mkdir()
        for path, f in sorted(layer.items()):
            p = out / path
            if f is None:
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(f[0])
                # whatever a component leaves: the merged tree has 0755 or 0644 all the same
                odd = (0o700, 0o755, 0o711) if f[1] else (0o600, 0o644, 0o666)
                p.chmod(odd[len(f[0]) % 3])
        dirs.append(out)
    return dirs


def modes(root: Path) -> dict[str, int]:
    return {Path(d, n).relative_to(root).as_posix(): stat.S_IMODE(Path(d, n).lstat().st_mode)
            for d, dirnames, filenames in os.walk(root) for n in dirnames + filenames}


@settings(max_examples=150, deadline=None)
@given(outputs=outputs_strategy(), rules=rules_strategy(), limit=st.integers(1, 4),
       move=st.booleans())
def test_merge_matches_the_model(outputs: list[Layer], rules: list[Rule], limit: int,
                                 move: bool) -> None:
    """Copying or moving (``move``: the outputs used up), the same tree."""
    check(outputs, rules, limit, move)


@settings(max_examples=100, deadline=None)
@given(outputs=outputs_strategy(shallow=True),
       rules=rules_strategy(min_size=1), limit=st.integers(1, 4), move=st.booleans())
@example(  # answered for a plain file's path: refused, the plain file kept
    outputs=[{"y.txt": (b"plain", True), "a/x.md": (b"1", False)}, {"a/x.md": (b"2", False)}],
    rules=[Rule("r0", ("**/*.md",), "to_one")], limit=2, move=True)
@example(  # several for one path, one of them its own: the others refused
    outputs=[{"a/x.md": (b"1", False), "b/x.md": (b"2", True)},
             {"a/x.md": (b"3", True), "b/x.md": (b"4", False), "x.md": (b"5", False)}],
    rules=[Rule("r0", ("**",), "to_top")], limit=1, move=True)
@example(  # the own path written loosely: accepted
    outputs=[{"a/x.md": (b"1", False)}, {"a/x.md": (b"2", True)}],
    rules=[Rule("r0", ("**",), "dotted")], limit=1, move=False)
def test_resolutions_match_the_model(outputs: list[Layer], rules: list[Rule],
                                     limit: int, move: bool) -> None:
    """Resolutions answering for their own path, loosely written, or another one (plain
    files, other conflicts, folders)."""
    check(outputs, rules, limit, move)


def check(outputs: list[Layer], rules: list[Rule], limit: int, move: bool = False) -> None:
    by_name = {r.name: r for r in rules}
    expected = model(outputs, rules)
    event("errors" if expected.tree is None else "tree")

    async def resolve(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
        spec = by_name[rule.name]
        await asyncio.sleep(0)
        layers_seen = [v.layer for v in conflict.versions]
        assert layers_seen == sorted(layers_seen) and len(layers_seen) > 1
        if spec.behaviour == "fail":
            raise RuntimeError("resolver says no")
        if spec.behaviour == "unsafe":
            return "../escaped.txt", b"evil"
        dest = destination(spec, conflict.path)
        assert dest is not None
        versions = [(v.layer, v.path.read_bytes()) for v in conflict.versions]
        return dest, content_of(spec, versions)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = materialise(root, outputs)
        target = root / "area" / "target"
        coro = merge(dirs, target, [ResolverRule(r.name, r.globs) for r in rules], resolve,
                     limit=limit, move=move)
        if expected.tree is None:
            try:
                asyncio.run(coro)
            except MergeError as exc:
                assert len(exc.errors) == len(expected.error_paths), exc.errors
                for error, path in zip(exc.errors, expected.error_paths, strict=True):
                    assert repr(path) in error, (error, path)
                    if path in expected.answered:  # both paths named
                        assert error.endswith(f"got {expected.answered[path]!r}"), error
            else:
                raise AssertionError(f"expected errors about {expected.error_paths}")
        else:
            result = asyncio.run(coro)
            assert tree(target, executable=True, regular=True) == expected.tree
            assert modes(target) == {p: (0o755 if v == "<dir>" or v[1] else 0o644)  # type: ignore[index]
                                     for p, v in expected.tree.items()}
            assert result.files == sum(1 for v in expected.tree.values() if v != "<dir>")
        assert sorted(os.listdir(root / "area")) == ["target"]  # nothing escaped
