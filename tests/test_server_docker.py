"""``boride serve --runtime docker``: the same API, components as containers (the images of
``.ci/docker-setup.sh``). Skipped without an engine and images, except under ``CI=true``."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from boride.archive import iter_archive
from boride.runtime.docker import LABEL_SESSION, connect
from boride.server import ServerConfig
from tests.conftest import EXAMPLES
from tests.docker_helpers import image_of, labelled, make_holder, make_volume, remove_holders
from tests.helpers import archive_files
from tests.test_server_support import (
    EXAMPLE_REGISTRY,
    build_body,
    example_build,
    example_template,
    metric,
    new_id,
    running_server,
    template_body,
    wait_for,
    write_registry,
)

pytestmark = pytest.mark.docker



def image_entry(ref: str, component: str) -> dict[str, object]:
    return {"ref": ref, "version": 1, "id": new_id(), "image": image_of(component)}


def containers_of(session: str) -> list[str]:
    """Containers and volumes of a session."""
    return labelled({LABEL_SESSION: session})


def components_of(session: str) -> list[str]:
    kinds = ("cyan-processor-", "cyan-plugin-", "cyan-resolver-", "cyan-template-")
    return [n for n in containers_of(session) if n.startswith(kinds)
            and not n.startswith(f"cyan-template-{session}")]


def start_example_session(http: httpx.Client, template: dict[str, Any], sid: str) -> None:
    """The Go client's first three calls: warm the template, warm the session, start it."""
    assert http.post("/template/warm", json=template).json() == {"status": "OK"}
    assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
    r = http.post("/executor", json={"session_id": sid, "template": template,
                                     "merger": {"merger_id": "m"}})
    assert r.json() == {"status": "OK"}, r.text


def test_go_client_flow_on_docker(tmp_path: Path) -> None:
    config = ServerConfig(runtime="docker", registry=(str(EXAMPLE_REGISTRY),),
                          work_root=tmp_path / "work")
    template = example_template()
    sid = new_id()
    with running_server(config) as server, server.client() as http:
        start_example_session(http, template, sid)
        assert len(components_of(sid)) == 4  # 3 processors and the plugin
        r = http.post(f"/executor/{sid}", json=example_build(template))
        assert r.status_code == 200, r.text
        assert r.content == b"".join(iter_archive(EXAMPLES / "expected"))
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert containers_of(sid) == []  # containers and volumes of the session
        (shared,) = [t.session for t in server.service.templates.values() if t.session]
        assert len(components_of(shared.id)) == 2  # the template's resolver and Q&A server
    assert containers_of(shared.id) == []


def test_try_flow_and_disconnect_on_docker(tmp_path: Path) -> None:
    ok = image_entry("me/ok", "ok_processor")
    hang = image_entry("me/hang", "hang")
    res = image_entry("me/join", "ok_resolver")
    plug = image_entry("me/plug", "ok_plugin")
    registry = write_registry(tmp_path / "r.yaml", processors=[ok, hang], resolvers=[res],
                              plugins=[plug])
    dev = tmp_path / "dev"
    (dev / "t" / "src").mkdir(parents=True)
    (dev / "t" / "src" / "a.txt").write_text("alpha\n")
    config = ServerConfig(runtime="docker", registry=(str(registry),), dev_root=dev,
                          work_root=tmp_path / "work")
    template = template_body("local-d", [ok, hang], [plug], [
        {"id": res["id"], "version": 1, "config": {"separator": "|"}, "files": ["src/**"]}])
    sid = new_id()
    with running_server(config) as server, server.client() as http:
        r = http.post("/executor/try", json={"sessionId": sid, "localTemplateId": "local-d",
                                             "source": "path", "path": "t",
                                             "template": template})
        assert r.status_code == 200, r.text
        body = build_body(template, [("me/ok", {"suffix": "1"}), ("me/ok", {"suffix": "2"})],
                          [("me/plug", {"line": "p"})])
        r = http.post(f"/executor/{sid}", json=body)
        assert r.status_code == 200, r.text
        got = archive_files(r.content)["src/a.txt"]
        assert got == b"alpha\n1|alpha\n2p\n"  # the same processor twice, resolved, plugged

        # a client that goes away mid-build: the build is cancelled, containers removed
        payload = json.dumps(build_body(template, [("me/hang", None)])).encode()
        host, port = server.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"POST /executor/{sid} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                     + payload)
        wait_for(lambda: metric(http, "boride_builds_in_flight") == 1, timeout=60)
        wait_for(lambda: any("hang" in n for n in containers_of(sid)), timeout=60)
        time.sleep(1.0)
        sock.close()
        wait_for(lambda: metric(http, "boride_builds_cancelled_total") == 1, timeout=60)
        assert components_of(sid) == []  # removed before the build counts as cancelled
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert containers_of(sid) == []


def test_cleanup_removes_everything_boride_made_on_docker(tmp_path: Path) -> None:
    """``DELETE /cleanup`` (``cyanprint daemon stop``) on a real engine: every session's and
    every template's containers and volumes go, and the answer is the CLI's CleanupRes naming
    them."""
    config = ServerConfig(runtime="docker", registry=(str(EXAMPLE_REGISTRY),),
                          work_root=tmp_path / "work")
    template = example_template()
    sid = new_id()
    with running_server(config) as server, server.client() as http:
        start_example_session(http, template, sid)
        (shared,) = [t.session for t in server.service.templates.values() if t.session]
        mine = set(components_of(sid)) | set(components_of(shared.id))
        assert len(mine) == 6  # 3 processors, the plugin, the template's resolver, its Q&A
        r = http.delete("/cleanup")
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["status"] == "OK" and not res.get("error"), res
        assert mine <= set(res["containers_removed"]), res
        assert res["containers_count"] == len(res["containers_removed"])
        assert containers_of(sid) == [] and containers_of(shared.id) == []
        # The sessions are gone too; deleting one again is fine (the Go coordinator's answer).
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert http.post(f"/executor/{sid}", json=example_build(template)).status_code == 404


def test_cleanup_names_a_volume_it_cannot_remove_in_one_line(tmp_path: Path) -> None:
    """``DELETE /cleanup`` while a container that is not boride's holds a boride volume: that
    container is left alone, and the answer says so in one short line (not the engine's
    whole answer)."""
    config = ServerConfig(runtime="docker", registry=(str(EXAMPLE_REGISTRY),),
                          work_root=tmp_path / "work")
    volume = make_volume(new_id())
    client = connect(timeout=30)
    try:
        holder = make_holder(client.api, volume, {})
        with running_server(config) as server, server.client() as http:
            r = http.delete("/cleanup")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ERROR"
        assert r.json()["error"] == (f"could not remove volume {volume}: in use by container "
                                     f"{holder[:12]} (not boride's)")
    finally:
        client.close()
        remove_holders(volume)
