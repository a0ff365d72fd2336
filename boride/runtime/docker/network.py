"""The bridge network components join (``cyanprint``): made if missing, reused (never
removed), made again when someone removed it; and its subnets, for
:meth:`~boride.runtime.base.Runtime.component_networks`."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

import docker
import docker.errors

from boride.runtime.base import ComponentNetworks, RuntimeFailure
from boride.runtime.docker.engine import ENGINE_ERRORS, Engine, reason
from boride.runtime.docker.names import LABEL_MANAGED

log = logging.getLogger(__name__)

#: How long the components' network's subnets are trusted before asking the engine again
#: (sooner when this runtime made or found the network anew).
NETWORKS_TTL = 5.0
NETWORKS_WAIT = 10.0  # how long a request waits for the engine's answer at most


def network_gone(exc: BaseException) -> bool:
    """Whether an engine error says the network is not there (any more)."""
    text = str(getattr(exc, "explanation", "") or exc).lower()
    return "network" in text and "not found" in text


def _find(api: docker.APIClient, name: str) -> str | None:
    nets = [n for n in api.networks(names=[name]) if n.get("Name") == name]
    return str(nets[0]["Id"]) if nets else None


def find_or_create(api: docker.APIClient, name: str) -> str:
    """The id of the bridge network ``name``, created (labelled) if missing."""
    found = _find(api, name)
    if found:
        return found
    try:
        created = api.create_network(name, driver="bridge", check_duplicate=True,
                                     labels={LABEL_MANAGED: "1"})
        return str(created["Id"])
    except docker.errors.APIError:
        found = _find(api, name)  # someone else created it meanwhile
        if found:
            return found
        raise


def read_subnets(api: docker.APIClient, name: str) -> ComponentNetworks:
    """The subnets of the network(s) called ``name``; their gateways are the host's."""
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    gateways: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for net in api.networks(names=[name]):
        if net.get("Name") != name:
            continue
        for config in (net.get("IPAM") or {}).get("Config") or []:
            if config.get("Subnet"):
                subnets.append(ipaddress.ip_network(config["Subnet"], strict=False))
            if config.get("Gateway"):
                gateways.add(ipaddress.ip_address(config["Gateway"]))
    return ComponentNetworks(tuple(subnets), frozenset(gateways))


class Network:
    """The network ``name`` on ``engine``, as one runtime knows it. ``id``: the network this
    runtime made or found (None until it needs one, or once it was found gone)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.id: str | None = None
        self._ensure_lock = asyncio.Lock()
        self._subnets = ComponentNetworks()  # what subnets() answered last
        self._subnets_of: tuple[str | None, float] | None = None  # (network id, when)
        self._subnets_lock = asyncio.Lock()

    async def ensure(self) -> str:
        """The network's id, made or found first if needed."""
        async with self._ensure_lock:
            if self.id is None:
                self.id = await self.engine.call(find_or_create, self.name)
            return self.id

    def forget(self) -> None:
        """The network went away behind this runtime's back: make or find it again."""
        self.id = None

    def _fresh(self) -> bool:
        return (self._subnets_of is not None and self._subnets_of[0] == self.id
                and time.monotonic() - self._subnets_of[1] < NETWORKS_TTL)

    async def subnets(self) -> ComponentNetworks:
        """The network's subnets, from the engine (again when this runtime made or found the
        network anew, and after :data:`NETWORKS_TTL` seconds, in case someone else re-created
        it). While the engine does not answer (within a few seconds), the last answer."""
        if self._fresh():
            return self._subnets
        async with self._subnets_lock:
            if self._fresh():
                return self._subnets
            network_id = self.id
            try:
                async with asyncio.timeout(NETWORKS_WAIT):
                    self._subnets = await self.engine.call(read_subnets, self.name)
            except (*ENGINE_ERRORS, RuntimeFailure, TimeoutError, ValueError) as exc:
                log.warning("cannot learn the subnets of the %s network (%s): using the last "
                            "known ones", self.name, reason(exc))
            self._subnets_of = (network_id, time.monotonic())
            return self._subnets
