""":class:`DockerRuntime`: the sessions and components of one runtime, on the pieces of this
package (settings, engine, network, volumes, images, containers, clean-up)."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import docker.errors

from boride import aio, area_server, parallel
from boride.config import HELPER_MEMORY
from boride.errors import describe
from boride.runtime.base import (
    BlobImage,
    Cleaned,
    ComponentNetworks,
    HostFolder,
    Instance,
    Kept,
    Runtime,
    RuntimeFailure,
    TemplateRefused,
    TemplateSource,
    Workspace,
)
from boride.runtime.docker import containers, helper, kept, volumes
from boride.runtime.docker.blobs import Blobs
from boride.runtime.docker.cleanup import left_behind, remove_labelled, remove_labelled_by_kind
from boride.runtime.docker.containers import Container
from boride.runtime.docker.engine import ENGINE_ERRORS, Engine, reason
from boride.runtime.docker.helper import HelperArea
from boride.runtime.docker.images import image_problem, image_problems
from boride.runtime.docker.instance import DockerInstance
from boride.runtime.docker.names import (
    LABEL_MANAGED,
    LABEL_SESSION,
    NETWORK,
    kept_labels,
    validate_session,
)
from boride.runtime.docker.network import Network, network_gone
from boride.runtime.docker.session import DockerSession
from boride.runtime.docker.settings import DockerSettings
from boride.types import Component

log = logging.getLogger(__name__)
T = TypeVar("T")


class DockerRuntime(Runtime):
    """Components as Docker containers; see :mod:`boride.runtime.docker`.

    ``cpus``/``memory``/``pids``: limits of each container (defaults: 1 CPU, 512 MiB, 256
    processes, or the variables ``BORIDE_DOCKER_CPUS``, ``BORIDE_DOCKER_MEMORY``,
    ``BORIDE_DOCKER_PIDS``). ``user``: every component's user (default: each instance its own,
    :data:`boride.config.COMPONENT_UIDS`). ``pull``: pull missing images from their registry
    before starting (default: ``BORIDE_DOCKER_PULL``, off). ``engine``: the engine to use
    (default: the one ``DOCKER_HOST`` names, connected on first use).
    """

    name = "docker"
    host_areas = False  # areas live in engine volumes, worked on by the helper container
    sessions_outlive = True  # labelled on the engine: a restarted server takes them over

    def __init__(self, *, cpus: float | None = None, memory: str | int | None = None,
                 pids: int | None = None, user: str | None = None, network: str = NETWORK,
                 pull: bool | None = None, read_only_rootfs: bool = True,
                 workers: int = 32, engine: Engine | None = None) -> None:
        self.settings = DockerSettings.from_env(
            cpus=cpus, memory=memory, pids=pids, user=user, network=network, pull=pull,
            read_only_rootfs=read_only_rootfs)
        self.engine = engine or Engine(workers)
        self.network = Network(self.engine, self.settings.network)
        self._sessions: dict[str, DockerSession] = {}
        self.blobs = Blobs(self.engine, self.settings)
        self._instances: set[DockerInstance] = set()

    # -- checks -----------------------------------------------------------------------------
    async def problems(self, components: list[Component]) -> list[str]:
        try:
            await self.engine.connected()
        except RuntimeFailure as exc:
            return [str(exc)]
        found = await image_problems(self.engine, components, self.settings.pull)
        mine = await image_problem(self.engine, helper.helper_image(), self.settings.pull)
        if mine is not None:  # boride's own image does every session's file work
            found.append(f"{mine} (boride's own image: build it with make image, or "
                         f"docker/serve_image.py)")
        return found

    async def identity(self, component: Component, *, skip: Sequence[Path] = ()) -> str | None:
        """The image's id: a rebuilt or re-pulled image is another component."""
        return await self._image_id(component.image) if component.image else None

    async def template_identity(self, source: TemplateSource) -> str | None:
        if isinstance(source, BlobImage):
            image = await self._image_id(source.image)
            return f"blob:{image}" if image else None
        return await super().template_identity(source)

    async def _image_id(self, image: str) -> str | None:
        try:
            found = await self.engine.call(
                lambda api, name: api.inspect_image(name), image)
        except (*ENGINE_ERRORS, docker.errors.DockerException):
            return None
        return str(found["Id"])

    async def node_id(self) -> str:
        return await self.engine.node_id()

    async def component_networks(self) -> ComponentNetworks:
        """The subnets of the components' network, from the engine (again when this runtime
        made or found the network anew, and every few seconds); their gateways are the host's.
        While the engine does not answer (within a few seconds), the last answer."""
        return await self.network.subnets()

    # -- sessions ---------------------------------------------------------------------------
    async def open_workspace(self, session_id: str, template: TemplateSource,
                             root: Path | None, *, area: bool = True,
                             note: Mapping[str, str] | None = None) -> Workspace:
        """The session's volumes, filled with the template, and its helper container
        (without ``area``: the template's volume only); ``note`` labels all of it."""
        try:
            validate_session(session_id)
        except ValueError as exc:
            raise RuntimeFailure(str(exc)) from None
        if session_id in self._sessions:
            raise RuntimeFailure(f"session {session_id!r} is open already")
        session = self._sessions[session_id] = DockerSession(session_id, kept=kept_labels(note))
        try:
            # Whatever a killed run of the same session left goes first.
            await self._remove_session(session_id)
            await self.network.ensure()
            if isinstance(template, BlobImage):
                session.template_volume = await self.blobs.acquire(template, session_id)
                session.blob = template
            await volumes.create_volumes(self.engine, session_id, area=area,
                                         template=session.template_volume is None,
                                         kept=session.kept)
            if isinstance(template, HostFolder):
                await self.engine.call(helper.copy_host_folder, self.settings, session_id,
                                       template)
            if not area:
                if isinstance(template, Path):
                    await self.engine.call(helper.fill_template, self.settings, session_id,
                                           template)
                return Workspace(session_id, None)
            chunks = (await aio.to_thread(helper.template_chunks, template)
                      if isinstance(template, Path) else None)
            # The helper starts while the session's components do: the build needs it first
            # when it asks for a processor's writeDir, after the start stage. (Its failure is
            # the area's to tell; a session closed first never asks.)
            token = secrets.token_urlsafe(32)
            session.helper_job = session.create(self._start_helper(session, token, chunks),
                                                "helper")
            session.area = HelperArea(session.helper_job, token, helper.helper_name(session_id))
        except BaseException as exc:  # whatever stopped it (a cancellation too): undo, re-raise
            await aio.shielded(self._undo_open(session_id, exc))
            raise
        return Workspace(session_id, session.area)

    async def _start_helper(self, session: DockerSession, token: str,
                            template: Iterator[bytes] | None) -> DockerInstance:
        try:
            container = await self._on_network(lambda: self.engine.call(
                helper.create_helper, self.settings, session.id, token, template,
                session.template_volume, session.kept))
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(reason(exc)) from None
        return DockerInstance(HelperArea.helper_component(), container, self.settings.network,
                              self.engine.api, area_server.PORT, memory_limit=HELPER_MEMORY)

    async def _undo_open(self, session_id: str, error: BaseException) -> None:
        """Remove what a failed :meth:`open_workspace` made; raise what the caller should see
        instead of ``error``: a :class:`RuntimeFailure` for the engine's errors, and one
        naming what is left when the removal failed too (nothing when cancelled: the
        cancellation goes on, what is left is logged)."""
        session = self._sessions.pop(session_id, None)
        why = reason(error) if isinstance(error, ENGINE_ERRORS) else describe(error)
        if session is not None:  # (a creation cancelled ends first: nothing appears after)
            session.closing = True
            await session.tasks.aclose()
            if session.area is not None:
                await session.area.aclose()
        try:
            await self._remove_session(session_id)
            if session is not None and session.blob is not None:
                await self.blobs.release(session.blob)
        except (*ENGINE_ERRORS, RuntimeFailure) as exc:
            left = left_behind(session_id, exc)
            if not isinstance(error, Exception):
                log.error("%s", left)
                return
            raise RuntimeFailure(f"cannot prepare the session on Docker ({why}); {left}"
                                 ) from None
        if isinstance(error, (*ENGINE_ERRORS, parallel.ParallelError)):
            raise RuntimeFailure(f"cannot prepare the session on Docker: {why}") from None
        if isinstance(error, RuntimeFailure) and not isinstance(error, TemplateRefused):
            raise RuntimeFailure(f"cannot prepare the session on Docker: {why}") from None

    async def close_workspace(self, workspace: Workspace) -> None:
        session = self._sessions.get(workspace.session_id)
        if session is not None:
            await session.creations_ended()
        if session is not None and session.area is not None:
            await session.area.aclose()
        try:
            await self._remove_session(workspace.session_id)
            if session is not None and session.blob is not None:
                await self.blobs.release(session.blob)
                session.blob = None  # (released once, whatever a retry of the close does)
        except (*ENGINE_ERRORS, RuntimeFailure) as exc:
            raise RuntimeFailure(left_behind(workspace.session_id, exc)) from None
        self._sessions.pop(workspace.session_id, None)

    async def release_area(self, workspace: Workspace) -> None:
        session = self._sessions.get(workspace.session_id)
        if session is None or session.helper_job is None:
            return
        await asyncio.wait({session.helper_job})
        if session.area is not None:
            await session.area.aclose()
        if session.helper_job.cancelled() or session.helper_job.exception() is not None:
            return
        try:
            await self.engine.call(containers.remove_container,
                                   session.helper_job.result().container.id)
        except ENGINE_ERRORS as exc:  # close_workspace tries again, and says what is left
            log.debug("session %s: removing its helper: %s", session.id, reason(exc))

    async def adopt(self, owner: str) -> list[Kept]:
        """The sessions of ``owner`` on the engine, taken over (:func:`.kept.take_over`); one
        that cannot be used any more is removed (logged)."""
        adopted: list[Kept] = []
        for session, found in await kept.adopt(self.engine, self.settings, self.blobs, owner,
                                               skip=set(self._sessions),
                                               remove=self._remove_session):
            self._sessions[session.id] = session
            self._instances.update(i for i in found.instances.values()
                                   if isinstance(i, DockerInstance))
            adopted.append(found)
        return adopted

    async def drop_template(self, source: TemplateSource) -> list[str]:
        return await self.blobs.drop(source) if isinstance(source, BlobImage) else []

    async def clean_all(self) -> Cleaned:
        """Every container and volume labelled by boride on the engine (``boride clean
        --all``), whichever run made them."""
        try:
            client = await self.engine.connected()
            self.blobs.forget_all()
            removed = await remove_labelled_by_kind(client.api, {LABEL_MANAGED: None},
                                                    self.engine.run)
        except ENGINE_ERRORS as exc:
            raise RuntimeFailure(f"cannot remove boride's containers and volumes ({reason(exc)});"
                                 " remove them with: boride clean --all") from None
        return removed

    async def _remove_session(self, session: str) -> list[str]:
        client = await self.engine.connected()
        return await remove_labelled(client.api, {LABEL_SESSION: session}, self.engine.run)

    # -- components -------------------------------------------------------------------------
    async def start(self, workspace: Workspace, component: Component) -> Instance:
        if not component.image:
            raise RuntimeFailure(f"{component.kind.value} {component.name!r} has no image")
        session = self._sessions.get(workspace.session_id)
        if session is None:
            raise RuntimeFailure(f"session {workspace.session_id!r} is not open")
        with session.user_for(self.settings.own_users) as user:
            try:
                container = await self._on_network(
                    lambda: self._start_container(session, component, user))
            except docker.errors.DockerException as exc:
                raise RuntimeFailure(f"cannot start container: {reason(exc)}") from None
        instance = DockerInstance(component, container, self.settings.network, self.engine.api,
                                  memory_limit=str(self.settings.memory), user=user,
                                  users=session.users)
        self._instances.add(instance)
        return instance

    async def _on_network(self, make: Callable[[], Awaitable[T]]) -> T:
        """``make()`` a container on the components' network; once more when the network
        was removed behind our back (made again first)."""
        try:
            return await make()
        except docker.errors.DockerException as exc:
            if not network_gone(exc):
                raise
        self.network.forget()
        await self.network.ensure()
        return await make()

    async def _creations_ended(self) -> None:
        """Every session's creations under way have ended, and no new one can start."""
        for session in list(self._sessions.values()):
            await session.creations_ended()

    async def _start_container(self, session: DockerSession, component: Component,
                               user: tuple[int, int] | None) -> Container:
        """Create and start in one task of the session that a cancellation cannot cut in
        half (it says when the container runs): a cancelled start waits for it, then removes
        whatever it made (a creation that failed removed what it made itself)."""
        await self.network.ensure()
        made: list[Container] = []
        try:
            make = functools.partial(self._create, session, component, made, user)
            return await session.start(make, f"container of {component.name}")
        except asyncio.CancelledError:
            if made:
                await aio.shielded(self.engine.call(containers.remove_container, made[0].id))
            raise

    async def _create(self, session: DockerSession, component: Component, made: list[Container],
                      user: tuple[int, int] | None, status: aio.TaskStatus[Container]) -> None:
        """Make and start ``component``'s container (to its end, even when cancelled
        meanwhile), put it in ``made``, and report it started."""
        async def make() -> None:
            made.append(await self.engine.call(containers.create_and_start, self.settings,
                                               session.id, component, session.template_volume,
                                               session.kept, user))

        await aio.shielded(make())
        status.started(made[0])

    async def stop(self, instance: Instance) -> None:
        assert isinstance(instance, DockerInstance)
        self._instances.discard(instance)
        await instance.release()
        try:
            await self.engine.call(containers.remove_container, instance.container.id)
        except ENGINE_ERRORS as exc:
            raise RuntimeFailure(f"container {instance.name} could not be removed: "
                                 f"{reason(exc)}") from None
        instance.user_gone()  # (its container is gone)

    async def aclose(self) -> None:
        # Creations still under way end first: a container must not appear on the engine
        # after its runtime has closed.
        await aio.shielded(self._creations_ended())
        for session in self._sessions.values():
            if session.area is not None:
                await session.area.aclose()
        for instance in list(self._instances):
            await instance.release()
        self._instances.clear()
        self.engine.close()
