"""A server that stops and starts again, as operators do it: SIGTERM drains (no new sessions or
builds, 503 with Retry-After, the builds in flight finish), and on Docker the next server of the
same ``--state-name`` takes over the sessions the previous one left, whether it was stopped with
SIGTERM or killed with SIGKILL."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from boride.archive import iter_archive
from boride.runtime.docker import LABEL_SESSION
from tests.conftest import EXAMPLES
from tests.docker_helpers import labelled
from tests.helpers import archive_files
from tests.test_server_cli import free_port, serving
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


def stopped(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    return output


# -- drain ------------------------------------------------------------------------------------
def drain_while_building(tmp_path: Path, front: bool) -> None:
    """A build in flight (its processor takes 4 s) when the server (or the front before it)
    gets SIGTERM: new work and ``GET /`` are refused with 503 and Retry-After while the build
    finishes; then the process exits as after a SIGTERM."""
    slow = entry("me/slow", "by_config")
    registry = write_registry(tmp_path / "r.yaml", processors=[slow])
    dev = tmp_path / "dev"
    (dev / "t").mkdir(parents=True)
    (dev / "t" / "a.txt").write_text("a\n")
    template = template_body("local-s", [slow])
    with contextlib.ExitStack() as stack:
        proc, url = stack.enter_context(serving(
            "--registry", registry, "--dev-root", dev, "--work-root", tmp_path / "work"))
        worker = url
        if front:
            proc, url = stack.enter_context(serving("--worker", url, command="front"))
            wait_for(lambda: httpx.get(url + "/workers").json()[0]["healthy"])
        sid = new_id()
        r = httpx.post(url + "/executor/try", json={
            "sessionId": sid, "localTemplateId": "local-s", "source": "path", "path": "t",
            "template": template}, timeout=60)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = {}

        def build() -> None:
            body = build_body(template, [("me/slow", {"tag": "late", "delay": 4})])
            answer["response"] = httpx.post(f"{url}/executor/{sid}", json=body, timeout=120)

        thread = threading.Thread(target=build)
        thread.start()
        # the build is in flight (its processor called) before the signal
        wait_for(lambda: "boride_builds_in_flight 1.0" in httpx.get(worker + "/metrics").text)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while httpx.get(url + "/", timeout=5).status_code == 200:
            assert time.monotonic() < deadline, "the server never started draining"
            time.sleep(0.05)
        health = httpx.get(url + "/", timeout=5)
        refused = httpx.post(url + "/executor/try", timeout=10, json={
            "sessionId": new_id(), "localTemplateId": "local-s", "source": "path",
            "path": "t", "template": template})
        for r in (health, refused):
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"].isdigit()
            problem = r.json()
            assert problem["title"] == "Server draining" and problem["data"], problem
        thread.join(120)
        built = answer["response"]
        assert built.status_code == 200, built.text
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGTERM, output
        assert "draining" in output
    assert "calls/late.txt" in archive_files(built.content)


@pytest.mark.sandbox
def test_sigterm_drains_new_work_refused_the_build_in_flight_finishes(tmp_path: Path) -> None:
    drain_while_building(tmp_path, front=False)


@pytest.mark.sandbox
def test_sigterm_drains_the_front_too(tmp_path: Path) -> None:
    drain_while_building(tmp_path, front=True)


# -- state in the engine ----------------------------------------------------------------------
def start_example_session(http: httpx.Client, template: dict[str, Any], sid: str) -> None:
    """The CLI's first three calls: warm the template, warm the session, start it."""
    assert http.post("/template/warm", json=template).status_code == 200
    assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
    r = http.post("/executor", json={"session_id": sid, "template": template,
                                     "merger": {"merger_id": "m"}})
    assert r.json() == {"status": "OK"}, r.text


def docker_server() -> tuple[int, str, tuple[str | Path, ...]]:
    """A port, a state name of this test's own (no other server's sessions) and the options of
    a ``boride serve --runtime docker`` keeping its sessions under that name."""
    name = f"restart-{new_id()[:8]}"
    return free_port(), name, ("--runtime", "docker", "--registry", EXAMPLE_REGISTRY,
                               "--state-name", name)


def owned_by(name: str) -> list[str]:
    return labelled({"boride.owner": name})


@pytest.mark.docker
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_restarted_docker_server_takes_over_its_sessions(how: signal.Signals) -> None:
    template, sid = example_template(), new_id()
    port, name, args = docker_server()
    with serving(*args, port=port) as (proc, url), httpx.Client(base_url=url, timeout=120) as http:
        start_example_session(http, template, sid)
        before = sorted(labelled({LABEL_SESSION: sid}))
        assert len(before) >= 6, before  # 3 processors, the plugin, the helper, the area
        stopped(proc, how)
    # what the session had is still on the engine, nothing of it removed or made anew
    assert sorted(labelled({LABEL_SESSION: sid})) == before
    with serving(*args, port=port) as (proc, url), httpx.Client(base_url=url, timeout=120) as http:
        worker = http.get("/worker").json()
        assert sid in worker["sessions"], worker
        assert worker["templates"] == [template["principal"]["id"]], worker
        r = http.post(f"/executor/{sid}", json=example_build(template))
        assert r.status_code == 200, r.text
        assert r.content == b"".join(iter_archive(EXAMPLES / "expected"))
        # the same containers served it: none was started again
        assert sorted(labelled({LABEL_SESSION: sid})) == before
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert labelled({LABEL_SESSION: sid}) == []
        output = stopped(proc, signal.SIGINT)  # Ctrl-C: what it holds goes
        assert "Traceback" not in output, output
    assert owned_by(name) == [], output


@pytest.mark.docker
def test_a_session_of_a_killed_server_is_removed_by_delete_on_the_next(tmp_path: Path) -> None:
    template, sid = example_template(), new_id()
    port, name, args = docker_server()
    with serving(*args, port=port) as (proc, url), httpx.Client(base_url=url, timeout=120) as http:
        start_example_session(http, template, sid)
        stopped(proc, signal.SIGKILL)
    assert labelled({LABEL_SESSION: sid}) != []
    with serving(*args, port=port) as (proc, url), httpx.Client(base_url=url, timeout=120) as http:
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert labelled({LABEL_SESSION: sid}) == []
        stopped(proc, signal.SIGINT)
    assert owned_by(name) == []


@pytest.mark.docker
def test_a_left_session_that_lost_its_helper_is_removed_not_adopted() -> None:
    """What cannot work any more is not taken over: its containers and volumes go."""
    import docker

    template, sid = example_template(), new_id()
    port, name, args = docker_server()
    with serving(*args, port=port) as (proc, url), httpx.Client(base_url=url, timeout=120) as http:
        start_example_session(http, template, sid)
        stopped(proc, signal.SIGKILL)
    client = docker.from_env()
    try:
        client.api.remove_container(f"cyan-merger-{sid}", force=True)
    finally:
        client.close()
    with serving(*args, port=port) as (proc, url), httpx.Client(base_url=url, timeout=120) as http:
        assert sid not in http.get("/worker").json()["sessions"]
        assert labelled({LABEL_SESSION: sid}) == []
        r = http.post(f"/executor/{sid}", json=example_build(template))
        assert r.status_code == 404, r.text
        output = stopped(proc, signal.SIGINT)
    assert "cannot be used (its helper container is not running): removing it" in output
    assert owned_by(name) == []
