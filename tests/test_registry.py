"""Registry back ends: the YAML file, and the HTTP client of the CyanPrint registry against a
real local HTTP server standing in for it; resolution against a template's pinned versions."""

from __future__ import annotations

import io
import json
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from boride.registry import (
    ChainRegistry,
    FileRegistry,
    HttpRegistry,
    NotFound,
    Reference,
    RegistryFileError,
    Unavailable,
    open_registry,
    parse_reference,
    resolve,
)
from boride.server import ServerConfig
from boride.types import Kind
from tests.conftest import EXAMPLES
from tests.test_server_support import (
    build_body,
    component,
    new_id,
    running_server,
    template_body,
    write_registry,
)

_ROUTE = re.compile(r"^/api/v1/(Processor|Plugin)/slug/([^/]+)/([^/]+)/versions/([^/]+)$")


class FakeCyanPrint:
    """The CyanPrint registry's version routes, served for real over HTTP on loopback."""

    def __init__(self) -> None:
        # (route kind, user, name) -> {version: id}
        self.versions: dict[tuple[str, str, str], dict[int, str]] = {}
        self.requests: list[str] = []
        self.status: int | None = None  # force an answer
        self.garbage = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                status, body = fake.answer(self.path)
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, kind: str, ref: str, version: int, id_: str | None = None) -> str:
        user, name = ref.split("/")
        id_ = id_ or new_id()
        self.versions.setdefault((kind, user, name), {})[version] = id_
        return id_

    def answer(self, path: str) -> tuple[int, Any]:
        if self.status is not None:
            return self.status, {"title": "forced"}
        if self.garbage:
            return 200, b"<html>not json</html>"
        m = _ROUTE.match(path)
        if m is None:
            return 404, {"title": "no route"}
        kind, user, name, which = m.groups()
        versions = self.versions.get((kind, user, name), {})
        if not versions:
            return 404, {"title": "not found"}
        version = max(versions) if which == "latest" else int(which)
        if version not in versions:
            return 404, {"title": "no such version"}
        return 200, {"principal": {"id": versions[version], "version": version,
                                   "created_at": "2025-01-01", "description": "",
                                   "dockerReference": f"cyanprint/{name}",
                                   "dockerTag": str(version)},
                     kind.lower(): {"id": new_id(), "name": name, "project": "", "source": "",
                                    "email": "", "tags": [], "description": "", "readme": "",
                                    "user_id": user}}


@pytest.fixture
def cyanprint() -> Iterator[FakeCyanPrint]:
    fake = FakeCyanPrint()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


# --- references -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("atomi/typescript", Reference("atomi", "typescript")),
    ("atomi/typescript:3", Reference("atomi", "typescript", 3)),
    ("a.b/c-d_e:12", Reference("a.b", "c-d_e", 12)),
])
def test_references(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected
    assert str(parse_reference(text)) == text


@pytest.mark.parametrize("text", ["typescript", "a/b/c", "a/b:", "a/b:x", "a/b:-1", "/b",
                                  "a/", "a b/c", "a/b:1:2", "../etc", ""])
def test_invalid_references(text: str) -> None:
    with pytest.raises(NotFound, match="invalid reference"):
        parse_reference(text)


# --- the YAML file --------------------------------------------------------------------------

def _file(tmp_path: Path, text: str) -> FileRegistry:
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    return FileRegistry.load(path)


async def test_file_registry_lookups(tmp_path: Path) -> None:
    (tmp_path / "tpl").mkdir()
    reg = _file(tmp_path, """
processors:
  - {ref: demo/upper, version: 1, id: p1, image: local/upper:1, command: [python3, upper.py]}
  - {ref: demo/upper, version: 3, id: p3, command: [python3, upper3.py]}
plugins:
  - {ref: demo/stamp, version: 2, id: s2, image: local/stamp:2}
resolvers:
  - {ref: demo/join, version: 1, id: j1, command: [python3, join.py]}
templates:
  - {ref: demo/site, version: 1, id: t1, path: tpl}
""")
    latest = await reg.version(Kind.PROCESSOR, Reference("demo", "upper"))
    assert (latest.id, latest.version, latest.label) == ("p3", 3, "demo/upper:3")
    one = await reg.version(Kind.PROCESSOR, Reference("demo", "upper", 1))
    assert one.image == "local/upper:1" and one.command == ("python3", "upper.py")
    assert one.cwd == tmp_path.resolve()  # commands run in the file's folder
    c = one.component()
    assert (c.name, c.kind, c.command, c.image) == ("demo/upper:1", Kind.PROCESSOR,
                                                   ("python3", "upper.py"), "local/upper:1")
    assert (await reg.by_id(Kind.PLUGIN, "s2")).ref == "demo/stamp"  # type: ignore[union-attr]
    assert await reg.by_id(Kind.PROCESSOR, "s2") is None  # ids are per kind
    tpl = await reg.by_id(Kind.TEMPLATE, "t1")
    assert tpl is not None and tpl.path == (tmp_path / "tpl").resolve()
    with pytest.raises(NotFound, match="has no version 2 \\(known: 1, 3\\)"):
        await reg.version(Kind.PROCESSOR, Reference("demo", "upper", 2))
    with pytest.raises(NotFound, match="unknown plugin 'demo/upper'"):
        await reg.version(Kind.PLUGIN, Reference("demo", "upper"))


async def test_the_example_registry_matches_the_example_pipeline() -> None:
    reg = FileRegistry.load(EXAMPLES / "registry.yaml")
    for name in ("upper", "substitute", "license"):
        e = await reg.version(Kind.PROCESSOR, Reference("boride", name))
        assert e.command == ("python3", f"processors/{name}.py")
        assert (EXAMPLES / e.command[1]).is_file()
    (tpl,) = reg.entries(Kind.TEMPLATE)
    assert tpl.path == (EXAMPLES / "template").resolve()


@pytest.mark.parametrize("text, message", [
    ("processors: [{ref: a/b, version: 1}]", "processors.0.id: required field is missing"),
    ("processors: [{ref: a/b, version: 1, id: x, colour: red}]",
     "processors.0.colour: unknown field"),
    ("processors: [{ref: nope, version: 1, id: x}]", "processors.0.ref: String should match"),
    ("processors: [{ref: a/b, version: 0, id: x}]", "processors.0.version"),
    ("gadgets: []", "gadgets: unknown field"),
    ("processors: [{ref: a/b, version: 1, id: x}, {ref: a/c, version: 1, id: x}]",
     "id 'x' is used twice"),
    ("plugins: [{ref: a/b, version: 1, id: x}, {ref: a/b, version: 1, id: y}]",
     "a/b version 1 is listed twice"),
    ("templates: [{ref: a/b, version: 1, id: x, path: missing}]", "is not a folder"),
    ("processors: [", "not valid YAML"),
    ("- 1", "expected a mapping"),
])
def test_file_registry_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RegistryFileError) as info:
        _file(tmp_path, text)
    assert message in str(info.value)
    assert str(tmp_path / "registry.yaml") in str(info.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    assert _file(tmp_path, "").entries(Kind.PROCESSOR) == []
    with pytest.raises(RegistryFileError, match="cannot read"):
        FileRegistry.load(tmp_path / "nope.yaml")


# --- the CyanPrint registry over HTTP ----------------------------------------------------

async def test_http_registry_versions_and_latest(cyanprint: FakeCyanPrint) -> None:
    ids = {v: cyanprint.add("Processor", "atomi/ts", v) for v in (1, 2, 5)}
    reg = HttpRegistry(cyanprint.url)
    try:
        two = await reg.version(Kind.PROCESSOR, Reference("atomi", "ts", 2))
        assert (two.id, two.version, two.image) == (ids[2], 2, "cyanprint/ts:2")
        assert two.command is None  # the CyanPrint registry knows images only
        latest = await reg.version(Kind.PROCESSOR, Reference("atomi", "ts"))
        assert (latest.id, latest.version) == (ids[5], 5)
        assert cyanprint.requests == ["/api/v1/Processor/slug/atomi/ts/versions/2",
                                      "/api/v1/Processor/slug/atomi/ts/versions/latest"]
        # fixed versions never change: asked once; "latest" is asked each time
        await reg.version(Kind.PROCESSOR, Reference("atomi", "ts", 2))
        await reg.version(Kind.PROCESSOR, Reference("atomi", "ts", 5))
        await reg.version(Kind.PROCESSOR, Reference("atomi", "ts"))
        assert len(cyanprint.requests) == 3
        with pytest.raises(NotFound, match="unknown processor 'atomi/ts' version 3"):
            await reg.version(Kind.PROCESSOR, Reference("atomi", "ts", 3))
        with pytest.raises(NotFound, match="unknown plugin 'atomi/ts'"):
            await reg.version(Kind.PLUGIN, Reference("atomi", "ts"))
        pid = cyanprint.add("Plugin", "atomi/stamp", 1)
        stamp = await reg.version(Kind.PLUGIN, Reference("atomi", "stamp", 1))
        assert stamp.id == pid and cyanprint.requests[-1].startswith("/api/v1/Plugin/slug/")
        assert await reg.by_id(Kind.PROCESSOR, ids[2]) is None  # not searchable by id
    finally:
        await reg.aclose()


async def test_http_registry_failures_are_unavailable(cyanprint: FakeCyanPrint) -> None:
    cyanprint.add("Processor", "atomi/ts", 1)
    reg = HttpRegistry(cyanprint.url)
    try:
        cyanprint.status = 500
        with pytest.raises(Unavailable, match="answered HTTP 500"):
            await reg.version(Kind.PROCESSOR, Reference("atomi", "ts", 1))
        cyanprint.status = None
        cyanprint.garbage = True
        with pytest.raises(Unavailable, match="unusable body"):
            await reg.version(Kind.PROCESSOR, Reference("atomi", "ts", 1))
    finally:
        await reg.aclose()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = HttpRegistry(f"http://127.0.0.1:{port}", timeout=2)
    try:
        with pytest.raises(Unavailable, match="cannot be reached"):
            await down.version(Kind.PROCESSOR, Reference("atomi", "ts"))
    finally:
        await down.aclose()


# --- resolution against the pinned versions ------------------------------------------------

async def test_resolve_walks_down_to_the_newest_pinned_version(
        cyanprint: FakeCyanPrint) -> None:
    ids = {v: cyanprint.add("Processor", "atomi/ts", v) for v in range(1, 21) if v != 7}
    reg = HttpRegistry(cyanprint.url)
    try:
        # the newest version is pinned: one request
        assert (await resolve(reg, Kind.PROCESSOR, "atomi/ts", [ids[20]])).version == 20
        assert len(cyanprint.requests) == 1
        # registry latest is 20, the template pins 3 and 5: 5, found walking down (7 is gone)
        found = await resolve(reg, Kind.PROCESSOR, "atomi/ts", [ids[3], ids[5]])
        assert (found.version, found.id) == (5, ids[5])
        # with a version: that one, if pinned
        assert (await resolve(reg, Kind.PROCESSOR, "atomi/ts:3", [ids[3], ids[5]])).id == ids[3]
        with pytest.raises(NotFound, match="not one of the versions pinned"):
            await resolve(reg, Kind.PROCESSOR, "atomi/ts:4", [ids[3], ids[5]])
        with pytest.raises(NotFound, match="none of its versions \\(1 to 20\\) is pinned"):
            await resolve(reg, Kind.PROCESSOR, "atomi/ts", ["other"])
        with pytest.raises(NotFound, match="invalid reference"):
            await resolve(reg, Kind.PROCESSOR, "ts", [ids[3]])
        cyanprint.status = 503
        with pytest.raises(Unavailable):
            await resolve(reg, Kind.PROCESSOR, "atomi/ts", ["other"])
    finally:
        await reg.aclose()


async def test_chain_asks_each_registry_in_turn(tmp_path: Path,
                                               cyanprint: FakeCyanPrint) -> None:
    local = _file(tmp_path, "processors: [{ref: me/local, version: 1, id: l1, "
                            "command: [python3, x.py]}]")
    remote_id = cyanprint.add("Processor", "atomi/ts", 1)
    chain = open_registry([tmp_path / "registry.yaml", cyanprint.url])
    assert isinstance(chain, ChainRegistry)
    try:
        assert (await chain.version(Kind.PROCESSOR, Reference("me", "local"))).id == "l1"
        assert (await chain.version(Kind.PROCESSOR, Reference("atomi", "ts"))).id == remote_id
        assert (await chain.by_id(Kind.PROCESSOR, "l1")) is not None
        with pytest.raises(NotFound) as info:
            await chain.version(Kind.PROCESSOR, Reference("atomi", "nope"))
        assert "not in" in str(info.value) and "answered 404" in str(info.value)
    finally:
        await chain.aclose()
    assert local.entries(Kind.PROCESSOR)[0].id == "l1"
    assert isinstance(open_registry([]), FileRegistry)
    assert isinstance(open_registry([cyanprint.url]), HttpRegistry)


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
def test_server_resolves_names_through_the_cyanprint_registry(
        tmp_path: Path, cyanprint: FakeCyanPrint) -> None:
    """Names come from the CyanPrint registry; the ids it answers are run with the commands a
    registry file gives for them (the file does not know the names)."""
    v1 = cyanprint.add("Processor", "atomi/copy", 1)
    v2 = cyanprint.add("Processor", "atomi/copy", 2)
    cyanprint.add("Processor", "atomi/copy", 3)  # newer, not pinned
    local = write_registry(tmp_path / "commands.yaml", processors=[
        {"ref": "local/copy-one", "version": 1, "id": v1, "command": component("ok_processor")},
        {"ref": "local/copy-two", "version": 1, "id": v2, "command": component("ok_processor")},
    ])
    dev = tmp_path / "dev"
    (dev / "t").mkdir(parents=True)
    (dev / "t" / "a.txt").write_text("a")
    config = ServerConfig(registry=(cyanprint.url, str(local)), dev_root=dev,
                          work_root=tmp_path / "work")
    template = template_body("local-t", [{"id": v1, "version": 1}, {"id": v2, "version": 2}])
    sid = new_id()
    with running_server(config) as server, server.client() as http:
        assert http.post("/executor/try", json={
            "session_id": sid, "local_template_id": "local-t", "source": "path",
            "path": "t", "template": template, "merger_id": "m"}).status_code == 200
        body = build_body(template, [("atomi/copy", {"suffix": "!"})])
        r = http.post(f"/executor/{sid}", json=body)
        assert r.status_code == 200, r.text
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            assert tar.extractfile("a.txt").read() == b"a!"  # type: ignore[union-attr]
        # resolved to version 2 (newest pinned), run under the file's name for that id
        assert list(server.service.sessions[sid].session.instances) == ["local/copy-two:1"]
        assert "/api/v1/Processor/slug/atomi/copy/versions/latest" in cyanprint.requests
        cyanprint.status = 500
        r = http.post(f"/executor/{sid}", json=build_body(template, [("atomi/other:1", None)]))
        assert r.status_code == 502 and r.json()["title"] == "Registry unavailable"
        http.delete(f"/executor/{sid}")
