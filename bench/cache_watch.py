"""Benchmark: the cache and the watch loop (issue 14), on the local runtime.

Two pipelines: the bundled **example** (3 processors, a resolver, a plugin), and **work**: 6
copies of ``ok_processor`` that each spend 1 s in their call (``delay``), standing for
processors that do real work.

* **Builds** (one-shot ``build()``, alternated rep after rep, medians): without the cache (today's
  build), the first build with an empty cache (every output stored), and an unchanged rebuild
  with the cache full (every processor a hit: nothing called, nothing started).
* **Watch**: the loop in this process (:func:`boride.watch.watch`); each rep edits a template file
  (every processor's input changes: each is called, on its running instance) and, for the
  example, one step's config (only that step is called); the time from the write to the new
  result in ``--out``.

Usage: python bench/cache_watch.py [--reps N] [--no-write]. Results go to docs/benchmarks.md
(section "## The cache and the watch loop (issue 14)", replaced).
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
from boride.cache import Cache  # noqa: E402
from boride.model import load  # noqa: E402
from boride.pipeline import BuildOptions, build  # noqa: E402
from boride.runtime.local import LocalRuntime  # noqa: E402
from boride.watch import Round, watch  # noqa: E402

TITLE = "## The cache and the watch loop (issue 14)"
SCRIPT = ROOT / "tests" / "components" / "ok_processor.py"
WORK_PROCESSORS, WORK_DELAY = 6, 1.0


def make_projects(base: Path) -> dict[str, Path]:
    shutil.copytree(ROOT / "examples", base / "example",
                    ignore=shutil.ignore_patterns("expected", "__pycache__"))
    work = base / "work-pipeline"
    (work / "template" / "src").mkdir(parents=True)
    for i in range(20):
        (work / "template" / "src" / f"f{i}.txt").write_text(f"file {i}\n")
    shutil.copy(SCRIPT, work / "proc.py")
    data: dict[str, Any] = {
        "template": "template", "parallelism": WORK_PROCESSORS,
        "processors": [{"name": f"p{i}", "command": [sys.executable, "proc.py"],
                        "config": {"delay": WORK_DELAY, "files": {f"own-{i}.txt": str(i)}},
                        "files": [{"glob": "**/*.txt", "exclude": ["x"], "type": "template"}]}
                       for i in range(WORK_PROCESSORS)]}
    (work / "pipeline.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return {"example": base / "example" / "pipeline.yaml", "work": work / "pipeline.yaml"}


async def one_build(pipeline: Path, base: Path, cache_dir: Path | None) -> float:
    out = base / "results" / pipeline.parent.name
    options = BuildOptions(work_root=base / "areas", out=out, replace=True,
                           cache=Cache(cache_dir) if cache_dir else None,
                           cache_skip=(pipeline,))
    start = time.perf_counter()
    result = await build(load(pipeline), LocalRuntime(), options)
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"build failed: {result.errors}")
    return elapsed


async def builds(projects: dict[str, Path], base: Path, reps: int) -> dict[str, dict[str, list[
        float]]]:
    times: dict[str, dict[str, list[float]]] = {}
    for name, pipeline in projects.items():
        arms: dict[str, list[float]] = {"no cache": [], "first (empty cache)": [],
                                        "unchanged (cache full)": []}
        await one_build(pipeline, base, None)  # warm-up
        for rep in range(reps):
            fresh = base / "caches" / f"{name}-{rep}"
            order = list(arms)[rep % 3:] + list(arms)[:rep % 3]
            for arm in order:
                if arm == "no cache":
                    t = await one_build(pipeline, base, None)
                elif arm == "first (empty cache)":
                    shutil.rmtree(fresh, ignore_errors=True)
                    t = await one_build(pipeline, base, fresh)
                else:
                    if not fresh.exists():
                        await one_build(pipeline, base, fresh)
                    t = await one_build(pipeline, base, fresh)
                arms[arm].append(t)
                print(f"{name} rep {rep + 1}/{reps} {arm}: {t:.3f}s", flush=True)
        times[name] = arms
    return times


async def edits(pipeline: Path, base: Path, reps: int, *, config: bool) -> dict[str, list[float]]:
    """Edit-to-result times of the watch loop: template edits (and config edits)."""
    rounds: asyncio.Queue[tuple[Round, float]] = asyncio.Queue()
    out = base / "results" / f"watch-{pipeline.parent.name}"
    options = BuildOptions(work_root=base / "areas", out=out, replace=True,
                           cache=Cache(base / "caches" / f"watch-{pipeline.parent.name}"),
                           cache_skip=(pipeline,))
    runtime = LocalRuntime()
    task = asyncio.ensure_future(watch(pipeline, runtime, options,
                                       lambda r: rounds.put_nowait((r, time.perf_counter()))))
    times: dict[str, list[float]] = {"template edit": [], "config edit": []}
    try:
        first, _ = await rounds.get()
        assert first.ok, first.result
        await asyncio.sleep(1.0)  # the components the cache spared start in the background
        template = load(pipeline).template_dir
        target = next(p for p in sorted(template.rglob("*.txt")))
        original = pipeline.read_text()
        for rep in range(reps):
            kinds = ["template edit", "config edit"] if config else ["template edit"]
            for kind in kinds:
                start = time.perf_counter()
                if kind == "template edit":
                    with open(target, "a") as f:
                        f.write(f"edit {rep}\n")
                else:
                    pipeline.write_text(original.replace("{name: cyan}",
                                                         f"{{name: cyan{rep}}}"))
                r, done = await rounds.get()
                if not r.ok:
                    raise SystemExit(f"watch build failed: {r.result and r.result.errors}")
                times[kind].append(done - start)
                print(f"watch {pipeline.parent.name} {kind} {rep + 1}/{reps}: "
                      f"{done - start:.3f}s", flush=True)
                await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runtime.aclose()
    return {k: v for k, v in times.items() if v}


async def measure(reps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="boride-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # components run as nobody when boride runs as root
        projects = make_projects(base)
        times = await builds(projects, base, reps)
        watched = {"example": await edits(projects["example"], base, reps, config=True),
                   "work": await edits(projects["work"], base, reps, config=False)}
        return times, watched


def report(times: dict[str, Any], watched: dict[str, Any], reps: int) -> str:
    load1 = os.getloadavg()
    lines = [
        TITLE, "",
        f"`python bench/cache_watch.py --reps {reps}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"medians of {reps} alternated reps). Machine: {os.cpu_count()} cores, "
        f"{platform.platform()}, Python {platform.python_version()}; load average "
        f"{load1[0]:.2f} at the end (the machine is shared). Local runtime. *example*: the "
        f"bundled example; *work*: {WORK_PROCESSORS} processors that each spend "
        f"{WORK_DELAY:g} s in their call.", "",
        "| pipeline | build | median | / no cache |", "|---|---|---|---|"]
    for name, arms in times.items():
        base = statistics.median(arms["no cache"])
        for arm, values in arms.items():
            med = statistics.median(values)
            lines.append(f"| {name} | {arm} | {med:.3f} s | {med / base:.2f} |")
    lines += ["", "`--watch`, from the write of an edit to the new result in `--out` "
              "(components running; cache on):", "",
              "| pipeline | edit | median | min | max |", "|---|---|---|---|---|"]
    for name, kinds in watched.items():
        for kind, values in kinds.items():
            lines.append(f"| {name} | {kind} | {statistics.median(values):.3f} s | "
                         f"{min(values):.3f} s | {max(values):.3f} s |")
    work = watched["work"]["template edit"]
    lines += ["", f"The *work* pipeline's processors spend {WORK_DELAY:g} s each (in parallel): "
              f"an edit's result came {statistics.median(work) - WORK_DELAY:.3f} s (median) "
              "after that work.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    times, watched = asyncio.run(measure(args.reps))
    section = report(times, watched, args.reps)
    print(section)
    if not args.no_write:
        replace_section(TITLE, section)


if __name__ == "__main__":
    main()
