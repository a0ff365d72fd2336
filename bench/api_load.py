"""Benchmark: concurrent builds through ``boride serve``'s HTTP API, on the local runtime.

Starts ``boride serve`` (a real process, measured from outside) with a registry of real
cyanprintsdk components from tests/components: 4 processors, 1 resolver (shared, started by
``POST /template/warm``) and 1 plugin. The template has ``--files`` text files; each processor
handles its own part of it and all four write ``shared/*.txt``, so every build has conflicts
for the resolver. Then ``--clients`` clients at once each run the whole flow of a Go
coordinator client:

    POST /executor/{id}/warm → POST /executor (start 4 processors + plugin, wait ready)
    → POST /executor/{id} (build, stream cyan-output.tar.gz) → DELETE /executor/{id}

and then, with every session started again, ``--clients`` builds at once on warm sessions
(the build alone). Every archive is checked (files, resolved content). Reported: p50/p95/max
latency of each phase, failures, the server's peak RSS (VmHWM) and the peak RSS of all
component processes together.

    .venv/bin/python bench/api_load.py                  # 20 clients, --max-builds 4
    .venv/bin/python bench/api_load.py --max-builds 8
    .venv/bin/python bench/api_load.py --quick          # 4 clients, a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ROOT / "tests" / "components"
PROCESSORS = 4


def component(name: str, python: str = sys.executable) -> list[str]:
    return [python, str(COMPONENTS / f"{name}.py")]


def make_fixture(root: Path, files: int, python: str = sys.executable,
                 ) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """A template folder, a registry file and the template body; the 4 processor builds
    (every component run by ``python``)."""
    tpl = root / "template"
    parts = ["a", "b", "c", "d"]
    for i in range(files):
        folder = tpl / parts[i % 4] / f"dir{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i}.txt").write_text(f"line {i}\n" * (20 + i % 50))
    (tpl / "shared").mkdir()
    for i in range(5):
        (tpl / "shared" / f"common{i}.txt").write_text(f"common {i}\n")
    ids = {name: str(uuid.uuid4()) for name in
           ["template", "resolver", "plugin", *(f"p{i}" for i in range(PROCESSORS))]}
    registry = {
        # its Q&A server: POST /template/warm starts it (required since the warm route did)
        "templates": [{"ref": "bench/site", "version": 1, "id": ids["template"],
                       "path": str(tpl),
                       "command": [python, str(ROOT / "examples" / "qna" / "example.py")]}],
        "processors": [{"ref": f"bench/p{i}", "version": 1, "id": ids[f"p{i}"],
                        "command": component("ok_processor", python)}
                       for i in range(PROCESSORS)],
        "resolvers": [{"ref": "bench/join", "version": 1, "id": ids["resolver"],
                       "command": component("ok_resolver", python)}],
        "plugins": [{"ref": "bench/stamp", "version": 1, "id": ids["plugin"],
                     "command": component("ok_plugin", python)}],
    }
    (root / "registry.yaml").write_text(yaml.safe_dump(registry, sort_keys=False))
    pin = {"createdAt": "", "description": "", "dockerReference": "", "dockerTag": ""}
    template = {
        "principal": {"id": ids["template"], "version": 1, "properties": None},
        "template": {"id": str(uuid.uuid4()), "name": "site"},
        "processors": [{"id": ids[f"p{i}"], "version": 1, **pin} for i in range(PROCESSORS)],
        "plugins": [{"id": ids["plugin"], "version": 1, **pin}],
        "templates": [],
        "resolvers": [{"id": ids["resolver"], "version": 1, **pin, "config": {"separator": "|"},
                       "files": ["shared/**"]}],
    }
    processors = [{"name": f"bench/p{i}", "config": {"suffix": f"-p{i}"}, "files": [
        {"root": None, "glob": f"{parts[i]}/**/*.txt", "exclude": ["**/*.bak"],
         "type": "template"},
        {"root": None, "glob": "shared/*.txt", "exclude": ["**/*.bak"], "type": "template"}]}
        for i in range(PROCESSORS)]
    return root / "registry.yaml", template, processors


def check_archive(data: bytes, files: int) -> str | None:
    """None if the archive is the expected output, else what is wrong."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = {m.name: m for m in tar.getmembers() if m.isfile()}
            if len(names) != files + 5:
                return f"{len(names)} files instead of {files + 5}"
            shared = tar.extractfile(names["shared/common0.txt"])
            assert shared is not None
            content = shared.read().decode()
    except (tarfile.TarError, KeyError, OSError) as exc:
        return f"unreadable archive: {exc}"
    expected = "|".join(f"common 0\n-p{i}" for i in range(PROCESSORS)) + "plugged\n"
    return None if content == expected else f"wrong resolved content {content!r}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


class Sampler(threading.Thread):
    """Peak RSS of all the server's descendants (the components), sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self.peak_procs = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            procs = descendants(self.pid)
            total = sum(rss_kib(p) for p in procs)
            self.peak_kib = max(self.peak_kib, total)
            self.peak_procs = max(self.peak_procs, len(procs))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def client_flow(http: httpx.AsyncClient, template: dict[str, Any],
                      processors: list[dict[str, Any]], files: int,
                      times: dict[str, list[float]], failures: list[str],
                      delete: bool = True) -> str:
    sid = str(uuid.uuid4())
    build = {"template": template, "merger_id": str(uuid.uuid4()), "cyan": {
        "processors": processors, "plugins": [{"name": "bench/stamp", "config": {}}]}}
    steps = [("warm", "POST", f"/executor/{sid}/warm", template),
             ("start", "POST", "/executor", {"session_id": sid, "template": template,
                                             "merger": {"merger_id": "m"}}),
             ("build", "POST", f"/executor/{sid}", build)]
    if delete:
        steps.append(("delete", "DELETE", f"/executor/{sid}", None))
    flow_start = time.perf_counter()
    for name, method, path, body in steps:
        start = time.perf_counter()
        try:
            r = await http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            return sid
        times[name].append(time.perf_counter() - start)
        if r.status_code != 200:
            failures.append(f"{name}: HTTP {r.status_code}: {r.text[:300]}")
            return sid
        if name == "build":
            wrong = check_archive(r.content, files)
            if wrong:
                failures.append(f"build: {wrong}")
    times["flow"].append(time.perf_counter() - flow_start)
    return sid


async def warm_builds(http: httpx.AsyncClient, sids: list[str], template: dict[str, Any],
                      processors: list[dict[str, Any]], files: int,
                      times: dict[str, list[float]], failures: list[str]) -> None:
    async def one(sid: str) -> None:
        build = {"template": template, "merger_id": "m", "cyan": {
            "processors": processors, "plugins": [{"name": "bench/stamp", "config": {}}]}}
        start = time.perf_counter()
        try:
            r = await http.post(f"/executor/{sid}", json=build)
        except httpx.HTTPError as exc:
            failures.append(f"warm build: {type(exc).__name__}: {exc}")
            return
        times["warm build"].append(time.perf_counter() - start)
        if r.status_code != 200:
            failures.append(f"warm build: HTTP {r.status_code}: {r.text[:300]}")
        elif wrong := check_archive(r.content, files):
            failures.append(f"warm build: {wrong}")

    await asyncio.gather(*(one(s) for s in sids))


async def drive(url: str, template: dict[str, Any], processors: list[dict[str, Any]],
                clients: int, files: int, warm: bool = True) -> dict[str, Any]:
    """``clients`` whole flows at once; then (``warm``) as many builds at once on warm sessions."""
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:
        r = await http.post("/template/warm", json=template)
        r.raise_for_status()
        times: dict[str, list[float]] = {k: [] for k in
                                         ("warm", "start", "build", "delete", "flow",
                                          "warm build")}
        failures: list[str] = []
        start = time.perf_counter()
        await asyncio.gather(*(client_flow(http, template, processors, files, times, failures)
                               for _ in range(clients)))
        cold_wall = time.perf_counter() - start
        if not warm:
            return {"times": times, "failures": failures, "cold_wall": cold_wall,
                    "warm_wall": float("nan"), "metrics": (await http.get("/metrics")).text}
        # sessions started again, kept: then all builds at once on warm sessions
        setup: dict[str, list[float]] = {k: [] for k in times}
        sids = await asyncio.gather(*(client_flow(http, template, processors, files, setup,
                                                  failures, delete=False)
                                      for _ in range(clients)))
        start = time.perf_counter()
        await warm_builds(http, list(sids), template, processors, files, times, failures)
        warm_wall = time.perf_counter() - start
        for sid in sids:
            await http.delete(f"/executor/{sid}")
        metrics = (await http.get("/metrics")).text
    return {"times": times, "failures": failures, "cold_wall": cold_wall,
            "warm_wall": warm_wall, "metrics": metrics}


def stage_means(metrics: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name != "boride_build_stage_seconds":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage", "")
            if sample.name.endswith("_sum"):
                sums[stage] = sample.value
            elif sample.name.endswith("_count"):
                counts[stage] = sample.value
    return {s: sums[s] / counts[s] for s in sums if counts.get(s)}


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // (1024 * 1024)
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {mem} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


class Server(subprocess.Popen[str]):
    url = ""


@contextlib.contextmanager
def serving(root: Path, registry: Path, max_builds: int, *, python: str = sys.executable,
            env: dict[str, str] | None = None) -> Iterator[Server]:
    """``boride serve --runtime local`` (run by ``python`` with ``env``) on a free port, up;
    stopped with SIGTERM on the way out."""
    port = free_port()
    server = Server(
        [python, "-m", "boride", "serve", "--runtime", "local", "--port", str(port),
         "--registry", str(registry), "--max-builds", str(max_builds), "--max-sessions",
         "1000", "--work-root", str(root / "work"), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        cwd=root)  # (not this checkout: ``-m`` puts the working folder first on the path)
    server.url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(server.url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    why = server.stderr.read() if server.stderr else ""
                    raise SystemExit(f"boride serve did not start: {why}") from None
                time.sleep(0.05)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--files", type=int, default=200, help="template files")
    parser.add_argument("--max-builds", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="4 clients, 40 files")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.files = 4, 40
    with tempfile.TemporaryDirectory(prefix="boride-api-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # as root, components run as nobody, who must enter it
        registry, template, processors = make_fixture(root, args.files)
        with serving(root, registry, args.max_builds) as server:
            idle_kib = rss_kib(server.pid)
            sampler = Sampler(server.pid)
            sampler.start()
            result = asyncio.run(drive(server.url, template, processors, args.clients,
                                       args.files))
            sampler.stop.set()
            sampler.join()
            peak_kib = rss_kib(server.pid, "VmHWM")
        left = [p for p in descendants(os.getpid()) if p != server.pid]
    times = result["times"]
    rows = []
    for phase in ("warm", "start", "build", "delete", "flow", "warm build"):
        v = times[phase]
        rows.append((phase, len(v), pct(v, 50), pct(v, 95), max(v) if v else float("nan")))
    print(f"machine: {machine()}")
    print(f"{args.clients} clients, {PROCESSORS} processors + 1 shared resolver + 1 plugin per "
          f"build, {args.files + 5} template files, --max-builds {args.max_builds}")
    print(f"{'phase':<12} {'n':>3} {'p50 s':>8} {'p95 s':>8} {'max s':>8}")
    for phase, n, p50, p95, mx in rows:
        print(f"{phase:<12} {n:>3} {p50:>8.3f} {p95:>8.3f} {mx:>8.3f}")
    print(f"wall: {args.clients} whole flows {result['cold_wall']:.2f} s, "
          f"{args.clients} warm builds {result['warm_wall']:.2f} s")
    print("mean seconds per build stage (server metrics): " + ", ".join(
        f"{stage} {seconds:.3f}" for stage, seconds in stage_means(result["metrics"]).items()))
    print(f"failures: {len(result['failures'])}")
    for f in result["failures"][:10]:
        print("  " + f)
    print(f"server RSS: idle {idle_kib / 1024:.0f} MiB, peak (VmHWM) {peak_kib / 1024:.0f} MiB; "
          f"components: peak {sampler.peak_kib / 1024:.0f} MiB in {sampler.peak_procs} "
          "processes")
    print(f"processes left after SIGTERM: {len(left)}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "clients": args.clients, "files": args.files,
            "max_builds": args.max_builds, "rows": rows, "failures": result["failures"],
            "cold_wall": result["cold_wall"], "warm_wall": result["warm_wall"],
            "server_idle_mib": idle_kib / 1024, "server_peak_mib": peak_kib / 1024,
            "components_peak_mib": sampler.peak_kib / 1024,
            "stage_means": stage_means(result["metrics"])}, indent=2))


if __name__ == "__main__":
    main()
