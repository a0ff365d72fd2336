"""Component lifetimes (issue 13): boride's one-shot build (one instance per distinct
component; each started shortly before its first call, stopped right after its last, at most
2 x parallelism alive) against the all-at-once start (every component started before the first
call, alive until the build ends: ``Build(on_demand=False)``, main's one-shot behaviour), side by
side in one run, on the local runtime with real cyanprintsdk processors.

Each build runs in a child process of its own, which reports its makespan, boride's own peak
RSS (``ru_maxrss``) and the most components alive at once. Rows:

* ``distinct N``: N distinct processors (each its own copy of ok_processor.py), parallelism P;
* ``one x 8``: one processor named by 8 steps with different configs, against 8 copies of it
  (what 8 names of one component cost before part 1) and against a single step.

Run: ``python bench/lifetimes.py [--quick] [--big N]`` (``--big``: also N distinct processors,
boride's RSS, and the all-at-once start of N only with ``--big-old``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from boride.config import Limits
from boride.model import Pipeline
from boride.pipeline import Build, BuildOptions, BuildResult, Plan, Session, build
from boride.runtime.base import Instance, Workspace
from boride.runtime.local import LocalRuntime
from boride.types import Component

ROOT = Path(__file__).resolve().parent.parent
PROCESSOR = ROOT / "tests" / "components" / "ok_processor.py"


class Live(LocalRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.alive = self.most = 0

    async def start(self, workspace: Workspace, component: Component) -> Instance:
        self.alive += 1
        self.most = max(self.most, self.alive)
        return await super().start(workspace, component)

    async def stop(self, instance: Instance) -> None:
        try:
            await super().stop(instance)
        finally:
            self.alive -= 1


def pipeline(tmp: Path, n: int, *, copies: bool, parallelism: int) -> Pipeline:
    template = tmp / "template"
    (template / "src").mkdir(parents=True)
    (template / "src" / "a.txt").write_text("alpha\n")
    commands = []
    for i in range(n):
        script = PROCESSOR
        if copies:
            script = tmp / f"p{i}.py"
            shutil.copy(PROCESSOR, script)
        commands.append([sys.executable, str(script)])
    return Pipeline.model_validate({
        "template": str(template), "parallelism": parallelism, "base": tmp,
        "processors": [{"name": f"p{i}", "command": c,
                        "config": {"suffix": f"<{i}>", "delay": 0.1,
                                   "files": {f"out/{i}.txt": str(i)}}}
                       for i, c in enumerate(commands)]})


async def all_at_once(plan: Plan, runtime: Live, options: BuildOptions) -> BuildResult:
    session = Session(runtime, work_root=options.work_root)
    try:
        await session.open(plan.template)
        return await Build(plan, session, options, on_demand=False).run()
    finally:
        await session.close()


async def child(mode: str, n: int, copies: bool, parallelism: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="boride-bench-") as tmp:
        Path(tmp).chmod(0o755)  # as root, components run as nobody, who must enter it
        p = pipeline(Path(tmp), n, copies=copies, parallelism=parallelism)
        runtime = Live()
        options = BuildOptions(limits=Limits(parallelism=parallelism),
                               work_root=Path(tmp, "work"), out=Path(tmp, "out"))
        start = time.perf_counter()
        if mode == "old":
            result = await all_at_once(Plan.from_pipeline(p), runtime, options)
        else:
            result = await build(p, runtime, options)
        seconds = time.perf_counter() - start
        await runtime.aclose()
    if not result.ok:
        raise SystemExit(f"build failed: {result.errors}")
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "most_alive": runtime.most}


def spawn(mode: str, n: int, copies: bool, parallelism: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(n), str(int(copies)),
                          str(parallelism)], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.splitlines()[-1]))


def row(label: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    for mode, rs in runs.items():
        med = statistics.median(r["seconds"] for r in rs)
        rss = statistics.median(r["rss_mb"] for r in rs)
        most = max(r["most_alive"] for r in rs)
        secs = ", ".join(f"{r['seconds']:.2f}" for r in rs)
        print(f"| {label} | {mode} | {med:.2f} s ({secs}) | {rss:.0f} MB | {most} |", flush=True)


def compare(label: str, cases: dict[str, tuple[str, int, bool]], parallelism: int,
            repeats: int) -> None:
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
    for _ in range(repeats):  # alternately, so that the machine's load hits all alike
        for k, (mode, n, copies) in cases.items():
            runs[k].append(spawn(mode, n, copies, parallelism))
    row(label, runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=4, metavar=("MODE", "N", "COPIES", "P"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--big", type=int, default=0)
    ap.add_argument("--big-old", action="store_true")
    args = ap.parse_args()
    if args.child:
        mode, n, copies, p = args.child
        print(json.dumps(asyncio.run(child(mode, int(n), copies == "1", int(p)))))
        return
    repeats = 2 if args.quick else 5
    print("| case | start | makespan, median (each) | boride RSS | most alive |")
    print("|---|---|---|---|---|")
    compare("distinct 40, parallelism 2", {"all at once": ("old", 40, True),
                                            "on demand": ("new", 40, True)}, 2, repeats)
    compare("one x 8, parallelism 8", {"8 copies, all at once": ("old", 8, True),
                                       "one instance, 8 steps": ("new", 8, False),
                                       "a single step": ("new", 1, False)}, 8, repeats)
    if args.big:
        cases = {"on demand": ("new", args.big, True)}
        if args.big_old:
            cases["all at once"] = ("old", args.big, True)
        compare(f"distinct {args.big}, parallelism 2", cases, 2, 1)


if __name__ == "__main__":
    main()
