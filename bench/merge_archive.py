"""Benchmark: boride's merge against ``cp -a``, and its archive writer against ``tar czf``.

Builds N processor outputs of M small files each (source-like text, 0.2-8 KiB, ~50 files per
folder) plus a few large files, then, side by side in one run and alternating:

* ``merge``: :func:`boride.merge.merge` of the outputs into an empty folder (a small share of
  paths written by every output is a conflict; half of those match a resolver rule whose
  resolver concatenates the versions);
* ``cp -a``: one ``cp -a out0/. out1/. ... dest/`` of the same outputs into an empty folder;
* ``archive``: :func:`boride.archive.write_archive` of the merged tree;
* ``tar czf``: ``tar czf dest.tar.gz -C tree .`` of the same tree;
* with ``--stdlib``, also ``archive`` with Python's own zlib in place of zlib-ng (the
  compressor before issue 23), to show what zlib-ng brings.

``--archive`` measures only the archive rows (no merge): the tree archived is then the
outputs' folder itself (the same files, not merged).

Every timed run starts after ``sync`` with a warm page cache (one untimed warm-up of each), and
the tools take turns. The merge and copy runs each write a fresh folder, deleted only after the
series (see the comment in :func:`run`). Prints the median (and min/max) of ``--repeats`` runs
and the ratios.

    .venv/bin/python bench/merge_archive.py            # 8 x 5,000 files + 3 x 50 MB, 5 repeats
    .venv/bin/python bench/merge_archive.py --quick    # small and fast, for a smoke test
    .venv/bin/python bench/merge_archive.py --archive --stdlib --levels 1,4,6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

from zlib_ng import zlib_ng

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boride import archive, merge, parallel

WORDS = ["def", "class", "return", "import", "from", "self", "value", "items", "result",
         "config", "path", "name", "data", "if", "else", "for", "while", "try", "except", "with",
         "as", "yield", "async", "await", "lambda", "None", "True", "False", "template",
         "processor", "plugin", "resolver", "merge", "build", "output", "input", "file",
         "folder", "const", "let", "function", "export", "default", "interface", "type",
         "string", "number", "boolean"]


def corpus(rng: random.Random, size: int) -> bytes:
    """Source-like text: random words and indentation (gzip gets ~3-4x on it, like code)."""
    out: list[str] = []
    n = 0
    while n < size:
        line = "    " * rng.randrange(4) + " ".join(rng.choices(WORDS, k=rng.randrange(2, 12)))
        line += f" {rng.randrange(1 << 30):x}\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def build_outputs(root: Path, outputs: int, files: int, big: int, big_mb: int,
                  overlap: float, seed: int = 1) -> dict[str, int]:
    rng = random.Random(seed)
    text = corpus(rng, 4 << 20)
    shared = int(files * overlap)
    total_bytes = 0
    count = 0
    for o in range(outputs):
        out = root / f"out{o}"
        for i in range(files):
            if i < shared:  # the same paths in every output: conflicts
                ext = ".md" if i % 2 else ".txt"
                rel = f"shared/d{i // 50}/f{i}{ext}"
            else:
                rel = f"p{o}/pkg{i // 500}/mod{(i // 50) % 10}/file{i}.py"
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            size = rng.randrange(200, 8192)
            start = rng.randrange(len(text) - size)
            path.write_bytes(text[start:start + size])
            if i % 17 == 0:
                path.chmod(0o755)
            total_bytes += size
            count += 1
        (out / f"p{o}" / "empty" / "dir").mkdir(parents=True)
    chunk = corpus(rng, 1 << 20)
    for b in range(big):
        path = root / f"out{b % outputs}" / "assets" / f"big{b}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(big_mb):  # 1 MiB at a time: the corpus, rotated at random
                k = rng.randrange(len(chunk))
                f.write(chunk[k:] + chunk[:k])
        total_bytes += path.stat().st_size
        count += 1
    return {"files": count, "bytes": total_bytes, "shared": shared}


async def concat_resolver(rule: merge.ResolverRule, conflict: merge.Conflict) -> tuple[str, bytes]:
    def read() -> bytes:
        return b"".join(v.path.read_bytes() for v in conflict.versions)
    return conflict.path, await asyncio.to_thread(read)


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path


def timed(fn: Callable[[], object], prepare: Callable[[], object]) -> float:
    prepare()  # not timed
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fs_type(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()[-1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def stats(xs: list[float]) -> str:
    return f"median {statistics.median(xs):7.3f} s  (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outputs", type=int, default=8)
    ap.add_argument("--files", type=int, default=5000, help="small files per output")
    ap.add_argument("--big", type=int, default=3, help="number of large files")
    ap.add_argument("--big-mb", type=int, default=50, help="size of each large file (MB)")
    ap.add_argument("--overlap", type=float, default=0.01,
                    help="share of each output's paths that every output writes (conflicts)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--merge-limits", default=None,
                    help="merge parallelism to measure, comma-separated (default: the CPUs)")
    ap.add_argument("--levels", default=str(archive.DEFAULT_LEVEL),
                    help="archive gzip levels to measure, comma-separated (default: %(default)s,"
                         " boride's default)")
    ap.add_argument("--tmp", type=Path, default=None, help="where to build the trees")
    ap.add_argument("--skip-archive", action="store_true")
    ap.add_argument("--archive", action="store_true",
                    help="only the archive against tar czf (the outputs' folder, not merged)")
    ap.add_argument("--stdlib", action="store_true",
                    help="also archive with Python's zlib instead of zlib-ng")
    ap.add_argument("--quick", action="store_true", help="2 x 300 files + 1 x 2 MB, 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.outputs, args.files, args.big, args.big_mb, args.repeats = 2, 300, 1, 2, 2

    base = Path(tempfile.mkdtemp(prefix="boride-bench-", dir=args.tmp))
    try:
        run(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(args: argparse.Namespace, base: Path) -> None:
    print(f"# {platform.uname().system} {platform.uname().release} {platform.machine()}, "
          f"nproc {os.cpu_count()}, Python {platform.python_version()}, "
          f"temp dir {base} on {fs_type(base)}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    t0 = time.perf_counter()
    info = build_outputs(base, args.outputs, args.files, args.big, args.big_mb, args.overlap)
    print(f"# input: {args.outputs} outputs, {info['files']} files, "
          f"{info['bytes'] / 1e6:.1f} MB ({args.files} small files per output, "
          f"{args.big} x {args.big_mb} MB), {info['shared']} paths in every output; "
          f"built in {time.perf_counter() - t0:.1f} s")
    outs = [base / f"out{o}" for o in range(args.outputs)]
    if args.archive:
        tree = base / "tree"
        tree.mkdir()
        for out in outs:
            out.rename(tree / out.name)
        run_archives(args, base, tree)
        return
    rules = [merge.ResolverRule("concat-md", ("**/*.md",))]
    limits = ([int(x) for x in args.merge_limits.split(",")] if args.merge_limits
              else [parallel.default_limit()])

    # Every timed run writes into a fresh folder and nothing is deleted until the series ends:
    # on ext4 without a journal (like this machine's root file system) the allocation of new
    # inodes skips over every inode deleted in the last 30-35 s, so a run right after
    # deleting the previous 40,000-file result is several times slower, and by a random
    # amount (seen: 2 to 23 s of system time for the same cp -a).
    run_dir = base / "runs"
    run_dir.mkdir()

    def merger(limit: int) -> Callable[[Path], object]:
        return lambda dest: asyncio.run(
            merge.merge(outs, dest, rules, concat_resolver, limit=limit))

    def copier(flag: str) -> Callable[[Path], object]:
        return lambda dest: subprocess.run(
            ["cp", flag, *[f"{o}/." for o in outs], f"{dest}/"], check=True)

    rows: dict[str, tuple[Callable[[Path], object], bool]] = {}  # run, make the folder first
    for limit in limits:
        rows[f"merge ({limit} thread{'s' if limit > 1 else ''})"] = merger(limit), False
    rows["cp -a"] = copier("-a"), True
    rows["cp -r"] = copier("-r"), True
    serial = iter(range(1 << 30))

    def target(make: bool) -> Path:
        dest = run_dir / str(next(serial))
        if make:
            dest.mkdir()
        return dest

    for fn, make in rows.values():  # warm-up
        fn(target(make))
    result = asyncio.run(merge.merge(outs, base / "merged", rules, concat_resolver))
    print(f"# merged tree: {result.files} files, {result.conflicts} conflicts, "
          f"{result.resolved} resolved; cp copies all {info['files']} files (later ones "
          "overwrite earlier ones)")
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, (fn, make) in rows.items():
            times[name].append(timed(partial(fn, target(make)), lambda: None))
    cp_time = statistics.median(times["cp -a"])
    for name in rows:
        print(f"{name:<18} {stats(times[name])}   "
              f"ratio to cp -a {statistics.median(times[name]) / cp_time:.2f}")
    shutil.rmtree(run_dir)

    if not args.skip_archive:
        run_archives(args, base, base / "merged")


#: Python's own zlib where boride.archive uses zlib-ng (the CRCs are the same; zlib has no
#: crc32_combine, so zlib-ng's is taken)
STDLIB = types.SimpleNamespace(**{k: getattr(zlib, k) for k in dir(zlib) if not k.startswith("_")},
                               crc32_combine=zlib_ng.crc32_combine)


def run_archives(args: argparse.Namespace, base: Path, tree: Path) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    codecs: list[tuple[str, object]] = [("", zlib_ng)]
    if args.stdlib:
        codecs.append((" (zlib)", STDLIB))
    names = [f"archive -{level}{label}" for label, _ in codecs for level in levels]
    settings = dict(zip(names, [(level, codec) for _, codec in codecs for level in levels],
                        strict=True))
    names.append("tar czf")
    dests = {name: base / f"{i}.tar.gz" for i, name in enumerate(names)}
    du = subprocess.run(["du", "-sb", str(tree)], capture_output=True, text=True, check=True)
    print(f"# archived tree: {int(du.stdout.split()[0]) / 1e6:.1f} MB (du -sb); zlib-ng "
          f"{zlib_ng.ZLIBNG_VERSION}, zlib {zlib.ZLIB_RUNTIME_VERSION}")

    def archiver(level: int, codec: object, dest: Path) -> Callable[[], object]:
        def go() -> None:
            archive.zlib_ng = codec  # type: ignore[assignment]
            try:
                archive.write_archive(tree, dest, level=level)
            finally:
                archive.zlib_ng = zlib_ng
        return go

    def tar(dest: Path) -> Callable[[], object]:
        return lambda: subprocess.run(["tar", "czf", str(dest), "-C", str(tree), "."],
                                      check=True)

    runs: dict[str, Callable[[], object]] = {
        name: archiver(level, codec, dests[name]) for name, (level, codec) in settings.items()}
    runs["tar czf"] = tar(dests["tar czf"])
    arc_times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    for name, go in runs.items():  # warm-up
        fresh(dests[name])
        go()
    for _ in range(args.repeats):
        for name, go in runs.items():
            before = cpu_seconds()
            arc_times[name].append(timed(go, partial(fresh, dests[name])))
            cpu_times[name].append(cpu_seconds() - before)
    tar_time = statistics.median(arc_times["tar czf"])
    tar_cpu = statistics.median(cpu_times["tar czf"])
    tar_size = dests["tar czf"].stat().st_size
    for name in names:
        size = dests[name].stat().st_size
        cpu = statistics.median(cpu_times[name])
        print(f"{name:<18} {stats(arc_times[name])}  {size / 1e6:6.1f} MB   "
              f"time ratio {statistics.median(arc_times[name]) / tar_time:.2f}, "
              f"size ratio {size / tar_size:.2f}; CPU {cpu:.3f} s, ratio {cpu / tar_cpu:.2f} "
              "(vs tar czf)")


def cpu_seconds() -> float:
    """User + system CPU time of this process (its threads) and of its waited-for children
    (tar and gzip): less disturbed than wall time on a machine shared with other work."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
