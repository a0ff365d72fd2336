"""A registry template that exists only as images, driven the way the CyanPrint CLI (Iridium
2.24.0, ``../shared/iridium-client.md``) drives the coordinator (issue 12):

* the **blob image** holds the template's files as a tar.gz laid out like the CLI's blob images
  (``e2e/template1/blob.Dockerfile``: one top folder, unpacked with ``--strip-components=1``
  by the image's own command into ``/workspace/cyanprint``);
* the **Q&A image** answers ``/api/template/init`` and ``/validate`` with the wire bodies of a
  cyanprintsdk template server (one text question, then the example's build plan);
* the components are the example's images (``local/boride-example-*:1``), pinned by the
  template body (``dockerReference``/``dockerTag``); the registry file has only ``ref``,
  ``version`` and ``id`` for them and no ``templates:`` entry at all.

``cyanprint create``: ``POST /template/warm`` and ``POST /executor/{sid}/warm`` concurrently,
then ``POST /executor`` and the Q&A loop through ``/proxy/template/{id}/...`` concurrently,
then the build with the cyan the Q&A produced, unpacked as the CLI does and compared with
``examples/expected`` file by file, then ``DELETE /executor/{sid}``. A second session of the
same template version must not run the blob image again (counted from the engine's events).

``cyanprint try`` (normal mode) and ``cyanprint test template``: ``POST /executor/try`` with
``source: "image"``. As the CLI sends it (``cyanprint/src/try_cmd.rs``), ``imageRef`` is the
*template* (Q&A) image, and the blob image is named only by the synthetic template's
``principal.properties.blobDockerReference/Tag``, which is also where the Go coordinator takes
it from (``docker_executor/try_executor.go`` ``populateBlobFromImage``).

The images are built here from the local base image and removed afterwards.
"""

from __future__ import annotations

import gzip
import io
import json
import secrets
import signal
import string
import tarfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from boride.runtime.docker import LABEL_SESSION, connect
from boride.server.templates import _session_id as template_session
from tests.conftest import EXAMPLES
from tests.docker_helpers import build_test_image, labelled, remove_test_images
from tests.helpers import tree
from tests.test_daemon_container import (  # noqa: F401  (fixtures, used by name)
    Daemon,
    assert_only_volumes,
    daemon,
    engine,
    serve_image,
)
from tests.test_server_cli import serving
from tests.test_server_support import EXAMPLE_REGISTRY, example_build, new_id, write_registry

BASE = "boride/python-base:3.11"
RUN = uuid.uuid4().hex[:12]
ANSWER = "cyan"  # what the user types for the Q&A's one question
EXAMPLE = yaml.safe_load(EXAMPLE_REGISTRY.read_text())
BLOB_FAILURE = "blob: cannot unpack, the archive is damaged"

QNA = '''
import http.server, json

CYAN = json.loads(@CYAN@)
QUESTION = {"message": "Which name goes into the greetings?", "id": "name", "default": None,
            "desc": None, "initial": None, "type": "text"}


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answer({"Message": "OK", "Status": "OK"})

    def do_POST(self):
        got = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/api/template/validate":
            self.answer({"valid": None if got["validate"].strip() else "a name is required"})
        elif self.path == "/api/template/init":
            name = got["answers"].get("name")
            if name is None:
                self.answer({"deterministicState": got["deterministicStates"],
                             "question": QUESTION, "type": "questionnaire"})
                return
            cyan = json.loads(json.dumps(CYAN))
            for p in cyan["processors"]:
                if "name" in p["config"]:
                    p["config"]["name"] = name["answer"]
            self.answer({"cyan": cyan, "type": "final"})
        else:
            self.answer({"error": "no such route"}, 404)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", 5550), Handler).serve_forever()
'''


@dataclass(frozen=True)
class Images:
    blob: tuple[str, str]  # (reference, tag)
    qna: tuple[str, str]
    failing_blob: tuple[str, str]


def ref(image: tuple[str, str]) -> str:
    return f"{image[0]}:{image[1]}"


def expected_cyan(name: str = ANSWER) -> dict[str, Any]:
    """The build plan of examples/pipeline.yaml (its ``copy`` glob of ``assets/*``
    included), with the name answered."""
    cyan: dict[str, Any] = json.loads(json.dumps(example_build({})["cyan"]))
    for p in cyan["processors"]:
        if "name" in p["config"]:
            p["config"]["name"] = name
    return cyan


def blob_archive(folder: Path, top: str = "template") -> bytes:
    """``folder`` as the CLI's blob images hold it: one top folder, root-owned, readable by
    everyone (directories included, as ``tar -czf`` of a folder writes them)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path in [folder, *sorted(folder.rglob("*"))]:
            name = "/".join(filter(None, [top, path.relative_to(folder).as_posix().strip(".")]))
            info = tar.gettarinfo(str(path), name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_dir():
                tar.addfile(info)
            else:
                with path.open("rb") as f:
                    tar.addfile(info, f)
    return gzip.compress(raw.getvalue(), mtime=0)


def blob_dockerfile(command: str) -> str:
    return (f"FROM {BASE}\nCOPY cyan.tar.gz /cyanprint/artifact/cyan.tar.gz\n"
            f"WORKDIR /workspace\nCMD {command}\n")


@pytest.fixture(scope="module")
def images() -> Iterator[Images]:
    """The blob, Q&A and failing blob images of this module, built from the base image."""
    made = Images((f"local/boride-test-blob-{RUN}", "1"), (f"local/boride-test-qna-{RUN}", "1"),
                  (f"local/boride-test-blob-fail-{RUN}", "1"))
    try:
        unpack = json.dumps(["tar", "-xzf", "/cyanprint/artifact/cyan.tar.gz", "-C",
                             "/workspace/cyanprint", "--strip-components=1"])
        build_test_image(ref(made.blob), blob_dockerfile(unpack),
                         {"cyan.tar.gz": blob_archive(EXAMPLES / "template")})
        fail = json.dumps(["sh", "-c", f"echo '{BLOB_FAILURE}' >&2; exit 3"])
        build_test_image(ref(made.failing_blob), blob_dockerfile(fail),
                         {"cyan.tar.gz": b"not a tar.gz"})
        qna = QNA.replace("@CYAN@", repr(json.dumps(expected_cyan())))
        build_test_image(ref(made.qna), f"FROM {BASE}\nCOPY qna.py /qna.py\nUSER 65534:65534\n"
                                        'CMD ["python3", "/qna.py"]\n', {"qna.py": qna})
        yield made
    finally:
        remove_test_images(ref(made.blob), ref(made.qna), ref(made.failing_blob))


# --- the bodies the CLI sends -----------------------------------------------------------------

def pin(entry: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A component as a registry template pins it (``TemplateVersionRes`` processors...)."""
    reference, tag = str(entry["image"]).rsplit(":", 1)
    return {"id": entry["id"], "version": entry["version"], "createdAt": "2025-06-01T00:00:00Z",
            "description": f"{entry['ref']} v{entry['version']}", "dockerReference": reference,
            "dockerTag": tag, **extra}


def image_template(template_id: str, images: Images, blob: tuple[str, str] | None = None,
                   version: int = 1) -> dict[str, Any]:
    """The ``TemplateVersionRes`` of a template that exists only as images, as the CLI
    re-serializes it (``cyanregistry/src/http/models/template_res.rs``)."""
    blob = blob or images.blob
    concat = EXAMPLE["resolvers"][0]
    return {
        "principal": {"id": template_id, "version": version,
                      "createdAt": "2025-06-01T00:00:00Z", "description": "the example",
                      "properties": {"blobDockerReference": blob[0], "blobDockerTag": blob[1],
                                     "templateDockerReference": images.qna[0],
                                     "templateDockerTag": images.qna[1]}},
        "template": {"id": new_id(), "name": "example", "project": "https://example.invalid",
                     "source": "https://example.invalid/src", "email": "me@example.invalid",
                     "tags": ["boride"], "description": "the example", "readme": "# example",
                     "userId": new_id()},
        "processors": [pin(e) for e in EXAMPLE["processors"]],
        "plugins": [pin(e) for e in EXAMPLE["plugins"]],
        "templates": [],
        "resolvers": [pin(concat, config={"separator": "----\n"}, files=["src/**"])],
        "commands": [],
    }


def cli_session_id() -> str:
    """``DefaultSessionIdGenerator``: 10 random ASCII alphanumerics."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(10))


def local_template_id() -> str:
    """What ``cyanprint try`` names its synthetic template: "10ca1" + a uuid's tail."""
    return "10ca1" + str(uuid.uuid4())[5:]


def components_only_registry(path: Path) -> Path:
    """The example's components with nothing but ``ref``, ``version`` and ``id``; no
    templates."""
    def bare(section: str) -> list[dict[str, Any]]:
        return [{k: e[k] for k in ("ref", "version", "id")} for e in EXAMPLE[section]]
    return write_registry(path, processors=bare("processors"), plugins=bare("plugins"),
                          resolvers=bare("resolvers"))


# --- the CLI's flows --------------------------------------------------------------------------

def post(url: str, path: str, body: Any) -> httpx.Response:
    """One call as the CLI makes it: a new client, JSON body, no token, 600 s."""
    with httpx.Client(base_url=url, timeout=600) as http:
        return http.post(path, json=body)


def ok(r: httpx.Response) -> Any:
    assert 200 <= r.status_code < 300, (r.request.url.path, r.status_code, r.text[:3000])
    return r.json()


def qna_loop(url: str, template_id: str) -> dict[str, Any]:
    """``TemplateEngine::start_with`` through the coordinator's proxy: init, validate the
    typed answer, init again with it, until the answer is final; returns its cyan."""
    base = f"/proxy/template/{template_id}/api/template"
    answers: dict[str, Any] = {}
    states: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(5):
            res = ok(http.post(f"{base}/init", json={"answers": answers,
                                                     "deterministicStates": states}))
            if res["type"] == "final":
                return dict(res["cyan"])
            question = res["question"]
            assert question["type"] == "text", res
            valid = ok(http.post(f"{base}/validate", json={
                "answers": answers, "deterministicStates": states, "validate": ANSWER}))
            assert valid == {"valid": None}, valid
            answers = {**answers, question["id"]: {"type": "string", "answer": ANSWER}}
            states = dict(res["deterministicState"])
    raise AssertionError("the Q&A never answered a final build plan")


def build_and_delete(url: str, sid: str, template: dict[str, Any], cyan: dict[str, Any],
                     merger_id: str) -> dict[str, bytes]:
    """(6) the build, unpacked the way the CLI's create does; then (7) the delete."""
    r = post(url, f"/executor/{sid}", {"template": template, "cyan": cyan,
                                       "merger_id": merger_id})
    assert r.status_code == 200, r.text[:3000]
    files = unpack_like_the_cli(r.content)
    with httpx.Client(base_url=url, timeout=600) as http:
        assert ok(http.delete(f"/executor/{sid}")) == {"status": "OK"}
    return files


def cli_create(url: str, template: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
    """``cyanprint create``'s calls for one template, in its order: (session id, files)."""
    sid, merger_id = cli_session_id(), str(uuid.uuid4())
    with ThreadPoolExecutor(2) as pool:
        warm_template = pool.submit(post, url, "/template/warm", template)
        warm_executor = pool.submit(post, url, f"/executor/{sid}/warm", template)
        warmed = ok(warm_executor.result())
        assert str(ok(warm_template.result())["status"]).lower() == "ok"
    assert warmed["session_id"] == sid and set(warmed["vol_ref"]) == {"cyan_id", "session_id"}
    sid = warmed["session_id"]
    start = {"session_id": sid, "template": template, "write_vol_reference": warmed["vol_ref"],
             "merger": {"merger_id": merger_id}}
    with ThreadPoolExecutor(2) as pool:
        bootstrap = pool.submit(post, url, "/executor", start)
        qna = pool.submit(qna_loop, url, template["principal"]["id"])
        assert str(ok(bootstrap.result())["status"]).lower() == "ok"
        cyan = qna.result()
    assert cyan == expected_cyan()
    return sid, build_and_delete(url, sid, template, cyan, merger_id)


def try_body(sid: str, images: Images) -> dict[str, Any]:
    """``TrySetupReq`` of normal-mode ``cyanprint try`` / ``cyanprint test template``."""
    local_id = local_template_id()
    template = image_template(local_id, images, version=0)
    template["principal"]["createdAt"] = "2025-06-01T12:00:00.123456+00:00"
    template["template"].update(id="example", name="example", userId="local")
    return {"sessionId": sid, "localTemplateId": local_id, "source": "image",
            "imageRef": {"reference": images.qna[0], "tag": images.qna[1]},
            "template": template, "mergerId": str(uuid.uuid4())}


def cli_try(url: str, images: Images) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    """``cyanprint try`` (normal mode): (9) try, [Q&A against its own template container:
    its answer is ``expected_cyan()``], (2) warm, (3) bootstrap, (6) build, (7) delete."""
    sid = cli_session_id()
    body = try_body(sid, images)
    res = ok(post(url, "/executor/try", body))
    assert set(res["blobVolume"]) >= {"cyan_id", "session_id"}, res
    template = body["template"]
    warmed = ok(post(url, f"/executor/{sid}/warm", template))
    start = {"session_id": sid, "template": template, "write_vol_reference": warmed["vol_ref"],
             "merger": {"merger_id": body["mergerId"]}}
    ok(post(url, "/executor", start))
    return sid, template, build_and_delete(url, sid, template, expected_cyan(),
                                           body["mergerId"])


# --- checks -----------------------------------------------------------------------------------

def unpack_like_the_cli(data: bytes) -> dict[str, bytes]:
    """``TarGzUnpacker``: the first gzip member, directories and ``.git`` paths skipped,
    every other entry a file (here: checked to be a regular file)."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isdir() or ".git" in member.name.split("/"):
                continue
            assert member.isfile(), f"{member.name}: not a regular file"
            f = tar.extractfile(member)
            assert f is not None
            files[member.name] = f.read()
    return files


def expected_files() -> dict[str, bytes]:
    return tree(EXAMPLES / "expected", dirs=False)


def assert_expected(files: dict[str, bytes]) -> None:
    expected = expected_files()
    assert sorted(files) == sorted(expected)
    for name, content in expected.items():
        assert files[name] == content, f"{name} differs:\n{files[name]!r}\n!=\n{content!r}"


def containers_from(image: tuple[str, str], since: float) -> int:
    """How many containers the engine created from ``image`` since ``since`` (by its
    events: the blob container is removed once it has run)."""
    client = connect(timeout=60)
    try:
        names = {ref(image), str(client.images.get(ref(image)).id)}
        events = client.events(since=int(since), until=int(time.time()) + 1, decode=True,
                               filters={"type": "container", "event": "create"})
        return sum(1 for e in events if int(e.get("timeNano", 0)) >= since * 1e9
                   and (e.get("from") in names
                        or e.get("Actor", {}).get("Attributes", {}).get("image") in names))
    finally:
        client.close()


def left_from(image: tuple[str, str]) -> list[str]:
    client = connect(timeout=60)
    try:
        return [str(c["Names"][0]) for c in
                client.api.containers(all=True, filters={"ancestor": ref(image)})]
    finally:
        client.close()


def stop(proc: Any) -> str:
    """Ctrl-C ``boride serve`` (it removes what it holds; SIGTERM would leave it on the engine
    for the next server) and wait for it."""
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    return str(output)


# --- the tests --------------------------------------------------------------------------------

@pytest.mark.docker
def test_cli_create_flow_with_image_template(tmp_path: Path, images: Images) -> None:
    registry = components_only_registry(tmp_path / "registry.yaml")
    template = image_template(new_id(), images)
    shared = template_session(template["principal"]["id"])
    started = time.time()
    with serving("--runtime", "docker", "--registry", registry, "--work-root",
                 tmp_path / "work") as (proc, url):
        first, files = cli_create(url, template)
        assert_expected(files)
        assert labelled({LABEL_SESSION: first}) == []
        # a second session of the same template version: the files are already there
        second, files = cli_create(url, template)
        assert_expected(files)
        assert labelled({LABEL_SESSION: second}) == []
        assert containers_from(images.blob, started) == 1
        output = stop(proc)
    assert "Application shutdown complete" in output, output
    assert labelled({LABEL_SESSION: shared}) == []
    assert left_from(images.blob) == []


@pytest.mark.docker
def test_cli_try_with_source_image(tmp_path: Path, images: Images) -> None:
    registry = components_only_registry(tmp_path / "registry.yaml")
    started = time.time()
    with serving("--runtime", "docker", "--registry", registry, "--work-root",
                 tmp_path / "work") as (proc, url):
        sid, _, files = cli_try(url, images)
        assert_expected(files)
        assert labelled({LABEL_SESSION: sid}) == []
        assert containers_from(images.blob, started) == 1
        # the Q&A image named by imageRef is not run as a blob (the CLI runs it itself)
        assert containers_from(images.qna, started) == 0
        output = stop(proc)
    assert "Application shutdown complete" in output, output
    assert left_from(images.blob) == []


def first_failure(url: str, template: dict[str, Any], sid: str) -> httpx.Response:
    """The CLI's create calls up to the first that fails (warm, session warm, bootstrap)."""
    for path, body in (("/template/warm", template), (f"/executor/{sid}/warm", template),
                       ("/executor", {"session_id": sid, "template": template,
                                      "write_vol_reference": {"cyan_id": "", "session_id": sid},
                                      "merger": {"merger_id": str(uuid.uuid4())}})):
        r = post(url, path, body)
        if r.status_code >= 300:
            return r
    raise AssertionError("a template whose blob image fails was warmed and started")


@pytest.mark.docker
def test_blob_image_failure_is_reported(tmp_path: Path, images: Images) -> None:
    registry = components_only_registry(tmp_path / "registry.yaml")
    template = image_template(new_id(), images, blob=images.failing_blob)
    sid = cli_session_id()
    with serving("--runtime", "docker", "--registry", registry, "--work-root",
                 tmp_path / "work") as (proc, url):
        r = first_failure(url, template, sid)
        assert r.status_code != 500 and 400 <= r.status_code < 600, r.text
        data = r.json()
        assert {"title", "status", "type", "data"} <= set(data), data  # what the CLI reads
        said = json.dumps(data)
        assert ref(images.failing_blob) in said and BLOB_FAILURE in said, data
        assert "3" in said, data  # its exit code
        httpx.delete(f"{url}/executor/{sid}", timeout=60)  # as the CLI does on an error
        assert labelled({LABEL_SESSION: sid}) == []
        output = stop(proc)
    assert "Application shutdown complete" in output, output
    assert labelled({LABEL_SESSION: template_session(template["principal"]["id"])}) == []
    assert left_from(images.failing_blob) == []


@pytest.mark.docker
def test_cli_flows_against_the_daemon_container(daemon: Daemon,  # noqa: F811
                                                images: Images) -> None:
    """The same create and try against ``boride/serve:latest`` run as the CLI runs it; the
    blob container mounts engine volumes only."""
    template = image_template(new_id(), images)
    mark = len(daemon.recorder.seen)
    sid, files = cli_create(daemon.url, template)
    daemon.made(sid, template)
    assert_expected(files)
    try_sid, try_template, files = cli_try(daemon.url, images)
    daemon.made(try_sid, try_template)
    assert_expected(files)
    seen = daemon.recorder.since(mark)
    assert any(s.labels.get("image") == ref(images.blob) for s in seen), seen
    assert_only_volumes(daemon, seen)
    assert labelled({LABEL_SESSION: sid}) == [] and labelled({LABEL_SESSION: try_sid}) == []


@pytest.mark.sandbox
def test_local_runtime_refuses_a_blob_only_template(tmp_path: Path) -> None:
    """No engine: the files of a template that exists only as a blob image cannot be had.
    The session warm the CLI sends with the template warm, and a try with ``source:
    "image"``, answer 400 naming the image and saying what to do; the template warm answers
    400 too (for its blob, or for its Q&A server, which is also only an image)."""
    images = Images(("local/some-blob", "7"), ("local/some-qna", "7"), ("local/x", "1"))
    registry = components_only_registry(tmp_path / "registry.yaml")
    template = image_template(new_id(), images)
    with serving("--registry", registry, "--work-root", tmp_path / "work") as (proc, url):
        r = post(url, "/template/warm", template)
        assert r.status_code == 400 and "--runtime docker" in r.text, r.text
        sid = cli_session_id()
        for path, body in ((f"/executor/{sid}/warm", template),
                           ("/executor/try", try_body(sid, images))):
            r = post(url, path, body)
            assert r.status_code == 400, (path, r.text)
            said = json.dumps(r.json())
            assert "local/some-blob:7" in said and "--runtime docker" in said, said
            assert "path" in said and "registry" in said, said
        stop(proc)
