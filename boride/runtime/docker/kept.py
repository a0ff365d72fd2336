"""Sessions a server left on the engine, found again by their labels (a restarted server,
the daemon container after ``docker restart``, a swarm worker replaced on its node).

Everything made for a server's session carries its owner's name and its note
(:func:`.names.kept_labels`): the note says what the server needs (the template, a try
session's resolvers, ...), the containers' own labels say which component each runs. Labels
cannot change once made, so nothing else is kept: the engine holds no time of last use (an
adopted session's idle clock starts again when it is adopted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import docker

from boride.area_server import TOKEN_ENV
from boride.runtime.docker.containers import Container
from boride.runtime.docker.names import (
    LABEL_COMPONENT,
    LABEL_KIND,
    LABEL_NOTE,
    LABEL_OWNER,
    LABEL_ROLE,
    LABEL_SESSION,
)


@dataclass(frozen=True)
class FoundContainer:
    container: Container
    role: str  # component, helper, ...
    kind: str  # processor, plugin, resolver, template; merger for the helper
    component: str  # the component's name
    image: str  # as it was created with: the name the component was started with
    running: bool


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
                          running)


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
