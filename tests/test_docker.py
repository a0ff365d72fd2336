"""The Docker runtime against a real engine, with real cyanprintsdk component images.

Needs an engine and the images ``.ci/docker-setup.sh`` builds. Without them the module is
skipped with one line saying why, except under ``CI=true``, where every test fails instead.
After every test, no container or volume labelled with the test's sessions may remain.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from boride.area import HostArea
from boride.config import Timeouts
from boride.model import load
from boride.pipeline import BuildOptions, BuildResult, build
from boride.runtime.base import RuntimeFailure, TemplateSource, Workspace
from boride.runtime.docker import (
    LABEL_COMPONENT,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_SESSION,
    SEEN_AREA,
    SEEN_TEMPLATE,
    DockerRuntime,
    aclean,
    clean,
    connect,
    container_name,
    containers,
    helper,
)
from boride.runtime.docker.engine import Engine
from boride.runtime.local import LocalRuntime
from boride.types import Component, Kind
from tests.docker_helpers import (
    EXAMPLES,
    SETUP,
    image_of,
    in_ci,
    managed_sessions,
    session_leftovers,
)
from tests.helpers import TEMPLATE_FILES, run_cli, start_cli, tree, write_pipeline

pytestmark = pytest.mark.docker



class RecordingRuntime(DockerRuntime):
    """The Docker runtime, remembering the sessions it opened (to look for leftovers)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sessions: list[str] = []

    async def open_workspace(self, session_id: str, template: TemplateSource,
                             root: Path | None, *, area: bool = True,
                             note: Mapping[str, str] | None = None) -> Workspace:
        self.sessions.append(session_id)
        return await super().open_workspace(session_id, template, root, area=area,
                                            note=note)


@pytest.fixture
async def runtime() -> AsyncIterator[RecordingRuntime]:
    rt = RecordingRuntime()
    try:
        yield rt
    finally:
        await rt.aclose()
        for session in rt.sessions:
            assert session_leftovers(session) == [], f"session {session} left things behind"


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o7777 for p in root.rglob("*")}


def assert_clean(result: BuildResult, runtime: RecordingRuntime, work: Path) -> None:
    """Nothing of the build remains: no labelled container or volume, no work area."""
    assert runtime.sessions, "the build opened no session"
    for session in runtime.sessions:
        assert session_leftovers(session) == []
    assert not work.exists() or list(work.iterdir()) == [], list(work.iterdir())


def errors_of(result: BuildResult) -> dict[str, str]:
    return {c.name: c.error or "" for c in result.components}


async def run_build(pipeline_file: Path, runtime: Any, tmp_path: Path,
                    **options: Any) -> BuildResult:
    options.setdefault("work_root", tmp_path / "work")
    return await build(load(pipeline_file), runtime, BuildOptions(**options))


# -- the bundled example -----------------------------------------------------------------------

@pytest.mark.sandbox
async def test_example_on_docker_is_identical_to_local(tmp_path: Path,
                                                       runtime: RecordingRuntime) -> None:
    pipeline = load(EXAMPLES / "pipeline.yaml")
    on_docker, on_local = tmp_path / "docker", tmp_path / "local"
    res = await build(pipeline, runtime, BuildOptions(out=on_docker, work_root=tmp_path / "w"))
    assert res.ok, res.errors
    local = LocalRuntime()
    try:
        res_local = await build(pipeline, local, BuildOptions(out=on_local,
                                                              work_root=tmp_path / "w2"))
    finally:
        await local.aclose()
    assert res_local.ok, res_local.errors
    assert tree(on_docker) == tree(on_local)  # every path and every byte
    assert modes(on_docker) == modes(on_local)
    assert tree(on_docker) == tree(EXAMPLES / "expected")
    assert_clean(res, runtime, tmp_path / "w")


def test_cli_runs_the_example_on_docker(tmp_path: Path) -> None:
    before = managed_sessions()
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    proc = run_cli("run", EXAMPLES / "pipeline.yaml", "--runtime", "docker", "--out", out,
                   "--json", tmpdir=work, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "ok"
    assert tree(out) == tree(EXAMPLES / "expected")
    assert managed_sessions() - before == set()
    assert list(work.iterdir()) == []


# -- isolation ---------------------------------------------------------------------------------

async def test_containers_are_isolated_labelled_and_limited(
        tmp_path: Path, template: Path) -> None:
    session = str(uuid.uuid4())  # with dashes
    rt = DockerRuntime(cpus=0.5, memory="256m")
    client = connect()
    try:
        ws = await rt.open_workspace(session, template, tmp_path / "root")
        assert (ws.area.template, ws.area.root) == (SEEN_TEMPLATE, SEEN_AREA)
        comps = [Component("my-proc", Kind.PROCESSOR, image=image_of("ok_processor")),
                 Component("my-plug", Kind.PLUGIN, image=image_of("ok_plugin")),
                 Component("res", Kind.RESOLVER, image=image_of("ok_resolver"))]
        instances = [await rt.start(ws, c) for c in comps]
        from boride.health import wait_ready
        await asyncio.gather(*(wait_ready(i, 60) for i in instances))
        info = {c.kind: client.api.inspect_container(container_name(c.kind, c.name, session))
                for c in comps}
        for kind, c in zip(info, comps, strict=True):
            cfg, host = info[kind]["Config"], info[kind]["HostConfig"]
            assert info[kind]["Name"] == f"/cyan-{kind.value}-{c.name.replace('-', '')}-{session}"
            assert cfg["Labels"][LABEL_SESSION] == session
            assert cfg["Labels"][LABEL_KIND] == kind.value
            assert cfg["Labels"][LABEL_COMPONENT] == c.name
            assert cfg["Labels"][LABEL_MANAGED] == "1"
            assert cfg["User"] not in ("", "0", "root") and not cfg["User"].startswith("0:")
            assert host["Privileged"] is False
            assert host["CapDrop"] == ["ALL"]
            assert any(o.startswith("no-new-privileges") for o in host["SecurityOpt"])
            assert host["ReadonlyRootfs"] is True
            assert host["NanoCpus"] == 500_000_000
            assert host["Memory"] == 256 * 1024 * 1024
            assert host["PidsLimit"] and host["PidsLimit"] > 0
            assert not host.get("PortBindings") and not host.get("PublishAllPorts")
            assert not host.get("Binds")
            assert list(info[kind]["NetworkSettings"]["Networks"]) == ["cyanprint"]
        mounts = {k: {m["Destination"]: m["RW"] for m in v["Mounts"]} for k, v in info.items()}
        assert mounts[Kind.PROCESSOR] == {SEEN_TEMPLATE: False, SEEN_AREA: True}
        assert mounts[Kind.PLUGIN] == {SEEN_AREA: True}
        assert mounts[Kind.RESOLVER] == {}
        for m in info[Kind.PROCESSOR]["Mounts"]:
            assert m["Type"] == "volume"
            vol = client.api.inspect_volume(m["Name"])
            assert vol["Labels"][LABEL_SESSION] == session
            assert not vol.get("Options"), vol  # an engine volume, binding no host folder
        # each component its own user
        users = {info[k]["Config"]["User"] for k in info}
        assert len(users) == len(info), users
        # the session's helper: the same volumes, three capabilities to make each component's
        # folders its own and take back what it answered, as root (of the container)
        helper = client.api.inspect_container(f"cyan-merger-{session}")
        assert {m["Destination"]: (m["Type"], m["RW"]) for m in helper["Mounts"]} == {
            SEEN_TEMPLATE: ("volume", True), SEEN_AREA: ("volume", True)}
        assert helper["HostConfig"]["CapDrop"] == ["ALL"]
        assert sorted(helper["HostConfig"]["CapAdd"]) == ["CHOWN", "DAC_OVERRIDE",
                                                          "FOWNER"]
        assert helper["HostConfig"]["ReadonlyRootfs"] is True
        assert not helper["HostConfig"].get("PortBindings")
        await ws.area.names()  # ready
        top = client.api.top(helper["Id"], ps_args="-o pid,uid,comm")["Processes"]
        assert top and all(p[1] == "0" for p in top), top
        # the process inside runs as that user, with no capability at all
        exec_id = client.api.exec_create(info[Kind.PROCESSOR]["Id"],
                                         ["sh", "-c", "id -u; grep CapEff /proc/self/status"])
        raw = client.api.exec_start(exec_id["Id"])
        assert isinstance(raw, bytes)
        out = raw.decode()
        uid, cap = out.split()[0], out.split()[-1]
        assert uid != "0" and int(cap, 16) == 0, out
        for i in instances:
            await rt.stop(i)
        await rt.close_workspace(ws)
        assert session_leftovers(session) == []
        assert (template / "src" / "a.txt").read_text() == "alpha\n"  # volumes never delete
    finally:
        await rt.close_workspace(Workspace(session, HostArea(tmp_path, template)))
        await rt.aclose()
        client.close()


async def test_template_is_read_only_in_containers(tmp_path: Path, template: Path,
                                                   runtime: RecordingRuntime) -> None:
    before = tree(template)
    pipeline = write_pipeline(tmp_path / "p.yaml", template, [("tamper", "write_template", {})],
                              images=True)
    out = tmp_path / "out"
    res = await run_build(pipeline, runtime, tmp_path, out=out)
    assert res.ok, res.errors
    assert tree(template) == before
    report = (out / "write_template-report.txt").read_text()
    assert "create: OSError errno=30" in report  # EROFS
    assert_clean(res, runtime, tmp_path / "work")


async def test_resolver_and_plugins_on_docker(tmp_path: Path, template: Path,
                                              runtime: RecordingRuntime) -> None:
    pipeline = write_pipeline(
        tmp_path / "p.yaml", template,
        [("first", "ok_processor", {"suffix": "[1]"}), ("second", "ok_processor",
                                                        {"suffix": "[2]"})],
        resolvers=[("join", "ok_resolver", ["src/**"], {"separator": "|"})],
        plugins=[("one", "ok_plugin", {"line": "plugin one"}),
                 ("two", "ok_plugin", {"line": "plugin two"})], images=True)
    out = tmp_path / "out"
    res = await run_build(pipeline, runtime, tmp_path, out=out)
    assert res.ok, res.errors
    assert (out / "src" / "a.txt").read_text() == "alpha\n[1]|alpha\n[2]plugin one\nplugin two\n"
    assert (out / "README.md").read_text() == "# readme\n[2]plugin one\nplugin two\n"
    assert_clean(res, runtime, tmp_path / "work")


async def test_steps_of_one_image_share_one_container(tmp_path: Path, template: Path,
                                                      runtime: RecordingRuntime) -> None:
    """Eight steps naming one image: one container, each call with its own config."""
    started: list[Component] = []
    start = runtime.start

    async def counted(workspace: Workspace, component: Component) -> Any:
        started.append(component)
        return await start(workspace, component)

    runtime.start = counted  # type: ignore[method-assign]
    pipeline = write_pipeline(
        tmp_path / "p.yaml", template,
        [(f"s{i}", "ok_processor", {"suffix": f"[{i}]", "delay": 0.2,
                                    "files": {f"calls/{i}.txt": f"step {i}"}})
         for i in range(8)], parallelism=4, images=True)
    out = tmp_path / "out"
    res = await run_build(pipeline, runtime, tmp_path, out=out)
    assert res.ok, res.errors
    assert [c.name for c in started] == ["s0"]
    assert [c.name for c in res.components] == [f"s{i}" for i in range(8)]
    assert {p.name: p.read_text() for p in (out / "calls").iterdir()} == {
        f"{i}.txt": f"step {i}" for i in range(8)}
    assert (out / "src" / "a.txt").read_text() == "alpha\n[7]"  # last wins
    assert_clean(res, runtime, tmp_path / "work")


# -- failure modes -----------------------------------------------------------------------------

async def test_missing_image_is_reported_before_anything_starts(
        tmp_path: Path, template: Path, runtime: RecordingRuntime) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", template,
                              [("good", "ok_processor", {}), ("ghost", "does_not_exist", {})],
                              images=True)
    before = managed_sessions()
    res = await run_build(pipeline, runtime, tmp_path)
    assert res.status == "failed"
    assert len(res.errors) == 1
    assert "'ghost'" in res.errors[0] and "local/boride-test-does-not-exist:1" in res.errors[0]
    assert "not on the Docker engine" in res.errors[0]
    assert runtime.sessions == []  # nothing was started, no session was even opened
    assert managed_sessions() - before == set()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A private image registry on loopback (Debian's docker-registry): host:port."""
    exe = shutil.which("docker-registry")
    if exe is None:
        message = f"docker-registry is not installed ({SETUP} installs it)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {tmp_path / 'registry'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    log = open(tmp_path / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "registry.log").read_text()
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


async def test_missing_image_is_pulled_from_a_registry_when_allowed(
        tmp_path: Path, template: Path, registry: str, runtime: RecordingRuntime) -> None:
    repo = f"{registry}/boride/pulled-{uuid.uuid4().hex[:8]}"
    image = f"{repo}:1"
    client = connect()
    try:
        client.api.tag(image_of("ok_processor"), repo, tag="1")
        for chunk in client.api.push(repo, tag="1", stream=True, decode=True):
            assert "error" not in chunk, chunk
        client.api.remove_image(image)
        pipeline = write_pipeline(tmp_path / "p.yaml", template, [
            {"name": "pulled", "image": image, "config": {}, "files": TEMPLATE_FILES}])
        component = [Component("pulled", Kind.PROCESSOR, image=image)]
        no_pull = DockerRuntime(pull=False)
        try:
            assert "is not on the Docker engine" in " ".join(await no_pull.problems(component))
        finally:
            await no_pull.aclose()
        runtime.settings = dataclasses.replace(runtime.settings, pull=True)
        res = await run_build(pipeline, runtime, tmp_path, out=tmp_path / "out")
        assert res.ok, res.errors
        assert (tmp_path / "out" / "src" / "a.txt").read_text() == "alpha\n"
        client.images.get(image)  # pulled
        assert_clean(res, runtime, tmp_path / "work")
    finally:
        with contextlib.suppress(Exception):
            client.api.remove_image(image)
        client.close()


async def test_failed_pull_is_reported_before_anything_starts() -> None:
    rt = DockerRuntime(pull=True)
    try:
        problems = await rt.problems([Component("p", Kind.PROCESSOR,
                                                image="127.0.0.1:9/none/x:1")])
    finally:
        await rt.aclose()
    assert len(problems) == 1
    assert "processor 'p': image '127.0.0.1:9/none/x:1' is not on the Docker engine and " \
           "pulling it failed" in problems[0]


async def test_unreachable_engine_is_reported_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    rt = DockerRuntime()
    try:
        problems = await rt.problems([Component("p", Kind.PROCESSOR, image="x:1")])
    finally:
        await rt.aclose()
    assert len(problems) == 1
    assert "no Docker engine answers at unix:///nonexistent/docker.sock" in problems[0]


async def test_container_exiting_at_start_gives_code_and_log(
        tmp_path: Path, template: Path, runtime: RecordingRuntime) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", template,
                              [("good", "ok_processor", {}), ("dies", "exit_at_start", {})],
                              images=True)
    start = time.monotonic()
    res = await run_build(pipeline, runtime, tmp_path, timeouts=Timeouts(ready=120))
    assert time.monotonic() - start < 60  # at once, not at the readiness deadline
    assert res.status == "failed"
    error = errors_of(res)["dies"]
    assert "exited with code 3" in error and "boom: cannot start" in error
    assert any("'dies'" in e for e in res.errors)
    assert_clean(res, runtime, tmp_path / "work")


async def test_never_ready_fails_at_the_deadline(tmp_path: Path, template: Path,
                                                 runtime: RecordingRuntime) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", template, [("slow", "never_ready", {})],
                              images=True)
    start = time.monotonic()
    res = await run_build(pipeline, runtime, tmp_path, timeouts=Timeouts(ready=3))
    elapsed = time.monotonic() - start
    assert res.status == "failed"
    assert "not ready after 3s" in errors_of(res)["slow"]
    assert 3 <= elapsed < 30
    assert_clean(res, runtime, tmp_path / "work")


async def test_call_hanging_past_the_timeout(tmp_path: Path, template: Path,
                                             runtime: RecordingRuntime) -> None:
    """The build's one deadline on Docker names what each component still at work waited for:
    a call that never answers, a container that never becomes ready (issue 20: both said only
    "build timed out after 10s")."""
    pipeline = write_pipeline(tmp_path / "p.yaml", template,
                              [("good", "ok_processor", {}), ("stuck", "hang", {}),
                               ("mute", "never_ready", {})], images=True)
    start = time.monotonic()
    res = await run_build(pipeline, runtime, tmp_path, timeouts=Timeouts(build=10, ready=60))
    assert time.monotonic() - start < 40
    assert res.status == "failed"
    ran_out = "when the build's 10s timeout ran out"
    assert errors_of(res)["stuck"] == f"its call had not answered {ran_out}"
    assert errors_of(res)["mute"].startswith(f"not ready {ran_out} (GET / never answered 200)")
    assert sorted(e.splitlines()[0] for e in res.errors) == [
        f"processor 'mute': not ready {ran_out} (GET / never answered 200)",
        f"processor 'stuck': its call had not answered {ran_out}"]
    assert_clean(res, runtime, tmp_path / "work")


async def test_container_dying_during_its_call(tmp_path: Path, template: Path,
                                               runtime: RecordingRuntime) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", template,
                              [("good", "ok_processor", {}), ("bad", "die_during_call", {})],
                              images=True)
    res = await run_build(pipeline, runtime, tmp_path)
    assert res.status == "failed"
    error = errors_of(res)["bad"]
    assert "died during its call: exited with code 9" in error
    assert "die_during_call: exiting with 9" in error
    assert errors_of(res)["good"] == ""
    assert_clean(res, runtime, tmp_path / "work")


async def test_container_killed_during_its_call(tmp_path: Path, template: Path,
                                                runtime: RecordingRuntime) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", template, [("victim", "hang", {})], images=True)
    calling = asyncio.Event()

    def on_event(stage: str, name: str | None, status: str) -> None:
        if stage == "process" and name == "victim" and status == "running":
            calling.set()

    task = asyncio.ensure_future(run_build(pipeline, runtime, tmp_path,
                                           timeouts=Timeouts(build=120), on_event=on_event))
    await asyncio.wait_for(calling.wait(), 90)
    await asyncio.sleep(0.5)
    client = connect()
    try:
        name = container_name(Kind.PROCESSOR, "victim", runtime.sessions[0])
        client.api.kill(name)  # SIGKILL from outside, as an OOM kill or an operator would
    finally:
        client.close()
    res = await asyncio.wait_for(task, 60)
    assert res.status == "failed"
    assert "died during its call: exited with code 137" in errors_of(res)["victim"]
    assert_clean(res, runtime, tmp_path / "work")


def test_sigterm_to_boride_run_leaves_nothing(tmp_path: Path, template: Path) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", template,
                              [("good", "ok_processor", {}), ("stuck", "hang", {})], images=True)
    work = tmp_path / "work"
    work.mkdir()
    before = managed_sessions()
    proc = start_cli("run", pipeline, "--runtime", "docker", "--out", tmp_path / "out",
                     tmpdir=work)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    assert proc.stderr is not None
    stderr = proc.stderr

    def read() -> None:
        for line in stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the process stage
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            assert proc.poll() is None, "".join(seen)
            continue
        if "boride: process ..." in seen[-1]:
            time.sleep(1.5)  # the calls are under way (one of them hangs)
            break
    else:
        pytest.fail("the build never reached its process stage:\n" + "".join(seen))
    sessions = managed_sessions() - before
    assert len(sessions) == 1, sessions
    session = sessions.pop()
    assert session_leftovers(session)  # its containers and volumes exist now
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    time.sleep(0.2)
    while not lines.empty():
        seen.append(lines.get())
    assert proc.returncode == 143, "".join(seen)
    assert session_leftovers(session) == []
    assert list(work.iterdir()) == []


# -- sessions and clean-up ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["", "-abc", "abc-", "a_b", "a/b", "../x", "a b", "x" * 65,
                                 "Ünicode"])
async def test_invalid_session_ids_are_refused(tmp_path: Path, template: Path,
                                               bad: str) -> None:
    rt = DockerRuntime()
    try:
        with pytest.raises(RuntimeFailure, match="invalid session id"):
            await rt.open_workspace(bad, template, tmp_path)
    finally:
        await rt.aclose()
    with pytest.raises(ValueError, match="invalid session id"):
        clean(session=bad)


async def test_clean_removes_what_a_killed_run_left(tmp_path: Path, template: Path) -> None:
    session = str(uuid.uuid4())
    rt = DockerRuntime()
    try:
        ws = await rt.open_workspace(session, template, tmp_path / "root")
        await rt.start(ws, Component("p", Kind.PROCESSOR, image=image_of("ok_processor")))
        await rt.start(ws, Component("q", Kind.PLUGIN, image=image_of("ok_plugin")))
    finally:
        await rt.aclose()  # as if the run died here: no stop, no close_workspace
    left = session_leftovers(session)
    assert len(left) == 5, left  # two components, the helper, two volumes
    proc = await asyncio.to_thread(run_cli, "clean", "--session", session, "--json",
                                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["removed"]) == sorted(left)
    assert session_leftovers(session) == []
    assert await asyncio.to_thread(clean, session, False) == []


@pytest.mark.skipif(not in_ci() and not os.environ.get("BORIDE_TEST_CLEAN_ALL"),
                    reason="removes every boride container on the engine: runs under CI=true "
                           "or BORIDE_TEST_CLEAN_ALL=1")
async def test_clean_all_removes_every_session(tmp_path: Path, template: Path) -> None:
    sessions = [uuid.uuid4().hex, str(uuid.uuid4())]
    rt = DockerRuntime()
    try:
        for s in sessions:
            await rt.open_workspace(s, template, tmp_path / s)
    finally:
        await rt.aclose()
    removed = await aclean(all_=True)
    for s in sessions:
        assert session_leftovers(s) == []
        assert f"cyan-area-{s}" in removed and f"cyan-template-{s}" in removed


class SlowEngine(Engine):
    """The real engine, slow to do ``slow`` (making a session's helper container, by
    default): a busy engine."""

    def __init__(self, slow: Any = helper.create_helper) -> None:
        super().__init__()
        self.slow = slow

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn is self.slow:
            make = fn

            def fn(api: Any, *a: Any, **kw: Any) -> Any:
                time.sleep(1.5)
                return make(api, *a, **kw)

        return await super().call(fn, *args, **kwargs)


async def test_closing_the_runtime_while_a_helper_is_made_leaves_nothing_behind_clean(
        tmp_path: Path, template: Path) -> None:
    """aclose() while the session's helper container is still being made: that creation
    ends first, so clean-up after it (what clean --all does) finds it, and nothing of the
    session appears once clean-up is done."""
    session = str(uuid.uuid4())
    rt = DockerRuntime(engine=SlowEngine())
    try:
        await rt.open_workspace(session, template, tmp_path / "root")
    finally:
        await rt.aclose()  # the helper is still being made
    await aclean(session=session)
    assert session_leftovers(session) == []
    await asyncio.sleep(3)  # long enough for a creation still under way to end
    assert session_leftovers(session) == [], "something appeared after the runtime closed"


async def test_a_start_cancelled_while_its_container_is_made_leaves_no_container(
        tmp_path: Path, template: Path) -> None:
    """The creation ends, then its container is removed: the component starts again."""
    rt = DockerRuntime(engine=SlowEngine(containers.create_and_start))
    session = str(uuid.uuid4())
    comp = Component("p", Kind.PROCESSOR, image=image_of("ok_processor"))
    name = container_name(Kind.PROCESSOR, "p", session)
    client = connect()
    try:
        ws = await rt.open_workspace(session, template, tmp_path / "root")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await rt.start(ws, comp)
        assert not client.api.containers(all=True, filters={"name": name})
        await rt.stop(await rt.start(ws, comp))
        await rt.close_workspace(ws)
        assert session_leftovers(session) == []
    finally:
        client.close()
        await rt.aclose()
        await aclean(session=session)


async def test_reopening_a_session_a_killed_run_left_replaces_its_leftovers(
        tmp_path: Path, template: Path) -> None:
    session = str(uuid.uuid4())
    first = DockerRuntime()
    try:
        ws = await first.open_workspace(session, template, tmp_path / "first")
        await first.start(ws, Component("p", Kind.PROCESSOR, image=image_of("ok_processor")))
    finally:
        await first.aclose()  # killed: nothing stopped, nothing removed
    second = DockerRuntime()
    client = connect()
    try:
        ws = await second.open_workspace(session, template, tmp_path / "second")
        with pytest.raises(RuntimeFailure, match="open already"):
            await second.open_workspace(session, template, tmp_path / "third")
        # the first run's processor is gone, its helper replaced by this run's
        assert not client.api.containers(all=True, filters={"name": f"cyan-processor-p-{session}"})
        assert await ws.area.names() == set()
        inst = await second.start(ws, Component("p", Kind.PROCESSOR,
                                                image=image_of("ok_processor")))
        from boride.health import wait_ready
        await wait_ready(inst, 60)
        await second.stop(inst)
        await second.close_workspace(ws)
        assert session_leftovers(session) == []
    finally:
        await second.close_workspace(Workspace(session, HostArea(tmp_path, template)))
        await second.aclose()
        client.close()


async def test_network_removed_behind_its_back_is_made_again(tmp_path: Path,
                                                            template: Path) -> None:
    network = f"cyanprint-test-{uuid.uuid4().hex[:8]}"
    session = uuid.uuid4().hex
    rt = DockerRuntime(network=network)
    client = connect()
    try:
        first = await rt.open_workspace(uuid.uuid4().hex, template, None)
        await rt.close_workspace(first)
        client.api.remove_network(network)  # (a network in use cannot be removed)
        ws = await rt.open_workspace(session, template, None)
        inst = await rt.start(ws, Component("p", Kind.PROCESSOR, image=image_of("ok_processor")))
        from boride.health import wait_ready
        await wait_ready(inst, 60)
        await rt.stop(inst)
    finally:
        await rt.close_workspace(Workspace(session, HostArea(tmp_path, template)))
        await rt.aclose()
        for net in client.api.networks(names=[network]):
            client.api.remove_network(net["Id"])
        client.close()
    assert session_leftovers(session) == []


async def test_helper_killed_during_a_session_fails_the_build_naming_it(
        tmp_path: Path, template: Path) -> None:
    """The session's helper container does the file work: killed from outside, the next build
    fails with a message naming it (never a hang, never a traceback), and closing the session
    still removes everything."""
    from boride.pipeline import Build, Plan, ProtocolGlob, Session, Step

    session = uuid.uuid4().hex
    rt = DockerRuntime()
    client = connect()
    proc = Component("p", Kind.PROCESSOR, image=image_of("ok_processor"))
    plan = Plan(template, (Step(proc, {}, globs=(ProtocolGlob("**/*", exclude=("x",)),)),))
    try:
        s = await Session.opened(rt, session, template)
        first = await Build(plan, s, BuildOptions()).run()
        assert first.ok, first.errors
        client.api.kill(f"cyan-merger-{session}")
        second = await Build(plan, s, BuildOptions()).run()
        assert not second.ok
        said = "\n".join(second.errors + [c.error or "" for c in second.components])
        assert f"cyan-merger-{session}" in said, said
        await s.close()
        assert s.leftovers == []
    finally:
        await rt.aclose()
        client.close()
    assert session_leftovers(session) == []


async def test_a_try_folder_leading_outside_its_root_is_refused_by_the_copier(
        tmp_path: Path, template: Path) -> None:
    """A try path is the engine machine's: the short-lived copier binds the allowed root
    read-only and resolves the path there. A link in it leading out of the root (here to
    the host's /etc) is refused, naming the path; nothing is copied, nothing left."""
    from boride.runtime.base import HostFolder, TemplateRefused

    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "escape").symlink_to("/etc")
    (dev / "up").symlink_to("..")
    shutil.copytree(template, dev / "fine")
    rt = DockerRuntime()
    try:
        for name in ("escape", "up", "missing"):
            session = uuid.uuid4().hex
            with pytest.raises(TemplateRefused) as info:
                await rt.open_workspace(session, HostFolder(str(dev / name), str(dev)), None)
            assert str(dev / name) in str(info.value), info.value
            assert session_leftovers(session) == []
        session = uuid.uuid4().hex
        ws = await rt.open_workspace(session, HostFolder(str(dev / "fine"), str(dev)), None)
        assert ws.area is not None
        await rt.close_workspace(ws)
        assert session_leftovers(session) == []
    finally:
        await rt.aclose()
