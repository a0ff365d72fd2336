"""A registry template's components as images, on ``boride serve --runtime docker``:

* its Q&A server from the template's own image (``principal.properties.templateDockerReference``
  /``Tag``), built here from the local base image: started by ``POST /template/warm``,
  answered through ``/proxy/template/{id}/...``, stopped by ``DELETE /template/{id}`` and by
  ``DELETE /cleanup``, nothing labelled left;
* processors, plugins and resolvers from the ``dockerReference:dockerTag`` the template pins,
  with registry file entries of just ``ref``, ``version`` and ``id``; a pinned image that is
  not on the engine is reported before anything starts.

The local runtime refuses a template whose Q&A server is only an image, or that has none, at
warm, with a problem saying why."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from boride.config import Timeouts
from boride.runtime.docker import LABEL_SESSION, connect
from boride.server import ServerConfig
from tests.conftest import boride_processes
from tests.docker_helpers import image_of, labelled
from tests.helpers import archive_files
from tests.test_server_support import (
    build_body,
    new_id,
    problem,
    running_server,
    template_body,
    wait_for,
    write_registry,
)

BASE = "boride/python-base:3.11"
QNA = '''
import http.server, json

class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answer({"Status": "OK", "Message": "OK"})

    def do_POST(self):
        got = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/api/template/validate":
            self.answer({"valid": None if got["validate"] else "must not be empty"})
        else:
            self.answer({"type": "final", "cyan": {"processors": [], "plugins": []},
                         "got": got})

http.server.ThreadingHTTPServer(("0.0.0.0", 5550), Handler).serve_forever()
'''


def _context(files: dict[str, str]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.fixture(scope="module")
def qna_image() -> Iterator[tuple[str, str]]:
    """(reference, tag) of a Q&A server image built from the base image; removed after."""
    reference, tag = f"local/boride-test-qna-{uuid.uuid4().hex[:12]}", "1"
    client = connect(timeout=300)
    try:
        dockerfile = (f"FROM {BASE}\nCOPY qna.py /qna.py\nUSER 65534:65534\n"
                      'CMD ["python3", "/qna.py"]\n')
        for chunk in client.api.build(fileobj=_context({"Dockerfile": dockerfile,
                                                        "qna.py": QNA}),
                                      custom_context=True, tag=f"{reference}:{tag}", rm=True,
                                      forcerm=True, decode=True):
            assert "error" not in chunk, chunk
        yield reference, tag
    finally:
        client.images.remove(f"{reference}:{tag}", force=True)
        client.close()


def qna_template(template_id: str, image: tuple[str, str], **components: Any) -> dict[str, Any]:
    body = template_body(template_id, **components)
    body["principal"]["properties"].update(templateDockerReference=image[0],
                                           templateDockerTag=image[1])
    return body


def pin_image(entry: dict[str, Any], component: str, **extra: Any) -> dict[str, Any]:
    reference, tag = image_of(component).rsplit(":", 1)
    return {"id": entry["id"], "version": entry["version"], "createdAt": "",
            "description": "", "dockerReference": reference, "dockerTag": tag, **extra}


def entry(ref: str) -> dict[str, Any]:
    """A registry file entry with nothing but what resolves a name to a pinned id."""
    return {"ref": ref, "version": 1, "id": new_id()}


def template_folder(tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "tpl"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "a.txt").write_text("alpha\n")
    return {"ref": "me/site", "version": 1, "id": new_id(), "path": str(folder)}


def containers(session: str) -> list[str]:
    """The containers of a session (not its volumes, ``cyan-{area,template}-<session>``)."""
    volumes = (f"cyan-area-{session}", f"cyan-template-{session}")
    return [n for n in labelled({LABEL_SESSION: session}) if n not in volumes]


def shared_session(server: Any, template_id: str) -> str:
    session = server.service.templates[template_id].session
    assert session is not None
    return str(session.id)


def init(http: Any, template_id: str) -> Any:
    r = http.post(f"/proxy/template/{template_id}/api/template/init",
                  json={"answers": {}, "deterministicStates": {"k": "v"}})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.docker
def test_qna_server_from_the_template_image(tmp_path: Path,
                                            qna_image: tuple[str, str]) -> None:
    tpl = template_folder(tmp_path)
    registry = write_registry(tmp_path / "r.yaml", templates=[tpl])
    template = qna_template(tpl["id"], qna_image)
    config = ServerConfig(runtime="docker", registry=(str(registry),),
                          work_root=tmp_path / "work")
    with running_server(config) as server, server.client() as http:
        assert http.post("/template/warm", json=template).json() == {"status": "OK"}
        shared = shared_session(server, tpl["id"])
        (container,) = containers(shared)
        assert container.startswith("cyan-template-template")
        assert init(http, tpl["id"])["got"] == {"answers": {},
                                                "deterministicStates": {"k": "v"}}
        r = http.post(f"/proxy/template/{tpl['id']}/api/template/validate",
                      json={"answers": {}, "deterministicStates": {}, "validate": ""})
        assert r.json() == {"valid": "must not be empty"}
        # warm again: the same container serves
        assert http.post("/template/warm", json=template).json() == {"status": "OK"}
        assert containers(shared) == [container]

        assert http.delete(f"/template/{tpl['id']}").json() == {"status": "OK"}
        assert labelled({LABEL_SESSION: shared}) == []
        problem(http.post(f"/proxy/template/{tpl['id']}/api/template/init", json={}), 404)

        assert http.post("/template/warm", json=template).json() == {"status": "OK"}
        assert init(http, tpl["id"])["type"] == "final"
        res = http.delete("/cleanup").json()
        assert res["status"] == "OK" and any(n.startswith("cyan-template-")
                                             for n in res["containers_removed"]), res
        assert labelled({LABEL_SESSION: shared}) == []
        problem(http.post(f"/proxy/template/{tpl['id']}/api/template/init", json={}), 404)
    assert labelled({LABEL_SESSION: shared}) == []


@pytest.mark.docker
def test_components_from_the_images_the_template_pins(tmp_path: Path,
                                                      qna_image: tuple[str, str]) -> None:
    tpl = template_folder(tmp_path)
    proc, plug, res = entry("me/ok"), entry("me/plug"), entry("me/join")
    registry = write_registry(tmp_path / "r.yaml", processors=[proc], plugins=[plug],
                              resolvers=[res], templates=[tpl])
    template = qna_template(tpl["id"], qna_image)
    template["processors"] = [pin_image(proc, "ok_processor")]
    template["plugins"] = [pin_image(plug, "ok_plugin")]
    template["resolvers"] = [pin_image(res, "ok_resolver", config={"separator": "|"},
                                       files=["src/**"])]
    config = ServerConfig(runtime="docker", registry=(str(registry),),
                          work_root=tmp_path / "work")
    sid = new_id()
    with running_server(config) as server, server.client() as http:
        assert http.post("/template/warm", json=template).json() == {"status": "OK"}
        shared = shared_session(server, tpl["id"])
        assert len(containers(shared)) == 2  # the Q&A server and the resolver
        assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
        r = http.post("/executor", json={"session_id": sid, "template": template,
                                         "merger": {"merger_id": "m"}})
        assert r.json() == {"status": "OK"}, r.text
        body = build_body(template, [("me/ok", {"suffix": "1"}), ("me/ok:1", {"suffix": "2"})],
                          [("me/plug", {"line": "p"})])
        r = http.post(f"/executor/{sid}", json=body)
        assert r.status_code == 200, r.text
        got = archive_files(r.content)["src/a.txt"]
        assert got == b"alpha\n1|alpha\n2p\n"
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert labelled({LABEL_SESSION: sid}) == []

        # a pinned image the engine does not have: said before anything starts
        missing = json.loads(json.dumps(template))
        missing["processors"][0]["dockerTag"] = "no-such-tag"
        other = new_id()
        data = problem(http.post(f"/executor/{other}/warm", json=missing), 400)
        assert any("local/boride-test-ok-processor:no-such-tag" in line
                   and "is not on the Docker engine" in line for line in data["data"]), data
        assert labelled({LABEL_SESSION: other}) == []
        assert http.delete(f"/template/{tpl['id']}").json() == {"status": "OK"}
    assert labelled({LABEL_SESSION: shared}) == []


def test_local_runtime_refuses_a_template_without_a_qna_server_it_can_run(
        tmp_path: Path) -> None:
    tpl = template_folder(tmp_path)
    registry = write_registry(tmp_path / "r.yaml", templates=[tpl])
    config = ServerConfig(registry=(str(registry),), work_root=tmp_path / "work")
    with running_server(config) as server, server.client() as http:
        data = problem(http.post("/template/warm", json=template_body(tpl["id"])), 400)
        assert data["title"] == "Template cannot be warmed"
        assert "has no Q&A server" in data["detail"]
        assert "templateDockerReference" in data["detail"]
        image = qna_template(tpl["id"], ("local/some-qna", "3"))
        data = problem(http.post("/template/warm", json=image), 400)
        assert "'local/some-qna:3'" in data["detail"] and "--runtime docker" in data["detail"]
        assert server.service.templates[tpl["id"]].session is None  # nothing started


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
def test_an_idle_template_stops_its_qna_server(tmp_path: Path) -> None:
    from tests.test_server import QNA_SERVER

    qna = tmp_path / "qna.py"
    qna.write_text(QNA_SERVER)
    tpl = {**template_folder(tmp_path), "command": [sys.executable, str(qna)]}
    registry = write_registry(tmp_path / "r.yaml", templates=[tpl])
    config = ServerConfig(registry=(str(registry),), work_root=tmp_path / "work",
                          timeouts=Timeouts(session_idle=1.5))
    with running_server(config) as server, server.client() as http:
        assert http.post("/template/warm", json=template_body(tpl["id"])).json() == \
            {"status": "OK"}
        for _ in range(4):  # used: it keeps running
            time.sleep(0.5)
            r = http.post(f"/proxy/template/{tpl['id']}/api/template/init", json={})
            assert r.status_code == 200, r.text
        # (a forked one shows its script's name, an unforked one its command line)
        assert any(qna.name in p for p in boride_processes())
        wait_for(lambda: tpl["id"] not in server.service.templates, timeout=30)
        wait_for(lambda: not any(qna.name in p for p in boride_processes()), timeout=30)
        problem(http.post(f"/proxy/template/{tpl['id']}/api/template/init", json={}), 404)
