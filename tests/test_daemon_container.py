"""boride's own image, ``boride/serve:latest``, as the CyanPrint CLI's daemon container
(issue 11): its commands (``setup``, ``cleanup``, ``--help``, errors) and the daemon run exactly
as the CLI runs the Go coordinator (``cyanprint/src/coord.rs``): named
``cyanprint-coordinator``, on the ``cyanprint`` network, the Docker socket bind-mounted, port
9000 published (here on 127.0.0.1 and a free port), with a registry file mounted read-only and
named by ``BORIDE_REGISTRY``.

The image is rebuilt first when it does not match the working tree (``docker/serve_image.py``).
Needs an engine and the images ``.ci/docker-setup.sh`` builds; skipped with one line without
them, except under ``CI=true``. Removing *every* boride-labelled thing (the ``cleanup``
command without a session, ``DELETE /cleanup``) is only tried when
``BORIDE_TEST_EXCLUSIVE_ENGINE=1`` says nobody else uses the engine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import httpx
import pytest
import yaml

from boride.daemon import exposure_warning
from boride.runtime.docker import LABEL_KIND, LABEL_MANAGED, LABEL_SESSION, NETWORK, connect
from boride.server.templates import _session_id as template_session
from tests.docker_helpers import EXAMPLES, in_ci, labelled, serve_image_module
from tests.helpers import archive_files, tree
from tests.test_server_support import EXAMPLE_REGISTRY, example_build, example_template, new_id

pytestmark = pytest.mark.docker

COORDINATOR = "cyanprint-coordinator"  # the name the CLI gives (and looks for)
CLI_NAME_FILTER = "^cyanprint-coordinator$"  # how the CLI finds it
OWNER = "boride.test.owner"  # a label on what these tests make (never boride.managed)
RUN = uuid.uuid4().hex[:12]
REGISTRY_IN_CONTAINER = "/etc/boride/registry.yaml"


def exclusive_engine() -> bool:
    return os.environ.get("BORIDE_TEST_EXCLUSIVE_ENGINE", "").strip().lower() in ("1", "true")


def socket_path() -> str:
    """The engine's socket on this host, to bind into the container as the CLI does."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        pytest.skip(f"DOCKER_HOST={host} is not a local socket to bind into a container")
    return host.removeprefix("unix://")


def socket_mount() -> docker.types.Mount:
    return docker.types.Mount("/var/run/docker.sock", socket_path(), type="bind")


@pytest.fixture(scope="session")
def serve_image() -> str:
    """``boride/serve:latest``, rebuilt first if it does not match the working tree."""
    module = serve_image_module()
    module.ensure_serve_image()
    client = connect(timeout=60)
    try:
        assert not module.serve_image_stale(client)
    finally:
        client.close()
    return str(module.SERVE_IMAGE)


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client = connect(timeout=120)
    yield client
    client.close()


@dataclass
class Ran:
    code: int
    out: str
    err: str


def run_once(client: docker.DockerClient, image: str, args: list[str],
             with_socket: bool = True) -> Ran:
    """Run the image once with ``args`` (as ``docker run --rm`` would) and collect its output."""
    container = client.containers.create(
        image, args, name=f"boride-test-daemon-{uuid.uuid4().hex[:10]}",
        labels={OWNER: RUN}, mounts=[socket_mount()] if with_socket else [])
    try:
        container.start()
        code = int(container.wait(timeout=120)["StatusCode"])
        out = container.logs(stdout=True, stderr=False).decode(errors="replace")
        err = container.logs(stdout=False, stderr=True).decode(errors="replace")
        return Ran(code, out, err)
    finally:
        container.remove(force=True)


def one_line_error(ran: Ran) -> str:
    assert "Traceback" not in ran.err + ran.out, ran
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("boride: "), ran
    return lines[0]


class TestCommands:
    def test_help_lists_the_commands(self, engine: docker.DockerClient,
                                     serve_image: str) -> None:
        ran = run_once(engine, serve_image, ["--help"], with_socket=False)
        assert ran.code == 0, ran
        for command in ("setup", "start", "cleanup", "serve", "run", "clean"):
            assert f"  {command}" in ran.out, ran.out

    def test_an_unknown_command_fails_in_one_line(self, engine: docker.DockerClient,
                                                  serve_image: str) -> None:
        ran = run_once(engine, serve_image, ["frobnicate", "x"], with_socket=False)
        assert ran.code == 2
        assert "unknown command 'frobnicate'" in one_line_error(ran)

    def test_boride_commands_pass_through(self, engine: docker.DockerClient,
                                          serve_image: str) -> None:
        ran = run_once(engine, serve_image, ["clean", "--help"], with_socket=False)
        assert ran.code == 0 and "Usage: boride clean" in ran.out, ran

    def test_setup_creates_the_network(self, engine: docker.DockerClient,
                                       serve_image: str) -> None:
        name = f"boride-test-net-{uuid.uuid4().hex[:10]}"  # cyanprint is in use: not removed
        try:
            ran = run_once(engine, serve_image, ["setup", "--network", name])
            assert ran.code == 0, ran
            (net,) = [n for n in engine.api.networks(names=[name]) if n["Name"] == name]
            assert net["Driver"] == "bridge" and LABEL_MANAGED in (net.get("Labels") or {})
            assert f"network {name} ready" in ran.out
            again = run_once(engine, serve_image, ["setup", "--network", name])
            assert again.code == 0, again  # idempotent
        finally:
            with contextlib.suppress(docker.errors.NotFound):
                engine.api.remove_network(name)
        # the CLI's own call: no arguments, the cyanprint network (exists afterwards)
        ran = run_once(engine, serve_image, ["setup"])
        assert ran.code == 0 and f"network {NETWORK} ready" in ran.out, ran
        assert [n for n in engine.api.networks(names=[NETWORK]) if n["Name"] == NETWORK]

    def test_setup_without_the_socket_fails_in_one_line(self, engine: docker.DockerClient,
                                                        serve_image: str) -> None:
        ran = run_once(engine, serve_image, ["setup"], with_socket=False)
        assert ran.code == 1
        assert "no Docker engine answers" in one_line_error(ran)

    def test_cleanup_of_a_session_removes_its_leftovers(self, engine: docker.DockerClient,
                                                        serve_image: str) -> None:
        session = f"boridetest{uuid.uuid4().hex[:12]}"
        labels = {LABEL_MANAGED: "1", LABEL_SESSION: session, OWNER: RUN}
        volume = engine.volumes.create(f"cyan-area-{session}", labels=labels)
        container = engine.containers.create(serve_image, ["--help"],
                                             name=f"cyan-processor-x-{session}", labels=labels)
        try:
            ran = run_once(engine, serve_image, ["cleanup", "--session", session])
            assert ran.code == 0, ran
            assert f"removed {volume.name}" in ran.out and f"removed {container.name}" in ran.out
            assert labelled({LABEL_SESSION: session}) == []
        finally:
            for thing in (container, volume):
                with contextlib.suppress(docker.errors.NotFound):
                    thing.remove(force=True)

    @pytest.mark.skipif(not exclusive_engine(), reason="removes every boride container and "
                        "volume on the engine: BORIDE_TEST_EXCLUSIVE_ENGINE=1 only")
    def test_cleanup_removes_every_labelled_thing(self, engine: docker.DockerClient,
                                                  serve_image: str) -> None:
        session = f"boridetest{uuid.uuid4().hex[:12]}"
        labels = {LABEL_MANAGED: "1", LABEL_SESSION: session, OWNER: RUN}
        volume = engine.volumes.create(f"cyan-area-{session}", labels=labels)
        ran = run_once(engine, serve_image, ["cleanup"])
        assert ran.code == 0, ran
        assert f"removed {volume.name}" in ran.out
        assert labelled({LABEL_MANAGED: None}) == []


# --- the daemon, as the CLI runs it ---------------------------------------------------------


@dataclass
class Seen:
    """A container boride made while the daemon ran, as the engine described it at creation."""

    name: str
    labels: dict[str, str]
    mounts: list[dict[str, Any]] | None  # None: gone before it could be inspected


@dataclass
class Recorder:
    """Every container labelled ``boride.managed`` created on the engine, from its events."""

    client: docker.DockerClient
    seen: list[Seen] = field(default_factory=list)
    ended: BaseException | None = None  # why the event stream ended, if not by close()

    def __post_init__(self) -> None:
        self._events = self.client.api.events(
            decode=True, filters={"type": "container", "event": "create",
                                  "label": LABEL_MANAGED})
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for event in self._events:
                attrs = (event.get("Actor") or {}).get("Attributes") or {}
                try:
                    mounts = self.client.api.inspect_container(event["id"])["Mounts"]
                except docker.errors.NotFound:
                    mounts = None
                self.seen.append(Seen(attrs.get("name", event["id"][:12]), dict(attrs),
                                      mounts))
        except Exception as exc:  # close() ends the stream with an error too: kept, checked
            self.ended = exc

    def close(self) -> None:
        self._events.close()

    def since(self, mark: int) -> list[Seen]:
        time.sleep(0.5)  # the last events of a flow
        assert self._thread.is_alive(), f"the engine's event stream ended: {self.ended!r}"
        return self.seen[mark:]


@dataclass
class Daemon:
    container: Any
    url: str
    recorder: Recorder
    allowed_binds: set[str]  # host folders a short-lived copier may bind read-only
    # the sessions the tests made through it (its templates' shared ones too): checked for
    # leftovers when it stops (other users of the engine have sessions of their own)
    sessions: set[str] = field(default_factory=set)

    def made(self, sid: str, template: dict[str, Any]) -> None:
        self.sessions |= {sid, template_session(template["principal"]["id"])}

    def logs(self) -> str:
        return str(self.container.logs(tail=40).decode(errors="replace"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def guard_the_name(client: docker.DockerClient) -> None:
    """The CLI's name is the machine's: never touch a coordinator someone else started."""
    for c in client.api.containers(all=True, filters={"name": CLI_NAME_FILTER}):
        if (c.get("Labels") or {}).get(OWNER) == RUN:
            continue
        message = (f"a container named {COORDINATOR} exists and was not made by this test "
                   f"(id {c['Id'][:12]}, image {c.get('Image')}); stop it (cyanprint daemon "
                   "stop) to run the daemon tests")
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def write_daemon_registry(folder: Path) -> tuple[Path, Path]:
    """The example registry with its template's ``path`` absolute (a copy in ``folder``):
    (registry file, template folder)."""
    template = folder / "template"
    shutil.copytree(EXAMPLES / "template", template)
    data = yaml.safe_load(EXAMPLE_REGISTRY.read_text())
    data["templates"][0]["path"] = str(template)
    registry = folder / "registry.yaml"
    registry.write_text(yaml.safe_dump(data, sort_keys=False))
    return registry, template


def wait_ready(daemon: Daemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(daemon.url + "/", timeout=2).status_code == 200:
                return
        daemon.container.reload()
        if daemon.container.status not in ("created", "running"):
            break
        time.sleep(0.2)
    pytest.fail(f"the daemon did not answer GET / with 200:\n{daemon.logs()}")


@pytest.fixture(scope="module")
def daemon(engine: docker.DockerClient, serve_image: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    guard_the_name(engine)
    folder = tmp_path_factory.mktemp("daemon")
    folder.chmod(0o755)
    registry, template = write_daemon_registry(folder)
    port = free_port()
    recorder = Recorder(engine)
    container = engine.containers.create(
        serve_image, None, name=COORDINATOR, labels={OWNER: RUN}, network=NETWORK,
        ports={"9000/tcp": ("127.0.0.1", port)},
        environment={"BORIDE_REGISTRY": REGISTRY_IN_CONTAINER},
        mounts=[socket_mount(),
                docker.types.Mount(REGISTRY_IN_CONTAINER, str(registry), type="bind",
                                   read_only=True),
                # the registry's template path, the same inside as outside (whichever side
                # boride reads it from)
                docker.types.Mount(str(template), str(template), type="bind", read_only=True)])
    d = Daemon(container, f"http://127.0.0.1:{port}", recorder, {str(template)})
    try:
        container.start()
        wait_ready(d)
        yield d
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            # Ctrl-C: the server removes what it still holds (SIGTERM would leave it on the
            # engine for the next coordinator)
            container.kill(signal="SIGINT")
            container.wait(timeout=60)
        logs = d.logs()
        container.remove(force=True)
        recorder.close()
    left = [n for s in sorted(d.sessions) for n in labelled({LABEL_SESSION: s})]
    assert not left, f"left behind after the daemon stopped: {left}\n{logs}"


def assert_only_volumes(daemon: Daemon, seen: list[Seen]) -> None:
    """Every container boride made mounts engine volumes only; a short-lived copier may bind
    an allowed host folder read-only."""
    assert any(s.labels.get(LABEL_KIND) for s in seen), f"no component seen: {seen}"
    bad = []
    for s in seen:
        if s.mounts is None:
            assert not s.labels.get(LABEL_KIND), f"component {s.name} not inspected"
            continue
        for m in s.mounts:
            if m["Type"] in ("volume", "tmpfs"):
                continue
            # the try copier binds the daemon's --dev-root ("/") read-only, and checks
            # inside that the folder really lies below it
            copier = (m["Type"] == "bind" and not m.get("RW", True)
                      and s.labels.get(LABEL_KIND) == "copy"
                      and m["Source"] in daemon.allowed_binds | {"/"})
            if not copier:
                bad.append(f"{s.name}: {m['Type']} {m.get('Source')} -> {m['Destination']}")
    assert not bad, "containers mount more than engine volumes:\n" + "\n".join(bad)


def expected_files() -> dict[str, bytes]:
    return tree(EXAMPLES / "expected", dirs=False)


def build(http: httpx.Client, sid: str, template: dict[str, Any]) -> dict[str, bytes]:
    with http.stream("POST", f"/executor/{sid}", json=example_build(template)) as r:
        body = r.read()
        assert r.status_code == 200, body[:2000]
        assert r.headers["content-type"] == "application/x-gzip"
        assert "cyan-output.tar.gz" in r.headers.get("content-disposition", "")
    return archive_files(body, strip="./")


class TestDaemon:
    def test_the_cli_finds_and_reaches_it(self, engine: docker.DockerClient,
                                          daemon: Daemon) -> None:
        found = engine.api.containers(filters={"name": CLI_NAME_FILTER})  # running only
        assert [c["Id"] for c in found] == [daemon.container.id]
        assert httpx.get(daemon.url + "/", timeout=5).json() == {"status": "OK"}
        # the API answers the published port (not taken for a component's request)
        r = httpx.post(daemon.url + "/template/warm", json={}, timeout=10)
        assert r.status_code == 400, r.text

    def test_components_network_is_refused(self, engine: docker.DockerClient,
                                           daemon: Daemon) -> None:
        """A container on the components' network reaches the daemon by name: 403."""
        probe = ("import urllib.request as u, urllib.error as e\n"
                 "r = u.Request('http://cyanprint-coordinator:9000/template/warm', data=b'{}',"
                 " headers={'Content-Type': 'application/json'})\n"
                 "try:\n    print(u.urlopen(r, timeout=10).status)\n"
                 "except e.HTTPError as x:\n    print(x.code)\n")
        out = engine.containers.run("boride/python-base:3.11", ["python3", "-c", probe],
                                    network=NETWORK, remove=True, labels={OWNER: RUN})
        assert out.decode().strip() == "403"

    def test_it_is_made_as_the_cli_makes_it(self, engine: docker.DockerClient,
                                                        daemon: Daemon) -> None:
        info = engine.api.inspect_container(daemon.container.id)
        targets = sorted(m["Destination"] for m in info["Mounts"])
        assert "/var/run/docker.sock" in targets and REGISTRY_IN_CONTAINER in targets
        assert info["HostConfig"]["NetworkMode"] == NETWORK
        assert info["Config"]["Entrypoint"] == ["python3", "-m", "boride.daemon"]
        assert info["Config"]["Cmd"] == ["start"]


    def test_a_port_published_on_every_interface_is_warned_of(
            self, engine: docker.DockerClient, daemon: Daemon) -> None:
        """Published on loopback (as the docs say): no warning. Published as the CLI does it
        (`-p 9000:9000`): a warning naming the fix, since components can dial the host."""
        assert "published on every interface" not in daemon.logs()
        wide = engine.api.create_container(
            "boride/python-base:3.11", ["true"], labels={OWNER: RUN}, ports=[9000],
            host_config=engine.api.create_host_config(port_bindings={9000: None}))
        try:
            warning = exposure_warning(wide["Id"])
            assert warning is not None and "-p 127.0.0.1:9000:9000" in warning
            assert exposure_warning(daemon.container.id) is None
        finally:
            engine.api.remove_container(wide["Id"], force=True)


class TestDaemonFlows:
    """The API flows against the daemon container. They need the engine-volume storage of
    issue 11: with host-folder binds, boride's own folders (in its container) do not exist on
    the host."""

    def test_create_flow(self, daemon: Daemon) -> None:
        template, sid = example_template(), new_id()
        daemon.made(sid, template)
        mark = len(daemon.recorder.seen)
        with httpx.Client(base_url=daemon.url, timeout=300) as http:
            r = http.post("/template/warm", json=template)
            assert r.json() == {"status": "OK"}, (r.text, daemon.logs())
            assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
            r = http.post("/executor", json={
                "session_id": sid, "template": template, "merger": {"merger_id": new_id()},
                "write_vol_reference": {"cyan_id": template["principal"]["id"],
                                        "session_id": sid}})
            assert r.json() == {"status": "OK"}, (r.text, daemon.logs())
            assert build(http, sid, template) == expected_files()
            assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert labelled({LABEL_SESSION: sid}) == []
        assert_only_volumes(daemon, daemon.recorder.since(mark))

    def test_a_docker_restart_loses_no_session(self, daemon: Daemon) -> None:
        """The CLI user answering the Q&A while the coordinator restarts still gets the
        build: the restarted daemon takes over the session from the engine."""
        template, sid = example_template(), new_id()
        daemon.made(sid, template)
        with httpx.Client(base_url=daemon.url, timeout=300) as http:
            assert http.post("/template/warm", json=template).json() == {"status": "OK"}
            assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
            r = http.post("/executor", json={"session_id": sid, "template": template,
                                             "merger": {"merger_id": new_id()}})
            assert r.json() == {"status": "OK"}, (r.text, daemon.logs())
            before = sorted(labelled({LABEL_SESSION: sid}))
            daemon.container.restart(timeout=40)  # SIGTERM: drains, leaves the sessions
            wait_ready(daemon)
            assert sid in http.get("/worker").json()["sessions"], daemon.logs()
            assert build(http, sid, template) == expected_files()
            assert sorted(labelled({LABEL_SESSION: sid})) == before  # the same containers
            assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert labelled({LABEL_SESSION: sid}) == []

    def test_try_flow_from_a_host_folder(self, daemon: Daemon, tmp_path: Path) -> None:
        folder = tmp_path / "dev" / "my-template"  # on the host only, not in the daemon
        shutil.copytree(EXAMPLES / "template", folder)
        daemon.allowed_binds.add(str(folder))
        template, sid = example_template(), new_id()
        template["principal"]["id"] = f"local-{uuid.uuid4().hex[:8]}"
        daemon.made(sid, template)
        mark = len(daemon.recorder.seen)
        with httpx.Client(base_url=daemon.url, timeout=300) as http:
            r = http.post("/executor/try", json={
                "sessionId": sid, "localTemplateId": template["principal"]["id"],
                "source": "path", "path": str(folder), "template": template})
            assert r.status_code == 200, (r.text, daemon.logs())
            assert "blobVolume" in r.json()
            assert build(http, sid, template) == expected_files()
            assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        assert labelled({LABEL_SESSION: sid}) == []
        assert_only_volumes(daemon, daemon.recorder.since(mark))
        assert tree(folder) == tree(EXAMPLES / "template")  # the host folder is untouched

    @pytest.mark.skipif(not exclusive_engine(), reason="DELETE /cleanup removes every boride "
                        "container and volume on the engine: BORIDE_TEST_EXCLUSIVE_ENGINE=1 only")
    def test_cleanup_route(self, daemon: Daemon) -> None:
        template, sid = example_template(), new_id()
        daemon.made(sid, template)
        with httpx.Client(base_url=daemon.url, timeout=300) as http:
            assert http.post("/template/warm", json=template).json() == {"status": "OK"}
            r = http.post("/executor", json={"session_id": sid, "template": template,
                                             "merger": {"merger_id": new_id()}})
            assert r.json() == {"status": "OK"}, (r.text, daemon.logs())
            mine = set(labelled({LABEL_SESSION: sid}))
            res = http.delete("/cleanup").json()
            assert res["status"] == "OK" and not res.get("error"), res
            assert mine <= set(res["containers_removed"]) | set(res["volumes_removed"]), res
        assert labelled({LABEL_MANAGED: None}) == []
