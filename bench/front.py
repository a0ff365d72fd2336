"""Benchmark: what ``boride front`` adds (issue 15), on the local runtime, all real processes.

Two workers (``boride serve --token``, each its own process and work root) and two fronts
(``boride front``: one in front of worker 1 alone, one in front of both), on loopback:

1. **per call**: the same call straight to worker 1 (with the token) and through the front,
   alternated, ``--calls`` times each, on kept-alive connections: a call the worker answers at
   once (``POST /proxy/resolver/<unknown>/api/resolve``: 404) and a session call
   (``POST /executor/{id}/warm`` of an open session). The front's cost = median through the
   front - median direct.
2. **a streamed build**: a template of ``--mib`` MiB of random (incompressible) bytes, copied
   by one processor; the build of one session straight and through the front, alternated
   ``--rounds`` times each: whole-call time, and the streaming rate (first byte to last) the
   front passes on. The front's share = rate through the front / rate direct.
3. **N builds at once, one worker vs two**: ``--clients`` whole create flows of the bundled
   example (warm, start, build, delete) at once through the front of worker 1 and through the
   front of both; builds per second. On one machine both workers share its cores: expect no
   gain (more only when each worker has cores of its own, i.e. its own node).

    .venv/bin/python bench/front.py                 # about 2 minutes
    .venv/bin/python bench/front.py --quick
    .venv/bin/python bench/front.py --json docs/front_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_server_support import example_build, example_template  # noqa: E402

TOKEN = "bench-front-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
EXAMPLE_REGISTRY = ROOT / "examples" / "registry.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{proc.args} did not start: "
                             f"{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)


@contextmanager
def process(args: list[str]) -> Iterator[str]:
    """``boride ARGS --port P``; yields its URL; SIGTERM at the end."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "boride", *args, "--port", str(port),
                             "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def big_fixture(root: Path, mib: int) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A registry with a template of ``mib`` MiB of random bytes and a copying processor."""
    tpl = root / "big"
    (tpl / "data").mkdir(parents=True)
    per_file = 2 * 1024 * 1024
    for i in range(max(1, mib // 2)):
        (tpl / "data" / f"blob{i:03d}.bin").write_bytes(os.urandom(per_file))
    proc = {"ref": "bench/copy", "version": 1, "id": str(uuid.uuid4()),
            "command": [sys.executable, str(ROOT / "tests" / "components" / "ok_processor.py")]}
    tid = str(uuid.uuid4())
    registry = root / "big-registry.yaml"
    registry.write_text(yaml.safe_dump({"processors": [proc], "templates": [
        {"ref": "bench/big", "version": 1, "id": tid, "path": str(tpl)}]}))
    template = example_template()
    template["principal"]["id"] = tid
    template["processors"] = [{"id": proc["id"], "version": 1, "createdAt": "",
                               "description": "", "dockerReference": "", "dockerTag": ""}]
    template["plugins"], template["resolvers"] = [], []
    build = {"template": template, "merger_id": str(uuid.uuid4()), "cyan": {
        "processors": [{"name": "bench/copy", "config": None, "files": [
            {"root": None, "glob": "data/**", "exclude": ["**/*.bak"], "type": "copy"}]}],
        "plugins": []}}
    return registry, template, build


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "p90": values[int(0.9 * (len(values) - 1))], "n": len(values)}


def per_call(worker: str, front: str, calls: int) -> dict[str, Any]:
    template = example_template()
    sid = str(uuid.uuid4())
    out: dict[str, Any] = {}
    with httpx.Client(base_url=front, timeout=120) as via, \
            httpx.Client(base_url=worker, timeout=120, headers=AUTH) as direct:
        assert via.post(f"/executor/{sid}/warm", json=template).status_code == 200
        body = json.dumps(template).encode()
        headers = {"content-type": "application/json"}
        cases = {"answered at once (404)": ("/proxy/resolver/nope/api/resolve", b"{}"),
                 "session warm (200)": (f"/executor/{sid}/warm", body)}
        for name, (path, content) in cases.items():
            times: dict[str, list[float]] = {"direct": [], "front": []}
            for client in (direct, via):  # warm-up
                for _ in range(20):
                    client.post(path, content=content, headers=headers)
            for _ in range(calls):
                for label, client in (("direct", direct), ("front", via)):
                    t0 = time.perf_counter()
                    r = client.post(path, content=content, headers=headers)
                    times[label].append((time.perf_counter() - t0) * 1000)
                    assert r.status_code in (200, 404), r.text
            d, f = summary(times["direct"]), summary(times["front"])
            out[name] = {"direct_ms": d, "front_ms": f,
                         "added_ms_median": f["median"] - d["median"],
                         "added_ms_mean": f["mean"] - d["mean"]}
        via.delete(f"/executor/{sid}")
    return out


def streamed(worker: str, front: str, template: dict[str, Any], build: dict[str, Any],
             rounds: int) -> dict[str, Any]:
    sid = str(uuid.uuid4())
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "front": []}
    with httpx.Client(base_url=front, timeout=600) as via, \
            httpx.Client(base_url=worker, timeout=600, headers=AUTH) as direct:
        assert via.post(f"/executor/{sid}/warm", json=template).status_code == 200
        for i in range(rounds + 1):
            for label, client in (("direct", direct), ("front", via)):
                t0 = time.perf_counter()
                size = 0
                first = None
                with client.stream("POST", f"/executor/{sid}", json=build) as r:
                    assert r.status_code == 200, r.read()[:500]
                    for chunk in r.iter_raw():
                        if first is None:
                            first = time.perf_counter()
                        size += len(chunk)
                end = time.perf_counter()
                if i == 0:
                    continue  # warm-up: components started
                assert first is not None
                runs[label].append({"seconds": end - t0, "bytes": size,
                                    "stream_mib_s": size / (end - first) / 2**20,
                                    "whole_mib_s": size / (end - t0) / 2**20})
        via.delete(f"/executor/{sid}")
    out: dict[str, Any] = {}
    for label, rows in runs.items():
        out[label] = {"bytes": rows[0]["bytes"],
                      "seconds_median": statistics.median(r["seconds"] for r in rows),
                      "stream_mib_s_median": statistics.median(r["stream_mib_s"] for r in rows),
                      "whole_mib_s_median": statistics.median(r["whole_mib_s"] for r in rows)}
    out["front_share_of_stream_rate"] = (out["front"]["stream_mib_s_median"]
                                         / out["direct"]["stream_mib_s_median"])
    out["front_share_of_whole_rate"] = (out["front"]["whole_mib_s_median"]
                                        / out["direct"]["whole_mib_s_median"])
    return out


async def create_flow(http: httpx.AsyncClient, template: dict[str, Any]) -> None:
    sid = str(uuid.uuid4())
    r = await http.post(f"/executor/{sid}/warm", json=template)
    assert r.status_code == 200, r.text
    r = await http.post("/executor", json={
        "session_id": sid, "template": template,
        "write_vol_reference": {"cyan_id": template["principal"]["id"], "session_id": sid},
        "merger": {"merger_id": str(uuid.uuid4())}})
    assert r.status_code == 200, r.text
    r = await http.post(f"/executor/{sid}", json=example_build(template))
    assert r.status_code == 200 and len(r.content) > 100, r.text[:500]
    assert (await http.delete(f"/executor/{sid}")).status_code == 200


async def concurrent(front: str, clients: int) -> float:
    template = example_template()
    async with httpx.AsyncClient(base_url=front, timeout=600) as http:
        assert (await http.post("/template/warm", json=template)).status_code == 200
        t0 = time.perf_counter()
        await asyncio.gather(*(create_flow(http, template) for _ in range(clients)))
        return time.perf_counter() - t0


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--mib", type=int, default=64, help="size of the streamed template")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of part 3")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.calls, args.mib, args.rounds, args.clients, args.repeat = 50, 16, 2, 4, 1
    results: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"json": None}}
    with tempfile.TemporaryDirectory(prefix="boride-front-bench-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        big_registry, big_template, big_build = big_fixture(root, args.mib)

        def worker(name: str) -> list[str]:
            return ["serve", "--token", TOKEN, "--registry", str(EXAMPLE_REGISTRY),
                    "--registry", str(big_registry), "--work-root", str(root / name),
                    "--max-sessions", "1000"]

        with process(worker("w1")) as w1, process(worker("w2")) as w2, \
                process(["front", "--worker", w1, "--worker-token", TOKEN,
                         "--interval", "1"]) as f1, \
                process(["front", "--worker", w1, "--worker", w2, "--worker-token", TOKEN,
                         "--interval", "1"]) as f2:
            time.sleep(1.5)  # the fronts' first checks
            results["per_call"] = per_call(w1, f1, args.calls)
            results["streamed_build"] = streamed(w1, f1, big_template, big_build, args.rounds)
            one: list[float] = []
            two: list[float] = []
            asyncio.run(concurrent(f2, 2))  # warm-up: both workers' templates
            asyncio.run(concurrent(f1, 1))
            for _ in range(args.repeat):
                one.append(asyncio.run(concurrent(f1, args.clients)))
                two.append(asyncio.run(concurrent(f2, args.clients)))
            results["concurrent"] = {
                "clients": args.clients,
                "one_worker_seconds": one, "two_workers_seconds": two,
                "one_worker_builds_per_s": args.clients / statistics.median(one),
                "two_workers_builds_per_s": args.clients / statistics.median(two)}
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def report(r: dict[str, Any]) -> None:
    print(f"machine: {r['machine']}")
    print("\n1. per call (ms; median / p90 over "
          f"{next(iter(r['per_call'].values()))['direct_ms']['n']} calls each)")
    for name, v in r["per_call"].items():
        d, f = v["direct_ms"], v["front_ms"]
        print(f"   {name:<24} direct {d['median']:6.2f} / {d['p90']:6.2f}   front "
              f"{f['median']:6.2f} / {f['p90']:6.2f}   added {v['added_ms_median']:5.2f} ms")
    s = r["streamed_build"]
    print(f"\n2. streamed build ({s['direct']['bytes'] / 2**20:.1f} MiB archive; medians)")
    for label in ("direct", "front"):
        v = s[label]
        print(f"   {label:<7} {v['seconds_median']:6.2f} s   stream "
              f"{v['stream_mib_s_median']:7.1f} MiB/s   whole call {v['whole_mib_s_median']:6.1f}"
              " MiB/s")
    print(f"   through the front: {100 * s['front_share_of_stream_rate']:.0f} % of the direct "
          f"stream rate, {100 * s['front_share_of_whole_rate']:.0f} % of the whole call's")
    c = r["concurrent"]
    print(f"\n3. {c['clients']} create flows at once: one worker "
          f"{c['one_worker_builds_per_s']:.2f} builds/s {c['one_worker_seconds']}, two workers "
          f"{c['two_workers_builds_per_s']:.2f} builds/s {c['two_workers_seconds']}")


if __name__ == "__main__":
    main()
