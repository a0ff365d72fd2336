"""Docker clean-up when the engine goes away mid-build: boride tries again for a few seconds,
and what it cannot remove is reported with the command that removes it; never swallowed.

The engine "goes away" through a real Unix-socket proxy in front of the real engine (the
runtime's DOCKER_HOST), which the test cuts and restores: the same to boride as an engine
restart, without disturbing anything else on the machine's engine.

Clean-up also succeeds while a boride container still holds a volume it removes (made after
the containers were listed, or not found by the list): that container goes first. A volume
held by a container that is not boride's is left, reported in one short line.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from boride.config import Timeouts
from boride.model import load
from boride.pipeline import BuildOptions, BuildResult, build
from boride.runtime.base import Instance, TemplateSource, Workspace
from boride.runtime.docker import LABEL_MANAGED, DockerRuntime, connect
from boride.runtime.docker.engine import Engine
from boride.runtime.docker.names import session_labels
from boride.types import Component
from tests.docker_helpers import (
    in_ci,
    make_holder,
    make_volume,
    remove_holders,
    session_leftovers,
)
from tests.helpers import run_cli, write_pipeline

pytestmark = pytest.mark.docker

ENGINE = "/var/run/docker.sock"
T = TypeVar("T")


class EngineProxy:
    """Forwards a Unix socket to the engine's; ``cut()`` makes the engine unreachable (the
    socket goes, open connections are broken) until ``restore()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        assert self.listener is not None
        self.listener.close()
        self.listener = None
        self.path.unlink()
        with self.lock:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(ENGINE)
            with self.lock:
                self.conns += [client, engine]
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class OutageRuntime(DockerRuntime):
    """The Docker runtime through the proxy: the engine goes away once the components are up;
    with ``back_after_failures``, it comes back after that many failed clean-ups."""

    def __init__(self, proxy: EngineProxy, back_after_failures: int | None) -> None:
        super().__init__()
        self.proxy = proxy
        self.back_after = back_after_failures
        self.failures = 0
        self.started = 0
        self.sessions: list[str] = []

    async def open_workspace(self, session_id: str, template: TemplateSource,
                             root: Path | None, *, area: bool = True,
                             note: Mapping[str, str] | None = None) -> Workspace:
        self.sessions.append(session_id)
        return await super().open_workspace(session_id, template, root, area=area,
                                            note=note)

    async def start(self, workspace: Workspace, component: Component) -> Instance:
        instance = await super().start(workspace, component)
        self.started += 1
        if self.started == 2:  # both components run: the engine goes away mid-build
            self.proxy.cut()
        return instance

    async def close_workspace(self, workspace: Workspace) -> None:
        try:
            await super().close_workspace(workspace)
        except Exception:
            self.failures += 1
            if self.failures == self.back_after:
                self.proxy.restore()
            raise


@pytest.fixture
def proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineProxy]:
    p = EngineProxy(tmp_path / "engine.sock")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{p.path}")
    yield p
    if p.listener is not None:
        p.listener.close()


async def outage_build(tmp_path: Path, template: Path, runtime: OutageRuntime) -> BuildResult:
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", template,
                              [("ok", "ok_processor", {}), ("stuck", "hang", {})], images=True)
    try:
        return await build(load(pipeline), runtime, BuildOptions(
            out=tmp_path / "out", work_root=tmp_path / "work", timeouts=Timeouts(build=8)))
    finally:
        await runtime.aclose()


async def test_clean_up_tries_again_when_the_engine_comes_back(
        tmp_path: Path, template: Path, proxy: EngineProxy) -> None:
    runtime = OutageRuntime(proxy, back_after_failures=1)
    result = await outage_build(tmp_path, template, runtime)
    assert not result.ok
    assert runtime.failures == 1, "the first clean-up should have failed"
    assert result.leftovers == []
    assert session_leftovers(runtime.sessions[0]) == []


async def test_what_clean_up_cannot_remove_is_reported_with_the_command(
        tmp_path: Path, template: Path, proxy: EngineProxy) -> None:
    runtime = OutageRuntime(proxy, back_after_failures=None)
    result = await outage_build(tmp_path, template, runtime)
    session = runtime.sessions[0]
    assert not result.ok and runtime.failures > 1
    (left,) = result.leftovers
    assert f"boride clean --session {session}" in left
    assert len(left) < 1000
    proxy.restore()
    assert session_leftovers(session) != []  # really left behind, as reported
    proc = run_cli("clean", "--session", session, timeout=120,
                   env={"DOCKER_HOST": f"unix://{ENGINE}"})
    assert proc.returncode == 0, proc.stderr
    assert session_leftovers(session) == []


# -- a volume still held by a container ---------------------------------------------------------

class LateContainerEngine(Engine):
    """The real engine; right after boride lists the containers to remove, a boride container
    holding ``volume`` appears (made by a runtime still creating it): the list misses it."""

    def __init__(self, volume: str, labels: dict[str, str]) -> None:
        super().__init__(8)
        self.volume, self.labels = volume, labels
        self.made: list[str] = []  # its name

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        found = await super().run(fn, *args, **kwargs)
        if getattr(fn, "__name__", "") == "containers" and not self.made:
            made = await super().run(make_holder, self.api, self.volume, self.labels)
            info = await super().run(self.api.inspect_container, made)
            self.made.append(str(info["Name"]).lstrip("/"))
        return found


async def test_clean_all_removes_a_container_made_after_its_list_that_holds_a_volume() -> None:
    """DELETE /cleanup and clean --all (the runtime's clean_all): the container is boride's,
    so it goes, then the volume."""
    if not in_ci() and not os.environ.get("BORIDE_TEST_CLEAN_ALL"):
        pytest.skip("removes every boride container on the engine: runs under CI=true or "
                    "BORIDE_TEST_CLEAN_ALL=1")
    session = uuid.uuid4().hex
    volume = make_volume(session)
    engine = LateContainerEngine(volume, session_labels(session, "component"))
    runtime = DockerRuntime(engine=engine)
    try:
        removed = await runtime.clean_all()
        assert engine.made, "the late container was not made"
        assert volume in removed.volumes
        assert engine.made[0] in removed.containers
        assert session_leftovers(session) == []
    finally:
        await runtime.aclose()
        remove_holders(volume)


def test_clean_session_removes_a_boride_container_holding_its_volume() -> None:
    """boride clean --session: a boride container its list does not find (another label)
    holds the session's volume; it goes, then the volume."""
    session = uuid.uuid4().hex
    volume = make_volume(session)
    client = connect(timeout=30)
    try:
        holder = make_holder(client.api, volume, {LABEL_MANAGED: "1"})
        holder_name = str(client.api.inspect_container(holder)["Name"]).lstrip("/")
        proc = run_cli("clean", "--session", session, "--json", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert sorted(json.loads(proc.stdout)["removed"]) == sorted([volume, holder_name])
        assert session_leftovers(session) == []
        assert not client.api.containers(all=True, filters={"id": holder})
    finally:
        client.close()
        remove_holders(volume)


def test_a_volume_held_by_a_foreign_container_is_one_line() -> None:
    """A container that is not boride's is never removed: the failure is one short line
    naming the volume and the container, not the engine's whole answer."""
    session = uuid.uuid4().hex
    volume = make_volume(session)
    client = connect(timeout=30)
    try:
        holder = make_holder(client.api, volume, {})
        proc = run_cli("clean", "--session", session, timeout=120)
        assert proc.returncode != 0
        assert proc.stderr.strip() == (f"boride: could not remove volume {volume}: in use by "
                                       f"container {holder[:12]} (not boride's)")
        assert client.api.containers(all=True, filters={"id": holder})  # left alone
    finally:
        client.close()
        remove_holders(volume)
