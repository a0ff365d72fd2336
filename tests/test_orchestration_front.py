"""``boride front``'s placement on workers of the fake runtime, all in process: two workers
(``boride serve``'s app, each its own fake runtime, requiring the shared token) reached by the
front through ASGI transports that can be unplugged (a lost worker). New sessions go to the
healthy worker with the fewest; every later call of a session goes to its worker; a lost
worker's sessions answer 503 naming the session and the worker, and new ones go elsewhere;
``POST /template/warm`` reaches every worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from boride.front import FrontConfig, create_front_app
from boride.runtime.fake import Behaviour, FakeRuntime
from boride.server import ServerConfig, Service, create_app
from tests.test_orchestration_api import files_of
from tests.test_server_support import build_body, new_id, problem, template_body, write_registry

TOKEN = "front-test-token-0123456789"


class Plug(httpx.AsyncBaseTransport):
    """A worker's ASGI app as the front reaches it; ``unplugged``: it cannot be reached."""

    def __init__(self, app: Any) -> None:
        self.asgi = httpx.ASGITransport(app=app)
        self.unplugged = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.unplugged:
            raise httpx.ConnectError("[Errno 113] No route to host", request=request)
        return await self.asgi.handle_async_request(request)


@dataclass
class Worker:
    url: str
    service: Service
    runtime: FakeRuntime
    plug: Plug


@dataclass
class Cluster:
    http: httpx.AsyncClient  # the front's client
    front: Any
    workers: list[Worker]
    template: dict[str, Any]

    def where(self, sid: str) -> list[str]:
        return [w.url for w in self.workers if sid in w.service.sessions]

    async def create(self, sid: str) -> httpx.Response:
        """The CLI's create: warm the session, start it, build; the build's answer."""
        warm = await self.http.post(f"/executor/{sid}/warm", json=self.template)
        assert warm.status_code == 200, warm.text
        start = await self.http.post("/executor", json={
            "session_id": sid, "template": self.template, "merger": {"merger_id": new_id()}})
        assert start.json() == {"status": "OK"}, start.text
        return await self.http.post(f"/executor/{sid}", json=build_body(
            self.template, [("me/one", {"suffix": "!"})]))


def _registry(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "README.md").write_text("# readme\n")
    one = {"ref": "me/one", "version": 1, "id": new_id(), "image": "fake/one"}
    site = {"ref": "me/site", "version": 1, "id": new_id(), "path": str(folder),
            "image": "fake/qna"}
    path = write_registry(tmp_path / "registry.yaml", processors=[one], templates=[site])
    return path, template_body(site["id"], [one])


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    registry, template = _registry(tmp_path)
    async with AsyncExitStack() as stack:
        workers = []
        for name in ("a", "b"):
            runtime = FakeRuntime(default=Behaviour())
            app = create_app(ServerConfig(registry=(str(registry),), token=TOKEN,
                                          work_root=tmp_path / f"work-{name}"), runtime=runtime)
            await stack.enter_async_context(app.router.lifespan_context(app))
            workers.append(Worker(f"http://worker-{name}", app.state.service, runtime,
                                  Plug(app)))
        app = create_front_app(FrontConfig(workers=tuple(w.url for w in workers),
                                           worker_token=TOKEN, interval=3600, lost_after=0))
        front = app.state.front
        # the front reaches its workers in process: its clients (closed by its lifespan), with
        # the token, over the plugs
        for name in ("client", "checks"):
            await getattr(front, name).aclose()
            setattr(front, name, httpx.AsyncClient(
                headers={"authorization": f"Bearer {TOKEN}"},
                mounts={w.url: w.plug for w in workers}))
        front.workers.client = front.checks
        await stack.enter_async_context(app.router.lifespan_context(app))
        http = await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://front", timeout=30))
        await front.workers.refresh()  # the first round of checks: both healthy
        yield Cluster(http, front, workers, template)
    assert all(w.runtime.live == set() for w in workers)


async def test_sessions_go_to_the_worker_with_the_fewest_and_stay_there(tmp_path: Path
                                                                         ) -> None:
    async with cluster(tmp_path) as c:
        listing = (await c.http.get("/workers")).json()
        assert [(w["address"], w["healthy"]) for w in listing] == [
            ("worker-a", True), ("worker-b", True)]
        sids = [new_id() for _ in range(4)]
        for sid in sids:
            r = await c.create(sid)
            assert r.status_code == 200, r.text
            assert files_of(r.content) == {"README.md": b"# readme\n!"}
            assert len(c.where(sid)) == 1  # the whole session on one worker
        # the fewest sessions first: two on each
        assert [sorted(w.service.sessions) for w in c.workers] != [[], []]
        assert sorted(len(w.service.sessions) for w in c.workers) == [2, 2]
        listing = (await c.http.get("/workers")).json()
        assert [w["sessions_active"] for w in listing] == [2, 2]
        # a later call of a session goes to its worker: its second build reuses its instance
        sid = sids[0]
        (home,) = [w for w in c.workers if sid in w.service.sessions]
        started = len(home.runtime.counts.started)
        again = await c.http.post(f"/executor/{sid}", json=build_body(
            c.template, [("me/one", {"suffix": "?"})]))
        assert files_of(again.content) == {"README.md": b"# readme\n?"}
        assert len(home.runtime.counts.started) == started
        for sid in sids:
            assert (await c.http.delete(f"/executor/{sid}")).json() == {"status": "OK"}
        assert [len(w.service.sessions) for w in c.workers] == [0, 0]


async def test_a_template_warm_reaches_every_worker(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        r = await c.http.post("/template/warm", json=c.template)
        assert r.json() == {"status": "OK"}, r.text
        tid = c.template["principal"]["id"]
        assert all(tid in w.service.templates.warm_ids() for w in c.workers)
        assert all(w.runtime.alive() == ["template:me/site:1"] for w in c.workers)


async def test_a_lost_worker_s_sessions_fail_clearly_and_new_ones_go_elsewhere(
        tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        first, second = new_id(), new_id()
        assert (await c.create(first)).status_code == 200
        assert (await c.create(second)).status_code == 200
        (lost,) = [w for w in c.workers if second in w.service.sessions]
        (other,) = [w for w in c.workers if w is not lost]
        lost.plug.unplugged = True
        data = problem(await c.http.post(f"/executor/{second}", json=build_body(
            c.template, [("me/one", None)])), 503)
        assert data["title"] == "Worker lost"
        assert f"session {second!r} lives on worker {lost.url.removeprefix('http://')}" \
            in data["detail"]
        assert "No route to host" in data["detail"]
        await c.front.workers.refresh()
        listing = {w["address"]: w["healthy"] for w in (await c.http.get("/workers")).json()}
        assert listing == {lost.url.removeprefix("http://"): False,
                           other.url.removeprefix("http://"): True}
        for _ in range(2):  # new sessions go to the worker that answers
            sid = new_id()
            assert (await c.create(sid)).status_code == 200
            assert c.where(sid) == [other.url]
        # deleting the lost session answers OK: nothing the front can reach is left of it
        assert (await c.http.delete(f"/executor/{second}")).json() == {"status": "OK"}
        lost.plug.unplugged = False  # (for the clean-up of its session)
