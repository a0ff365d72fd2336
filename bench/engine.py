"""Benchmark of the bounded parallel engine (boride/parallel.py) against the usual baseline,
``asyncio.gather`` over every item with an ``asyncio.Semaphore`` bounding concurrency.

Three measurements, printed as markdown tables:

(a) overhead: wall time per no-op item (``async def noop(x): return x``) at 10k, 100k and 1M
    items, median of a few repeats, in this process with GC enabled. The "bare loop" column is
    the floor: awaiting the no-op once per item in a plain ``for`` loop, no concurrency at all.
    The engine's CPU time per item is shown too: on a shared machine it is the steadier figure.
(b) peak memory of the run, each case in a fresh subprocess, two ways:
    * tracemalloc peak: every byte the Python allocator handed out during the run, above what was
      allocated before it started (exact, but tracemalloc slows the run several times);
    * RSS peak delta: the process's peak resident set (ru_maxrss) minus its resident set just
      before the run, in a separate subprocess without tracemalloc (what the OS sees, including
      allocator slack; resolution a few hundred KiB).
    ``stream()`` consumes outcomes as they come; ``run()`` keeps every outcome in its report and
    ``gather`` keeps every task, coroutine and result, so those two grow with the item count by
    design: the target ("flat in item count") is about the engine itself, i.e. ``stream()``.
    ``run()`` is measured by RSS only (tracemalloc at 1M items costs half a minute per case).
(c) makespan / ideal for 64 items that each sleep 100 ms at limit 8 (ideal 8 waves = 0.8 s),
    median of several runs; "one chain" is 8 sequential 100 ms sleeps, the best the event loop's
    timers can do.

Usage:  python bench/engine.py            (full run, a few minutes)
        python bench/engine.py --quick    (smoke run, a few seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boride.parallel import run, stream

LIMIT = 8
TARGET_US_PER_ITEM = 5.0
TARGET_MAKESPAN_RATIO = 1.02
MAKESPAN_ITEMS = 64
MAKESPAN_SLEEP = 0.1


async def noop(x: int) -> int:
    return x


# ------------------------------------------------------------------------------------------------
# The implementations: each runs ``fn`` over ``range(n)`` at ``limit`` and returns nothing.


async def bare_loop(fn: Callable[[int], Awaitable[int]], n: int, limit: int) -> None:
    for x in range(n):
        await fn(x)


async def engine_stream(fn: Callable[[int], Awaitable[int]], n: int, limit: int) -> None:
    async with stream(fn, range(n), limit=limit) as outcomes:
        async for _ in outcomes:
            pass


async def engine_run(fn: Callable[[int], Awaitable[int]], n: int, limit: int) -> None:
    report = await run(fn, range(n), limit=limit)
    assert len(report.outcomes) == n


async def gather_semaphore(fn: Callable[[int], Awaitable[int]], n: int, limit: int) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(x: int) -> int:
        async with sem:
            return await fn(x)

    results = await asyncio.gather(*(one(x) for x in range(n)), return_exceptions=True)
    assert len(results) == n


IMPLS: dict[str, Callable[[Callable[[int], Awaitable[int]], int, int], Awaitable[None]]] = {
    "bare": bare_loop,
    "stream": engine_stream,
    "run": engine_run,
    "gather": gather_semaphore,
}


def timed(impl: str, n: int, limit: int) -> tuple[float, float]:
    """Wall and CPU seconds for one run on a fresh event loop (loop creation excluded)."""

    async def main() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        await IMPLS[impl](noop, n, limit)
        return time.perf_counter() - start, time.process_time() - cpu

    gc.collect()
    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# Memory: one fresh subprocess per case.


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    """Make VmHWM (peak RSS) start again from the current RSS, so imports do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # older kernels: the peak then also covers start-up, never less than it
        pass


def child_memory(mode: str, impl: str, n: int, limit: int) -> None:
    async def main() -> None:
        await IMPLS[impl](noop, n, limit)

    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        asyncio.run(main())
        peak = tracemalloc.get_traced_memory()[1] - before
    else:
        # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would carry the parent's
        # peak into this fresh process.
        _reset_peak_rss()
        before = _proc_status_bytes("VmRSS")
        asyncio.run(main())
        peak = _proc_status_bytes("VmHWM") - before
    print(json.dumps({"peak": max(peak, 0)}))


def measure_memory(mode: str, impl: str, n: int, limit: int) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, impl, str(n), "--limit", str(limit)],
        capture_output=True, text=True, check=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


# ------------------------------------------------------------------------------------------------
# Makespan


async def _sleep_item(x: int) -> int:
    await asyncio.sleep(MAKESPAN_SLEEP)
    return x


def makespan(impl: str, limit: int) -> float:
    async def main() -> float:
        start = time.perf_counter()
        if impl == "chain":
            for x in range(MAKESPAN_ITEMS // limit):
                await _sleep_item(x)
        elif impl == "run":
            report = await run(_sleep_item, range(MAKESPAN_ITEMS), limit=limit)
            assert report.ok
        else:
            await gather_semaphore(_sleep_item, MAKESPAN_ITEMS, limit)
        return time.perf_counter() - start

    gc.collect()
    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# Report


def fmt_bytes(b: float) -> str:
    if b < 1024 * 1024:
        return f"{b / 1024:.1f} KiB"
    return f"{b / 2**20:.1f} MiB"


def machine() -> list[str]:
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=False)
    return [
        f"- machine: `{uname.stdout.strip()}`",
        f"- nproc: {os.cpu_count()} (usable by this process: {len(os.sched_getaffinity(0))})",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- load average at start (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run (small sizes)")
    parser.add_argument("--limit", type=int, default=LIMIT, help="concurrency limit (default 8)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    limit: int = args.limit

    if args.child:
        mode, impl, n = args.child
        child_memory(mode, impl, int(n), limit)
        return

    # Runs of 10k items last milliseconds, so a busy neighbour on the machine can double one of
    # them: smaller sizes get more repeats (the median is taken over them).
    repeats = {1_000: 5, 10_000: 3} if args.quick else {10_000: 21, 100_000: 7, 1_000_000: 3}
    sizes = list(repeats)
    makespan_runs = 1 if args.quick else 9
    started = time.perf_counter()
    lines: list[str] = []

    def say(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    say("### Machine")
    say()
    for line in machine():
        say(line)
    say(f"- command: `python bench/engine.py{' --quick' if args.quick else ''}`")
    say()

    # (a) overhead
    for impl in IMPLS:  # warm-up
        timed(impl, 1_000, limit)
    say(f"### (a) Wall time per no-op item, µs (limit {limit}; median of "
        f"{', '.join(f'{r} runs at {n:,}' for n, r in repeats.items())})")
    say()
    say("| items | bare loop (floor) | engine `stream()` | engine `run()` | gather + Semaphore "
        "| gather / stream | `stream()` CPU time |")
    say("|---:|---:|---:|---:|---:|---:|---:|")
    stream_us: dict[int, float] = {}
    for n in sizes:
        walls: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        cpus: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for _ in range(repeats[n]):  # interleaved: load changes hit every implementation alike
            for impl in IMPLS:
                wall, cpu = timed(impl, n, limit)
                walls[impl].append(wall)
                cpus[impl].append(cpu)
        us = {impl: statistics.median(walls[impl]) / n * 1e6 for impl in IMPLS}
        stream_cpu = statistics.median(cpus["stream"]) / n * 1e6
        stream_us[n] = us["stream"]
        say(f"| {n:,} | {us['bare']:.2f} | {us['stream']:.2f} | {us['run']:.2f} "
            f"| {us['gather']:.2f} | {us['gather'] / us['stream']:.1f}× | {stream_cpu:.2f} |")
    say()

    # (b) memory
    say("### (b) Peak memory of the run (fresh subprocess per case)")
    say()
    say("| items | `stream()` tracemalloc | gather tracemalloc "
        "| `stream()` RSS Δ | `run()` RSS Δ | gather RSS Δ |")
    say("|---:|---:|---:|---:|---:|---:|")
    stream_peak: dict[int, int] = {}
    cases = [("tracemalloc", "stream"), ("tracemalloc", "gather"),
             ("rss", "stream"), ("rss", "run"), ("rss", "gather")]
    for n in sizes:
        peaks = {case: measure_memory(*case, n, limit) for case in cases}
        stream_peak[n] = peaks["tracemalloc", "stream"]
        say(f"| {n:,} | " + " | ".join(fmt_bytes(peaks[case]) for case in cases) + " |")
    say()

    # (c) makespan
    ideal = MAKESPAN_ITEMS / limit * MAKESPAN_SLEEP
    say(f"### (c) Makespan, {MAKESPAN_ITEMS} items × {MAKESPAN_SLEEP * 1000:.0f} ms at limit "
        f"{limit} (ideal {ideal:.2f} s), median of {makespan_runs}")
    say()
    say("| implementation | makespan, s | / ideal |")
    say("|---|---:|---:|")
    ratios: dict[str, float] = {}
    names = {"chain": f"one chain of {MAKESPAN_ITEMS // limit} sleeps (floor)",
             "run": "engine `run()`", "gather": "gather + Semaphore"}
    # Interleaved, so that a change in the machine's load affects every implementation alike.
    spans: dict[str, list[float]] = {impl: [] for impl in names}
    for _ in range(makespan_runs):
        for impl in names:
            spans[impl].append(makespan(impl, limit))
    for impl in names:
        span = statistics.median(spans[impl])
        ratios[impl] = span / ideal
        say(f"| {names[impl]} | {span:.4f} | {ratios[impl]:.4f} |")
    say()

    # targets
    worst_us = max(stream_us.values())
    flat = max(stream_peak.values()) <= 2 * min(stream_peak.values()) + 64 * 1024
    say("### Targets")
    say()
    say(f"- ≤ {TARGET_US_PER_ITEM:g} µs per item (engine `stream()`): worst {worst_us:.2f} µs — "
        f"{'met' if worst_us <= TARGET_US_PER_ITEM else 'NOT met'}")
    say(f"- memory flat in item count (`stream()` tracemalloc peak): "
        f"{', '.join(fmt_bytes(stream_peak[n]) for n in sizes)} — "
        f"{'met' if flat else 'NOT met'}")
    say(f"- makespan within {(TARGET_MAKESPAN_RATIO - 1) * 100:g}% of ideal (engine `run()`): "
        f"{(ratios['run'] - 1) * 100:+.2f}% — "
        f"{'met' if ratios['run'] <= TARGET_MAKESPAN_RATIO else 'NOT met'}")
    say()
    say(f"_Benchmark wall time: {time.perf_counter() - started:.0f} s; load average at the end: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}._")


if __name__ == "__main__":
    main()
