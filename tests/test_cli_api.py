"""The CyanPrint CLI (Iridium 2.24.0) against ``boride serve``: its exact request bodies
(/work/shared/iridium-client.md, section 1), and every answer read the way the CLI reads it
(its ``ProblemDetails``, ``StandardRes``, ``TrySetupRes``, ``CleanupRes``)."""

from __future__ import annotations

import io
import ipaddress
import json
import random
import signal
import string
import tarfile
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from boride.config import Limits, Timeouts
from boride.runtime.base import Cleaned, ComponentNetworks, RuntimeFailure
from boride.runtime.local import LocalRuntime
from boride.server import ServerConfig, create_app
from tests.conftest import boride_processes
from tests.helpers import run_cli
from tests.test_server_cli import serving
from tests.test_server_support import (
    EXAMPLE_REGISTRY,
    Running,
    entry,
    example_build,
    example_template,
    pinned,
    running_server,
    wait_for,
    write_registry,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")

# The CLI's headers: reqwest without gzip, no user agent, never an Authorization header.
CLI_HEADERS = {"accept": "*/*"}


def cli_client(server: Running) -> httpx.Client:
    client = server.client(headers=CLI_HEADERS)
    client.headers.pop("user-agent", None)
    client.headers.pop("accept-encoding", None)
    return client


def session_id() -> str:
    """``DefaultSessionIdGenerator``: 10 random ASCII alphanumerics."""
    return "".join(random.choices(string.ascii_letters + string.digits, k=10))


def local_template_id() -> str:
    """``"10ca1" + uuid[5..]``, as ``try_cmd.rs`` makes it."""
    return "10ca1" + str(uuid.uuid4())[5:]


# --- the answers, read as the CLI's structs read them ---------------------------------------

def cli_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``ProblemDetails`` (camelCase): required ``title: String``, ``status: u16``,
    ``type: String``; optional ``traceId``, ``data: Value``. ``detail`` is not read, so the
    human message must be in ``data``."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["status"], int) and body["status"] == status
    assert isinstance(body["type"], str)
    assert isinstance(body.get("traceId"), str) and body["traceId"]
    assert body["traceId"] == response.headers["x-trace-id"]
    data = body.get("data")
    assert isinstance(data, list) and data and all(isinstance(x, str) and x for x in data), body
    return body


def standard_ok(response: httpx.Response) -> None:
    """``StandardRes {status}``: the CLI checks ``status.to_lowercase() == "ok"``."""
    assert response.status_code == 200, response.text
    assert str(response.json()["status"]).lower() == "ok"


def try_setup_res(response: httpx.Response) -> dict[str, Any]:
    """``TrySetupRes``: required ``blobVolume {cyan_id, session_id}``; optional ``sessionId``,
    ``sessionVolume``."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["blobVolume"]["cyan_id"], str)
    assert isinstance(body["blobVolume"]["session_id"], str)
    return body


# --- the bodies the CLI sends ---------------------------------------------------------------

def synthetic_template(local_id: str) -> dict[str, Any]:
    """The template ``try_cmd.rs`` sends with a try: principal id = localTemplateId, version 0."""
    return {
        "principal": {"id": local_id, "version": 0, "createdAt": "2025-01-01T00:00:00Z",
                      "description": "local", "properties": None},
        "template": {"id": local_id, "name": "local", "project": "", "source": "", "email": "",
                     "tags": [], "description": "", "readme": "", "userId": ""},
        "plugins": [], "processors": [], "templates": [], "resolvers": [], "commands": []}


def try_body(sid: str, local_id: str, path: Path) -> dict[str, Any]:
    """``TrySetupReq`` for ``cyanprint try template --dev``: ``imageRef`` omitted."""
    return {"sessionId": sid, "localTemplateId": local_id, "source": "path",
            "path": str(path), "template": synthetic_template(local_id),
            "mergerId": str(uuid.uuid4())}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("cli")
    dev = root / "dev"
    (dev / "tpl" / "src").mkdir(parents=True)
    (dev / "tpl" / "src" / "a.txt").write_text("hello\n")
    config = ServerConfig(registry=(str(EXAMPLE_REGISTRY),), dev_root=dev,
                          work_root=root / "work")
    with running_server(config) as running:
        running.app.state.test_dev = dev
        yield running
    assert boride_processes() == []


@pytest.fixture
def http(server: Running) -> Iterator[httpx.Client]:
    with cli_client(server) as client:
        yield client
    for sid in list(server.service.sessions):
        with server.client() as other:
            other.delete(f"/executor/{sid}")


# --- 2. DELETE of a session that is not here -------------------------------------------------

def test_delete_of_an_unknown_session_is_ok(http: httpx.Client) -> None:
    standard_ok(http.delete(f"/executor/{session_id()}"))


@pytest.mark.sandbox
def test_delete_after_expiry_is_ok_and_a_build_is_a_clear_404(tmp_path: Path) -> None:
    config = ServerConfig(registry=(str(EXAMPLE_REGISTRY),), work_root=tmp_path,
                          timeouts=Timeouts(session_idle=0.2))
    template = example_template()
    sid = session_id()
    with running_server(config) as server, cli_client(server) as http:
        r = http.post(f"/executor/{sid}/warm", json=template)
        assert r.status_code == 200, r.text
        wait_for(lambda: sid not in server.service.sessions, timeout=30)
        body = cli_problem(http.post(f"/executor/{sid}", json=example_build(template)), 404)
        assert sid in " ".join(body["data"])
        standard_ok(http.delete(f"/executor/{sid}"))
        standard_ok(http.delete(f"/executor/{sid}"))  # again: still nothing to remove


def test_the_default_session_lifetime_is_twelve_hours() -> None:
    assert Timeouts().session_idle == 12 * 3600


# --- 4. problems the CLI can show ------------------------------------------------------------

def test_every_kind_of_problem_parses_as_the_clis(server: Running, http: httpx.Client,
                                                  tmp_path: Path) -> None:
    # a service error, a route that does not exist, a wrong method
    cli_problem(http.post(f"/executor/{session_id()}", json=example_build(example_template())),
                404)
    cli_problem(http.get("/no/such/route"), 404)
    cli_problem(http.get("/executor/try"), 405)
    # validation: malformed JSON, a body of the wrong shape (the CLI's try without a template)
    cli_problem(http.post("/executor/try", content=b'{"sessionId": ',
                          headers={"content-type": "application/json"}), 400)
    body = try_body(session_id(), local_template_id(), tmp_path)
    del body["template"]
    data = cli_problem(http.post("/executor/try", json=body), 400)["data"]
    assert any("template" in m for m in data)
    # a try path outside the dev root
    data = cli_problem(http.post("/executor/try", json=try_body(
        session_id(), local_template_id(), tmp_path)), 403)["data"]
    assert any("--dev-root" in m for m in data)


def test_middleware_problems_parse_as_the_clis(tmp_path: Path) -> None:
    config = ServerConfig(registry=(str(EXAMPLE_REGISTRY),), work_root=tmp_path,
                          token="t" * 16, limits=Limits(max_body=2048))
    with running_server(config) as server, cli_client(server) as http:
        # the CLI sends no Authorization header: 401, and it says why
        data = cli_problem(http.post("/template/warm", json=example_template()), 401)["data"]
        assert any("Authorization" in m for m in data)
        big = {"x": "y" * 4096}
        auth = {"authorization": "Bearer " + "t" * 16}
        data = cli_problem(http.post("/template/warm", json=big, headers=auth), 413)["data"]
        assert any("limit" in m for m in data)


# --- 3. the try request and answer as the Go coordinator spells them -------------------------

def test_try_as_the_cli_sends_it(server: Running, http: httpx.Client) -> None:
    sid, local_id = session_id(), local_template_id()
    folder = server.app.state.test_dev / "tpl"
    body = try_body(sid, local_id, folder.resolve())
    assert "imageRef" not in body  # omitted when None, as serde does
    res = try_setup_res(http.post("/executor/try", json=body))
    assert res["blobVolume"] == {"cyan_id": local_id, "session_id": ""}
    assert res["sessionId"] == sid
    assert res["sessionVolume"] == {"cyan_id": local_id, "session_id": sid}
    standard_ok(http.delete(f"/executor/{sid}"))


def test_try_in_snake_case_still_works(server: Running, http: httpx.Client) -> None:
    sid, local_id = session_id(), local_template_id()
    folder = server.app.state.test_dev / "tpl"
    res = try_setup_res(http.post("/executor/try", json={
        "session_id": sid, "local_template_id": local_id, "source": "path",
        "path": str(folder), "image_ref": None, "template": synthetic_template(local_id),
        "merger_id": str(uuid.uuid4())}))
    assert res["sessionId"] == sid
    standard_ok(http.delete(f"/executor/{sid}"))


def test_try_from_an_image_on_the_local_runtime_is_a_problem_the_cli_shows(
        http: httpx.Client) -> None:
    """The local runtime cannot unpack a blob image: a problem saying what to do instead."""
    sid, local_id = session_id(), local_template_id()
    template = synthetic_template(local_id)
    template["principal"]["properties"] = {
        "blobDockerReference": "me/tpl-blob", "blobDockerTag": "1",
        "templateDockerReference": "me/tpl", "templateDockerTag": "1"}
    body = {"sessionId": sid, "localTemplateId": local_id, "source": "image",
            "imageRef": {"reference": "me/tpl", "tag": "1"},
            "template": template, "mergerId": str(uuid.uuid4())}
    data = cli_problem(http.post("/executor/try", json=body), 400)
    assert data["title"] == "Unusable template files"
    assert "me/tpl-blob:1" in data["detail"] and "--runtime docker" in data["detail"]


# --- 7. archives the CLI unpacks faithfully --------------------------------------------------

def cli_unpack(archive: bytes) -> dict[str, bytes]:
    """``TarGzUnpacker``: the first gzip member; folder entries skipped; every other entry a
    file with the entry's bytes (a link entry: an empty file)."""
    files: dict[str, bytes] = {}
    raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(archive)  # first member only
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for member in tar:
            if member.isdir() or ".git" in member.name.split("/"):
                continue
            f = tar.extractfile(member) if member.isfile() else None
            files[member.name] = f.read() if f is not None else b""
    return files


@pytest.fixture
def link_server(tmp_path: Path) -> Iterator[tuple[Running, dict[str, Any]]]:
    dev = tmp_path / "dev"
    (dev / "tpl" / "src").mkdir(parents=True)
    (dev / "tpl" / "src" / "a.txt").write_text("alpha\n")
    (dev / "tpl" / "README.md").write_text("read me\n")
    proc, links = entry("me/copy", "ok_processor"), entry("me/links", "link_plugin")
    registry = write_registry(tmp_path / "registry.yaml", processors=[proc], plugins=[links])
    config = ServerConfig(registry=(str(registry),), dev_root=dev, work_root=tmp_path / "work")
    local_id = local_template_id()
    template = synthetic_template(local_id)
    template["processors"] = [pinned(proc)]
    template["plugins"] = [pinned(links)]
    with running_server(config) as running:
        running.app.state.test_dev = dev
        yield running, template


def _build_with_links(server: Running, template: dict[str, Any],
                      links: dict[str, str]) -> httpx.Response:
    sid = session_id()
    with cli_client(server) as http:
        try_setup_res(http.post("/executor/try", json={
            **try_body(sid, template["principal"]["id"], server.app.state.test_dev / "tpl"),
            "template": template}))
        # the CLI's BuildReq: root null when absent
        r = http.post(f"/executor/{sid}", json={"template": template, "merger_id": str(
            uuid.uuid4()), "cyan": {
                "processors": [{"name": "me/copy", "config": None, "files": [
                    {"root": None, "glob": "**/*", "exclude": [], "type": "copy"}]}],
                "plugins": [{"name": "me/links", "config": {"links": links}}]}})
        standard_ok(http.delete(f"/executor/{sid}"))
    return r


@pytest.mark.sandbox
def test_in_tree_links_arrive_as_their_content(
        link_server: tuple[Running, dict[str, Any]]) -> None:
    server, template = link_server
    r = _build_with_links(server, template, {"docs/readme-link": "../README.md",
                                             "src/same": "a.txt", "alias": "src"})
    assert r.status_code == 200, r.text
    files = cli_unpack(r.content)
    assert files["src/a.txt"] == b"alpha\n"
    assert files["docs/readme-link"] == b"read me\n"
    assert files["src/same"] == b"alpha\n"
    assert files["alias/a.txt"] == b"alpha\n"  # a link to a folder: its files
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        assert not [m.name for m in tar if m.issym() or m.islnk()]


@pytest.mark.sandbox
def test_links_leading_out_are_a_problem_naming_the_path(
        link_server: tuple[Running, dict[str, Any]]) -> None:
    server, template = link_server
    r = _build_with_links(server, template, {"evil": "/etc/passwd"})
    data = cli_problem(r, 400)["data"]
    assert any("evil" in m for m in data), data


# --- 1. DELETE /cleanup (cyanprint daemon stop) ----------------------------------------------

class _Runtime(LocalRuntime):
    """The local runtime, saying what clean_all removed (never the real engine's: a test must
    not remove other runs' containers)."""

    def __init__(self, fail: str | None = None) -> None:
        super().__init__()
        self.fail = fail
        self.cleaned = 0

    async def clean_all(self) -> Cleaned:
        self.cleaned += 1
        if self.fail is not None:
            raise RuntimeFailure(self.fail)
        return Cleaned(("boride-x-proc",), ("boride-x-area",))


def cleanup_res(response: httpx.Response) -> dict[str, Any]:
    """``CleanupRes``: every field optional; the CLI warns unless status is ok and error
    empty."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


@pytest.mark.sandbox
def test_cleanup_removes_every_session_and_component(tmp_path: Path) -> None:
    runtime = _Runtime()
    config = ServerConfig(registry=(str(EXAMPLE_REGISTRY),), work_root=tmp_path)
    template = example_template()
    sids = [session_id(), session_id()]
    with running_server(config, runtime=runtime) as server, cli_client(server) as http:
        standard_ok(http.post("/template/warm", json=template))
        for sid in sids:
            warm = http.post(f"/executor/{sid}/warm", json=template)
            assert warm.status_code == 200, warm.text
            standard_ok(http.post("/executor", json={
                "session_id": sid, "template": template,
                "write_vol_reference": warm.json()["vol_ref"],
                "merger": {"merger_id": str(uuid.uuid4())}}))
        assert boride_processes() != []
        res = cleanup_res(http.delete("/cleanup"))
        assert str(res["status"]).lower() == "ok" and not res.get("error"), res
        assert sorted(res["sessions_removed"]) == sorted(sids) and res["sessions_count"] == 2
        assert res["containers_removed"] == ["boride-x-proc"] and res["containers_count"] == 1
        assert res["volumes_removed"] == ["boride-x-area"] and res["volumes_count"] == 1
        assert runtime.cleaned == 1
        assert boride_processes() == []  # sessions' and the template's components
        assert list(server.service.sessions) == []
        for sid in sids:
            standard_ok(http.delete(f"/executor/{sid}"))
        # the server lives on: a session afresh works
        assert http.post(f"/executor/{sids[0]}/warm", json=template).status_code == 200
        standard_ok(http.delete(f"/executor/{sids[0]}"))


def test_cleanup_says_what_is_left(tmp_path: Path) -> None:
    runtime = _Runtime(fail="could not remove boride-x-proc: engine busy")
    config = ServerConfig(registry=(str(EXAMPLE_REGISTRY),), work_root=tmp_path)
    with running_server(config, runtime=runtime) as server, cli_client(server) as http:
        res = cleanup_res(http.delete("/cleanup"))
        assert str(res["status"]).lower() != "ok"
        assert "boride-x-proc" in res["error"]


# --- 5. --dev-root defaults to the working directory on loopback ----------------------------

@pytest.mark.sandbox
def test_loopback_server_trys_below_its_working_directory(tmp_path: Path) -> None:
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "a.txt").write_text("a\n")
    with serving("--registry", EXAMPLE_REGISTRY, "--work-root", tmp_path / "work",
                 cwd=tmp_path) as (proc, url), httpx.Client(base_url=url, headers=CLI_HEADERS,
                                                            timeout=120) as http:
        sid, local_id = session_id(), local_template_id()
        try_setup_res(http.post("/executor/try", json=try_body(
            sid, local_id, (tmp_path / "tpl").resolve())))
        standard_ok(http.delete(f"/executor/{sid}"))
        # outside the working directory: still refused, and the CLI can show why
        data = cli_problem(http.post("/executor/try", json=try_body(
            session_id(), local_id, Path("/"))), 403)["data"]
        assert any("--dev-root" in m for m in data)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert f"below {tmp_path.resolve()}" in output


# --- 6. the trust model -----------------------------------------------------------------------

def test_a_public_address_needs_a_token_or_trusted_network() -> None:
    proc = run_cli("serve", "--host", "0.0.0.0")
    assert proc.returncode == 2 and "--trusted-network" in proc.stderr


@pytest.mark.sandbox
def test_trusted_network_serves_the_cli_without_a_token(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    with serving("--host", "0.0.0.0", "--trusted-network", "--registry", EXAMPLE_REGISTRY,
                 "--work-root", tmp_path / "work", cwd=tmp_path / "dev") as (proc, url), \
            httpx.Client(base_url=url, headers=CLI_HEADERS, timeout=120) as http:
        template = example_template()
        sid = session_id()
        standard_ok(http.post("/template/warm", json=template))
        assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
        standard_ok(http.delete(f"/executor/{sid}"))
        # not loopback: no implicit dev root, a try from a path stays refused
        cli_problem(http.post("/executor/try", json=try_body(
            session_id(), local_template_id(), (tmp_path / "dev").resolve())), 403)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert "WARNING: --trusted-network" in output
    assert "can run containers/processes as boride" in output
    assert boride_processes() == []


async def test_components_stay_refused_in_every_mode() -> None:
    app = create_app(ServerConfig(), runtime=_ComponentsOn())  # no token: trusted or loopback
    transport = httpx.ASGITransport(app=app, client=("172.30.4.2", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://boride") as http:
        for method, path in (("GET", "/"), ("DELETE", "/cleanup"),
                             ("DELETE", f"/executor/{session_id()}")):
            r = await http.request(method, path, headers=CLI_HEADERS)
            assert cli_problem(r, 403)["title"] == "Forbidden for components"


class _ComponentsOn(LocalRuntime):
    async def component_networks(self) -> ComponentNetworks:
        return ComponentNetworks((ipaddress.ip_network("172.30.0.0/16"),),
                                 frozenset({ipaddress.ip_address("172.30.0.1")}))


# --- 8. docs/api.md's example template is one the CLI would accept ---------------------------

def _doc_template() -> dict[str, Any]:
    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    start = text.index("cat > template.json <<'EOF'\n") + len("cat > template.json <<'EOF'\n")
    return dict(json.loads(text[start:text.index("\nEOF\n", start)]))


@pytest.mark.sandbox
def test_the_documented_template_is_a_complete_template_version(http: httpx.Client) -> None:
    t = _doc_template()
    p = t["principal"]
    assert isinstance(p["id"], str) and isinstance(p["version"], int)
    assert isinstance(p["createdAt"], str) and isinstance(p["description"], str)
    assert set(p["properties"]) == {"blobDockerReference", "blobDockerTag",
                                    "templateDockerReference", "templateDockerTag"}
    assert set(t["template"]) >= {"id", "name", "project", "source", "email", "tags",
                                  "description", "readme", "userId"}
    for kind in ("processors", "plugins"):
        for c in t[kind]:
            assert set(c) >= {"id", "version", "createdAt", "description", "dockerReference",
                              "dockerTag"}
    for r in t["resolvers"]:
        assert set(r) >= {"id", "version", "createdAt", "dockerReference", "dockerTag",
                          "config", "files"}
    assert isinstance(t["templates"], list) and isinstance(t["commands"], list)
    # and boride takes it, as the CLI sends it
    standard_ok(http.post("/template/warm", json=t))
    sid = session_id()
    warm = http.post(f"/executor/{sid}/warm", json=t)
    assert warm.status_code == 200, warm.text
    assert warm.json()["vol_ref"] == {"cyan_id": p["id"], "session_id": sid}
    standard_ok(http.delete(f"/executor/{sid}"))
    standard_ok(http.delete(f"/template/{p['id']}"))  # its shared resolver
