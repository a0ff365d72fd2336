"""Benchmark: one processor called 8 times (8 configs), on the local runtime (issue 13, row 1).

Three builds of the same template, alternated rep after rep, medians compared:

* **one**: a single step (the cost of one call, start to stop);
* **shared**: 8 steps of the same processor, which now share one instance (the Go
  coordinator's one container per processor id);
* **separate**: 8 steps of 8 copies of the same script (8 different runnables, so 8
  instances): what 8 steps of one processor cost before instances were shared.

Target: ``shared`` close to ``one`` (the calls are light; starting an instance is the cost).
Usage: python bench/shared_instances.py [--reps N] [--no-write]. Results go to
docs/benchmarks.md (section "## One instance per distinct component (issue 13)", replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import replace_section  # noqa: E402
from boride.model import load  # noqa: E402
from boride.pipeline import BuildOptions, build  # noqa: E402
from boride.runtime.local import LocalRuntime  # noqa: E402

TITLE = "## One instance per distinct component (issue 13)"
SCRIPT = ROOT / "tests" / "components" / "ok_processor.py"
STEPS = 8


def _pipeline(folder: Path, template: Path, scripts: list[Path]) -> Path:
    data: dict[str, Any] = {
        "template": str(template), "parallelism": os.cpu_count() or 2,
        "processors": [{"name": f"p{i}", "command": [sys.executable, str(script)],
                        "config": {"files": {f"own-{i}.txt": str(i)}},
                        "files": [{"glob": "**/*.txt", "exclude": ["x"], "type": "template"}]}
                       for i, script in enumerate(scripts)]}
    path = folder / f"pipeline-{len(scripts)}-{len(set(scripts))}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def _time(pipeline: Path, work: Path) -> float:
    start = time.perf_counter()
    result = await build(load(pipeline), LocalRuntime(), BuildOptions(work_root=work))
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"build failed: {result.errors}")
    return elapsed


async def measure(reps: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="boride-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # components run as nobody when boride runs as root
        template = base / "template"
        template.mkdir()
        for i in range(20):
            (template / f"f{i}.txt").write_text(f"file {i}\n")
        copies = []
        for i in range(STEPS):
            copy = base / f"copy{i}" / "ok_processor.py"
            copy.parent.mkdir()
            shutil.copy(SCRIPT, copy)
            copies.append(copy)
        arms = {"one": _pipeline(base, template, [SCRIPT]),
                "shared": _pipeline(base, template, [SCRIPT] * STEPS),
                "separate": _pipeline(base, template, copies)}
        times: dict[str, list[float]] = {k: [] for k in arms}
        for path in arms.values():  # warm-up, not counted
            await _time(path, base / "work")
        for rep in range(reps):
            order = list(arms)[rep % 3:] + list(arms)[:rep % 3]
            for name in order:
                times[name].append(await _time(arms[name], base / "work"))
                print(f"rep {rep + 1}/{reps} {name}: {times[name][-1]:.2f}s", flush=True)
        return times


def report(times: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    load1 = os.getloadavg()
    lines = [
        TITLE, "",
        f"`python bench/shared_instances.py` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{len(times['one'])} alternated reps per arm, medians). Machine: {os.cpu_count()} "
        f"cores, {platform.platform()}, Python {platform.python_version()}; load average "
        f"{load1[0]:.2f} at the end. Local runtime, a 20-file template, `ok_processor` "
        "(cyanprintsdk) writing one file per step.", "",
        "| build | median | / one call |", "|---|---|---|",
        f"| one step | {med['one']:.2f} s | 1.00 |",
        f"| 8 steps of one processor, **one shared instance** (now) | {med['shared']:.2f} s | "
        f"{med['shared'] / med['one']:.2f} |",
        f"| 8 steps, 8 instances (8 copies of the script: what 8 steps cost before) | "
        f"{med['separate']:.2f} s | {med['separate'] / med['one']:.2f} |", "",
        f"Sharing makes 8 calls of one processor {med['separate'] / med['shared']:.2f}x faster "
        "than 8 instances of it, in the same run.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    section = report(asyncio.run(measure(args.reps)))
    print(section)
    if not args.no_write:
        replace_section(TITLE, section)


if __name__ == "__main__":
    main()
