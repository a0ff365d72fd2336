"""The one small interface every runtime implements.

A runtime decides *where* a component runs (a local process in its own namespaces, a Docker
container, ...) and how boride reaches it. The pipeline only sees :class:`Runtime`,
:class:`Instance` and :class:`Workspace`, the way an HTTP client only sees its transport.
"""

from __future__ import annotations

import abc
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx

from boride import diagnose, fsutil
from boride.errors import BorideError
from boride.types import Component


@dataclass(frozen=True)
class Workspace:
    """A session's work area on the host, and the same places as the components see them.

    ``host_area`` is a folder boride owns for the session; processors write below it and the
    merge target lives in it. ``seen_area``/``seen_template`` are the paths a component is given
    (equal to the host paths on the local runtime; ``/workspace/area`` etc. in containers).
    """

    session_id: str
    host_template: Path
    host_area: Path
    seen_template: str
    seen_area: str

    def seen(self, host_path: Path) -> str:
        """The component's view of a host path inside the area."""
        rel = host_path.relative_to(self.host_area)
        return str(PurePosixPath(self.seen_area, *rel.parts)) if rel.parts else self.seen_area

    def host(self, seen_path: str) -> Path:
        """The host path of a path a component returned; ``ValueError`` unless inside the area.

        Symlinks are resolved, so a link pointing out of the area is refused too.
        """
        pure = PurePosixPath(seen_path)
        if not pure.is_absolute():
            raise ValueError(f"{seen_path!r} is not an absolute path")
        try:
            rel = pure.relative_to(self.seen_area)
        except ValueError:
            raise ValueError(f"{seen_path!r} is outside the session's work area "
                             f"{self.seen_area}") from None
        if ".." in rel.parts:
            raise ValueError(f"{seen_path!r} contains '..'")
        candidate = self.host_area.joinpath(*rel.parts)
        area = self.host_area.resolve()
        resolved = candidate.resolve()
        if resolved != area and area not in resolved.parents:
            raise ValueError(f"{seen_path!r} leads outside the session's work area")
        return resolved


# Lines of a component's output kept to explain a failure: enough to reach past a long stack
# (Node prints its message above dozens of frames); diagnose.summary shows a bounded part.
LOG_TAIL = 200


@dataclass
class ExitInfo:
    """How a component's process or container ended."""

    code: int | None  # None: killed by a signal we know nothing more about
    log_tail: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return self.headline() + diagnose.summary(self.log_tail)

    def headline(self) -> str:
        return f"exited with code {self.code}" if self.code is not None else "was killed"


class Instance(abc.ABC):
    """A started component: an HTTP client to reach it, and a way to learn when it dies."""

    component: Component
    client: httpx.AsyncClient

    @abc.abstractmethod
    async def wait_exit(self) -> ExitInfo:
        """Block until the component stops on its own (or is stopped); never raises."""

    @abc.abstractmethod
    def log_tail(self, lines: int = LOG_TAIL) -> list[str]:
        """The last lines the component printed (stdout and stderr)."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ComponentNetworks:
    """Where a runtime's components have addresses the host can be reached from: the subnets
    of their network(s), and the addresses in them that are the host's own (a bridge's
    gateway: the host itself, and published ports, connect from there), not a component's."""

    subnets: tuple[IPNetwork, ...] = ()
    host: frozenset[IPAddress] = frozenset()

    def holds(self, address: str) -> bool:
        """Whether a client address (as a server sees it) is a component's."""
        if not self.subnets:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False  # not an IP address (a Unix socket, a test client): not a component
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip not in self.host and any(ip in net for net in self.subnets)


@dataclass(frozen=True)
class Cleaned:
    """What :meth:`Runtime.clean_all` removed, by name."""

    containers: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()


class RuntimeFailure(BorideError):
    """A runtime could not do what was asked; the message is for the user."""


class Runtime(abc.ABC):
    """Where components run. One instance may serve several sessions at once."""

    name: str

    @abc.abstractmethod
    async def problems(self, components: list[Component]) -> list[str]:
        """Everything that would stop these components from starting, found before starting
        (blocking checks run off the event loop)."""

    @abc.abstractmethod
    async def open_workspace(self, session_id: str, template: Path, root: Path) -> Workspace:
        """Prepare a session's work area below ``root`` with ``template`` readable at
        ``seen_template``."""

    @abc.abstractmethod
    async def start(self, workspace: Workspace, component: Component) -> Instance:
        """Start one component; return as soon as it runs (readiness is checked separately)."""

    @abc.abstractmethod
    async def stop(self, instance: Instance) -> None:
        """Stop a component and release everything it holds; idempotent. Raises
        :class:`RuntimeFailure` naming what is left when it cannot (``close_workspace`` then
        tries again)."""

    @abc.abstractmethod
    async def close_workspace(self, workspace: Workspace) -> None:
        """Remove whatever the runtime made for the session (beyond the area folder itself),
        also what ``stop`` could not. Raises :class:`RuntimeFailure` saying what is left and
        how to remove it when it cannot."""

    async def hand_over(self, workspace: Workspace, instance: Instance,  # noqa: B027
                        folder: Path) -> None:
        """Let ``instance`` write in ``folder`` (a host folder in ``workspace``'s area, made
        private to boride's user): a processor's fresh ``writeDir``, the tree a plugin edits
        in place. Nothing to do where components run as boride's own user. Components may be
        changing the area meanwhile: a runtime must touch it through descriptors only."""

    async def component_networks(self) -> ComponentNetworks:
        """The networks this runtime's components have addresses on, as the host sees them: a
        request to boride from there comes from a component. By default none (components that
        reach nothing of the host's network, like the local runtime's, which have only their
        own loopback)."""
        return ComponentNetworks()

    async def clean_all(self) -> Cleaned:
        """Remove everything this runtime ever made for boride beyond sessions' area folders
        (on Docker: every container and volume labelled by boride, whichever run made them).
        Raises :class:`RuntimeFailure` saying what is left when some cannot be removed. By
        default nothing (a runtime whose sessions leave nothing outside their areas)."""
        return Cleaned()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release runtime-wide resources."""


def give_tree(folder: Path, area: Path, owner: tuple[int, int]) -> None:
    """Give ``folder`` (in the work area ``area``) and everything in it to ``owner`` (uid, gid)
    for a component to write in: through descriptors only, since other components of the
    session may be renaming things in the area right now (:func:`boride.fsutil.chown_tree`).
    Raises :class:`RuntimeFailure` naming what could not be given."""
    try:
        fd = fsutil.open_dir(folder, within=area)
    except (OSError, fsutil.UnsafePath) as exc:
        raise RuntimeFailure(f"cannot hand {folder} to the component's user: {exc}") from None
    try:
        errors = fsutil.chown_tree(fd, *owner)
    finally:
        os.close(fd)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise RuntimeFailure(f"cannot hand {folder} to the component's user: "
                             f"{'; '.join(errors[:3])}{more}")
