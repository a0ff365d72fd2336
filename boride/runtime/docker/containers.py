"""Containers ``cyan-<kind>-<component id without dashes>-<s>``: made unprivileged (a non-root
user, every capability dropped, ``no-new-privileges``, a read-only root file system with a
small ``/tmp`` and a private home, ``HOME=/tmp/home``, for what components write to their home
or cache), with CPU, memory and PID limits and no published port (boride reaches them by their
address on the network: the host routes to bridge addresses on Linux); and removed."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import httpx

from boride import telemetry
from boride.protocol import plain_http
from boride.runtime.docker.names import (
    LABEL_COMPONENT,
    LABEL_KIND,
    LABEL_USER,
    container_name,
    session_labels,
)
from boride.runtime.docker.settings import DockerSettings
from boride.runtime.docker.volumes import mounts
from boride.types import Component

HOME = "/tmp/home"  # the components' home: a tmpfs of their own, writable by their user


def _home_tmpfs(user: str) -> str:
    """Mount options of the home tmpfs: owned by the container user (a ``uid[:gid]``), else,
    for a user given by name, open to all (the container is its only user)."""
    m = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    if m is None:
        return "rw,nosuid,nodev,size=64m,mode=1777"
    return (f"rw,nosuid,nodev,size=64m,mode=700,uid={m.group(1)},"
            f"gid={m.group(2) or m.group(1)}")


@dataclass(frozen=True)
class Container:
    """A container that was started: its id, its name, its address on the network ("" when it
    has none: it stopped before getting one)."""

    id: str
    name: str
    address: str


def _host_config(api: docker.APIClient, settings: DockerSettings, session: str,
                 component: Component, template_volume: str | None, user: str
                 ) -> dict[str, Any]:
    return api.create_host_config(
        mounts=mounts(session, component.kind, template_volume),
        network_mode=settings.network,
        nano_cpus=int(settings.cpus * 1e9),
        mem_limit=settings.memory,
        memswap_limit=settings.memory,
        pids_limit=settings.pids,
        security_opt=["no-new-privileges:true"],
        cap_drop=["ALL"],
        read_only=settings.read_only_rootfs,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777", HOME: _home_tmpfs(user)},
    )


def create_and_start(api: docker.APIClient, settings: DockerSettings, session: str,
                     component: Component, template_volume: str | None = None,
                     kept: Mapping[str, str] | None = None,
                     user: tuple[int, int] | None = None) -> Container:
    """Make and start ``component``'s container (``kept``: the labels of its session's note,
    :func:`~.names.kept_labels`), as ``user`` (its own) or else the settings' user; removes it
    again when it cannot start."""
    assert component.image
    as_user = f"{user[0]}:{user[1]}" if user is not None else settings.user
    name = container_name(component.kind, component.name, session)
    labels = {**session_labels(session, "component", kept), LABEL_KIND: component.kind.value,
              LABEL_COMPONENT: component.name, **({LABEL_USER: as_user} if user else {})}
    about = {"image": component.image, "component": component.name,
             "kind": component.kind.value}
    with telemetry.operation("container create", **about, operation="create"):
        created = api.create_container(
            component.image, name=name, labels=labels, user=as_user,
            environment={"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                         "HOME": HOME},
            host_config=_host_config(api, settings, session, component, template_volume,
                                     as_user),
            networking_config=api.create_networking_config(
                {settings.network: api.create_endpoint_config()}))  # type: ignore[arg-type]
    return start_created(api, str(created["Id"]), name, settings.network, about=about)


def start_created(api: docker.APIClient, container_id: str, name: str, network: str,
                  before: Callable[[], None] | None = None, *,
                  about: Mapping[str, str | None] | None = None) -> Container:
    """Start a container made on ``network`` (after ``before()``, e.g. copying files in) and
    learn its address there; removed again when any of that fails. ``about``: its spans'
    attributes (image, component)."""
    about = about or {}
    try:
        if before is not None:
            with telemetry.operation("container copy in", **about, operation="put_archive"):
                before()
        with telemetry.operation("container start", **about, operation="start"):
            api.start(container_id)
            info = api.inspect_container(container_id)
    except BaseException:  # whatever stopped it (an interrupt too): no half-made container
        remove_container(api, container_id)
        raise
    nets = (info.get("NetworkSettings") or {}).get("Networks") or {}
    address = str((nets.get(network) or {}).get("IPAddress") or "")
    return Container(container_id, name, address)


def remove_container(api: docker.APIClient, container_id: str) -> None:
    """Remove a container, running or not; nothing to do when it is gone already."""
    try:
        api.remove_container(container_id, force=True, v=False)
    except docker.errors.NotFound:
        return  # gone already
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: its removal is in progress already
            raise


class _Unreachable(httpx.AsyncBaseTransport):
    """The transport of a container that has no address (it stopped before getting one)."""

    def __init__(self, why: str) -> None:
        self.why = why

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(self.why, request=request)


#: Seconds an idle connection to a container is kept for reuse (see :func:`http_client`).
KEEPALIVE_EXPIRY = 2.0


def http_client(container: Container, port: int, network: str) -> httpx.AsyncClient:
    """A client reaching ``container``'s ``port`` at its address on ``network``."""
    if container.address:
        # An idle connection is dropped well before the server's keep-alive timeout (5 s for
        # uvicorn, the helper's and the SDKs' servers): reusing one the server is closing at
        # that very moment fails the call ("Server disconnected without sending a
        # response"), which happened under load (issue 15's swarm test).
        transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY), verify=plain_http())
    else:
        transport = _Unreachable(f"container {container.name} has no address on {network} "
                                 "(it is not running)")
    return httpx.AsyncClient(transport=transport, timeout=None, trust_env=False,
                             base_url=f"http://{container.address or 'unreachable.invalid'}:"
                                      f"{port}")
