"""The Docker runtime: each component runs from its ``image:`` in its own container.

Everything goes through the Docker Engine API (the ``docker`` SDK; ``DOCKER_HOST`` honoured),
never the CLI. Blocking SDK calls run in the runtime's own thread pool; every fan-out (image
checks and pulls, volume creation, removals) goes through :func:`boride.parallel.run`.

Layout of a session (``<s>`` is the session id, validated by :data:`SESSION_PATTERN`): one
bridge network ``cyanprint``, created if missing and reused (never removed); two volumes
binding the template and the session's area; one unprivileged, limited container per
component, reached at its address on the network. Every container and volume carries the
labels ``boride.managed``, ``boride.session``, ``boride.kind``/``boride.role`` and
``boride.component``: clean-up finds them by label, never by name.

The engine must run on this host (a local socket, or ``DOCKER_HOST`` naming this machine's
engine): the volumes bind host folders and boride connects to container addresses, which is
what a Linux host offers. A missing image is reported by
:meth:`DockerRuntime.problems` before anything starts.

The modules, one concern each:

* :mod:`.names` — the network, paths, labels and names of a session's things;
* :mod:`.settings` — limits (``BORIDE_DOCKER_*``), the container user and whom folders go to;
* :mod:`.engine` — connecting, the engine's errors, the thread pool its calls run on;
* :mod:`.network` — the components' network (made, reused, made again) and its subnets;
* :mod:`.volumes` — a session's volumes and what each kind of component mounts;
* :mod:`.images` — image checks and pulls;
* :mod:`.containers` — making, starting and removing containers;
* :mod:`.instance` — a running container: its client, output and watcher thread;
* :mod:`.cleanup` — removal by label (a session's things, ``boride clean``);
* :mod:`.runtime` — :class:`DockerRuntime`, which puts them together.
"""

from __future__ import annotations

from boride.config import DEFAULT_CPUS, DEFAULT_MEMORY, DEFAULT_PIDS
from boride.runtime.docker.cleanup import aclean, clean, remove_labelled
from boride.runtime.docker.containers import Container
from boride.runtime.docker.engine import Engine, connect, engine_address
from boride.runtime.docker.instance import DockerInstance
from boride.runtime.docker.names import (
    LABEL_COMPONENT,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_SESSION,
    NETWORK,
    SEEN_AREA,
    SEEN_TEMPLATE,
    SESSION_PATTERN,
    component_id,
    container_name,
    validate_session,
    volume_names,
)
from boride.runtime.docker.network import NETWORKS_TTL, find_or_create
from boride.runtime.docker.runtime import DockerRuntime
from boride.runtime.docker.settings import NOBODY, DockerSettings

__all__ = [
    "DEFAULT_CPUS",
    "DEFAULT_MEMORY",
    "DEFAULT_PIDS",
    "LABEL_COMPONENT",
    "LABEL_KIND",
    "LABEL_MANAGED",
    "LABEL_ROLE",
    "LABEL_SESSION",
    "NETWORK",
    "NETWORKS_TTL",
    "NOBODY",
    "SEEN_AREA",
    "SEEN_TEMPLATE",
    "SESSION_PATTERN",
    "Container",
    "DockerInstance",
    "DockerRuntime",
    "DockerSettings",
    "Engine",
    "aclean",
    "clean",
    "component_id",
    "connect",
    "container_name",
    "engine_address",
    "find_or_create",
    "remove_labelled",
    "validate_session",
    "volume_names",
]
