"""Every failure of ``boride serve`` is RFC 7807 problem details with a clear status, never a
bare 500: malformed JSON, bad bodies, invalid or unknown sessions, unknown names, templates
and versions, bodies over the limit, refused paths, components that do not start."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from boride.config import Limits, Timeouts
from boride.server import ServerConfig
from tests.conftest import boride_processes
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
    write_registry,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("errors")
    dev = root / "dev"
    (dev / "tpl").mkdir(parents=True)
    (root / "outside").mkdir()
    os.symlink(root / "outside", dev / "escape")
    (dev / "file.txt").write_text("x")
    bad = entry("me/dies", "exit_at_start")
    registry = write_registry(root / "extra.yaml", processors=[bad])
    config = ServerConfig(registry=(str(EXAMPLE_REGISTRY), str(registry)), dev_root=dev,
                          work_root=root / "work", timeouts=Timeouts(ready=20),
                          limits=Limits(max_body=64 * 1024, max_sessions=3))
    with running_server(config) as running:
        running.app.state.test_dev = dev
        running.app.state.test_bad = bad
        yield running
    assert boride_processes() == []


@pytest.fixture
def http(server: Running) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client
    for sid in list(server.service.sessions):  # every test starts with no session
        client = server.client()
        client.delete(f"/executor/{sid}")
        client.close()


JSON_ROUTES = ["/executor", "/executor/try", "/executor/abc", "/executor/abc/warm",
               "/template/warm"]


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_malformed_json(http: httpx.Client, path: str) -> None:
    r = http.post(path, content=b'{"session_id": ', headers={"content-type": "application/json"})
    data = problem(r, 400)
    assert data["title"] == "Malformed JSON"
    assert "character" in data["data"][0]


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_body_of_the_wrong_shape(http: httpx.Client, path: str) -> None:
    data = problem(http.post(path, json={"unexpected": True}), 400)
    assert data["title"] == "Failed to bind request"
    assert any("required field is missing" in line for line in data["data"])


def test_every_missing_field_is_listed(http: httpx.Client) -> None:
    data = problem(http.post("/executor", json={}), 400)
    assert sorted(data["data"]) == ["body.session_id: required field is missing",
                                    "body.template: required field is missing"]


@pytest.mark.parametrize("sid", ["a_b", "-abc", "abc-", "x" * 65, "a.b", "%20"])
def test_invalid_session_id_in_the_path(http: httpx.Client, sid: str) -> None:
    for r in (http.post(f"/executor/{sid}", json=example_build(example_template())),
              http.delete(f"/executor/{sid}"),
              http.post(f"/executor/{sid}/warm", json=example_template())):
        assert problem(r, 400)["title"] == "Invalid session id"


def test_reserved_and_invalid_session_ids_in_bodies(http: httpx.Client) -> None:
    template = example_template()
    for sid in ("boride-t123", "no spaces", ""):
        r = http.post("/executor", json={"session_id": sid, "template": template})
        assert problem(r, 400)["title"] == "Invalid session id"
    problem(http.delete("/executor/boride-t123"), 400)


def test_unknown_session(http: httpx.Client) -> None:
    sid = new_id()  # a UUID with dashes is a valid id
    template = example_template()
    r = http.post(f"/executor/{sid}", json=example_build(template))
    assert problem(r, 404)["title"] == "Unknown session"
    # as the Go coordinator: nothing to remove is fine
    assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}


def test_unknown_template(http: httpx.Client) -> None:
    template = example_template()
    template["principal"]["id"] = new_id()
    sid = new_id()
    for r in (http.post("/template/warm", json=template),
              http.post(f"/executor/{sid}/warm", json=template),
              http.post("/executor", json={"session_id": sid, "template": template})):
        data = problem(r, 400)
        assert data["title"] == "Unknown template"
        assert "has no files boride can use" in data["detail"]


@pytest.mark.sandbox
def test_unknown_names_and_versions(server: Running, http: httpx.Client) -> None:
    template = example_template()
    sid = new_id()
    assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
    cases = {"boride/nope": "unknown processor 'boride/nope'",
             "boride/upper:2": "has no version 2 (known: 1)",
             "me/dies:1": "not one of the versions pinned",
             "Upper": "invalid reference"}
    for name, expected in cases.items():
        body = example_build(template)
        body["cyan"]["processors"][0]["name"] = name
        data = problem(http.post(f"/executor/{sid}", json=body), 400)
        assert data["title"] == "Unknown component"
        assert expected in data["data"][0], data


def test_body_over_the_limit(http: httpx.Client) -> None:
    big = b'{"x": "' + b"a" * (70 * 1024) + b'"}'
    r = http.post("/template/warm", content=big, headers={"content-type": "application/json"})
    assert "65536 bytes" in problem(r, 413)["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"x": "'
        for _ in range(70):
            yield b"a" * 1024
        yield b'"}'

    r = http.post("/executor/try", content=chunks(), headers={"content-type": "application/json"})
    assert problem(r, 413)["title"] == "Request body too large"
    r = http.post("/proxy/resolver/abc/api/resolve", content=chunks())
    problem(r, 413)


def test_unknown_routes_and_methods(http: httpx.Client) -> None:
    assert problem(http.get("/nowhere"), 404)["title"] == "Not found"
    assert problem(http.put("/executor"), 405)["title"] == "Method not allowed"
    problem(http.post("/proxy/resolver/a b/api/resolve"), 400)
    for path in ("/zip", "/merge/abc"):  # the merger's internal routes are not served here
        assert problem(http.post(path, json={}), 404)["title"] == "Not found"


def _try(http: httpx.Client, path: str, sid: str | None = None,
         **extra: object) -> httpx.Response:
    body = {"sessionId": sid or new_id(), "localTemplateId": "local-" + new_id(),
            "source": "path", "path": path, "template": template_body("t"), **extra}
    return http.post("/executor/try", json=body)


def test_try_paths_stay_below_the_dev_root(server: Running, http: httpx.Client) -> None:
    dev: Path = server.app.state.test_dev
    for path in ("/etc", str(dev / "escape"), str(dev / ".." / "outside"), "../outside"):
        data = problem(_try(http, path), 403)
        assert data["title"] == "Path outside the development root"
    assert problem(_try(http, str(dev / "file.txt")), 400)["title"] == "Not a folder"
    assert problem(_try(http, str(dev / "missing")), 400)["title"] == "Not a folder"
    assert problem(_try(http, ""), 400)["title"] == "Missing path"
    assert problem(_try(http, "tpl", source="image"), 400)["title"] == "No blob image"
    assert problem(_try(http, "tpl", source="disk"), 400)["title"] == "Failed to bind request"
    assert problem(_try(http, "tpl\x00x"), 400)["title"] == "Failed to bind request"
    sid = new_id()
    assert _try(http, "tpl", sid).status_code == 200  # relative to the dev root
    assert problem(_try(http, "tpl", sid), 409)["title"] == "Session collision"


def test_try_without_a_dev_root_is_refused(tmp_path: Path) -> None:
    with running_server(ServerConfig(work_root=tmp_path)) as server, server.client() as http:
        data = problem(_try(http, str(tmp_path)), 403)
        assert "--dev-root" in data["detail"]


@pytest.mark.sandbox
def test_session_of_another_template_and_too_many_sessions(http: httpx.Client) -> None:
    template = example_template()
    sid = new_id()
    assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
    other = dict(template, principal={"id": "local-other", "version": 1})
    assert _try(http, "tpl", new_id(), localTemplateId="local-other").status_code == 200
    r = http.post(f"/executor/{sid}/warm", json=other)
    assert problem(r, 409)["title"] == "Session belongs to another template"
    assert http.post(f"/executor/{new_id()}/warm", json=template).status_code == 200
    r = http.post(f"/executor/{new_id()}/warm", json=template)  # a 4th: max_sessions is 3
    assert problem(r, 429)["title"] == "Too many sessions"


@pytest.mark.sandbox
def test_components_that_do_not_start(server: Running, http: httpx.Client) -> None:
    bad = server.app.state.test_bad
    template = example_template()
    template["processors"].append({"id": bad["id"], "version": 1})
    sid = new_id()
    before = metric(http, "boride_component_failures_total", kind="processor")
    r = http.post("/executor", json={"session_id": sid, "template": template})
    data = problem(r, 503)
    assert data["title"] == "Failed to start executor"
    assert len(data["data"]) == 1 and "me/dies:1" in data["data"][0]
    assert "exited with code" in data["data"][0]
    assert metric(http, "boride_component_failures_total", kind="processor") == before + 1
    # the others started; the dead one is not kept
    assert len(server.service.sessions[sid].session.instances) == 4


@pytest.mark.sandbox
def test_components_that_cannot_run_here(server: Running, http: httpx.Client) -> None:
    template = example_template()
    template["processors"].append({"id": new_id(), "version": 1, "dockerReference": "x/y",
                                   "dockerTag": "1"})
    r = http.post(f"/executor/{new_id()}/warm", json=template)
    data = problem(r, 400)
    assert data["title"] == "Failed to warm executor"
    assert "no 'command' to run it locally" in data["data"][0]
    assert server.service.sessions == {}  # the session made for the request is gone again


def test_unexpected_errors_are_problems_too(server: Running, http: httpx.Client,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.service, "warm_template", broken)
    data = problem(http.post("/template/warm", json=example_template()), 500)
    assert data["title"] == "Internal error"
    assert data["data"] == ["RuntimeError: a bug"]
    assert data["trace_id"] in data["detail"]
