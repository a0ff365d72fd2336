"""The local runtime's sandbox, attacked for real by cyanprintsdk processors.

Each test runs a whole ``boride run`` with a processor that tries something a component must not
be able to do (write outside its area, reach boride or the host's services or another component,
run as root, take unbounded processes or memory) and checks, on the host, that it failed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PipelineFactory
from tests.helpers import run_cli, run_json

pytestmark = pytest.mark.usefixtures("no_leftovers", "both_starts")


def build(pipeline: Path, out: Path, work: Path, *, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> dict[str, Any]:
    """``boride run --json``; the build must succeed. Its result as data."""
    proc, data = run_json(pipeline, "--out", out, tmpdir=work, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(work.iterdir()) == [], "work area left behind"
    return data  # type: ignore[no-any-return]


def report(out: Path, name: str) -> dict[str, Any]:
    found = list(out.rglob(name))
    assert len(found) == 1, f"{name} not in the output: {sorted(out.rglob('*'))}"
    data: dict[str, Any] = json.loads(found[0].read_text())
    return data


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    """A folder outside /tmp (the sandbox's /tmp is private, so that would prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix="boride-sandbox-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.sandbox
def test_processor_writes_land_nowhere_outside_its_area(
        tmp_path: Path, template: Path, make_pipeline: PipelineFactory,
        outside_dir: Path) -> None:
    token = uuid.uuid4().hex[:12]
    home = Path(os.environ.get("HOME") or "/root")
    targets = {
        "etc": Path(f"/etc/boride-x-{token}"),
        "tmp": Path(f"/tmp/boride-x-{token}"),
        "template": template / f"boride-x-{token}",
        "cwd": outside_dir / f"boride-x-{token}",
        "home": home / f"boride-x-{token}",
    }
    before = {p for p in template.rglob("*")}
    pipeline = make_pipeline([("escape", "escape_files",
                               {"targets": [str(p) for p in targets.values()]})])
    out = tmp_path / "out"
    try:
        build(pipeline, out, tmp_path / "work", cwd=outside_dir)
        results = report(out, "escape-report.json")["results"]
        written = {name: path for name, path in targets.items() if path.exists()}
    finally:
        for path in targets.values():
            path.unlink(missing_ok=True)
    assert written == {}, f"the processor wrote on the host: {written}"
    assert {p for p in template.rglob("*")} == before
    # /tmp is writable, but private: the write worked in the sandbox and left no host file.
    assert results[str(targets["tmp"])] == "ok"
    refused = {name: results[str(p)] for name, p in targets.items() if name != "tmp"}
    assert all(why in ("EROFS", "EACCES", "ENOENT") for why in refused.values()), refused


@pytest.mark.sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="as an ordinary user components run as that user")
def test_component_runs_as_an_unprivileged_user(tmp_path: Path,
                                                make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("who", "escape_files", {"targets": []})])
    out = tmp_path / "out"
    build(pipeline, out, tmp_path / "work")
    assert report(out, "escape-report.json")["uid"] != 0


def host_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent for a UDP connect
        except OSError:
            return None
        address: str = s.getsockname()[0]
    return None if address.startswith("127.") else address


class _Counting(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.accepted += 1  # type: ignore[attr-defined]
        self.request.sendall(b"HTTP/1.0 200 OK\r\n\r\nboride api\n")


@pytest.fixture
def host_servers() -> Iterator[list[socketserver.TCPServer]]:
    """TCP servers on the host's loopback (where ``boride serve`` listens) and on its
    non-loopback address, counting the connections they accept."""
    addresses = ["127.0.0.1", *filter(None, [host_address()])]
    servers = []
    for address in addresses:
        server = socketserver.ThreadingTCPServer((address, 0), _Counting)
        server.accepted = 0  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.sandbox
def test_processor_reaches_neither_host_services_nor_other_components(
        tmp_path: Path, make_pipeline: PipelineFactory,
        host_servers: list[socketserver.TCPServer]) -> None:
    # The servers answer the test itself: they are really there (and count: 1 each).
    for server in host_servers:
        with socket.create_connection(server.server_address[:2], timeout=30) as conn:
            assert conn.recv(100).startswith(b"HTTP/1.0 200")
    tcp = [list(s.server_address[:2]) for s in host_servers]
    pipeline = make_pipeline([("victim", "ok_processor", {}),
                              ("attacker", "escape_network", {"tcp": tcp})],
                             resolvers=[("join", "ok_resolver", ["nothing/**"], {})])
    out = tmp_path / "out"
    build(pipeline, out, tmp_path / "work")
    found = report(out, "network-report.json")
    assert len(found["tcp"]) == len(host_servers)
    assert not any(r.startswith("connected") for r in found["tcp"].values()), found["tcp"]
    assert not any(r.startswith("connected") for r in found["unix"].values()), found["unix"]
    accepted = [s.accepted for s in host_servers]  # type: ignore[attr-defined]
    assert accepted == [1] * len(host_servers)


@pytest.mark.sandbox
def test_process_and_memory_limits_stop_a_greedy_component(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("greedy", "limits_probe",
                               {"processes": 200, "allocate_mb": 1024})])
    out = tmp_path / "out"
    build(pipeline, out, tmp_path / "work",
          env={"BORIDE_LOCAL_PIDS": "64", "BORIDE_LOCAL_MEMORY": "512m"})
    found = report(out, "limits-report.json")
    assert found["started"] < 64 and found["fork_error"] is not None, found
    assert found["allocated"] is False, found


@pytest.mark.sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches components to their own users")
def test_template_closed_to_others_is_reported_before_the_processor_starts(
        tmp_path: Path, template: Path, make_pipeline: PipelineFactory) -> None:
    template.chmod(0o700)
    pipeline = make_pipeline([("p", "ok_processor", {})])
    work = tmp_path / "work"
    work.mkdir()
    proc, data = run_json(pipeline, tmpdir=work)
    assert proc.returncode == 1
    assert f"they may not enter {template}" in data["errors"][0]


def test_limits_come_from_the_environment() -> None:
    from boride.runtime.local import SandboxLimits, parse_size

    assert parse_size("512m") == 512 << 20 and parse_size("1G") == 1 << 30
    assert parse_size("4096") == 4096 and parse_size("64KiB") == 64 << 10
    for bad in ("", "m", "-1m", "0", "1.5g", "12t"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert SandboxLimits.from_env({}) == SandboxLimits(512 << 20, 256)
    env = {"BORIDE_LOCAL_MEMORY": "1g", "BORIDE_LOCAL_PIDS": "64"}
    assert SandboxLimits.from_env(env) == SandboxLimits(1 << 30, 64)
    with pytest.raises(ValueError):
        SandboxLimits.from_env({"BORIDE_LOCAL_PIDS": "0"})


@pytest.mark.sandbox
def test_bad_limit_is_reported_before_anything_starts(tmp_path: Path,
                                                      make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("p", "ok_processor", {})])
    # (checked with every BORIDE_* variable when the command starts: tests/test_settings.py)
    proc = run_cli("run", pipeline, "--json", tmpdir=tmp_path, env={"BORIDE_LOCAL_MEMORY": "lots"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("boride: BORIDE_LOCAL_MEMORY: not a size: 'lots' (use e.g. "
                                   "512m or 1g)")
