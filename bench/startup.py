"""Benchmark: boride's own start-up (issue 23), against ``python -c pass``, same run.

Each case is one fresh interpreter, timed from spawn to exit, the cases taking turns (one
untimed warm-up of each first, so the bytecode caches are written); medians of ``--repeats``.

* ``python -c pass``: the floor;
* ``boride --version``, ``boride --help``, ``boride run --help``;
* ``run: pipeline loaded``: ``boride run examples/pipeline.yaml --out DIR`` with ``DIR`` not
  empty: the command line, the pipeline file read and validated, then exit 2 (the folder
  check comes right after the pipeline is loaded): what a run pays before anything else;
* ``run: imports before components``: ``import boride.cli`` plus what a local build imports
  before its first component starts (the model, the pipeline, the local runtime, rich);
* ``python -c "import cyanprintsdk.main"``: one component's SDK import, for scale.

With ``--tree PATH`` (repeatable) each boride case runs once per tree (``PYTHONPATH=PATH``),
e.g. ``--tree . --tree ../main`` for this tree against another, in the same run.

    .venv/bin/python bench/startup.py                  # 21 repeats, this tree
    .venv/bin/python bench/startup.py --tree . --tree /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("import boride.cli, boride.model, boride.pipeline, boride.runtime.local, "
         "rich.console, rich.live, rich.table")


def cases(example: Path, busy: Path) -> dict[str, list[str]]:
    boride = [sys.executable, "-m", "boride"]
    return {
        "boride --version": [*boride, "--version"],
        "boride --help": [*boride, "--help"],
        "boride run --help": [*boride, "run", "--help"],
        "run: pipeline loaded": [*boride, "run", str(example), "--out", str(busy)],
        "run: imports before components": [sys.executable, "-c", HEAVY],
    }


def once(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """One run's wall time; in ``cwd``, not a checkout (``-m``/``-c`` put it first on the
    path, before ``PYTHONPATH``)."""
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--tree", action="append", type=Path,
                    help="a boride checkout to time (repeat; default: this one)")
    args = ap.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    print(f"# {platform.uname().system} {platform.uname().release} {platform.machine()}, "
          f"nproc {os.cpu_count()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {args.repeats} repeats, medians")
    with tempfile.TemporaryDirectory(prefix="boride-startup-") as tmp:
        busy = Path(tmp) / "busy"
        busy.mkdir()
        (busy / "file").write_text("not empty")
        runs: dict[str, tuple[list[str], dict[str, str]]] = {}
        base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        runs["python -c pass"] = [sys.executable, "-c", "pass"], base_env
        for tree in trees:
            env = {**base_env, "PYTHONPATH": str(tree)}
            label = f" [{tree.name}]" if len(trees) > 1 else ""
            for name, argv in cases(tree / "examples" / "pipeline.yaml", busy).items():
                runs[name + label] = argv, env
        runs["import cyanprintsdk.main"] = ([sys.executable, "-c", "import cyanprintsdk.main"],
                                            base_env)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for argv, env in runs.values():  # warm-up
            once(argv, env, Path(tmp))
        for _ in range(args.repeats):
            for name, (argv, env) in runs.items():
                times[name].append(once(argv, env, Path(tmp)))
    floor = statistics.median(times["python -c pass"])
    for name, xs in times.items():
        med = statistics.median(xs)
        print(f"{name:<44} median {med * 1000:7.1f} ms  (min {min(xs) * 1000:.1f}, max "
              f"{max(xs) * 1000:.1f})  +{(med - floor) * 1000:6.1f} ms over python -c pass")


if __name__ == "__main__":
    main()
