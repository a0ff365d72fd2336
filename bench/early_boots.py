"""Resolvers and plugins booting ahead of need (issue 23, part 3): the bundled example's cold
build (``boride run examples/pipeline.yaml --out DIR --force --no-cache``, the README's quick
start without the cache), this checkout against an older one, alternated in one run.

Each run is a fresh ``python -m boride`` process; its wall time and its ``--json`` stage times
are kept, and the medians (min-max) printed as a Markdown table.

Run: ``python bench/early_boots.py --old /tmp/early-base [--runs 7] [--parallelism N]``
(``--old``: a checkout of the code to compare with, e.g. ``git worktree add --detach
/tmp/early-base <commit>``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("start", "process", "merge", "plugins", "output")


def one(code: Path, out: Path, parallelism: int | None) -> dict[str, float]:
    """One cold build of the example with the boride of ``code``: wall time and stages."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    extra = ["--parallelism", str(parallelism)] if parallelism else []
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "boride", "run", str(code / "examples" / "pipeline.yaml"),
         "--out", str(out), "--force", "--no-cache", "--json", *extra],
        env=env, cwd=code, capture_output=True, text=True, check=False)  # (-m: cwd first)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"the build failed ({code}): {proc.stderr.strip()[-500:]}")
    data = json.loads(proc.stdout)
    return {"wall": wall, **{s: float(data["stages"].get(s, 0.0)) for s in STAGES}}


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--parallelism", type=int, default=None)
    args = parser.parse_args()
    codes = {"old": args.old.resolve(), "new": ROOT}
    times: dict[str, list[dict[str, float]]] = {k: [] for k in codes}
    with tempfile.TemporaryDirectory(prefix="boride-early-") as tmp:
        for _ in range(args.runs):
            for label, code in codes.items():  # alternated: the same load for both
                times[label].append(one(code, Path(tmp) / label, args.parallelism))
    print("| seconds, median (min-max) | " + " | ".join(codes) + " |")
    print("|---|" + "---|" * len(codes))
    for key in ("wall", *STAGES):
        print(f"| {key} | " + " | ".join(cell([t[key] for t in times[label]])
                                         for label in codes) + " |")


if __name__ == "__main__":
    main()
