"""``boride serve`` as a new user runs it: the command line, its refusals, a whole session
against the real process, and SIGTERM stopping everything, even mid-build."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from boride.archive import iter_archive
from tests.conftest import EXAMPLES, boride_processes
from tests.helpers import run_cli, start_cli
from tests.test_server_support import (
    EXAMPLE_REGISTRY,
    build_body,
    entry,
    example_build,
    example_template,
    new_id,
    template_body,
    wait_for,
    write_registry,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(proc: subprocess.Popen[str], url: str, what: str, said: Callable[[], str],
            ready: str = "/", timeout: float = 120) -> None:
    """Wait until the server ``proc`` answers ``GET ready`` with 200; fail with what it
    ``said`` when it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, said()
        try:
            if httpx.get(url + ready, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} did not come up"
        time.sleep(0.05)


@contextmanager
def serving(*args: str | Path, cwd: Path | None = None, port: int | None = None,
            command: str = "serve") -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``boride serve ARGS`` (or ``command``: ``front``) on ``port`` (a free one by default),
    once it answers ``GET /``; killed at the end if still running."""
    port = port or free_port()
    proc = start_cli(command, "--port", str(port), *args, stderr=subprocess.STDOUT, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(proc, url, f"boride {command}", lambda: proc.communicate()[0])
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refuses_a_public_address_without_a_token() -> None:
    proc = run_cli("serve", "--host", "0.0.0.0")
    assert proc.returncode == 2
    assert "is not a loopback address" in proc.stderr and "--token" in proc.stderr
    proc = run_cli("serve", "--host", "127.0.0.1", "--token", "short")
    assert proc.returncode == 2 and "at least 16 characters" in proc.stderr


def test_refuses_an_unusable_registry(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("processors: [{ref: a/b}]")
    proc = run_cli("serve", "--registry", bad)
    assert proc.returncode == 2
    assert "cannot use the registry" in proc.stderr
    assert "processors.0.id: required field is missing" in proc.stderr


@pytest.mark.sandbox
def test_a_whole_session_against_the_command_then_sigterm(tmp_path: Path) -> None:
    token = "a-token-long-enough-for-the-cli"
    work = tmp_path / "work"
    with serving("--registry", EXAMPLE_REGISTRY, "--work-root", work, "--token", token,
                 "--max-builds", "2") as (proc, url):
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=auth, timeout=120) as http:
            assert httpx.get(url + "/metrics").status_code == 401
            template = example_template()
            sid = new_id()
            assert http.post("/template/warm", json=template).status_code == 200
            assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
            assert http.post("/executor", json={"session_id": sid, "template": template,
                                                "merger": {"merger_id": "m"}}
                             ).json() == {"status": "OK"}
            r = http.post(f"/executor/{sid}", json=example_build(template))
            assert r.content == b"".join(iter_archive(EXAMPLES / "expected"))
            assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
            assert "boride_builds_finished_total 1.0" in http.get("/metrics").text
        assert boride_processes() != []  # the shared resolver, until the server stops
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        # uvicorn shuts down cleanly, then re-raises the signal (exit status 143 in a shell)
        assert proc.returncode == -signal.SIGTERM, output
        assert "API docs at /docs" in output and "Application shutdown complete" in output
    assert boride_processes() == []
    assert not work.exists() or list(work.iterdir()) == []


@pytest.mark.sandbox
def test_sigterm_during_a_hanging_build_stops_everything_after_the_drain(tmp_path: Path
                                                                          ) -> None:
    hang = entry("me/hang", "hang")
    registry = write_registry(tmp_path / "r.yaml", processors=[hang])
    dev = tmp_path / "dev"
    (dev / "t").mkdir(parents=True)
    with serving("--registry", registry, "--dev-root", dev, "--work-root",
                 tmp_path / "work", "--drain-timeout", "1") as (proc, url):
        template = template_body("local-h", [hang])
        sid = new_id()
        r = httpx.post(url + "/executor/try", json={
            "sessionId": sid, "localTemplateId": "local-h", "source": "path", "path": "t",
            "template": template}, timeout=60)
        assert r.status_code == 200, r.text
        host, port = url.removeprefix("http://").split(":")
        payload = json.dumps(build_body(template, [("me/hang", None)])).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"POST /executor/{sid} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         f"application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                         .encode() + payload)
            wait_for(lambda: any("hang.py" in p for p in boride_processes()))
            time.sleep(0.5)
            os.kill(proc.pid, signal.SIGTERM)
            output, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGTERM, output
        # the hung build had its grace period, then was stopped
        assert "still in flight after 1s: stopping them" in output, output
    assert boride_processes() == []
