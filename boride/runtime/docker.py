"""The Docker runtime: each component runs from its ``image:`` in its own container.

Everything goes through the Docker Engine API (the ``docker`` SDK; ``DOCKER_HOST`` honoured),
never the CLI. Blocking SDK calls run in this runtime's own thread pool (the default pool of
``asyncio.to_thread`` has ``cpu + 4`` threads, which eight long ``wait`` calls would starve);
every fan-out (image checks and pulls, volume creation, removals) goes through
:func:`boride.parallel.run`.

Layout of a session (``<s>`` is the session id, validated by :data:`SESSION_PATTERN`):

* one bridge network ``cyanprint``, created if missing and reused (never removed);
* volume ``cyan-template-<s>``: the host template folder (a ``local`` volume binding it),
  mounted read-only at ``/workspace/cyanprint`` in processors;
* volume ``cyan-area-<s>``: the session's host area folder, mounted read-write at
  ``/workspace/area`` in processors and plugins (resolvers get files in their request and
  see no host path at all);
* containers ``cyan-<kind>-<component id without dashes>-<s>``, unprivileged (a non-root user,
  every capability dropped, ``no-new-privileges``, read-only root file system with a small
  ``/tmp``), with CPU, memory and PID limits, no published port: boride reaches them by their
  address on the ``cyanprint`` network (the host routes to bridge addresses on Linux).

Every container and volume carries the labels ``boride.managed``, ``boride.session``,
``boride.kind``/``boride.role`` and ``boride.component``: clean-up (:meth:`close_workspace`,
:func:`clean`) finds them by label, never by name.

The engine must run on this host (a local socket, or ``DOCKER_HOST`` naming this machine's
engine): the volumes bind host folders and boride connects to container addresses, which is
what a Linux host offers. A missing image is reported by :meth:`problems` before anything
starts, and pulled first when ``BORIDE_DOCKER_PULL=1`` (a reachable, configured registry).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import httpx
import requests.exceptions
from docker.types import Mount

from boride import aio, parallel
from boride.errors import describe
from boride.runtime.base import (
    LOG_TAIL,
    ComponentNetworks,
    ExitInfo,
    Instance,
    Runtime,
    RuntimeFailure,
    Workspace,
    give_tree,
)
from boride.types import Component, Kind

T = TypeVar("T")

log = logging.getLogger(__name__)

NETWORK = "cyanprint"
SEEN_TEMPLATE = "/workspace/cyanprint"
SEEN_AREA = "/workspace/area"

LABEL_MANAGED = "boride.managed"
LABEL_SESSION = "boride.session"
LABEL_KIND = "boride.kind"
LABEL_COMPONENT = "boride.component"
LABEL_ROLE = "boride.role"

#: Session ids: letters, digits and inner dashes, at most 64 characters (UUIDs, with or
#: without dashes, fit).
SESSION_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?")

NOBODY = "65534:65534"
DEFAULT_CPUS = 1.0
DEFAULT_MEMORY = "512m"
DEFAULT_PIDS = 256
_API_TIMEOUT = 120
_PULL_TIMEOUT = 900
#: How long the components' network's subnets are trusted before asking the engine again
#: (sooner when this runtime made or found the network anew).
NETWORKS_TTL = 5.0
_NETWORKS_WAIT = 10.0  # how long a request waits for the engine's answer at most


def validate_session(session: str) -> str:
    """Return ``session`` if it is a valid session id, else raise ``ValueError``."""
    if not isinstance(session, str) or not SESSION_PATTERN.fullmatch(session):
        raise ValueError(f"invalid session id {session!r}: use 1 to 64 letters, digits and "
                         "inner dashes (a UUID, for example)")
    return session


def component_id(name: str) -> str:
    """A component name as it may appear in a container name: dashes dropped, other characters
    Docker refuses dropped too; a short hash keeps two such names apart."""
    plain = name.replace("-", "")
    cid = re.sub(r"[^A-Za-z0-9_.]", "", plain)
    if cid != plain or not cid:
        cid = f"{cid}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return cid


def container_name(kind: Kind, name: str, session: str) -> str:
    return f"cyan-{kind.value}-{component_id(name)}-{session}"


def volume_names(session: str) -> tuple[str, str]:
    """(template volume, area volume) of a session."""
    return f"cyan-template-{session}", f"cyan-area-{session}"


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(timeout: int = _API_TIMEOUT, pool: int = 128) -> docker.DockerClient:
    """A client for the engine ``DOCKER_HOST`` names; :class:`RuntimeFailure` with a clear
    message when no engine answers there."""
    try:
        client = docker.from_env(version="auto", timeout=timeout, max_pool_size=pool)
        client.api.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise RuntimeFailure(
            f"no Docker engine answers at {engine_address()} ({_reason(exc)}); start one "
            "(dockerd, or .ci/docker-setup.sh as root) or point DOCKER_HOST at one") from None
    return client


def _reason(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"no answer from the Docker engine at {engine_address()}"
    text = str(exc).strip()
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        text = str(exc.explanation)
    if len(text) > 300:
        text = text[:300] + "..."
    return text or type(exc).__name__


def _run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running loop (in a
    helper thread with its own loop then)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: list[T] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(make()))
        except BaseException as exc:
            err.append(exc)

    thread = threading.Thread(target=target, name="boride-docker-sync")
    thread.start()
    thread.join()
    if err:
        raise err[0]
    return box[0]


def _decode_lines(raw: bytes | str, lines: int) -> list[str]:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return [line.rstrip("\r") for line in text.splitlines()][-lines:]


class _Unreachable(httpx.AsyncBaseTransport):
    """The transport of a container that has no address (it stopped before getting one)."""

    def __init__(self, why: str) -> None:
        self.why = why

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(self.why, request=request)


class DockerInstance(Instance):
    """A started container: its HTTP client, and a watcher thread that learns when it stops."""

    def __init__(self, component: Component, container_id: str, name: str, address: str,
                 client: httpx.AsyncClient, api: docker.APIClient) -> None:
        self.component = component
        self.container_id = container_id
        self.name = name
        self.address = address
        self.client = client
        self._api = api
        self._closed = threading.Event()
        self._final_tail: list[str] | None = None
        loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[ExitInfo] = loop.create_future()
        # A daemon thread: it never holds up the interpreter's exit, whatever the engine does.
        threading.Thread(target=self._watch, args=(loop,), daemon=True,
                         name=f"boride-wait-{name}").start()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        code: int | None = None
        while True:
            try:
                result = self._api.wait(self.container_id, timeout=None)
                status = result.get("StatusCode")
                code = int(status) if status is not None else None
                break
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                if self._closed.wait(0.2):
                    break
            except Exception:  # removed (404) or the engine went away: nothing more to learn
                break
        if self._final_tail is None and not self._closed.is_set():
            # (once stopped on purpose, nobody needs its output: spare the engine the call)
            self._final_tail = self._logs(LOG_TAIL)
        tail = self._final_tail or []
        info = ExitInfo(code, tail)

        def settle() -> None:
            if not self._exit.done():
                self._exit.set_result(info)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle)

    def _logs(self, lines: int) -> list[str]:
        try:
            raw = self._api.logs(self.container_id, stdout=True, stderr=True, tail=lines)
        except Exception:
            return []
        return _decode_lines(raw, lines)

    async def wait_exit(self) -> ExitInfo:
        return await asyncio.shield(self._exit)

    def log_tail(self, lines: int = LOG_TAIL) -> list[str]:
        if self._final_tail is not None:
            return self._final_tail[-lines:]
        return self._logs(lines)

    def snapshot_logs(self) -> None:
        """Keep the last lines before the container goes away."""
        if self._final_tail is None:
            self._final_tail = self._logs(LOG_TAIL)


@dataclass
class _Session:
    workspace: Workspace
    pending: set[asyncio.Future[Any]] = field(default_factory=set)


class DockerRuntime(Runtime):
    """Components as Docker containers; see the module docstring.

    ``cpus``/``memory``/``pids``: limits of each container (defaults: 1 CPU, 512 MiB, 256
    processes, or the variables ``BORIDE_DOCKER_CPUS``, ``BORIDE_DOCKER_MEMORY``,
    ``BORIDE_DOCKER_PIDS``). ``user``: the user components run as (default: ``65534:65534``,
    nobody, when boride runs as root; else boride's own uid:gid, so that boride can remove
    what components write). ``pull``: pull missing images from their registry before
    starting (default: the ``BORIDE_DOCKER_PULL`` variable, off).
    """

    name = "docker"

    def __init__(self, *, cpus: float | None = None, memory: str | int | None = None,
                 pids: int | None = None, user: str | None = None, network: str = NETWORK,
                 pull: bool | None = None, read_only_rootfs: bool = True,
                 workers: int = 32) -> None:
        env = os.environ
        cpus = float(env.get("BORIDE_DOCKER_CPUS", DEFAULT_CPUS)) if cpus is None else cpus
        pids = int(env.get("BORIDE_DOCKER_PIDS", DEFAULT_PIDS)) if pids is None else pids
        if memory is None:
            memory = env.get("BORIDE_DOCKER_MEMORY", DEFAULT_MEMORY)
        if cpus <= 0 or pids <= 0:
            raise ValueError(f"cpus and pids must be positive, got {cpus} and {pids}")
        self.cpus = cpus
        self.memory = memory
        self.pids = pids
        if user is None:
            user = NOBODY if os.geteuid() == 0 else f"{os.geteuid()}:{os.getegid()}"
        self.user = user
        self.network = network
        if pull is None:
            pull = os.environ.get("BORIDE_DOCKER_PULL", "").lower() in ("1", "true", "yes")
        self.pull = pull
        self.read_only_rootfs = read_only_rootfs
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="boride-docker")
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._network_id: str | None = None
        self._network_lock: asyncio.Lock | None = None
        self._networks = ComponentNetworks()  # what component_networks() answered last
        self._networks_of: tuple[str | None, float] | None = None  # (network id, when)
        self._networks_lock: asyncio.Lock | None = None
        self._sessions: dict[str, _Session] = {}
        self._instances: set[DockerInstance] = set()
        self._owner = self._plugin_owner()

    # -- plumbing ---------------------------------------------------------------------------
    def _plugin_owner(self) -> tuple[int, int] | None:
        """Whom to hand a plugin's folder to: the container user, when boride (root) can."""
        m = re.fullmatch(r"(\d+)(?::(\d+))?", self.user)
        if m is None or os.geteuid() != 0:
            return None
        uid = int(m.group(1))
        gid = int(m.group(2)) if m.group(2) else uid
        return None if uid == 0 else (uid, gid)

    @property
    def client(self) -> docker.DockerClient:
        """The engine client (connected on first use)."""
        with self._client_lock:
            if self._client is None:
                self._client = connect()
            return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await aio.in_thread(self._pool, functools.partial(fn, *args, **kwargs))

    async def _discard(self, job: asyncio.Future[tuple[str, str, str]]) -> None:
        """Remove the container a cancelled start was making, once that job has ended."""
        try:
            container_id, _, _ = await job
        except Exception:
            return
        await self._run(self._remove_container, container_id)

    # -- checks -----------------------------------------------------------------------------
    def problems(self, components: list[Component]) -> list[str]:
        try:
            self.client  # noqa: B018 - connects, or says why not
        except RuntimeFailure as exc:
            return [str(exc)]
        found: list[str] = []
        users: dict[str, list[Component]] = {}
        for c in components:
            if not c.image:
                found.append(f"{c.kind.value} {c.name!r}: no 'image' to run it on Docker")
            else:
                users.setdefault(c.image, []).append(c)
        if users:
            report = _run_sync(lambda: parallel.run(self._check_image, list(users)))
            for outcome in report.outcomes:
                why = outcome.value if outcome.ok else describe(outcome.error)
                if why:
                    for c in users[outcome.item]:
                        found.append(f"{c.kind.value} {c.name!r}: {why}")
        return found

    async def _check_image(self, image: str) -> str | None:
        """None when ``image`` is on the engine (pulled first if allowed), else why not."""
        try:
            await self._run(self.api.inspect_image, image)
            return None
        except docker.errors.ImageNotFound:
            pass
        if not self.pull:
            return (f"image {image!r} is not on the Docker engine (build it, e.g. with "
                    ".ci/docker-setup.sh, or set BORIDE_DOCKER_PULL=1 to pull it)")
        repo, tag = _split_image(image)
        try:
            await self._run(self._pull, repo, tag)
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            return f"image {image!r} is not on the Docker engine and pulling it failed: " \
                   f"{_reason(exc)}"

    def _pull(self, repo: str, tag: str) -> None:
        self.client.images.pull(repo, tag=tag)

    # -- sessions ---------------------------------------------------------------------------
    async def _ensure_network(self) -> str:
        if self._network_lock is None:
            self._network_lock = asyncio.Lock()
        async with self._network_lock:
            if self._network_id is None:
                self._network_id = await self._run(self._find_or_create_network)
            return self._network_id

    def _find_or_create_network(self) -> str:
        def find() -> str | None:
            nets = [n for n in self.api.networks(names=[self.network])
                    if n.get("Name") == self.network]
            return str(nets[0]["Id"]) if nets else None

        found = find()
        if found:
            return found
        try:
            created = self.api.create_network(self.network, driver="bridge",
                                              check_duplicate=True,
                                              labels={LABEL_MANAGED: "1"})
            return str(created["Id"])
        except docker.errors.APIError:
            found = find()  # someone else created it meanwhile
            if found:
                return found
            raise

    # -- where components live ----------------------------------------------------------------
    def _networks_fresh(self) -> bool:
        return (self._networks_of is not None and self._networks_of[0] == self._network_id
                and time.monotonic() - self._networks_of[1] < NETWORKS_TTL)

    async def component_networks(self) -> ComponentNetworks:
        """The subnets of the ``cyanprint`` network(s), from the engine (again when this runtime
        made or found the network anew, and after :data:`NETWORKS_TTL` seconds, in case someone
        else re-created it); their gateways are the host's. While the engine does not answer
        (within a few seconds), the last answer."""
        if self._networks_fresh():
            return self._networks
        if self._networks_lock is None:
            self._networks_lock = asyncio.Lock()
        async with self._networks_lock:
            if self._networks_fresh():
                return self._networks
            network_id = self._network_id
            try:
                self._networks = await asyncio.wait_for(self._run(self._read_networks),
                                                        _NETWORKS_WAIT)
            except (RuntimeFailure, docker.errors.DockerException, TimeoutError,
                    requests.exceptions.RequestException, ValueError) as exc:
                log.warning("cannot learn the subnets of the %s network (%s): using the last "
                            "known ones", self.network, _reason(exc))
            self._networks_of = (network_id, time.monotonic())
            return self._networks

    def _read_networks(self) -> ComponentNetworks:
        subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        gateways: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for net in self.api.networks(names=[self.network]):
            if net.get("Name") != self.network:
                continue
            for config in (net.get("IPAM") or {}).get("Config") or []:
                if config.get("Subnet"):
                    subnets.append(ipaddress.ip_network(config["Subnet"], strict=False))
                if config.get("Gateway"):
                    gateways.add(ipaddress.ip_address(config["Gateway"]))
        return ComponentNetworks(tuple(subnets), frozenset(gateways))

    async def open_workspace(self, session_id: str, template: Path, root: Path) -> Workspace:
        try:
            validate_session(session_id)
        except ValueError as exc:
            raise RuntimeFailure(str(exc)) from None
        area = root / "area"
        area.mkdir(parents=True, exist_ok=True)
        os.chmod(area, 0o755)  # the container user must reach the folders below it
        area = area.resolve()
        tpl = template.resolve()
        if not tpl.is_dir():
            raise RuntimeFailure(f"template folder {tpl} does not exist")
        workspace = Workspace(session_id, tpl, area, SEEN_TEMPLATE, SEEN_AREA)
        if session_id in self._sessions:
            raise RuntimeFailure(f"session {session_id!r} is open already")
        self._sessions[session_id] = _Session(workspace)
        try:
            # Whatever a killed run of the same session left goes first: a volume of the same
            # name would still bind that run's (removed) folders.
            await self._remove_session(session_id)
            await self._ensure_network()
            tpl_vol, area_vol = volume_names(session_id)
            specs = [(tpl_vol, tpl, "template"), (area_vol, area, "area")]
            report = await parallel.run(
                lambda spec: self._run(self._create_volume, session_id, *spec), specs)
            report.raise_for_failures()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._remove_session(session_id))
            self._sessions.pop(session_id, None)
            if isinstance(exc, docker.errors.DockerException | parallel.ParallelError):
                raise RuntimeFailure(f"cannot prepare the session on Docker: {exc}") from None
            raise
        return workspace

    def _create_volume(self, session: str, name: str, device: Path, role: str) -> None:
        self.api.create_volume(
            name, driver="local",
            driver_opts={"type": "none", "o": "bind", "device": str(device)},
            labels={LABEL_MANAGED: "1", LABEL_SESSION: session, LABEL_ROLE: role})

    async def start(self, workspace: Workspace, component: Component) -> Instance:
        if not component.image:
            raise RuntimeFailure(f"{component.kind.value} {component.name!r} has no image")
        session = self._sessions.get(workspace.session_id)
        if session is None:
            raise RuntimeFailure(f"session {workspace.session_id!r} is not open")
        for attempt in (1, 2):
            network_id = await self._ensure_network()
            # Create and start in one job that a cancellation cannot cut in half: a cancelled
            # start waits for the job, then removes whatever it made.
            job = asyncio.ensure_future(self._run(self._create_and_start, workspace, component,
                                                  network_id))
            session.pending.add(job)
            job.add_done_callback(session.pending.discard)
            try:
                container_id, name, address = await asyncio.shield(job)
                break
            except asyncio.CancelledError:
                await aio.shielded(self._discard(job))
                raise
            except docker.errors.DockerException as exc:
                if attempt == 1 and _network_gone(exc):
                    self._network_id = None  # removed behind our back: make it again
                    continue
                raise RuntimeFailure(f"cannot start container: {_reason(exc)}") from None
        port = component.kind.port
        if address:
            transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport()
        else:
            transport = _Unreachable(f"container {name} has no address on {self.network} "
                                     "(it is not running)")
        client = httpx.AsyncClient(transport=transport, timeout=None, trust_env=False,
                                   base_url=f"http://{address or 'unreachable.invalid'}:{port}")
        instance = DockerInstance(component, container_id, name, address, client, self.api)
        self._instances.add(instance)
        return instance

    async def hand_over(self, workspace: Workspace, instance: Instance, folder: Path) -> None:
        """Folders in the area are made by boride (root), private; a processor writes its
        ``writeDir`` and a plugin edits the merged tree as the unprivileged container user, so
        that user must own them first."""
        if self._owner is not None:
            await self._run(give_tree, folder, workspace.host_area, self._owner)

    def _mounts(self, workspace: Workspace, kind: Kind) -> list[Mount]:
        tpl_vol, area_vol = volume_names(workspace.session_id)
        mounts = []
        if kind in (Kind.PROCESSOR, Kind.TEMPLATE):
            mounts.append(Mount(SEEN_TEMPLATE, tpl_vol, type="volume", read_only=True,
                                no_copy=True))
        if kind in (Kind.PROCESSOR, Kind.PLUGIN):
            mounts.append(Mount(SEEN_AREA, area_vol, type="volume", read_only=False,
                                no_copy=True))
        return mounts

    def _create_and_start(self, workspace: Workspace, component: Component,
                          network_id: str) -> tuple[str, str, str]:
        """(container id, name, address on the network); removes the container on failure."""
        assert component.image
        session = workspace.session_id
        name = container_name(component.kind, component.name, session)
        api = self.api
        host_config = api.create_host_config(
            mounts=self._mounts(workspace, component.kind),
            network_mode=self.network,
            nano_cpus=int(self.cpus * 1e9),
            mem_limit=self.memory,
            memswap_limit=self.memory,
            pids_limit=self.pids,
            security_opt=["no-new-privileges:true"],
            cap_drop=["ALL"],
            read_only=self.read_only_rootfs,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
        )
        labels = {LABEL_MANAGED: "1", LABEL_SESSION: session, LABEL_ROLE: "component",
                  LABEL_KIND: component.kind.value, LABEL_COMPONENT: component.name}
        created = api.create_container(
            component.image, name=name, labels=labels, user=self.user,
            environment={"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
            host_config=host_config,
            networking_config=api.create_networking_config(
                {self.network: api.create_endpoint_config()}))  # type: ignore[arg-type]
        container_id = str(created["Id"])
        try:
            api.start(container_id)
            info = api.inspect_container(container_id)
        except BaseException:
            self._remove_container(container_id)
            raise
        nets = (info.get("NetworkSettings") or {}).get("Networks") or {}
        address = str((nets.get(self.network) or {}).get("IPAddress") or "")
        return container_id, name, address

    def _remove_container(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            try:
                self.api.remove_container(container_id, force=True, v=False)
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # removal already in progress
                    return
                raise

    async def stop(self, instance: Instance) -> None:
        assert isinstance(instance, DockerInstance)
        instance._closed.set()
        self._instances.discard(instance)
        await instance.client.aclose()
        try:
            await self._run(self._remove_container, instance.container_id)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeFailure(f"container {instance.name} could not be removed: "
                                f"{_reason(exc)}") from None

    async def close_workspace(self, workspace: Workspace) -> None:
        session = self._sessions.get(workspace.session_id)
        if session is not None and session.pending:
            await asyncio.gather(*session.pending, return_exceptions=True)
        try:
            await self._remove_session(workspace.session_id)
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                RuntimeFailure) as exc:
            sid = workspace.session_id
            raise RuntimeFailure(
                f"the session's containers and volumes (label {LABEL_SESSION}={sid}) could not "
                f"be removed ({_reason(exc)}); remove them with: boride clean --session {sid}"
            ) from None
        self._sessions.pop(workspace.session_id, None)

    async def _remove_session(self, session: str) -> list[str]:
        return await remove_labelled(self.api, {LABEL_SESSION: session}, self._run)

    async def aclose(self) -> None:
        for instance in list(self._instances):
            instance._closed.set()
            with contextlib.suppress(Exception):
                await instance.client.aclose()
        self._instances.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._client_lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None


def _network_gone(exc: BaseException) -> bool:
    text = str(getattr(exc, "explanation", "") or exc).lower()
    return "network" in text and "not found" in text


def _split_image(image: str) -> tuple[str, str]:
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


Runner = Callable[..., Awaitable[Any]]


async def remove_labelled(api: docker.APIClient, labels: dict[str, str | None],
                          run: Runner) -> list[str]:
    """Remove every container, then every volume, carrying all ``labels`` (a None value: the
    label is present, whatever its value); return the names removed."""
    filters = {"label": [k if v is None else f"{k}={v}" for k, v in labels.items()]}
    containers = await run(api.containers, all=True, filters=filters)

    async def rm_container(c: dict[str, Any]) -> str:
        with contextlib.suppress(docker.errors.NotFound):
            await run(api.remove_container, c["Id"], force=True, v=False)
        names = c.get("Names") or [c["Id"][:12]]
        return str(names[0]).lstrip("/")

    report = await parallel.run(rm_container, containers, limit=16)
    removed = [str(v) for v in report.values if v]
    volumes = (await run(api.volumes, filters=filters)).get("Volumes") or []

    async def rm_volume(v: dict[str, Any]) -> str:
        name = str(v["Name"])
        for attempt in range(20):
            try:
                await run(api.remove_volume, name, force=True)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or attempt == 19:  # 409: still in use a moment
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        return name

    vreport = await parallel.run(rm_volume, volumes, limit=16)
    removed += [str(v) for v in vreport.values if v]
    errors = [o for o in report.outcomes + vreport.outcomes if not o.ok]
    if errors:
        raise RuntimeFailure("could not remove " + "; ".join(
            f"{o.item.get('Names') or o.item.get('Name')}: {describe(o.error)}"
            for o in errors))
    return removed


async def aclean(session: str | None = None, all_: bool = False) -> list[str]:
    """Remove the containers and volumes boride left on the engine: those of one session, or
    (``all_``) every one boride labelled. Return the names removed."""
    if session is None and not all_:
        raise ValueError("give a session id or all_=True")
    labels: dict[str, str | None] = {LABEL_MANAGED: None}
    if session is not None:
        labels[LABEL_SESSION] = validate_session(session)
    client = await asyncio.to_thread(connect)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=16,
                                                 thread_name_prefix="boride-clean")

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, lambda: fn(*args, **kwargs))

    try:
        return await remove_labelled(client.api, labels, run)
    finally:
        pool.shutdown(wait=True)
        client.close()


def clean(session: str | None = None, all_: bool = False) -> list[str]:
    """``boride clean [--session ID | --all]``: see :func:`aclean`. Raises ``ValueError`` for a
    bad session id and :class:`RuntimeFailure` when no engine answers or a removal fails."""
    return _run_sync(lambda: aclean(session, all_))
