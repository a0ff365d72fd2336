"""How containers are made: their limits (``BORIDE_DOCKER_CPUS``, ``BORIDE_DOCKER_MEMORY``,
``BORIDE_DOCKER_PIDS``), the user they run as, the network they join, whether missing images
are pulled (``BORIDE_DOCKER_PULL``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from boride import config, settings
from boride.config import DEFAULT_CPUS, DEFAULT_MEMORY, DEFAULT_PIDS
from boride.runtime.docker.names import NETWORK

NOBODY = "{}:{}".format(*config.NOBODY)  # (as Docker writes a user)


@dataclass(frozen=True)
class DockerSettings:
    """What every container of a runtime gets. ``user``: the user components run as when
    ``own_users`` is off; with it (the default) each component instance runs as a user of
    its own (:data:`boride.config.COMPONENT_UIDS`); ``read_only_rootfs``: a read-only root
    file system (with a small writable ``/tmp``)."""

    cpus: float = DEFAULT_CPUS
    memory: str | int = DEFAULT_MEMORY
    pids: int = DEFAULT_PIDS
    user: str = NOBODY
    network: str = NETWORK
    pull: bool = False
    read_only_rootfs: bool = True
    own_users: bool = True

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.pids <= 0:
            raise ValueError(f"cpus and pids must be positive, got {self.cpus} and {self.pids}")

    @classmethod
    def from_env(cls, *, cpus: float | None = None, memory: str | int | None = None,
                 pids: int | None = None, user: str | None = None, network: str = NETWORK,
                 pull: bool | None = None, read_only_rootfs: bool = True,
                 env: Mapping[str, str] = os.environ) -> DockerSettings:
        """The values given; for those left out, the ``BORIDE_DOCKER_*`` variables, else the
        defaults. By default each component instance runs as a user of its own; a ``user``
        given is every component's (no isolation of their folders from one another)."""
        own_users = user is None
        if user is None:
            user = NOBODY
        if pull is None:
            pull = settings.get("BORIDE_DOCKER_PULL", env)
        return cls(
            cpus=settings.get("BORIDE_DOCKER_CPUS", env) if cpus is None else cpus,
            memory=settings.get("BORIDE_DOCKER_MEMORY", env) if memory is None else memory,
            pids=settings.get("BORIDE_DOCKER_PIDS", env) if pids is None else pids,
            user=user, network=network, pull=pull, read_only_rootfs=read_only_rootfs,
            own_users=own_users)
