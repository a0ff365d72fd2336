"""Benchmark: merge + folder output by rename (issue 13, part 3), against copying, same run.

8 processor outputs of 5,000 files each (half in a folder of the processor's own, half in
folders every output has, so that paths conflict and the last output wins), merged into one
tree and written to an output folder, all on one file system. Three arms, alternated rep after
rep, each on fresh copies of the same outputs (made untimed with ``cp -a``):

* **cp -a**: ``cp -a`` of the 8 outputs (the issue's yardstick);
* **copy**: ``merge(move=False)`` + ``output.write_folder`` (what boride did before);
* **rename**: ``merge(move=True)`` + ``output.move_folder`` (now).

Target: rename at most 0.3x ``cp -a``. Usage: python bench/merge_rename.py [--reps N]
[--files N] [--no-write]. Results go to docs/benchmarks.md (section "## Merge and --out by
rename (issue 13, part 3)", replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import replace_section  # noqa: E402
from boride import output  # noqa: E402
from boride.merge import Conflict, ResolverRule, merge  # noqa: E402

TITLE = "## Merge and --out by rename (issue 13, part 3)"
OUTPUTS = 8
PER_DIR = 100


async def never(rule: ResolverRule, conflict: Conflict) -> tuple[str, bytes]:
    raise AssertionError("no resolver in this benchmark")


def make_outputs(base: Path, files: int) -> list[Path]:
    outs = []
    for i in range(OUTPUTS):
        out = base / f"out{i}"
        for n in range(files):
            own = n % 2 == 0
            folder = out / (f"p{i}" if own else "src") / f"d{n // (2 * PER_DIR)}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{n}.txt").write_bytes(f"processor {i} file {n}\n".encode() * 8)
        outs.append(out)
    return outs


def fresh(pristine: Path, work: Path) -> list[Path]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    subprocess.run(["cp", "-a", *[str(p) for p in sorted(pristine.iterdir())], str(work)],
                   check=True)
    return [work / f"out{i}" for i in range(OUTPUTS)]


def run_cp(outs: list[Path], dest: Path) -> float:
    dest.mkdir()
    start = time.perf_counter()
    subprocess.run(["cp", "-a", *map(str, outs), str(dest)], check=True)
    return time.perf_counter() - start


def run_boride(outs: list[Path], area: Path, dest: Path, move: bool) -> float:
    start = time.perf_counter()
    target = area / "merged"
    asyncio.run(merge(outs, target, [], never, within=area, move=move))
    if move:
        output.move_folder(target, dest, replace=False, within=area)
    else:
        output.write_folder(target, dest, replace=False, within=area)
    return time.perf_counter() - start


def measure(reps: int, files: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="boride-bench-", dir=ROOT.parent) as tmp:
        base = Path(tmp)
        pristine = base / "pristine"
        pristine.mkdir()
        make_outputs(pristine, files)
        times: dict[str, list[float]] = {"cp -a": [], "copy": [], "rename": []}
        for rep in range(reps + 1):  # the first rep warms the caches, not counted
            order = list(times)[rep % 3:] + list(times)[:rep % 3]
            for arm in order:
                area = base / "area"
                outs = fresh(pristine, area)
                dest = base / "dest"
                shutil.rmtree(dest, ignore_errors=True)
                subprocess.run(["sync"], check=True)
                if arm == "cp -a":
                    t = run_cp(outs, dest)
                else:
                    t = run_boride(outs, area, dest, move=arm == "rename")
                if rep:
                    times[arm].append(t)
                print(f"rep {rep}/{reps} {arm}: {t:.3f}s", flush=True)
        return times


def report(times: dict[str, list[float]], files: int) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(a / b for a, b in zip(v, times["cp -a"], strict=True))
             for k, v in times.items()}
    load1 = os.getloadavg()
    lines = [
        TITLE, "",
        f"`python bench/merge_rename.py --reps {len(times['cp -a'])} --files {files}` "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC; medians of alternated reps, each on fresh "
        f"copies). Machine: {os.cpu_count()} cores, {platform.platform()}, Python "
        f"{platform.python_version()}; load average {load1[0]:.2f} at the end (shared). "
        f"{OUTPUTS} outputs x {files} files (half in the output's own folder, half in "
        "folders all outputs share: conflicts, the last output wins), merged and written to "
        "a folder on the same file system.", "",
        "| arm | median | / cp -a (median of per-rep ratios) |", "|---|---|---|"]
    for arm, label in (("cp -a", "`cp -a` of the outputs"),
                       ("copy", "merge by copy + `--out` by copy (before)"),
                       ("rename", "**merge by rename + `--out` by rename (now)**")):
        lines.append(f"| {label} | {med[arm]:.3f} s | {ratio[arm]:.2f} |")
    lines += ["", f"Renaming is {med['copy'] / med['rename']:.1f}x faster than copying, same "
              f"run (target: at most 0.3x `cp -a`: {ratio['rename']:.2f}x).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    section = report(measure(args.reps, args.files), args.files)
    print(section)
    if not args.no_write:
        replace_section(TITLE, section)


if __name__ == "__main__":
    main()
