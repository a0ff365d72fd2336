"""``boride serve`` end to end over HTTP: a real uvicorn server, an httpx client speaking the Go
coordinator's API, real cyanprintsdk components on the local runtime."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from boride.archive import iter_archive
from boride.config import Limits, Timeouts
from boride.server import ServerConfig
from tests.conftest import EXAMPLES, boride_processes, component_processes
from tests.helpers import archive_files, tree
from tests.test_server_support import (
    EXAMPLE_REGISTRY,
    build_body,
    entry,
    example_build,
    example_template,
    metric,
    new_id,
    problem,
    running_server,
    template_body,
    wait_for,
    write_registry,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")


def session_area_empty(work: Path) -> bool:
    return not work.exists() or not any(work.iterdir())


@pytest.mark.sandbox
def test_go_client_flow_builds_the_example_byte_for_byte(tmp_path: Path) -> None:
    """warm template → warm session → start → build → delete, as a Go coordinator client does;
    the streamed archive is the very archive of examples/expected."""
    work = tmp_path / "work"
    config = ServerConfig(registry=(str(EXAMPLE_REGISTRY),), work_root=work)
    template = example_template()
    sid = str(new_id())
    with running_server(config) as server, server.client() as http:
        assert http.post("/template/warm", json=template).json() == {"status": "OK"}
        warm = http.post(f"/executor/{sid}/warm", json=template)
        assert warm.status_code == 200, warm.text
        assert warm.json() == {"session_id": sid, "vol_ref": {
            "cyan_id": template["principal"]["id"], "session_id": sid}}
        start = http.post("/executor", json={
            "session_id": sid, "template": template,
            "write_vol_reference": {"cyan_id": template["principal"]["id"], "session_id": sid},
            "merger": {"merger_id": new_id()}})
        assert start.json() == {"status": "OK"}, start.text
        # started and ready: 3 processors and the plugin in the session, the resolver shared
        state = server.service.sessions[sid]
        assert len(state.session.instances) == 4

        chunks: list[bytes] = []
        with http.stream("POST", f"/executor/{sid}", json=example_build(template)) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"] == "application/x-gzip"
            assert r.headers["content-disposition"] == \
                "attachment; filename=cyan-output.tar.gz"
            assert "content-length" not in r.headers  # streamed as written, chunked
            chunks.extend(r.iter_bytes())
        streamed = b"".join(chunks)
        assert streamed == b"".join(iter_archive(EXAMPLES / "expected"))
        expected = tree(EXAMPLES / "expected", dirs=False)
        assert archive_files(streamed) == expected

        # a second build in the same session reuses the running components
        again = http.post(f"/executor/{sid}", json=example_build(template))
        assert again.content == streamed
        assert metric(http, "boride_builds_finished_total") == 2
        assert metric(http, "boride_build_stage_seconds_count", stage="process") == 2

        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert sid not in server.service.sessions
        # the session's components are gone; only the template's shared resolver and Q&A
        # server run
        wait_for(lambda: all("concat" in p or "example.py" in p for p in component_processes()))
        assert any("concat" in p for p in boride_processes())
        assert any("example.py" in p for p in boride_processes())  # (a forked one: its name)
    assert boride_processes() == []
    assert session_area_empty(work)


def _try_setup(tmp_path: Path, *, processors: list[dict[str, Any]],
               plugins: list[dict[str, Any]] = (),  # type: ignore[assignment]
               resolver: dict[str, Any] | None = None) -> tuple[ServerConfig, Path, str]:
    dev = tmp_path / "dev"
    folder = dev / "my-template"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "a.txt").write_text("alpha\n")
    (folder / "README.md").write_text("# readme\n")
    resolvers = [resolver] if resolver else []
    registry = write_registry(tmp_path / "registry.yaml", processors=processors, plugins=plugins,
                              resolvers=resolvers)
    config = ServerConfig(registry=(str(registry),), dev_root=dev, work_root=tmp_path / "work")
    return config, folder, new_id()


@pytest.mark.sandbox
def test_local_try_flow_end_to_end_leaves_nothing_running(tmp_path: Path) -> None:
    """POST /executor/try (a folder under --dev-root) → build with conflicts decided by the
    template's resolver, and a plugin → DELETE: no process, no work area left."""
    p1 = entry("me/one", "ok_processor")
    p2 = entry("me/two", "ok_processor")
    plug = entry("me/plug", "ok_plugin")
    res = entry("me/join", "ok_resolver")
    config, folder, sid = _try_setup(tmp_path, processors=[p1, p2], plugins=[plug],
                                     resolver=res)
    template = template_body(local_id := "local-" + new_id(), [p1, p2], [plug], [
        {"id": res["id"], "version": 1, "config": {"separator": "|"}, "files": ["src/**"]}])
    with running_server(config) as server, server.client() as http:
        # DESIGN.md's camelCase names
        r = http.post("/executor/try", json={
            "sessionId": sid, "localTemplateId": local_id, "source": "path",
            "path": str(folder), "imageRef": None, "template": template})
        assert r.status_code == 200, r.text
        blob = {"cyan_id": local_id, "session_id": ""}
        own = {"cyan_id": local_id, "session_id": sid}
        assert r.json() == {"sessionId": sid, "blobVolume": blob, "sessionVolume": own,
                            "session_id": sid, "blob_volume": blob, "session_volume": own}
        assert any("ok_resolver" in p for p in boride_processes())  # the session's resolver

        body = build_body(template, [("me/one", {"suffix": "1"}), ("me/two:1", {"suffix": "2"})],
                          [("me/plug", {"line": "plugged"})])
        r = http.post(f"/executor/{sid}", json=body)
        assert r.status_code == 200, r.text
        assert archive_files(r.content) == {
            "README.md": b"# readme\n2plugged\n",  # no resolver for README.md: last wins
            "src/a.txt": b"alpha\n1|alpha\n2plugged\n",  # resolved by me/join
        }
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert boride_processes() == []  # nothing left running, before the server stops
        assert session_area_empty(tmp_path / "work")
        assert (folder / "src" / "a.txt").read_text() == "alpha\n"  # the folder is untouched


@pytest.mark.sandbox
def test_names_resolve_to_the_versions_the_template_pins(tmp_path: Path) -> None:
    """``user/name`` is the newest pinned version, ``user/name:v`` that version if pinned."""
    scripts = {}
    for v in (1, 2, 3):
        path = tmp_path / f"version{v}.py"
        path.write_text(VERSION_PROCESSOR.replace("@V@", str(v)))
        scripts[v] = [__import__("sys").executable, str(path)]
    versions = [entry("me/p", scripts[v], version=v) for v in (1, 2, 3)]
    config, folder, sid = _try_setup(tmp_path, processors=versions)
    template = template_body("local-x", versions[:2])  # pins 1 and 2, not 3
    with running_server(config) as server, server.client() as http:
        r = http.post("/executor/try", json={"session_id": sid, "local_template_id": "local-x",
                                             "source": "path", "path": str(folder),
                                             "template": template, "merger_id": "m"})
        assert r.status_code == 200, r.text

        def build(name: str) -> httpx.Response:
            return http.post(f"/executor/{sid}", json=build_body(template, [(name, None)]))

        assert archive_files(build("me/p").content) == {"version.txt": b"2"}
        assert archive_files(build("me/p:1").content) == {"version.txt": b"1"}
        data = problem(build("me/p:3"), 400)
        assert data["title"] == "Unknown component"
        assert "not one of the versions pinned in the template" in data["data"][0]
        assert "no version 9" in problem(build("me/p:9"), 400)["data"][0]
        assert "unknown processor 'me/nope'" in problem(build("me/nope"), 400)["data"][0]
        assert "invalid reference" in problem(build("not a name"), 400)["data"][0]
        # every bad name is reported at once
        body = build_body(template, [("me/nope", None), ("me/p:3", None)])
        assert len(problem(http.post(f"/executor/{sid}", json=body), 400)["data"]) == 2
        http.delete(f"/executor/{sid}")


VERSION_PROCESSOR = '''
import os
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn

async def process(i, fs):
    with open(os.path.join(i.write_dir, "version.txt"), "w") as f:
        f.write("@V@")
    return ProcessorOutput(directory=i.write_dir)

start_processor_with_fn(process)
'''


def _raw_post(url: str, path: str, body: dict[str, Any]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


@pytest.mark.sandbox
def test_client_disconnect_cancels_the_build_and_stops_its_components(tmp_path: Path) -> None:
    ok = entry("me/ok", "ok_processor")
    hang = entry("me/hang", "hang")
    res = entry("me/join", "ok_resolver")
    config, folder, sid = _try_setup(tmp_path, processors=[ok, hang], resolver=res)
    template = template_body("local-h", [ok, hang], [], [
        {"id": res["id"], "version": 1, "config": {}, "files": ["**"]}])
    with running_server(config) as server, server.client() as http:
        r = http.post("/executor/try", json={"sessionId": sid, "localTemplateId": "local-h",
                                             "source": "path", "path": str(folder),
                                             "template": template})
        assert r.status_code == 200, r.text
        body = build_body(template, [("me/ok", None), ("me/hang", None)])
        sock = _raw_post(server.url, f"/executor/{sid}", body)
        # wait until the build runs and the hanging processor is busy with its call
        wait_for(lambda: metric(http, "boride_builds_in_flight") == 1)
        wait_for(lambda: any("hang.py" in p for p in boride_processes()))
        time.sleep(1.0)
        assert any("hang.py" in p for p in boride_processes())
        sock.close()  # the client goes away mid-build

        wait_for(lambda: component_processes() == [], timeout=20)
        assert metric(http, "boride_builds_cancelled_total") == 1
        assert metric(http, "boride_builds_in_flight") == 0
        state = server.service.sessions[sid]
        assert not state.lock.locked() and state.session.instances == {}
        area = state.session.workspace.area.root_path  # type: ignore[union-attr]
        assert list(area.iterdir()) == []  # the build's folders are gone too
        # the session lives on: it can be deleted (or built again)
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}


@pytest.mark.sandbox
def test_delete_during_a_build_cancels_it(tmp_path: Path) -> None:
    hang = entry("me/hang", "hang")
    config, folder, sid = _try_setup(tmp_path, processors=[hang])
    template = template_body("local-d", [hang])
    with running_server(config) as server, server.client() as http:
        assert http.post("/executor/try", json={
            "sessionId": sid, "localTemplateId": "local-d", "source": "path",
            "path": str(folder), "template": template}).status_code == 200
        answer: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: answer.append(http.post(
            f"/executor/{sid}", json=build_body(template, [("me/hang", None)]))))
        thread.start()
        wait_for(lambda: any("hang.py" in p for p in boride_processes()))
        wait_for(lambda: metric(http, "boride_builds_in_flight") == 1)
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        thread.join(30)
        assert problem(answer[0], 409)["title"] == "Build cancelled"
        assert boride_processes() == []
        problem(http.post(f"/executor/{sid}", json=build_body(template, [])), 404)


@contextlib.contextmanager
def _a_build_with_a_bad_processor(tmp_path: Path, component: str,
                                  timeouts: Timeouts | None = None
                                  ) -> Iterator[tuple[Any, httpx.Client, dict[str, Any]]]:
    """A try session of ``me/ok`` and ``me/bad`` (``component``) and its build's problem;
    afterwards, the bad one was stopped, the good one kept, and the session builds again."""
    ok = entry("me/ok", "ok_processor")
    bad = entry("me/bad", component)
    config, folder, sid = _try_setup(tmp_path, processors=[ok, bad])
    if timeouts is not None:
        config = dataclasses.replace(config, timeouts=timeouts)
    template = template_body("local-f", [ok, bad])
    with running_server(config) as server, server.client() as http:
        assert http.post("/executor/try", json={
            "sessionId": sid, "localTemplateId": "local-f", "source": "path",
            "path": str(folder), "template": template}).status_code == 200
        r = http.post(f"/executor/{sid}", json=build_body(template, [("me/ok", None),
                                                                    ("me/bad", None)]))
        yield server, http, problem(r, 400)
        instances = server.service.sessions[sid].session.instances
        assert list(instances) == ["me/ok:1"]  # the failed one was stopped, the good one kept
        r = http.post(f"/executor/{sid}", json=build_body(template, [("me/ok", None)]))
        assert r.status_code == 200 and "src/a.txt" in archive_files(r.content)
        http.delete(f"/executor/{sid}")


@pytest.mark.sandbox
def test_failed_build_is_a_problem_and_its_component_is_stopped(tmp_path: Path) -> None:
    with _a_build_with_a_bad_processor(tmp_path, "fail_500") as (_, http, data):
        assert data["title"] == "Build failed"
        assert any("me/bad:1" in line and "500" in line for line in data["data"]), data
        assert metric(http, "boride_builds_failed_total") == 1
        assert metric(http, "boride_component_failures_total", kind="processor") == 1
        assert not any("fail_500" in p for p in boride_processes())


@pytest.mark.sandbox
def test_an_api_build_past_its_timeout_names_the_component_at_work(tmp_path: Path) -> None:
    """The API's builds have the same one deadline as `boride run`: the problem names the
    processor whose call had not answered, and the session still builds afterwards."""
    with _a_build_with_a_bad_processor(tmp_path, "hang", Timeouts(build=5)) as (_, _, data):
        assert data["data"] == ["processor 'me/bad:1': its call had not answered when the "
                                "build's 5s timeout ran out"], data


@pytest.mark.sandbox
def test_sessions_build_at_once_isolated_and_at_most_max_builds(tmp_path: Path) -> None:
    p = entry("me/slow", "ok_processor")
    config, folder, _ = _try_setup(tmp_path, processors=[p])
    config.limits = Limits(max_builds=1)
    template = template_body("local-m", [p])
    sids = [new_id(), new_id()]
    with running_server(config) as server, server.client() as http:
        for sid in sids:
            assert http.post("/executor/try", json={
                "sessionId": sid, "localTemplateId": "local-m", "source": "path",
                "path": str(folder), "template": template}).status_code == 200
        answers: dict[str, httpx.Response] = {}

        def build(sid: str) -> None:
            body = build_body(template, [("me/slow", {"suffix": sid, "delay": 1.5})])
            answers[sid] = http.post(f"/executor/{sid}", json=body)

        threads = [threading.Thread(target=build, args=(sid,)) for sid in sids]
        for t in threads:
            t.start()
        # one build starts its processor (boride's work, in the slot), the other waits for it
        wait_for(lambda: metric(http, "boride_builds_waiting") == 1
                 and metric(http, "boride_builds_in_flight") == 1)
        for t in threads:
            t.join(60)
        for sid in sids:  # each session got its own config's output, nothing of the other's
            assert answers[sid].status_code == 200, answers[sid].text
            assert archive_files(answers[sid].content)["src/a.txt"] == f"alpha\n{sid}".encode()
        assert metric(http, "boride_builds_started_total") == 2
        for sid in sids:
            http.delete(f"/executor/{sid}")


def test_token_guards_every_route_but_health_and_docs(tmp_path: Path) -> None:
    token = "s3cret-token-of-the-test"
    with running_server(ServerConfig(token=token, work_root=tmp_path)) as server, \
            server.client() as http:
        assert http.get("/").json() == {"status": "OK"}
        # The API's description is not a secret (tests/test_package.py checks its scheme).
        assert http.get("/docs").status_code == 200
        assert http.get("/openapi.json").status_code == 200
        for method, path in (("GET", "/metrics"), ("GET", "/worker"),
                             ("POST", "/executor"), ("DELETE", "/executor/abc")):
            r = http.request(method, path)
            assert problem(r, 401)["title"] == "Unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
        wrong = http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert "not the server's token" in problem(wrong, 401)["detail"]
        auth = {"Authorization": f"Bearer {token}"}
        assert http.get("/metrics", headers=auth).status_code == 200
        assert http.get("/docs", headers=auth).status_code == 200
        assert http.delete("/executor/abc", headers=auth).json() == {"status": "OK"}


@pytest.mark.sandbox
def test_resolver_and_template_proxies(tmp_path: Path) -> None:
    qna = tmp_path / "qna.py"
    qna.write_text(QNA_SERVER)
    res = entry("me/join", "ok_resolver")
    tpl_dir = tmp_path / "tpl"
    tpl_dir.mkdir()
    tpl = {"ref": "me/site", "version": 1, "id": new_id(), "path": str(tpl_dir),
           "command": [__import__("sys").executable, str(qna)]}
    registry = write_registry(tmp_path / "r.yaml", resolvers=[res], templates=[tpl])
    template = template_body(tpl["id"], [], [], [
        {"id": res["id"], "version": 1, "config": {}, "files": ["**"]}])
    with running_server(ServerConfig(registry=(str(registry),), work_root=tmp_path / "w")
                        ) as server, server.client() as http:
        problem(http.post(f"/proxy/resolver/{res['id']}/api/resolve", json={}), 404)
        problem(http.post(f"/proxy/template/{tpl['id']}/api/template/init", json={}), 404)
        assert http.post("/template/warm", json=template).json() == {"status": "OK"}
        files = [{"path": "a", "content": c, "origin": {"template": "t", "layer": i}}
                 for i, c in enumerate(["x", "y"])]
        r = http.post(f"/proxy/resolver/{res['id']}/api/resolve",
                      json={"config": {"separator": "+"}, "files": files})
        assert r.status_code == 200 and r.json() == {"path": "a", "content": "x+y"}
        r = http.post(f"/proxy/template/{tpl['id']}/api/template/init",
                      json={"answers": {}, "deterministicStates": {}})
        assert r.json() == {"route": "/api/template/init", "got": {"answers": {},
                                                                  "deterministicStates": {}}}
        r = http.post(f"/proxy/template/{tpl['id']}/api/template/validate", content=b"[1]",
                      headers={"content-type": "application/json"})
        assert r.status_code == 202 and r.json()["got"] == [1]  # status and body as given
        assert http.delete(f"/template/{tpl['id']}").json() == {"status": "OK"}
        assert boride_processes() == []


QNA_SERVER = '''
import sys
from aiohttp import web

async def health(request):
    return web.json_response({"Message": "OK", "Status": "OK"})

async def init(request):
    return web.json_response({"route": "/api/template/init", "got": await request.json()})

async def validate(request):
    return web.json_response({"route": "/api/template/validate", "got": await request.json()},
                             status=202)

app = web.Application()
app.add_routes([web.get("/", health), web.post("/api/template/init", init),
                web.post("/api/template/validate", validate)])
web.run_app(app, host="0.0.0.0", port=5550)
'''


def test_the_go_coordinators_internal_routes_are_not_served(tmp_path: Path) -> None:
    """/merge and /zip (the Go coordinator's merger callbacks) are not boride's: its helper
    container does that work, on routes only the coordinator holds the token for."""
    config, _, sid = _try_setup(tmp_path, processors=[])
    with running_server(config) as server, server.client() as http:
        merge = {"from_dirs": [str(tmp_path)], "to_dir": str(tmp_path / "m")}
        assert problem(http.post(f"/merge/{sid}", json=merge), 404)["title"] == "Not found"
        assert problem(http.post("/zip", json={"target_dir": str(tmp_path)}), 404)
        assert not (tmp_path / "m").exists()


@pytest.mark.sandbox
def test_idle_sessions_expire(tmp_path: Path) -> None:
    p = entry("me/one", "ok_processor")
    res = entry("me/join", "ok_resolver")
    config, folder, sid = _try_setup(tmp_path, processors=[p], resolver=res)
    config.timeouts = Timeouts(session_idle=1.0)
    template = template_body("local-e", [p], [], [
        {"id": res["id"], "version": 1, "config": {}, "files": ["**"]}])
    with running_server(config) as server, server.client() as http:
        assert http.post("/executor/try", json={
            "sessionId": sid, "localTemplateId": "local-e", "source": "path",
            "path": str(folder), "template": template}).status_code == 200
        assert boride_processes() != []
        wait_for(lambda: sid not in server.service.sessions, timeout=10)
        wait_for(lambda: boride_processes() == [], timeout=10)
        # the area goes last, once every component is stopped
        wait_for(lambda: session_area_empty(tmp_path / "work"), timeout=10)
        assert metric(http, "boride_sessions") == 0
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}  # as Boron: gone


async def test_one_idle_reaper_for_sessions_and_templates_outlives_a_failed_round(
        caplog: pytest.LogCaptureFixture) -> None:
    """The service's one reaper: each round the idle sessions, then the idle templates (told
    which are in use); a round that fails is logged and the next one comes."""
    import asyncio
    from types import SimpleNamespace

    from boride import aio
    from boride.server.service import Service

    rounds: list[str] = []
    enough = asyncio.Event()

    class Part:
        def __init__(self, name: str) -> None:
            self.name = name

        async def reap_idle(self, ttl: float, *in_use: Any) -> None:
            rounds.append(self.name)
            assert ttl == 0.01 and len(in_use) == (self.name == "templates")
            if len(rounds) >= 6:
                enough.set()
            if rounds == ["sessions"]:
                raise OSError("the area's disk broke")

    fake = SimpleNamespace(sessions=Part("sessions"), templates=Part("templates"),
                           _template_in_use=lambda template_id: False)
    group = aio.TaskGroup("test")
    group.start_soon(Service._reap(fake, 0.01))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(60):  # a hang guard only
            await enough.wait()
    finally:
        await group.aclose()
    assert rounds[:6] == ["sessions", "templates"] * 3
    assert "removing idle sessions failed: OSError: the area's disk broke" in caplog.text


@pytest.mark.sandbox
def test_starting_again_restarts_dead_components(tmp_path: Path) -> None:
    p = entry("me/one", "ok_processor")
    config, folder, sid = _try_setup(tmp_path, processors=[p])
    template = template_body("local-r", [p])
    with running_server(config) as server, server.client() as http:
        assert http.post("/executor/try", json={
            "sessionId": sid, "localTemplateId": "local-r", "source": "path",
            "path": str(folder), "template": template}).status_code == 200
        start = {"session_id": sid, "template": template, "merger": {"merger_id": "m"}}
        assert http.post("/executor", json=start).json() == {"status": "OK"}
        instances = server.service.sessions[sid].session.instances
        first = instances["me/one:1"]
        wait_for(lambda: first.process.pid is not None)  # type: ignore[attr-defined]
        os.killpg(first.process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        wait_for(lambda: first.process.returncode is not None)  # type: ignore[attr-defined]
        assert http.post("/executor", json=start).json() == {"status": "OK"}
        assert instances["me/one:1"] is not first
        r = http.post(f"/executor/{sid}", json=build_body(template, [("me/one", None)]))
        assert r.status_code == 200, r.text
        http.delete(f"/executor/{sid}")


class _Shipped:
    """A registry template (``shipped``, "registry" in src/a.txt), a dev root with another
    folder (``evil``), and the calls of the try tests."""

    def __init__(self, http: httpx.Client, p: dict[str, Any],
                 tpl: dict[str, Any]) -> None:
        self.http, self.p, self.tpl = http, p, tpl
        self.template = template_body(tpl["id"], [p])

    @staticmethod
    def config(tmp_path: Path) -> tuple[ServerConfig, dict[str, Any], dict[str, Any]]:
        p = entry("me/one", "ok_processor")
        shipped = tmp_path / "shipped"
        (shipped / "src").mkdir(parents=True)
        (shipped / "src" / "a.txt").write_text("registry\n")
        tpl = {"ref": "me/site", "version": 1, "id": new_id(), "path": str(shipped)}
        dev = tmp_path / "dev"
        (dev / "evil" / "src").mkdir(parents=True)
        (dev / "evil" / "src" / "a.txt").write_text("evil\n")
        registry = write_registry(tmp_path / "r.yaml", processors=[p], templates=[tpl])
        config = ServerConfig(registry=(str(registry),), dev_root=dev,
                              work_root=tmp_path / "work", limits=Limits(max_sessions=3))
        return config, p, tpl

    def build(self, sid: str) -> dict[str, bytes]:
        r = self.http.post(f"/executor/{sid}",
                           json=build_body(self.template, [("me/one", None)]))
        assert r.status_code == 200, r.text
        return archive_files(r.content)

    def warm_and_start(self, sid: str, template: dict[str, Any]) -> None:
        assert self.http.post(f"/executor/{sid}/warm", json=template).status_code == 200
        assert self.http.post("/executor", json={"session_id": sid, "template": template}
                              ).json() == {"status": "OK"}

    def session(self, sid: str) -> dict[str, bytes]:
        self.warm_and_start(sid, self.template)
        return self.build(sid)

    def try_(self, sid: str, local_id: str, path: str) -> httpx.Response:
        return self.http.post("/executor/try", json={
            "sessionId": sid, "localTemplateId": local_id, "source": "path", "path": path,
            "template": template_body(local_id, [self.p])})


REGISTRY_FILES = {"src/a.txt": b"registry\n"}


@pytest.mark.sandbox
def test_a_try_session_never_changes_a_registry_template(tmp_path: Path) -> None:
    """The attack of issue 8 item 2, through the API: a try whose ``localTemplateId`` is a
    registry template's id, pointing at another folder. Only the try session builds that
    folder; every other session (before, during, after) builds the registry's files;
    deleting the try session leaves nothing of it."""
    config, p, tpl = _Shipped.config(tmp_path)
    with running_server(config) as server, server.client() as http:
        t = _Shipped(http, p, tpl)
        first = new_id()
        assert t.session(first) == REGISTRY_FILES
        attacker = new_id()
        assert t.try_(attacker, tpl["id"], "evil").status_code == 200
        # the try session builds its own folder, also after the Go client's warm + start
        assert t.build(attacker) == {"src/a.txt": b"evil\n"}
        t.warm_and_start(attacker, template_body(tpl["id"], [p]))
        assert t.build(attacker) == {"src/a.txt": b"evil\n"}
        # everyone else still builds the registry's files
        second = new_id()
        assert t.session(second) == REGISTRY_FILES
        assert t.build(first) == REGISTRY_FILES
        assert http.delete(f"/executor/{attacker}").json() == {"status": "OK"}
        assert attacker not in server.service.sessions
        assert server.service.templates[tpl["id"]].folder == Path(tpl["path"])
        # a try of a fresh local id owns nothing once its session is deleted (CLI note 13)
        local_sid, local_id = new_id(), "10ca1" + new_id()[5:]
        assert t.try_(local_sid, local_id, "evil").status_code == 200
        assert http.delete(f"/executor/{local_sid}").json() == {"status": "OK"}
        assert set(server.service.templates) == {tpl["id"]}
        assert set(server.service.sessions) == {first, second}
        third = new_id()
        assert t.session(third) == REGISTRY_FILES
        for sid in (first, second, third):
            assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
    assert session_area_empty(tmp_path / "work")


@pytest.mark.sandbox
def test_a_refused_try_leaves_nothing_behind(tmp_path: Path) -> None:
    """429 (the session limit), 403 (outside the dev root), 400 (no folder), 409 (a session
    id in use): nothing of the try in the service's tables, the registry template intact."""
    config, p, tpl = _Shipped.config(tmp_path)
    with running_server(config) as server, server.client() as http:
        t = _Shipped(http, p, tpl)
        sids = [new_id() for _ in range(3)]
        for sid in sids:  # max_sessions is 3
            assert t.session(sid) == REGISTRY_FILES
        service = server.service
        sessions, templates = dict(service.sessions), dict(service.templates)
        for local in (tpl["id"], "local-refused"):
            assert problem(t.try_(new_id(), local, "evil"), 429)["title"] == \
                "Too many sessions"
            assert problem(t.try_(new_id(), local, tpl["path"]), 403)["title"] == \
                "Path outside the development root"
            assert problem(t.try_(new_id(), local, "missing"), 400)["title"] == "Not a folder"
            assert problem(t.try_(sids[0], local, "evil"), 409)["title"] == "Session collision"
            assert service.sessions == sessions and service.templates == templates
            assert service.templates[tpl["id"]].folder == Path(tpl["path"])
        assert t.build(sids[0]) == REGISTRY_FILES
        for sid in sids:
            assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
    assert session_area_empty(tmp_path / "work")
