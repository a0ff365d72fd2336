"""Readiness benchmark: boride's parallel fast-backoff polling vs the Go coordinator's policy.

Starts N real cyanprintsdk processors on the local runtime and measures the time from "start all"
to "all ready", side by side in one run:

* boride: every component polled at once, backing off from 2 ms to 200 ms (boride.health);
* seed:   the Go coordinator's way: components polled one after another, once a second.

Prints medians of several repeats and the ratio. Run: ``python bench/readiness.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from boride import health, parallel
from boride.runtime.base import Instance
from boride.runtime.local import LocalRuntime
from boride.types import Component, Kind

ROOT = Path(__file__).resolve().parent.parent
PROCESSOR = ROOT / "tests" / "components" / "ok_processor.py"


async def seed_policy(instances: list[Instance]) -> None:
    """One component after another, one try a second (up to 60 tries)."""
    for inst in instances:
        for _ in range(60):
            try:
                if (await inst.client.get("/", timeout=1.0)).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1.0)


async def boride_policy(instances: list[Instance]) -> None:
    report = await parallel.run(health.wait_ready, instances, limit=len(instances))
    report.raise_for_failures()


async def once(n: int, policy: str) -> float:
    runtime = LocalRuntime()
    with tempfile.TemporaryDirectory(prefix="boride-bench-") as tmp:
        template = Path(tmp, "template")
        template.mkdir()
        workspace = await runtime.open_workspace("bench", template, Path(tmp, "root"))
        comps = [Component(f"p{i}", Kind.PROCESSOR, (sys.executable, str(PROCESSOR)), cwd=ROOT)
                 for i in range(n)]
        start = time.perf_counter()
        started = await parallel.run(lambda c: runtime.start(workspace, c), comps, limit=n)
        instances = [v for v in started.values if v is not None]
        try:
            await (boride_policy if policy == "boride" else seed_policy)(instances)
            return time.perf_counter() - start
        finally:
            await parallel.run(runtime.stop, instances, limit=n)
            await runtime.close_workspace(workspace)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = parser.parse_args()
    sizes, repeats = ([1, 4], 2) if args.quick else ([1, 4, 8], 5)
    print("| components | boride median (s) | seed policy median (s) | seed / boride |")
    print("|---:|---:|---:|---:|")
    for n in sizes:
        times: dict[str, list[float]] = {"boride": [], "seed": []}
        for _ in range(repeats):
            for policy in ("boride", "seed"):  # interleaved, so both see the same machine load
                times[policy].append(await once(n, policy))
        ours, seed = statistics.median(times["boride"]), statistics.median(times["seed"])
        print(f"| {n} | {ours:.3f} | {seed:.3f} | {seed / ours:.2f}x |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
