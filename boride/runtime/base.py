"""The one small interface every runtime implements.

A runtime decides *where* a component runs (a local process in its own namespaces, a Docker
container, ...) and how boride reaches it. The pipeline only sees :class:`Runtime`,
:class:`Instance` and :class:`Workspace`, the way an HTTP client only sees its transport.
"""

from __future__ import annotations

import abc
import ipaddress
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx

from boride import aio, cache, diagnose
from boride.area import Area
from boride.errors import InputError
from boride.errors import RuntimeFailure as RuntimeFailure  # (re-exported: runtimes raise it)
from boride.types import Component


@dataclass(frozen=True)
class HostFolder:
    """A template folder on the machine the runtime's components run on (a ``try --dev``
    path, on Docker the engine's machine), which must really lie below ``root`` there."""

    path: str
    root: str

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class BlobImage:
    """Template files shipped as an image (a CyanPrint registry template's blob image), whose
    default command unpacks them into ``/workspace/cyanprint``. ``key`` names what the files
    belong to (a template version id): the sessions of one ``shared`` key use one copy; an
    unshared one (a try session's) is removed with its session."""

    image: str
    key: str
    shared: bool = True

    @property
    def name(self) -> str:
        return self.image.rsplit("/", 1)[-1].split(":", 1)[0]


#: Where a session's template files come from: a folder of boride's own machine, or of the
#: runtime's (:class:`HostFolder`), or an image (:class:`BlobImage`).
TemplateSource = Path | HostFolder | BlobImage


def source_note(source: TemplateSource) -> str:
    """``source`` as text, for a session's note (:meth:`Runtime.open_workspace`)."""
    if isinstance(source, BlobImage):
        said: dict[str, object] = {"image": source.image, "key": source.key,
                                   "shared": source.shared}
    elif isinstance(source, HostFolder):
        said = {"host": source.path, "root": source.root}
    else:
        said = {"path": str(source)}
    return json.dumps(said, sort_keys=True)


def source_from_note(text: str | None) -> TemplateSource | None:
    """What :func:`source_note` wrote; None when ``text`` is not such a note."""
    try:
        said = json.loads(text or "")
        if "image" in said:
            return BlobImage(str(said["image"]), str(said["key"]), bool(said["shared"]))
        if "host" in said:
            return HostFolder(str(said["host"]), str(said["root"]))
        return Path(str(said["path"]))
    except (ValueError, TypeError, KeyError):
        return None


@dataclass(frozen=True)
class Workspace:
    """A session's work area (:class:`~boride.area.Area`), as the runtime made it; None for a
    session that only runs components sharing its template (resolvers, a Q&A server)."""

    session_id: str
    area: Area | None


# Lines of a component's output kept to explain a failure: enough to reach past a long stack
# (Node prints its message above dozens of frames); diagnose.summary shows a bounded part.
LOG_TAIL = 200


@dataclass
class ExitInfo:
    """How a component's process or container ended."""

    code: int | None  # None: killed by a signal we know nothing more about
    log_tail: list[str] = field(default_factory=list)
    #: the memory limit it ended on (as configured, e.g. ``512m``): ``oom_killed``, killed by
    #: it (a container's OOM kill); else it ran out of memory (an allocation refused: its
    #: output says so, :func:`diagnose.out_of_memory`) and exited
    memory_limit: str | None = None
    oom_killed: bool = False

    def describe(self) -> str:
        return self.headline() + diagnose.summary(self.log_tail)

    def headline(self) -> str:
        ended = f"exited with code {self.code}" if self.code is not None else "was killed"
        if self.memory_limit is None:
            return ended
        if self.oom_killed and self.code in (None, 128 + 9):  # SIGKILL: the OOM killer's
            return f"killed by its memory limit ({self.memory_limit})"
        if self.oom_killed:  # (a process of it was killed, then it exited)
            return f"{ended} after the kernel killed a process of it at its memory limit " \
                   f"({self.memory_limit})"
        return f"ran out of memory (its limit: {self.memory_limit}) and {ended}"


class Instance(abc.ABC):
    """A started component: an HTTP client to reach it, and a way to learn when it dies.
    ``user``: the (uid, gid) of its own it runs as (:class:`UserPool`), for whom the area makes
    its folders; None when it shares its user with others (then its folders are the area's
    default owner's)."""

    component: Component
    client: httpx.AsyncClient
    user: tuple[int, int] | None = None
    #: the memory it may take, as configured (``512m``), for messages; None: not known
    memory_limit: str | None = None

    @abc.abstractmethod
    async def wait_exit(self) -> ExitInfo:
        """Block until the component stops on its own (or is stopped); never raises."""

    @abc.abstractmethod
    def log_tail(self, lines: int = LOG_TAIL) -> list[str]:
        """The last lines the component printed (stdout and stderr)."""


class UserPool:
    """The users of a session's component instances: each instance its own uid (and the same
    number as gid) from ``uids``, given back when it stops. A uid given back is taken again
    only once every other one has been used (its old instance's leftovers are gone by then)."""

    def __init__(self, uids: range) -> None:
        self.uids = uids
        self._next = 0
        self._taken: set[int] = set()

    def take(self) -> tuple[int, int]:
        for _ in range(len(self.uids)):
            uid = self.uids[self._next % len(self.uids)]
            self._next += 1
            if uid not in self._taken:
                self._taken.add(uid)
                return uid, uid
        raise RuntimeFailure(f"more than {len(self.uids)} components at once in one session")

    def hold(self, uid: int) -> None:
        """Count ``uid`` as taken: an instance found running already (adopted) has it."""
        self._taken.add(uid)

    def give_back(self, user: tuple[int, int] | None) -> None:
        if user is not None:
            self._taken.discard(user[0])


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
class Kept:
    """A session a server left on its runtime, found again (:meth:`Runtime.adopt`): the note
    it was opened with (``open_workspace(note=...)``), its work area, the components of it
    still running (by name)."""

    session_id: str
    note: Mapping[str, str]
    workspace: Workspace
    instances: Mapping[str, Instance]


@dataclass(frozen=True)
class Cleaned:
    """What :meth:`Runtime.clean_all` removed, by name."""

    containers: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()


class TemplateRefused(RuntimeFailure, InputError):
    """A template folder that cannot be used (a :class:`HostFolder` outside its root, not a
    folder; links leading out); the message says which and why."""


class Runtime(abc.ABC):
    """Where components run. One instance may serve several sessions at once."""

    name: str
    #: whether components run on boride's own machine, their areas folders of it (below the
    #: ``root`` given to :meth:`open_workspace`) and a :class:`HostFolder` a folder boride can
    #: check itself; else the runtime keeps them where boride cannot see them (an engine)
    host_areas: bool = True
    #: whether sessions can outlive boride (the engine keeps them, :meth:`adopt` finds them
    #: again); the local runtime's components are processes that die with boride
    sessions_outlive: bool = False

    @abc.abstractmethod
    async def problems(self, components: list[Component]) -> list[str]:
        """Everything that would stop these components from starting, found before starting
        (blocking checks run off the event loop)."""

    @abc.abstractmethod
    async def open_workspace(self, session_id: str, template: TemplateSource,
                             root: Path | None, *, area: bool = True,
                             note: Mapping[str, str] | None = None) -> Workspace:
        """Prepare a session's work area (below ``root`` when :attr:`host_areas`) with the
        files of ``template`` readable by processors at ``area.template``; without ``area``,
        only the template's files (for components that read nothing else). ``note`` (with an
        ``owner``): what a server needs to take the session over after a restart, kept with
        it where the runtime can (see :meth:`adopt`)."""

    async def expect(self, workspace: Workspace,  # noqa: B027 - optional hook
                     components: Sequence[Component]) -> None:
        """``components`` may start in the session soon: prepare what makes their start
        faster (the local runtime: a fork server for its Python components). Never needed
        for :meth:`start` to work; by default nothing."""

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

    async def release_area(self, workspace: Workspace) -> None:  # noqa: B027 - optional hook
        """The session is closing: release what its area holds (on Docker its helper
        container), while its components stop; never raises (:meth:`close_workspace` removes
        whatever is left). By default nothing."""

    async def identity(self, component: Component, *, skip: Sequence[Path] = ()) -> str | None:
        """What ``component``'s outputs can depend on besides its inputs, as a digest (part of
        the cache's keys, :mod:`boride.cache`); None when that cannot be told (its steps are
        not cached). ``skip``: folders of boride's machine that are no part of it (the
        template, the outputs). By default None."""
        return None

    async def template_identity(self, source: TemplateSource) -> str | None:
        """A digest of ``source``'s files (:func:`boride.cache.tree_digest` of a folder of
        boride's machine), or None when they cannot be read from here."""
        if isinstance(source, Path):
            return await aio.to_thread(cache.tree_digest, source)
        return None

    async def template_problem(self, source: TemplateSource) -> str | None:
        """Why this runtime can never use ``source``'s files (found before anything starts),
        or None. By default none."""
        return None

    async def drop_template(self, source: TemplateSource) -> list[str]:
        """Remove what was made for ``source`` beyond its sessions (a shared copy of a
        :class:`BlobImage`'s files), now if no open session uses it, else when the last one
        closes; return what was removed. By default nothing."""
        return []

    async def node_id(self) -> str:
        """Which machine this runtime's components run on, as the cluster names it: on Docker
        the engine's swarm node id (else the engine's id); elsewhere the host name. ``boride
        front`` shows it for each worker (``GET /workers``)."""
        return socket.gethostname()

    async def component_networks(self) -> ComponentNetworks:
        """The networks this runtime's components have addresses on, as the host sees them: a
        request to boride from there comes from a component. By default none (components that
        reach nothing of the host's network, like the local runtime's, which have only their
        own loopback)."""
        return ComponentNetworks()

    async def adopt(self, owner: str) -> list[Kept]:
        """The sessions opened with a note of ``owner`` that a previous run of it left (a
        server restarted on the same engine), now this runtime's as if it had opened them;
        what of them cannot be used any more is removed. By default none: a runtime whose
        sessions end with boride (the local runtime's processes die with it)."""
        return []

    async def clean_all(self) -> Cleaned:
        """Remove everything this runtime ever made for boride beyond sessions' area folders
        (on Docker: every container and volume labelled by boride, whichever run made them).
        Raises :class:`RuntimeFailure` saying what is left when some cannot be removed. By
        default nothing (a runtime whose sessions leave nothing outside their areas)."""
        return Cleaned()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release runtime-wide resources."""
