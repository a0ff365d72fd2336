"""``boride front`` (issue 15) against real workers: each a real ``boride serve`` (local
runtime, the example's cyanprintsdk components) on its own loopback port, requiring the shared
token; the front a real uvicorn server too. Placement, forwarding (the archive streamed
through), lost workers, a restarted front, template warm-up on every worker, the proxies,
``DELETE /cleanup``; the two-node swarm test (tests/test_swarm.py) does the rest."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from boride.archive import iter_archive
from boride.front import FrontConfig, create_front_app
from boride.server import ServerConfig
from tests.conftest import EXAMPLES, boride_processes
from tests.helpers import run_cli
from tests.test_server import _raw_post
from tests.test_server_support import (
    EXAMPLE_REGISTRY,
    Running,
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

TOKEN = "front-test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
EXPECTED = b"".join(iter_archive(EXAMPLES / "expected"))


@dataclass
class FrontServer:
    url: str
    app: Any

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120.0)


@contextmanager
def running_front(workers: list[str], token: str | None = TOKEN,
                  interval: float = 0.2) -> Iterator[FrontServer]:
    app = create_front_app(FrontConfig(workers=tuple(workers), worker_token=token,
                                       interval=interval, check_timeout=2.0,
                                       connect_timeout=2.0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the front did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield FrontServer(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the front did not stop"


def worker_config(tmp_path: Path, name: str, **kw: Any) -> ServerConfig:
    return ServerConfig(registry=(str(kw.pop("registry", EXAMPLE_REGISTRY)),), token=TOKEN,
                        work_root=tmp_path / f"work-{name}", **kw)


def healthy(http: httpx.Client, n: int) -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal workers
        workers = http.get("/workers").json()
        return sum(w["healthy"] for w in workers) == n

    wait_for(check)
    return workers


def create_flow(http: httpx.Client, template: dict[str, Any], sid: str) -> bytes:
    """The CLI's create: warm the session, start it, build (streamed), as the CLI does."""
    warm = http.post(f"/executor/{sid}/warm", json=template)
    assert warm.status_code == 200, warm.text
    assert warm.json()["session_id"] == sid
    start = http.post("/executor", json={
        "session_id": sid, "template": template,
        "write_vol_reference": {"cyan_id": template["principal"]["id"], "session_id": sid},
        "merger": {"merger_id": new_id()}})
    assert start.json() == {"status": "OK"}, start.text
    with http.stream("POST", f"/executor/{sid}", json=example_build(template)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"] == "application/x-gzip"
        assert r.headers["content-disposition"] == "attachment; filename=cyan-output.tar.gz"
        assert "content-length" not in r.headers  # still streamed, chunked
        return b"".join(r.iter_bytes())


@contextmanager
def two_workers(tmp_path: Path) -> Iterator[tuple[Running, Running]]:
    with running_server(worker_config(tmp_path, "a")) as a, \
            running_server(worker_config(tmp_path, "b")) as b:
        yield a, b


@pytest.mark.sandbox
def test_sessions_spread_over_workers_and_build_through_the_front(tmp_path: Path) -> None:
    template = example_template()
    tid = template["principal"]["id"]
    with two_workers(tmp_path) as (a, b), running_front([a.url, b.url]) as front, \
            front.client() as http:
        workers = healthy(http, 2)
        assert [set(w) for w in workers] == [{"address", "node", "healthy", "sessions_active",
                                              "sessions_total"}] * 2
        assert all(w["node"] for w in workers)
        # the template is warmed on every worker
        assert http.post("/template/warm", json=template).json() == {"status": "OK"}
        assert tid in a.service.templates.warm_ids() and tid in b.service.templates.warm_ids()

        sids = [new_id() for _ in range(4)]
        for sid in sids:
            assert create_flow(http, template, sid) == EXPECTED
        # the fewest sessions first: two on each
        assert sorted(a.service.sessions) != [] and sorted(b.service.sessions) != []
        assert set(a.service.sessions) | set(b.service.sessions) == set(sids)
        assert len(a.service.sessions) == len(b.service.sessions) == 2
        listed = {w["address"]: w for w in http.get("/workers").json()}
        for worker in (a, b):
            row = listed[worker.url.removeprefix("http://")]
            assert row["sessions_active"] == 2 and row["healthy"]
        wait_for(lambda: all(w["sessions_total"] == 2 for w in http.get("/workers").json()))
        # a second build of a session goes to the same worker
        again = http.post(f"/executor/{sids[0]}", json=example_build(template))
        assert again.content == EXPECTED

        for sid in sids:
            assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert not a.service.sessions and not b.service.sessions
        assert all(w["sessions_active"] == 0 for w in http.get("/workers").json())
        assert metric(http, "boride_front_placements_total",
                      worker=a.url.removeprefix("http://")) == 2
        assert metric(http, "boride_front_forward_seconds_count", route="build") == 5
        assert metric(http, "boride_front_bytes_streamed_total") >= 5 * len(EXPECTED)


def test_unknown_and_invalid_sessions_are_answered_as_a_worker_would(tmp_path: Path) -> None:
    with running_server(worker_config(tmp_path, "a")) as a, running_front([a.url]) as front, \
            front.client() as http:
        healthy(http, 1)
        template = example_template()
        sid = new_id()
        data = problem(http.post(f"/executor/{sid}", json=example_build(template)), 404)
        assert sid in data["detail"]
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        problem(http.post("/executor/bad_id!/warm", json=template), 400)
        problem(http.post("/executor", json={"nothing": 1}), 400)
        problem(http.get("/nowhere"), 404)
        # a warm that the worker refuses leaves no placement behind
        unknown = template_body(new_id())
        problem(http.post(f"/executor/{sid}/warm", json=unknown), 400)
        assert all(w["sessions_active"] == 0 for w in http.get("/workers").json())


def test_workers_answer_only_the_shared_token(tmp_path: Path) -> None:
    with running_server(worker_config(tmp_path, "a")) as a:
        with httpx.Client(base_url=a.url) as direct:
            problem(direct.get("/worker"), 401)
            problem(direct.post("/template/warm", json=example_template()), 401)
            assert direct.get("/worker", headers=AUTH).json()["sessions"] == []
        with running_front([a.url], token="not-the-token-but-long") as front, \
                front.client() as http:
            wait_for(lambda: front.app.state.front.workers.rounds >= 2)
            assert http.get("/workers").json()[0]["healthy"] is False
            data = problem(http.post(f"/executor/{new_id()}/warm", json=example_template()),
                           503)
            assert data["title"] == "No worker" and "401" in data["detail"]


@pytest.mark.sandbox
def test_a_lost_workers_sessions_fail_clearly_and_new_ones_go_elsewhere(tmp_path: Path
                                                                       ) -> None:
    template = example_template()
    with ExitStack() as stack:
        a = stack.enter_context(running_server(worker_config(tmp_path, "a")))
        b_context = running_server(worker_config(tmp_path, "b"))
        b = b_context.__enter__()
        front = stack.enter_context(running_front([a.url, b.url]))
        http = stack.enter_context(front.client())
        healthy(http, 2)
        assert http.post("/template/warm", json=template).json() == {"status": "OK"}
        s1, s2 = new_id(), new_id()
        assert create_flow(http, template, s1) == EXPECTED
        assert create_flow(http, template, s2) == EXPECTED
        on_b = s1 if s1 in b.service.sessions else s2
        b_context.__exit__(None, None, None)  # worker b goes away, its sessions with it
        b_address = b.url.removeprefix("http://")
        wait_for(lambda: [w["healthy"] for w in http.get("/workers").json()
                          if w["address"] == b_address] == [False])

        data = problem(http.post(f"/executor/{on_b}", json=example_build(template)), 503)
        assert data["title"] == "Worker lost"
        assert on_b in data["detail"] and b_address in data["detail"]
        assert on_b in data["data"][0]
        assert http.delete(f"/executor/{on_b}").json() == {"status": "OK"}
        # new sessions all go to the worker that is left
        for _ in range(2):
            sid = new_id()
            assert create_flow(http, template, sid) == EXPECTED
            assert sid in a.service.sessions
        assert metric(http, "boride_front_lost_calls_total") >= 1
        # the cleanup reaches what can be reached, and says what could not
        done = http.delete("/cleanup").json()
        assert len(done["sessions_removed"]) == 3 and done["sessions_count"] == 3
        assert done["status"] == "ERROR" and b_address in done["error"]
        assert not a.service.sessions
    wait_for(lambda: boride_processes() == [])


@pytest.mark.sandbox
def test_a_restarted_front_finds_every_session_again(tmp_path: Path) -> None:
    template = example_template()
    with two_workers(tmp_path) as (a, b):
        sids = [new_id(), new_id()]
        with running_front([a.url, b.url]) as front, front.client() as http:
            healthy(http, 2)
            assert http.post("/template/warm", json=template).json() == {"status": "OK"}
            for sid in sids:
                assert create_flow(http, template, sid) == EXPECTED
        assert len(a.service.sessions) == len(b.service.sessions) == 1
        # a new front (no state): the first call finds the session on its worker at once
        with running_front([a.url, b.url], interval=60.0) as front, front.client() as http:
            for sid in sids:
                r = http.post(f"/executor/{sid}", json=example_build(template))
                assert r.status_code == 200 and r.content == EXPECTED
            assert {w["sessions_active"] for w in http.get("/workers").json()} == {1}
            for sid in sids:
                assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert not a.service.sessions and not b.service.sessions


@pytest.mark.sandbox
def test_a_worker_without_the_template_warms_it_before_its_first_session(tmp_path: Path
                                                                        ) -> None:
    template = example_template()
    tid = template["principal"]["id"]
    with two_workers(tmp_path) as (a, b), running_front([a.url, b.url]) as front, \
            front.client() as http:
        healthy(http, 2)
        assert http.post("/template/warm", json=template).json() == {"status": "OK"}
        # b loses the template (as a worker that joins later never had it)
        with httpx.Client(base_url=b.url, headers=AUTH) as direct:
            assert direct.delete(f"/template/{tid}").json() == {"status": "OK"}
        assert tid not in b.service.templates.warm_ids()
        wait_for(lambda: front.app.state.front.workers.rounds >= 3)
        outputs = [create_flow(http, template, new_id()) for _ in range(2)]
        # both sessions built right (the resolver decided the conflicts), b warm again
        assert outputs == [EXPECTED, EXPECTED]
        assert len(b.service.sessions) == 1
        assert tid in b.service.templates.warm_ids()
        assert http.delete("/cleanup").json()["status"] == "OK"


@pytest.mark.sandbox
def test_proxies_go_to_a_worker_that_has_the_template_or_resolver(tmp_path: Path) -> None:
    from tests.test_server import QNA_SERVER

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
    with running_server(worker_config(tmp_path, "a", registry=registry)) as a, \
            running_server(worker_config(tmp_path, "b", registry=registry)) as b, \
            running_front([a.url, b.url]) as front, front.client() as http:
        healthy(http, 2)
        # warm on b only (behind the front's back): the front learns it from b's list
        with httpx.Client(base_url=b.url, headers=AUTH, timeout=60) as direct:
            assert direct.post("/template/warm", json=template).json() == {"status": "OK"}
        wait_for(lambda: any(res["id"] in w.resolvers and tpl["id"] in w.templates
                             for w in front.app.state.front.workers.workers.values()))
        files = [{"path": "a", "content": c, "origin": {"template": "t", "layer": i}}
                 for i, c in enumerate(["x", "y"])]
        for _ in range(4):
            r = http.post(f"/proxy/resolver/{res['id']}/api/resolve",
                          json={"config": {"separator": "+"}, "files": files})
            assert r.status_code == 200 and r.json() == {"path": "a", "content": "x+y"}
            r = http.post(f"/proxy/template/{tpl['id']}/api/template/validate",
                          content=b"[1]", headers={"content-type": "application/json"})
            assert r.status_code == 202 and r.json()["got"] == [1]
        assert not a.service.templates.warm_ids()
        # DELETE /template/{id} reaches every worker
        assert http.delete(f"/template/{tpl['id']}").json() == {"status": "OK"}
        assert not b.service.templates.warm_ids()
    wait_for(lambda: boride_processes() == [])


@pytest.mark.sandbox
def test_a_client_that_goes_away_cancels_the_build_on_its_worker(tmp_path: Path) -> None:
    ok = entry("me/ok", "ok_processor")
    hang = entry("me/hang", "hang")
    tpl_dir = tmp_path / "tpl"
    (tpl_dir / "src").mkdir(parents=True)
    (tpl_dir / "src" / "a.txt").write_text("alpha\n")
    tpl = {"ref": "me/t", "version": 1, "id": new_id(), "path": str(tpl_dir)}
    registry = write_registry(tmp_path / "r.yaml", processors=[ok, hang], templates=[tpl])
    template = template_body(tpl["id"], [ok, hang])
    sid = new_id()
    with running_server(worker_config(tmp_path, "a", registry=registry)) as a, \
            running_front([a.url]) as front, front.client() as http, \
            a.client(headers=AUTH) as direct:
        healthy(http, 1)
        assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
        body = {"template": template, "merger_id": new_id(), "cyan": {"processors": [
            {"name": n, "config": None, "files": [{"root": None, "glob": "**/*.*",
                                                    "exclude": ["**/*.bak"],
                                                    "type": "template"}]}
            for n in ("me/ok", "me/hang")], "plugins": []}}
        sock = _raw_post(front.url, f"/executor/{sid}", body)
        wait_for(lambda: metric(direct, "boride_builds_in_flight") == 1)
        wait_for(lambda: any("hang.py" in p for p in boride_processes()))
        sock.close()  # the client goes away mid-build: the front closes the worker's call
        wait_for(lambda: metric(direct, "boride_builds_cancelled_total") == 1, timeout=20)
        wait_for(lambda: not any("hang.py" in p for p in boride_processes()), timeout=20)
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
    with contextlib.suppress(Exception):
        sock.close()


async def test_workers_are_found_by_dns_and_dropped_when_the_name_goes(tmp_path: Path) -> None:
    """``--discover NAME``: every address of NAME is a worker (as ``tasks.<service>`` on a
    swarm); one that answers is healthy, with its node; when the name no longer resolves,
    they are gone (no new session goes there; nothing maps to them, so they are forgotten)."""
    from boride.front.workers import NoWorker, Workers

    with running_server(worker_config(tmp_path, "a")) as a:
        port = int(a.url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(headers=AUTH, timeout=5) as client:
            workers = Workers(client, discover="localhost", port=port, interval=0.1)
            await workers.refresh()
            found = {w.url: w for w in workers.workers.values()}
            assert f"http://127.0.0.1:{port}" in found
            assert found[f"http://127.0.0.1:{port}"].healthy
            assert found[f"http://127.0.0.1:{port}"].node
            worker, placed = workers.place("s1")
            assert placed and worker.url == f"http://127.0.0.1:{port}"
            assert workers.place("s1") == (worker, False)
            workers.forget("s1")
            workers.discover = "no-such-host.invalid"
            await workers.refresh()
            assert workers.workers == {}
            try:
                workers.pick()
            except NoWorker as exc:
                assert "no-such-host.invalid names none" in str(exc)
            else:
                raise AssertionError("a worker was picked with none left")


def test_front_command_line_refuses_what_cannot_work(tmp_path: Path,
                                                    monkeypatch: Any) -> None:
    for name in ("BORIDE_TOKEN", "BORIDE_TOKEN_FILE", "BORIDE_WORKER_TOKEN",
                 "BORIDE_WORKER_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    from boride.daemon import main as daemon_main

    r = run_cli("front", in_process=True)
    assert r.returncode == 2 and "--worker URL" in r.stdout + r.stderr
    r = run_cli("front", "--worker", "http://x:9000", "--host", "0.0.0.0", in_process=True)
    assert r.returncode == 2 and "--trusted-network" in r.stdout + r.stderr
    token = tmp_path / "token"
    token.write_text("\n")
    r = run_cli("front", "--worker", "http://x:9000", "--worker-token-file", token,
                in_process=True)
    assert r.returncode == 2 and "is empty" in r.stdout + r.stderr
    r = run_cli("serve", "--token", "a" * 20, "--token-file", token, in_process=True)
    assert r.returncode == 2 and "not both" in r.stdout + r.stderr
    # a swarm worker without the shared token does not start
    assert daemon_main(["worker"]) == 2


def test_the_archive_streams_through_without_being_held(tmp_path: Path) -> None:
    """A worker that sends the first part of its archive and then waits: the client gets that
    part through the front while the worker still waits (a front that held the answer would
    hand over nothing before the worker's end)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    release = threading.Event()

    async def listing(request: Any) -> Any:
        return JSONResponse({"node": "fake", "sessions": ["s1"], "sessions_active": 1,
                             "sessions_total": 1, "templates": [], "resolvers": []})

    async def build(request: Any) -> Any:
        async def parts() -> Any:
            yield b"first part;"
            released = await asyncio.to_thread(release.wait, 20)
            yield b"second part" if released else b"never released: the front held the answer"
        return StreamingResponse(parts(), media_type="application/x-gzip")

    fake = Starlette(routes=[Route("/worker", listing),
                             Route("/executor/{sid}", build, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(fake, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        with running_front([url]) as front, front.client() as http:
            healthy(http, 1)
            with http.stream("POST", "/executor/s1", json={}) as r:
                assert r.status_code == 200
                chunks = r.iter_raw()
                assert next(chunks) == b"first part;"  # while the worker still waits
                release.set()
                assert b"".join(chunks) == b"second part"
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)
