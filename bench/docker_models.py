"""Benchmark of the two Docker storage models, in one run: engine volumes + a helper container
(issue 11) against host folders bind-mounted into the components (before it).

Each model runs in a subprocess of its own worktree's venv, so each imports its own boride
(``--old ROOT`` and ``--new ROOT``: worktrees with ``make setup`` done; the new one needs
``boride/serve:latest`` built from its tree: ``python docker/serve_image.py`` there). The two
drivers and the raw engine floor take turns, rep after rep, the order rotated each rep:

* **floor**: 8 raw containers of the processor image, created, started, polled (``GET /``
  every 20 ms) and removed in parallel through the engine API (as ``bench/docker_build.py``);
* **cold**: ``boride.pipeline.build`` of the 8-processor pipeline of ``bench/docker_build.py``
  (parallelism 8), from nothing running to everything removed; the new model's pieces
  (pre-clean, volumes, template ``put_archive``, helper create/start, helper readiness, the
  session's removal) are timed by wrapping boride's functions (a ``perf_counter`` each);
* **open**: ``Session.open`` of the same template then ``Session.close`` with no component
  (new: the helper's readiness waited for as well), the model's fixed cost per session;
* **warm**: in a session opened once with its 8 components started (the HTTP server's case):
  ``Build(plan, session, BuildOptions()).run()``, the result streamed as tar.gz (new:
  ``await build.stream()``; old: the ``build.stream()`` iterator), ``build.discard()``;
* **example** (``--example``): ``examples/pipeline.yaml`` cold with ``out`` to a fresh folder.

Results: ``docs/docker_models.json`` and the section "## Docker: engine volumes vs bind mounts
(issue 11)" of ``docs/benchmarks.md`` (replaced), unless ``--no-write``.

Usage: python bench/docker_models.py --old ../wt-old [--new .] [--reps N] [--example]
                                      [--helper-image TAG]
                                      [--no-write | --replot]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
DOCS = ROOT / "docs"
DATA = DOCS / "docker_models.json"
REPORT = DOCS / "benchmarks.md"
TITLE = "## Docker: engine volumes vs bind mounts (issue 11)"
IMAGE = "local/boride-test-ok-processor:1"
NETWORK = "cyanprint"
SERVE_IMAGE = "boride/serve:latest"
HELPER_IMAGE_ENV = "BORIDE_HELPER_IMAGE"  # boride.runtime.docker.helper.IMAGE_ENV
N = 8
PORT = 5551


# == driver: runs in a worktree's own venv, imports that worktree's boride ==================
class Timers:
    """Wall time of chosen boride functions, per call, for the current rep."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.calls: dict[str, list[tuple[float, float]]] = {}

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.calls = {}

    def note(self, name: str, start: float, end: float) -> None:
        self.calls.setdefault(name, []).append((start - self.t0, end - self.t0))

    def wrap(self, owner: Any, attr: str, name: str | None = None) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return
        label = name or attr
        timers = self
        if asyncio.iscoroutinefunction(fn):
            async def awrapped(*a: Any, **kw: Any) -> Any:
                s = time.perf_counter()
                try:
                    return await fn(*a, **kw)
                finally:
                    timers.note(label, s, time.perf_counter())
            setattr(owner, attr, awrapped)
        else:
            def wrapped(*a: Any, **kw: Any) -> Any:
                s = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    timers.note(label, s, time.perf_counter())
            setattr(owner, attr, wrapped)

    def summary(self) -> dict[str, Any]:
        return {k: [[round(s, 4), round(e, 4)] for s, e in v] for k, v in self.calls.items()}


class Driver:
    def __init__(self, root: Path, pipeline_file: Path, work: Path) -> None:
        sys.path.insert(0, str(root))
        import boride
        from boride.runtime.docker import runtime as docker_runtime
        from boride.runtime.docker import volumes

        if not Path(boride.__file__).resolve().is_relative_to(root.resolve()):
            raise SystemExit(f"imported {boride.__file__}, not boride of {root}")
        self.root = root
        self.pipeline_file = pipeline_file
        self.work = work
        self.timers = Timers()
        rt = docker_runtime.DockerRuntime
        for attr in ("open_workspace", "close_workspace", "_remove_session"):
            self.timers.wrap(rt, attr)
        self.timers.wrap(volumes, "create_volumes")
        try:
            from boride.runtime.docker import helper
        except ImportError:  # the old model has no helper
            self.new = False
        else:
            self.new = True
            self.timers.wrap(helper, "create_helper")
            self.timers.wrap(helper, "template_chunks", "template_scan")
            area = helper.HelperArea
            for attr in ("_wait_ready", "names", "new_dir", "merge", "archive", "remove_new"):
                self.timers.wrap(area, attr, f"helper.{attr.lstrip('_')}")
        self.warm_session: Any = None
        self.warm_runtime: Any = None

    def runtime(self) -> Any:
        from boride.runtime.docker import DockerRuntime

        return DockerRuntime()

    def plan(self, pipeline_file: Path) -> Any:
        from boride.model import load
        from boride.pipeline import Plan

        return Plan.from_pipeline(load(pipeline_file))

    async def cold(self, pipeline_file: Path, out: Path | None = None) -> dict[str, Any]:
        from boride.config import Limits
        from boride.model import load
        from boride.pipeline import BuildOptions, build

        runtime = self.runtime()
        self.timers.reset()
        try:
            t0 = time.perf_counter()
            res = await build(load(pipeline_file), runtime, BuildOptions(
                limits=Limits(parallelism=N), work_root=self.work, out=out))
            total = time.perf_counter() - t0
        finally:
            await runtime.aclose()
        if not res.ok:
            raise SystemExit(f"build failed: {res.errors}")
        return {"total": total, "stages": dict(res.stages), "calls": self.timers.summary()}

    async def open_close(self) -> dict[str, Any]:
        import uuid

        from boride.pipeline import Session

        runtime = self.runtime()
        self.timers.reset()
        try:
            session = Session(runtime, uuid.uuid4().hex, work_root=self.work)
            t0 = time.perf_counter()
            await session.open(self.plan(self.pipeline_file).template)
            t_open = time.perf_counter()
            if self.new:
                workspace: Any = session.workspace
                area: Any = workspace.area
                await area._up()
            t_ready = time.perf_counter()
            await session.close()
            t_end = time.perf_counter()
        finally:
            await runtime.aclose()
        return {"open": t_open - t0, "ready": t_ready - t_open, "close": t_end - t_ready,
                "total": t_end - t0, "calls": self.timers.summary()}

    async def warm_open(self) -> dict[str, Any]:
        import uuid

        from boride.pipeline import Session

        plan = self.plan(self.pipeline_file)
        self.warm_runtime = self.runtime()
        t0 = time.perf_counter()
        self.warm_session = await Session.opened(self.warm_runtime, uuid.uuid4().hex,
                                                 plan.template, work_root=self.work)
        await self.warm_session.start([s.component for s in plan.steps], limit=N)
        return {"total": time.perf_counter() - t0}

    async def warm(self) -> dict[str, Any]:
        from boride.pipeline import Build, BuildOptions

        plan = self.plan(self.pipeline_file)
        self.timers.reset()
        t0 = time.perf_counter()
        b = Build(plan, self.warm_session, BuildOptions())
        res = await b.run()
        t_run = time.perf_counter()
        if not res.ok:
            raise SystemExit(f"warm build failed: {res.errors}")
        size = 0
        if self.new:
            async for chunk in await b.stream():
                size += len(chunk)
        else:
            old_build: Any = b  # the old Build.stream is a plain iterator
            for chunk in old_build.stream():
                size += len(chunk)
        t_stream = time.perf_counter()
        problems = await b.discard()
        t_end = time.perf_counter()
        if problems:
            raise SystemExit(f"discard: {problems}")
        return {"run": t_run - t0, "stream": t_stream - t_run, "discard": t_end - t_stream,
                "total": t_end - t0, "bytes": size, "stages": dict(res.stages),
                "calls": self.timers.summary()}

    async def warm_close(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        await self.warm_session.close()
        await self.warm_runtime.aclose()
        self.warm_session = None
        return {"total": time.perf_counter() - t0}

    async def example(self) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="boride-bench-ex-") as tmp:
            out = Path(tmp) / "out"
            r = await self.cold(self.root / "examples" / "pipeline.yaml", out)
            r["files"] = sum(1 for p in out.rglob("*") if p.is_file())
        return r

    async def floor(self) -> dict[str, Any]:
        return await floor_once()

    async def serve(self, lines: IO[str]) -> None:
        cases: dict[str, Callable[[], Any]] = {
            "cold": lambda: self.cold(self.pipeline_file), "open": self.open_close,
            "warm_open": self.warm_open, "warm": self.warm, "warm_close": self.warm_close,
            "example": self.example, "floor": self.floor}
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, lines.readline)
            case = line.strip()
            if not case or case == "quit":
                if self.warm_session is not None:
                    await self.warm_close()
                return
            print(json.dumps(await cases[case]()), flush=True)


async def floor_once() -> dict[str, float]:
    """``bench/docker_build.py``'s floor, with the docker SDK and httpx only."""
    import docker
    import httpx

    client = docker.from_env()
    api = client.api
    tag = os.urandom(4).hex()
    t0 = time.perf_counter()

    async def up(i: int) -> str:
        c = await asyncio.to_thread(
            api.create_container, IMAGE, name=f"boride-floor-{tag}-{i}",
            host_config=api.create_host_config(network_mode=NETWORK))
        await asyncio.to_thread(api.start, c["Id"])
        info = await asyncio.to_thread(api.inspect_container, c["Id"])
        ip = info["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
        async with httpx.AsyncClient(base_url=f"http://{ip}:{PORT}", trust_env=False) as http:
            while True:
                try:
                    if (await http.get("/", timeout=1.0)).status_code == 200:
                        return str(c["Id"])
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.02)

    ids = await asyncio.gather(*(up(i) for i in range(N)))
    t_ready = time.perf_counter()
    await asyncio.gather(*(asyncio.to_thread(api.remove_container, c, force=True) for c in ids))
    t_end = time.perf_counter()
    client.close()
    return {"ready": t_ready - t0, "total": t_end - t0}


# == orchestrator ===========================================================================
def write_pipeline(folder: Path) -> Path:
    """The pipeline of ``bench/docker_build.py``: 8 processors, a 20-file template."""
    import yaml

    tpl = folder / "template"
    (tpl / "src").mkdir(parents=True, exist_ok=True)
    for i in range(20):
        (tpl / "src" / f"f{i}.txt").write_text(f"file {i}\n" * 50)
    data = {
        "template": str(tpl),
        "processors": [{"name": f"p{i}", "image": IMAGE, "config": {"suffix": f"-{i}"},
                        "files": [{"glob": "**/*.*", "exclude": ["**/*.bak"],
                                   "type": "template"}]} for i in range(N)],
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Proc:
    def __init__(self, name: str, root: Path, pipeline_file: Path, work: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        python = root / ".venv" / "bin" / "python"
        self.p = subprocess.Popen(
            [str(python), str(HERE), "--driver", str(root), "--pipeline", str(pipeline_file),
             "--work", str(work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=root, env={**os.environ, **(env or {})})

    def ask(self, case: str) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(case + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} driver died during {case!r}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.p.poll() is None:
            assert self.p.stdin is not None
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
            self.p.wait(timeout=120)


def rotate(arms: list[str], i: int) -> list[str]:
    k = i % len(arms)
    return arms[k:] + arms[:k]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def first_span(calls: dict[str, Any], name: str) -> float | None:
    spans = calls.get(name)
    return None if not spans else float(spans[0][1] - spans[0][0])


def total_span(calls: dict[str, Any], name: str) -> float:
    return float(sum(e - s for s, e in calls.get(name, [])))


def git_head(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()


def machine(helper_image: str) -> dict[str, str]:
    import docker

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]
    client = docker.from_env()
    try:
        info = client.api.info()
        version = client.api.version()
        serve = client.api.inspect_image(helper_image)  # type: ignore[no-untyped-call]
    finally:
        client.close()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores", "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(), "python": platform.python_version(),
        "docker": f"Docker Engine {version.get('Version')} (API {version.get('ApiVersion')}), "
                  f"storage {info.get('Driver')}, cgroup {info.get('CgroupVersion', '?')}",
        "serve_image": f"`{helper_image}` {serve['Id'][7:19]} (boride.source "
                       f"{(serve['Config'].get('Labels') or {}).get('boride.source', '?')[:12]})",
    }


def serve_image_matches(new: Path, image: str) -> bool:
    """Whether ``image`` (the helper's) was built from ``new``'s tree."""
    import importlib.util

    import docker

    spec = importlib.util.spec_from_file_location("serve_image_of_new",
                                                  new / "docker" / "serve_image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    client = docker.from_env()
    try:
        label: str | None = module._label(client, image, "boride.source")
        return bool(label == module.source_digest())
    finally:
        client.close()


def run(old: Path, new: Path, reps: int, example: bool, helper_image: str) -> dict[str, Any]:
    if not serve_image_matches(new, helper_image):
        raise SystemExit(f"{helper_image} was not built from {new}: run "
                         f"python docker/serve_image.py there first (the helper runs it)")
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "reps": reps,
        "old": {"root": str(old), "commit": git_head(old)},
        "new": {"root": str(new), "commit": git_head(new)}, "helper_image": helper_image,
        "load_before": list(os.getloadavg()), "machine": machine(helper_image)}
    with tempfile.TemporaryDirectory(prefix="boride-bench-models-") as tmp:
        folder = Path(tmp)
        pipeline = write_pipeline(folder)
        procs = {"old": Proc("old", old, pipeline, folder / "work-old"),
                 "new": Proc("new", new, pipeline, folder / "work-new",
                             {HELPER_IMAGE_ENV: helper_image})}
        procs["floor"] = procs["new"]
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}

        def record(phase: str, arm: str, r: dict[str, Any]) -> None:
            raw.setdefault(phase, {}).setdefault(arm, []).append(r)

        try:
            # warm-up, not counted: page cache, image layers, both interpreters' imports
            procs["new"].ask("floor")
            for m in ("old", "new"):
                procs[m].ask("cold")
            for i in range(reps):
                for arm in rotate(["floor", "old", "new"], i):
                    r = procs[arm].ask("floor" if arm == "floor" else "cold")
                    record("cold", arm, r)
                    log(f"cold {i + 1}/{reps} {arm}: {r['total']:.2f}s")
            for i in range(reps):
                for arm in rotate(["old", "new"], i):
                    r = procs[arm].ask("open")
                    record("open", arm, r)
                    log(f"open {i + 1}/{reps} {arm}: {r['total']:.2f}s")
            for m in ("old", "new"):
                results[m]["warm_open"] = procs[m].ask("warm_open")["total"]
            for m in ("old", "new"):
                procs[m].ask("warm")  # not counted
            for i in range(reps):
                for arm in rotate(["old", "new"], i):
                    r = procs[arm].ask("warm")
                    record("warm", arm, r)
                    log(f"warm {i + 1}/{reps} {arm}: {r['total']:.3f}s")
            for m in ("old", "new"):
                procs[m].ask("warm_close")
            if example:
                for i in range(max(3, reps // 2)):
                    for arm in rotate(["old", "new"], i):
                        r = procs[arm].ask("example")
                        record("example", arm, r)
                        log(f"example {i + 1} {arm}: {r['total']:.2f}s")
        finally:
            for p in ("old", "new"):
                procs[p].close()
    results["raw"] = raw
    results["load_after"] = list(os.getloadavg())
    results["serve_image_matched_after"] = serve_image_matches(new, helper_image)
    if not results["serve_image_matched_after"]:
        log(f"WARNING: {helper_image} changed during the run (another tree rebuilt it)")
    return results


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# == report =================================================================================
def summarise(results: dict[str, Any]) -> dict[str, Any]:
    raw = results["raw"]
    s: dict[str, Any] = {}
    cold = raw["cold"]
    s["floor"] = med([r["total"] for r in cold["floor"]])
    s["floor_ready"] = med([r["ready"] for r in cold["floor"]])
    for m in ("old", "new"):
        runs = cold[m]
        s[f"cold_{m}"] = med([r["total"] for r in runs])
        s[f"cold_{m}_min"] = min(r["total"] for r in runs)
        s[f"cold_{m}_max"] = max(r["total"] for r in runs)
        s[f"cold_{m}_stages"] = {k: med([r["stages"].get(k, 0.0) for r in runs])
                                 for k in runs[0]["stages"]}
        names = sorted({k for r in runs for k in r["calls"]})
        s[f"cold_{m}_calls"] = {k: med([total_span(r["calls"], k) for r in runs]) for k in names}
        # the time the build waited for the session (open + close), the rest is the stages
        s[f"cold_{m}_ratio"] = s[f"cold_{m}"] / s["floor"]
        # per-rep ratio against the floor measured in the same rotation
        s[f"cold_{m}_pairs"] = [r["total"] / f["total"]
                                for r, f in zip(runs, cold["floor"], strict=True)]
        s[f"cold_{m}_pair_median"] = med(s[f"cold_{m}_pairs"])
    s["cold_new_over_old"] = s["cold_new"] / s["cold_old"]
    s["cold_new_over_old_pairs"] = med([n["total"] / o["total"] for o, n in
                                        zip(cold["old"], cold["new"], strict=True)])
    for m in ("old", "new"):
        s[f"path_{m}"] = {k: med([v[k] for v in map(critical_path, cold[m])])
                          for k in critical_path(cold[m][0])}
    if "open" in raw:
        for m in ("old", "new"):
            runs = raw["open"][m]
            for k in ("open", "ready", "close", "total"):
                s[f"open_{m}_{k}"] = med([r[k] for r in runs])
            names = sorted({k for r in runs for k in r["calls"]})
            s[f"open_{m}_calls"] = {k: med([total_span(r["calls"], k) for r in runs])
                                    for k in names}
    for m in ("old", "new"):
        runs = raw["warm"][m]
        for k in ("run", "stream", "discard", "total"):
            s[f"warm_{m}_{k}"] = med([r[k] for r in runs])
        s[f"warm_{m}_min"] = min(r["total"] for r in runs)
        s[f"warm_{m}_max"] = max(r["total"] for r in runs)
        s[f"warm_{m}_bytes"] = runs[0]["bytes"]
        s[f"warm_{m}_stages"] = {k: med([r["stages"].get(k, 0.0) for r in runs])
                                 for k in runs[0]["stages"]}
        names = sorted({k for r in runs for k in r["calls"]})
        s[f"warm_{m}_calls"] = {k: med([total_span(r["calls"], k) for r in runs])
                                for k in names}
    s["warm_new_over_old"] = s["warm_new_total"] / s["warm_old_total"]
    s["warm_new_over_old_pairs"] = med([n["total"] / o["total"] for o, n in
                                        zip(raw["warm"]["old"], raw["warm"]["new"],
                                            strict=True)])
    if "example" in raw:
        for m in ("old", "new"):
            runs = raw["example"][m]
            s[f"example_{m}"] = med([r["total"] for r in runs])
            s[f"example_{m}_n"] = len(runs)
            s[f"example_{m}_stages"] = {k: med([r["stages"].get(k, 0.0) for r in runs])
                                        for k in runs[0]["stages"]}
        s["example_new_over_old"] = s["example_new"] / s["example_old"]
    return s


def critical_path(r: dict[str, Any]) -> dict[str, float]:
    """One cold build cut into consecutive pieces (seconds), from the timed calls."""
    calls, stages, total = r["calls"], r["stages"], r["total"]
    opened = calls["open_workspace"][0]
    names = calls.get("helper.names")
    # the build's first area call, made while the components start, waits for the helper's
    # readiness (new model only): what it waits past the start stage is on the critical path
    wait = max(0.0, float(names[0][1] - opened[1]) - stages["start"]) if names else 0.0
    close = total_span(calls, "close_workspace")
    path = {
        "image checks (before open)": float(opened[0]),
        "open_workspace": float(opened[1] - opened[0]),
        "helper readiness, waited for after the start stage": wait,
        "start stage (8 components up and ready)": stages["start"],
        "process stage": stages["process"],
        "merge stage": stages["merge"],
    }
    path["stop the 8 components"] = (total - sum(path.values()) - close
                                     - stages.get("plugins", 0.0))
    path["close_workspace (helper, volumes)"] = close
    return path


def fmt_calls(calls: dict[str, float]) -> str:
    return ", ".join(f"`{k}` {v:.3f}" for k, v in calls.items())


def markdown(results: dict[str, Any]) -> str:
    s = summarise(results)
    m = results["machine"]
    lb, la = results["load_before"], results["load_after"]
    reps = results["reps"]
    target = "holds" if s["cold_new_ratio"] <= 1.2 else "does NOT hold"
    lines = [
        TITLE, "",
        f"`python bench/docker_models.py --old <worktree at {results['old']['commit']}> "
        + (f"--helper-image {results['helper_image']} "
           if results.get("helper_image", SERVE_IMAGE) != SERVE_IMAGE else "")
        + f"--example` ({results['date']}; new = {results['new']['commit']}, old = "
        f"{results['old']['commit']}, the last commit before issue 11). Each model runs in a "
        "subprocess of its own worktree and venv; floor, old and new take turns rep after rep "
        f"(order rotated each rep), {reps} reps per arm (warm-ups not counted); medians.", "",
        f"**Machine.** {m['cpu']}, {m['memory']}; kernel {m['kernel']}; Python {m['python']}; "
        f"{m['docker']}; helper image {m['serve_image']}. Load average "
        f"(1, 5, 15 min) {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f} before, {la[0]:.2f} {la[1]:.2f} "
        f"{la[2]:.2f} after; other people's work shares these 2 cores, so single runs vary: "
        "compare medians and in-run ratios.", "",
        "| | old (bind mounts) | new (engine volumes + helper) | new/old |",
        "|---|---|---|---|",
        f"| floor: 8 raw containers start + ready + remove | {s['floor']:.2f} s "
        f"(ready {s['floor_ready']:.2f} s) | same run | |",
        f"| **cold build**, 8 processors, parallelism 8 | {s['cold_old']:.2f} s "
        f"({s['cold_old_min']:.2f}–{s['cold_old_max']:.2f}) | {s['cold_new']:.2f} s "
        f"({s['cold_new_min']:.2f}–{s['cold_new_max']:.2f}) | **{s['cold_new_over_old']:.2f}** |",
        f"| cold / floor (ratio of medians) | **{s['cold_old_ratio']:.2f}x** | "
        f"**{s['cold_new_ratio']:.2f}x** | |",
        f"| cold / floor (median of per-rep ratios) | {s['cold_old_pair_median']:.2f}x | "
        f"{s['cold_new_pair_median']:.2f}x | {s['cold_new_over_old_pairs']:.2f} (per rep) |",
        f"| **warm build** (run + stream + discard) | {s['warm_old_total'] * 1000:.0f} ms "
        f"({s['warm_old_min'] * 1000:.0f}–{s['warm_old_max'] * 1000:.0f}) | "
        f"{s['warm_new_total'] * 1000:.0f} ms ({s['warm_new_min'] * 1000:.0f}–"
        f"{s['warm_new_max'] * 1000:.0f}) | **{s['warm_new_over_old']:.2f}** "
        f"({s['warm_new_over_old_pairs']:.2f} per pair) |",
        f"| warm: `Build.run` | {s['warm_old_run'] * 1000:.0f} ms | "
        f"{s['warm_new_run'] * 1000:.0f} ms | {s['warm_new_run'] / s['warm_old_run']:.2f} |",
        f"| warm: stream the tar.gz ({s['warm_new_bytes']:,} bytes) | "
        f"{s['warm_old_stream'] * 1000:.0f} ms | {s['warm_new_stream'] * 1000:.0f} ms | "
        f"{s['warm_new_stream'] / s['warm_old_stream']:.2f} |",
        f"| warm: `discard` | {s['warm_old_discard'] * 1000:.1f} ms | "
        f"{s['warm_new_discard'] * 1000:.1f} ms | |",
    ]
    if "open_old_total" in s:
        lines += [
            f"| session open + close, no component | {s['open_old_total']:.2f} s | "
            f"{s['open_new_total']:.2f} s | {s['open_new_total'] / s['open_old_total']:.2f} |",
            f"| ... `Session.open` | {s['open_old_open']:.3f} s | {s['open_new_open']:.3f} s | |",
            f"| ... helper ready after open | | {s['open_new_ready']:.3f} s | |",
            f"| ... `Session.close` | {s['open_old_close']:.3f} s | {s['open_new_close']:.3f} s "
            "| |",
        ]
    if "example_old" in s:
        lines.append(
            f"| examples/pipeline.yaml cold, `out` to a folder ({s['example_old_n']} reps) | "
            f"{s['example_old']:.2f} s | {s['example_new']:.2f} s | "
            f"{s['example_new_over_old']:.2f} |")
    lines += [
        "",
        "Cold build cut into consecutive pieces (medians of each piece, seconds; the pieces "
        "of one build add up to its total):",
        "",
        "| piece | old | new | new - old |",
        "|---|---|---|---|",
    ]
    for k, v in s["path_old"].items():
        n = s["path_new"][k]
        lines.append(f"| {k} | {v:.3f} | {n:.3f} | {n - v:+.3f} |")
    lines += [
        "",
        f"**The 1.2x target {target}**: the new model's cold build is "
        f"{s['cold_new_ratio']:.2f}x the floor (ratio of medians; "
        f"{s['cold_new_pair_median']:.2f}x as the median of per-rep ratios), the old one's "
        f"{s['cold_old_ratio']:.2f}x.", "",
        "Where the time goes (medians, seconds; `calls` are wall times of boride's own "
        "functions, summed per rep, so concurrent calls may add up to more than the wall "
        "time):", "",
        "- cold, old: stages " + ", ".join(f"{k} {v:.3f}"
                                          for k, v in s["cold_old_stages"].items())
        + "; calls " + fmt_calls(s["cold_old_calls"]) + ".",
        "- cold, new: stages " + ", ".join(f"{k} {v:.3f}"
                                          for k, v in s["cold_new_stages"].items())
        + "; calls " + fmt_calls(s["cold_new_calls"]) + ".",
        "- warm, old: stages " + ", ".join(f"{k} {v:.3f}"
                                          for k, v in s["warm_old_stages"].items())
        + (("; calls " + fmt_calls(s["warm_old_calls"])) if s["warm_old_calls"] else "")
        + ".",
        "- warm, new: stages " + ", ".join(f"{k} {v:.3f}"
                                          for k, v in s["warm_new_stages"].items())
        + "; calls " + fmt_calls(s["warm_new_calls"]) + ".",
    ]
    if "open_new_calls" in s:
        lines.append("- session open + close, new: calls " + fmt_calls(s["open_new_calls"])
                     + "; old: " + fmt_calls(s["open_old_calls"]) + ".")
    lines.append("")
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Replace the section; its hand-written ``### Reading`` part (which names the run it
    reads) is kept, after the new figures."""
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n\n"
    pattern = re.compile("^" + re.escape(TITLE) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(text)
    if found:
        reading = re.search(r"^### Reading.*", found.group(0), re.S | re.M)
        if reading:
            section = section.rstrip("\n") + "\n\n" + reading.group(0).rstrip("\n") + "\n"
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    REPORT.write_text(text.rstrip("\n") + "\n")


def publish(results: dict[str, Any]) -> None:
    DATA.write_text(json.dumps(results, indent=1) + "\n")
    write_section(markdown(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="worktree of the bind-mount model")
    parser.add_argument("--new", type=Path, default=ROOT, help="worktree of the volume model")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--example", action="store_true", help="also examples/pipeline.yaml")
    parser.add_argument("--helper-image", default=SERVE_IMAGE,
                        help="the new model's helper image, built from --new's tree (default "
                             f"{SERVE_IMAGE}; another tag keeps a shared engine's one alone)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--replot", action="store_true",
                        help=f"redo the section from {DATA.name}, measure nothing")
    parser.add_argument("--driver", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver is not None:
        driver = Driver(args.driver, args.pipeline, args.work)
        asyncio.run(driver.serve(sys.stdin))
        return 0
    if args.replot:
        publish(json.loads(DATA.read_text()))
        return 0
    if args.old is None:
        parser.error("--old ROOT is required (a worktree of the bind-mount model)")
    results = run(args.old.resolve(), args.new.resolve(), args.reps, args.example,
                  args.helper_image)
    if args.no_write:
        print(markdown(results))
    else:
        publish(results)
        print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
