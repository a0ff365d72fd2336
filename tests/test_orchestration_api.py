"""The HTTP API (``boride serve``'s app) on the fake runtime, in process: the app served
through ``httpx.ASGITransport`` with its lifespan, components as fake behaviours named by
their registry entries' images. The Go coordinator's flows (a try session; a registry
template warmed, a session warmed, started, built, deleted), the proxies, the errors as
problem details naming the component, and the clean-up of everything."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from boride.config import Timeouts
from boride.runtime.fake import Behaviour, FakeRuntime
from boride.server import ServerConfig, create_app
from boride.types import Kind
from tests.test_server_support import (
    build_body,
    new_id,
    pinned,
    problem,
    template_body,
    write_registry,
)

BEHAVIOURS = {"fake/one": Behaviour(), "fake/two": Behaviour(), "fake/plug": Behaviour(),
              "fake/join": Behaviour(), "fake/qna": Behaviour(),
              "fake/dies": Behaviour(fails="die", error="TypeError: x is undefined"),
              "fake/mute": Behaviour(never_ready=True,
                                     output=("ConnectionError: no licence server",))}


def fake(ref: str, image: str, **extra: Any) -> dict[str, Any]:
    """A registry entry whose component is the fake behaviour ``image``."""
    return {"ref": ref, "version": 1, "id": new_id(), "image": image, **extra}


def files_of(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


@asynccontextmanager
async def serving(config: ServerConfig, runtime: FakeRuntime) -> AsyncIterator[httpx.AsyncClient]:
    """The app on ``runtime``, its lifespan running (closed as ``boride serve`` closes)."""
    app = create_app(config, runtime=runtime)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://boride",
            timeout=30) as http:
        yield http


class Setup:
    """A registry of fake components, a try folder below the development root and a
    registry template with a folder of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.one, self.two = fake("me/one", "fake/one"), fake("me/two", "fake/two")
        self.plug, self.join = fake("me/plug", "fake/plug"), fake("me/join", "fake/join")
        self.dies, self.mute = fake("me/dies", "fake/dies"), fake("me/mute", "fake/mute")
        dev = tmp_path / "dev"
        self.folder = dev / "my-template"
        (self.folder / "src").mkdir(parents=True)
        (self.folder / "src" / "a.txt").write_text("alpha\n")
        (self.folder / "README.md").write_text("# readme\n")
        self.tid = new_id()
        qna = {"ref": "me/site", "version": 1, "id": self.tid, "path": str(self.folder),
               "image": "fake/qna"}
        registry = write_registry(tmp_path / "registry.yaml",
                                  processors=[self.one, self.two, self.dies, self.mute],
                                  plugins=[self.plug], resolvers=[self.join], templates=[qna])
        self.work = tmp_path / "work"
        self.config = ServerConfig(registry=(str(registry),), dev_root=dev, work_root=self.work,
                                   timeouts=Timeouts(ready=0.2))
        self.runtime = FakeRuntime(BEHAVIOURS)

    def template(self, template_id: str, processors: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
        return template_body(template_id, processors or [self.one, self.two], [self.plug], [
            pinned(self.join, config={"separator": "|"}, files=["src/**"])])

    def try_body(self, sid: str, template: dict[str, Any]) -> dict[str, Any]:
        return {"sessionId": sid, "localTemplateId": template["principal"]["id"],
                "source": "path", "path": str(self.folder), "template": template}

    def area_empty(self) -> bool:
        return not self.work.exists() or not any(self.work.iterdir())


BUILD = [("me/one", {"suffix": "1"}), ("me/two:1", {"suffix": "2"})]
EXPECTED = {"README.md": b"# readme\n2plugged\n", "src/a.txt": b"alpha\n1|alpha\n2plugged\n"}


async def test_a_try_session_builds_twice_with_its_components_then_is_deleted(
        tmp_path: Path) -> None:
    s = Setup(tmp_path)
    sid, template = new_id(), s.template("local-" + new_id())
    async with serving(s.config, s.runtime) as http:
        assert (await http.get("/")).json() == {"status": "OK"}
        r = await http.post("/executor/try", json=s.try_body(sid, template))
        assert r.status_code == 200, r.text
        assert r.json()["sessionId"] == sid
        start = await http.post("/executor", json={"session_id": sid, "template": template})
        assert start.json() == {"status": "OK"}, start.text
        assert s.runtime.alive(Kind.PROCESSOR) == ["me/one:1", "me/two:1"]
        for _ in range(2):
            r = await http.post(f"/executor/{sid}", json=build_body(template, BUILD,
                                                                    [("me/plug", None)]))
            assert r.status_code == 200, r.text
            assert r.headers["content-disposition"] == "attachment; filename=cyan-output.tar.gz"
            assert files_of(r.content) == EXPECTED
        # the second build started nothing: the components live with the session
        assert sorted(s.runtime.counts.started) == ["me/join:1", "me/one:1", "me/plug:1",
                                                    "me/two:1"]
        assert (await http.delete(f"/executor/{sid}")).json() == {"status": "OK"}
        assert s.runtime.live == set() and s.area_empty()
        # deleting again answers OK too, as the Go coordinator does: nothing is left
        assert (await http.delete(f"/executor/{sid}")).json() == {"status": "OK"}
    assert (s.folder / "src" / "a.txt").read_text() == "alpha\n"  # the folder is untouched


async def test_a_registry_template_warms_its_shared_components_and_sessions_build(
        tmp_path: Path) -> None:
    s = Setup(tmp_path)
    template = s.template(s.tid)
    async with serving(s.config, s.runtime) as http:
        assert (await http.post("/template/warm", json=template)).json() == {"status": "OK"}
        assert s.runtime.alive() == ["me/join:1", "template:me/site:1"]  # shared, ahead
        sids = [new_id(), new_id()]
        for sid in sids:
            warm = await http.post(f"/executor/{sid}/warm", json=template)
            assert warm.status_code == 200, warm.text
            start = await http.post("/executor", json={
                "session_id": sid, "template": template, "merger": {"merger_id": new_id()}})
            assert start.json() == {"status": "OK"}, start.text
            r = await http.post(f"/executor/{sid}", json=build_body(template, BUILD,
                                                                    [("me/plug", None)]))
            assert r.status_code == 200, r.text
            assert files_of(r.content) == EXPECTED
        # one resolver for both sessions; each session its own processors and plugin
        assert s.runtime.counts.started.count("me/join:1") == 1
        assert s.runtime.counts.started.count("me/one:1") == 2
        qna = await http.post(f"/proxy/template/{s.tid}/api/template/init",
                              json={"answers": {}, "deterministicState": {}})
        assert qna.status_code == 200, qna.text
        assert qna.json()["route"] == "/api/template/init"  # what the Q&A server answered
        resolved = await http.post(f"/proxy/resolver/{s.join['id']}/api/resolve", json={
            "config": {"separator": "+"}, "files": [
                {"path": "x", "content": "a", "origin": {"template": "t", "layer": 1}},
                {"path": "x", "content": "b", "origin": {"template": "t", "layer": 0}}]})
        assert resolved.json() == {"path": "x", "content": "b+a"}
        cleanup = await http.delete("/cleanup")
        assert cleanup.status_code == 200, cleanup.text
        assert s.runtime.live == set() and s.area_empty()


async def test_a_component_dying_in_a_build_is_a_problem_naming_it_and_its_error(
        tmp_path: Path) -> None:
    s = Setup(tmp_path)
    sid, template = new_id(), s.template("local-dies", [s.one, s.dies])
    async with serving(s.config, s.runtime) as http:
        assert (await http.post("/executor/try", json=s.try_body(sid, template))
                ).status_code == 200
        body = build_body(template, [("me/one", None), ("me/dies", None)])
        data = problem(await http.post(f"/executor/{sid}", json=body), 400)
        assert data["title"] == "Build failed"
        (error,) = data["data"]
        assert error.startswith("processor 'me/dies:1': died during its call: exited with "
                                "code 1")
        assert "its error: TypeError: x is undefined" in error
        # the dead one was dropped; the next build starts it again (and it dies again)
        assert "me/dies:1" not in s.runtime.alive()
        assert "me/one:1" in s.runtime.alive()
        again = problem(await http.post(f"/executor/{sid}", json=body), 400)
        assert "TypeError: x is undefined" in again["data"][0]
        assert s.runtime.counts.started.count("me/dies:1") == 2
        await http.delete(f"/executor/{sid}")
    assert s.runtime.live == set()


async def test_a_session_whose_component_never_gets_ready_says_which(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    sid, template = new_id(), s.template("local-mute", [s.one, s.mute])
    async with serving(s.config, s.runtime) as http:
        assert (await http.post("/executor/try", json=s.try_body(sid, template))
                ).status_code == 200
        data = problem(await http.post("/executor", json={"session_id": sid,
                                                           "template": template}), 503)
        assert data["title"] == "Failed to start executor"
        (error,) = data["data"]
        assert error.startswith("processor 'me/mute:1': not ready after 0.2s")
        assert "its error: ConnectionError: no licence server" in error
        assert "me/one:1" in s.runtime.alive() and "me/mute:1" not in s.runtime.alive()
    assert s.runtime.live == set() and s.area_empty()  # the server closed everything


async def test_components_the_runtime_cannot_run_are_refused_before_any_start(
        tmp_path: Path) -> None:
    s = Setup(tmp_path)
    ghost = fake("me/ghost", "fake/ghost")  # no behaviour: the fake runtime cannot run it
    registry = write_registry(tmp_path / "ghost.yaml", processors=[s.one, ghost])
    config = ServerConfig(registry=(str(registry),), dev_root=s.config.dev_root,
                          work_root=s.work)
    sid, template = new_id(), template_body("local-ghost", [s.one, ghost])
    async with serving(config, s.runtime) as http:
        r = await http.post("/executor/try", json=s.try_body(sid, template))
        data = problem(r, 400)
        assert any("processor 'me/ghost:1': no fake behaviour for 'fake/ghost'" in line
                   for line in data["data"]), data
    assert s.runtime.counts.started == [] and s.area_empty()


async def test_unknown_sessions_and_names_are_client_errors(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    sid, template = new_id(), s.template("local-names")
    async with serving(s.config, s.runtime) as http:
        missing = problem(await http.post(f"/executor/{new_id()}",
                                          json=build_body(template, BUILD)), 404)
        assert missing["title"] == "Unknown session"
        assert (await http.post("/executor/try", json=s.try_body(sid, template))
                ).status_code == 200
        unknown = problem(await http.post(f"/executor/{sid}", json=build_body(
            template, [("me/nope", None)])), 400)
        assert "unknown processor 'me/nope'" in unknown["data"][0]
        await http.delete(f"/executor/{sid}")


async def test_a_build_past_the_server_s_timeout_names_the_component_still_called(
        tmp_path: Path) -> None:
    s = Setup(tmp_path)
    hang = fake("me/hang", "fake/hang")
    registry = write_registry(tmp_path / "hang.yaml", processors=[s.one, hang])
    config = ServerConfig(registry=(str(registry),), dev_root=s.config.dev_root,
                          work_root=s.work, timeouts=Timeouts(build=0.2))
    runtime = FakeRuntime({**BEHAVIOURS, "fake/hang": Behaviour(fails="hang")})
    sid, template = new_id(), template_body("local-hang", [s.one, hang])
    async with serving(config, runtime) as http:
        assert (await http.post("/executor/try", json=s.try_body(sid, template))
                ).status_code == 200
        body = build_body(template, [("me/one", None), ("me/hang", None)])
        data = problem(await http.post(f"/executor/{sid}", json=body), 400)
        (error,) = data["data"]
        assert error == ("processor 'me/hang:1': its call had not answered when the build's "
                         "0.2s timeout ran out")
        # the hanging one is stopped (its state is unknown), the good one lives on
        assert runtime.alive() == ["me/one:1"]
        await http.delete(f"/executor/{sid}")
    assert runtime.live == set() and s.area_empty()


async def test_a_proxied_answer_over_the_bound_is_refused_unread(tmp_path: Path) -> None:
    s = Setup(tmp_path)

    async def huge(call: Any) -> Any:  # a resolver answering 2 MiB of JSON
        return {"path": "x", "content": "x" * (2 << 20)}

    s.runtime = FakeRuntime({**BEHAVIOURS, "fake/join": Behaviour(answer=huge)})
    template = s.template(s.tid)
    async with serving(s.config, s.runtime) as http:
        assert (await http.post("/template/warm", json=template)).status_code == 200
        body = {"config": {}, "files": [
            {"path": "x", "content": "a", "origin": {"template": "t", "layer": 0}}]}
        data = problem(await http.post(f"/proxy/resolver/{s.join['id']}/api/resolve",
                                       json=body), 502)
        assert data["data"] == ["POST /api/resolve answered more than 1 MiB"]
        await http.delete("/cleanup")
