"""Sessions a server left on the engine, found again by their labels (a restarted server,
the daemon container after ``docker restart``, a swarm worker replaced on its node).

Everything made for a server's session carries its owner's name and its note
(:func:`.names.kept_labels`): the note says what the server needs (the template, a try
session's resolvers, ...), the containers' own labels say which component each runs. Labels
cannot change once made, so nothing else is kept: the engine holds no time of last use (an
adopted session's idle clock starts again when it is adopted).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker

from boride import aio, parallel
from boride.area_server import PORT, TOKEN_ENV
from boride.errors import describe
from boride.runtime.base import (
    BlobImage,
    Instance,
    Kept,
    RuntimeFailure,
    Workspace,
    source_from_note,
)
from boride.runtime.docker.blobs import Blobs
from boride.runtime.docker.cleanup import left_behind
from boride.runtime.docker.containers import Container, remove_container
from boride.runtime.docker.engine import ENGINE_ERRORS, Engine
from boride.runtime.docker.helper import HelperArea, helper_name
from boride.runtime.docker.instance import DockerInstance
from boride.runtime.docker.names import (
    LABEL_COMPONENT,
    LABEL_KIND,
    LABEL_NOTE,
    LABEL_OWNER,
    LABEL_ROLE,
    LABEL_SESSION,
    LABEL_USER,
    kept_labels,
)
from boride.runtime.docker.session import DockerSession
from boride.runtime.docker.settings import DockerSettings
from boride.types import Component, Kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundContainer:
    container: Container
    role: str  # component, helper, ...
    kind: str  # processor, plugin, resolver, template; merger for the helper
    component: str  # the component's name
    image: str  # as it was created with: the name the component was started with
    running: bool
    user: tuple[int, int] | None = None  # its own user, when it has one


@dataclass
class Found:
    """What the engine holds of one session of an owner."""

    session: str
    note: dict[str, str] = field(default_factory=dict)
    containers: list[FoundContainer] = field(default_factory=list)
    area_volume: bool = False
    helper_token: str | None = None

    @property
    def helper(self) -> FoundContainer | None:
        return next((c for c in self.containers if c.role == "helper"), None)

    @property
    def components(self) -> list[FoundContainer]:
        return [c for c in self.containers if c.role == "component"]


def _note(labels: Mapping[str, str]) -> dict[str, str] | None:
    try:
        note = json.loads(labels.get(LABEL_NOTE) or "")
    except ValueError:
        return None
    if not isinstance(note, dict) or not all(isinstance(v, str) for v in note.values()):
        return None
    return {str(k): v for k, v in note.items()}


def _container(entry: dict[str, Any], network: str) -> FoundContainer:
    labels = entry.get("Labels") or {}
    nets = (entry.get("NetworkSettings") or {}).get("Networks") or {}
    running = entry.get("State") == "running"
    address = str((nets.get(network) or {}).get("IPAddress") or "") if running else ""
    name = str((entry.get("Names") or [""])[0]).lstrip("/")
    return FoundContainer(Container(str(entry["Id"]), name, address),
                          str(labels.get(LABEL_ROLE, "")), str(labels.get(LABEL_KIND, "")),
                          str(labels.get(LABEL_COMPONENT, "")), str(entry.get("Image") or ""),
                          running, _user(str(labels.get(LABEL_USER, ""))))


def _user(label: str) -> tuple[int, int] | None:
    uid, _, gid = label.partition(":")
    return (int(uid), int(gid)) if uid.isdigit() and gid.isdigit() else None


def find(api: docker.APIClient, owner: str, network: str) -> list[Found]:
    """Every session of ``owner`` on the engine: its note, containers and area volume (a
    session whose note cannot be read is left out: not this server's to take over)."""
    filters = {"label": [f"{LABEL_OWNER}={owner}"]}
    sessions: dict[str, Found] = {}

    def of(labels: Mapping[str, str]) -> Found | None:
        sid = labels.get(LABEL_SESSION)
        note = _note(labels)
        if not sid or note is None or note.get("owner") != owner:
            return None
        return sessions.setdefault(sid, Found(sid, note))

    for entry in api.containers(all=True, filters=filters):
        found = of(entry.get("Labels") or {})
        if found is not None:
            found.containers.append(_container(entry, network))
    for volume in api.volumes(filters=filters).get("Volumes") or []:
        found = of(volume.get("Labels") or {})
        if found is not None and (volume.get("Labels") or {}).get(LABEL_ROLE) == "area":
            found.area_volume = True
    for found in sessions.values():
        helper = found.helper
        if helper is not None and helper.running:
            found.helper_token = _token(api, helper.container.id)
    return list(sessions.values())


def _token(api: docker.APIClient, container_id: str) -> str | None:
    """The token the helper container answers to (its environment)."""
    info = api.inspect_container(container_id)
    for item in (info.get("Config") or {}).get("Env") or []:
        name, _, value = str(item).partition("=")
        if name == TOKEN_ENV and value:
            return value
    return None


async def adopt(engine: Engine, settings: DockerSettings, blobs: Blobs, owner: str, *,
                skip: set[str], remove: Callable[[str], Awaitable[object]]
                ) -> list[tuple[DockerSession, Kept]]:
    """The sessions of ``owner`` on the engine (but those in ``skip``), each taken over
    (:func:`take_over`); one that cannot be, removed with ``remove`` (its id), and logged."""
    try:
        await engine.connected()
        found = await engine.call(find, owner, settings.network)
    except (RuntimeFailure, *ENGINE_ERRORS) as exc:
        log.warning("cannot look for the sessions a previous %s left on the engine: %s",
                    owner, describe(exc))
        return []
    report = await parallel.run(lambda f: take_over(engine, settings, blobs, f),
                                [f for f in found if f.session not in skip])
    adopted = []
    for outcome in report.outcomes:
        if outcome.ok and outcome.value is not None:
            adopted.append(outcome.value)
            continue
        sid = outcome.item.session
        log.warning("session %s left by a previous %s cannot be used (%s): removing it",
                    sid, owner, describe(outcome.error))
        try:
            await remove(sid)
        except (*ENGINE_ERRORS, RuntimeFailure) as exc:
            log.error("%s", left_behind(sid, exc))
    return adopted


async def take_over(engine: Engine, settings: DockerSettings, blobs: Blobs, found: Found
                    ) -> tuple[DockerSession, Kept]:
    """``found`` as a session of the runtime: its running components and helper reached
    again, its blob volume counted as used, the containers of components that stopped
    removed (the next start starts them again). :class:`RuntimeFailure` when its area has
    lost its helper: it cannot work any more."""
    session = DockerSession(found.session, kept=kept_labels(found.note))
    source = source_from_note(found.note.get("source"))
    if isinstance(source, BlobImage):
        session.template_volume = await blobs.adopt(source)
        session.blob = source
    try:
        for c in found.containers:
            if not c.running:
                await engine.call(remove_container, c.container.id)
        if found.area_volume:
            helper = found.helper
            if helper is None or not helper.running or not found.helper_token:
                raise RuntimeFailure("its helper container is not running")
            running = asyncio.get_running_loop().create_future()
            running.set_result(DockerInstance(HelperArea.helper_component(), helper.container,
                                              settings.network, engine.api, PORT))
            session.helper_job = running
            session.area = HelperArea(running, found.helper_token, helper_name(found.session))
    except BaseException:
        if session.blob is not None:
            await aio.shielded(blobs.release(session.blob))
        raise
    instances: dict[str, Instance] = {
        c.component: DockerInstance(Component(c.component, Kind(c.kind), image=c.image),
                                    c.container, settings.network, engine.api, user=c.user)
        for c in found.components if c.running and c.component}
    for c in found.components:  # (their users are theirs: no new instance gets them)
        if c.running and c.user is not None:
            session.users.hold(c.user[0])
    return session, Kept(found.session, found.note, Workspace(found.session, session.area),
                         instances)
