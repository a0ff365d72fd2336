"""Template files from blob images (a CyanPrint registry template's files ship as an image
whose default command unpacks them into ``/workspace/cyanprint``).

Each (image, key) gets one engine volume ``cyan-blob-<digest>``, filled by running the image
once with the volume mounted there (no network, only what tar needs to set owners and modes,
read-only root file system, the runtime's limits, at most :data:`FILL_TIMEOUT` seconds), then
mounted read-only by every
session of that key. A shared one (a template version's) stays until
:meth:`Blobs.drop` (``DELETE /template/{id}``, an idle template) once no session uses it, or
``boride clean --all``; an unshared one (a try session's) goes with its last session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field

import docker
import docker.errors
from docker.types import Mount

from boride import diagnose
from boride.runtime.base import BlobImage, RuntimeFailure
from boride.runtime.docker.containers import remove_container
from boride.runtime.docker.engine import ENGINE_ERRORS, Engine, reason
from boride.runtime.docker.images import image_problem
from boride.runtime.docker.instance import decode_lines
from boride.runtime.docker.names import LABEL_KIND, LABEL_MANAGED, LABEL_ROLE, SEEN_TEMPLATE
from boride.runtime.docker.settings import DockerSettings

FILL_TIMEOUT = 600
LABEL_TEMPLATE = "boride.template"


def volume_name(source: BlobImage) -> str:
    digest = hashlib.sha256(f"{source.key}\0{source.image}".encode()).hexdigest()[:24]
    return f"cyan-blob-{digest}"


def fill(api: docker.APIClient, settings: DockerSettings, volume: str, source: BlobImage,
         labels: dict[str, str]) -> None:
    """Make ``volume`` and run ``source.image`` once to fill it; :class:`RuntimeFailure`
    naming the image and showing its output when it does not exit 0 (the volume removed)."""
    try:
        api.remove_volume(volume)  # a copy a killed run left: made again, never half trusted
    except docker.errors.APIError as exc:
        if exc.status_code not in (404, 409):  # (409: still mounted by a leftover: refilled)
            raise
    api.create_volume(volume, driver="local", labels=labels)
    try:
        _run_once(api, settings, volume, source)
    except BaseException:
        # (when this fails too, the label finds it later: boride clean --all; the first
        # error is the one to tell)
        with contextlib.suppress(*ENGINE_ERRORS):
            api.remove_volume(volume, force=True)
        raise


def _run_once(api: docker.APIClient, settings: DockerSettings, volume: str,
              source: BlobImage) -> None:
    host_config = api.create_host_config(
        mounts=[Mount(SEEN_TEMPLATE, volume, type="volume", read_only=False, no_copy=True)],
        network_mode="none", mem_limit=settings.memory, memswap_limit=settings.memory,
        pids_limit=settings.pids, security_opt=["no-new-privileges:true"], cap_drop=["ALL"],
        # what an unpacking tar running as root needs (owners, modes); it reaches nothing
        # but the volume: no network, a read-only root file system
        cap_add=["CHOWN", "DAC_OVERRIDE", "FOWNER"],
        read_only=True, tmpfs={"/tmp": "rw,nosuid,nodev,size=256m,mode=1777"})
    created = api.create_container(
        source.image, labels={LABEL_MANAGED: "1", LABEL_ROLE: "blob", LABEL_KIND: "blob",
                              LABEL_TEMPLATE: source.key},
        host_config=host_config)
    container_id = str(created["Id"])
    try:
        api.start(container_id)
        try:
            code = api.wait(container_id, timeout=FILL_TIMEOUT).get("StatusCode")
        except docker.errors.DockerException:  # (the wait timed out)
            raise RuntimeFailure(f"the template image {source.image} did not unpack the "
                                 f"template within {FILL_TIMEOUT}s") from None
        if code != 0:
            lines = decode_lines(api.logs(container_id, stdout=True, stderr=True, tail=40), 40)
            raise RuntimeFailure(f"the template image {source.image} failed to unpack the "
                                 f"template (exit code {code}){diagnose.summary(lines)}")
    finally:
        remove_container(api, container_id)


@dataclass
class _Blob:
    volume: str
    users: int = 0
    filled: bool = False
    dropped: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Blobs:
    """The blob volumes of one runtime, by name, with how many sessions use each."""

    def __init__(self, engine: Engine, settings: DockerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._table: dict[str, _Blob] = {}

    async def acquire(self, source: BlobImage, session: str) -> str:
        """The volume holding ``source``'s files (filled first if needed), one more user."""
        blob = self._table.setdefault(volume_name(source), _Blob(volume_name(source)))
        async with blob.lock:
            if not blob.filled:
                problem = await image_problem(self.engine, source.image, self.settings.pull)
                if problem is not None:
                    raise RuntimeFailure(f"the template's files: {problem}")
                labels = {LABEL_MANAGED: "1", LABEL_ROLE: "template", LABEL_KIND: "blob",
                          LABEL_TEMPLATE: source.key}
                if not source.shared:  # goes with its session, whatever happens
                    labels["boride.session"] = session
                await self.engine.call(fill, self.settings, blob.volume, source, labels)
                blob.filled = True
            blob.users += 1
            blob.dropped = blob.dropped or not source.shared
        return blob.volume

    async def adopt(self, source: BlobImage) -> str:
        """The volume holding ``source``'s files, filled by a previous run (a session of it
        taken over), one more user; :class:`RuntimeFailure` when it is not there any more."""
        blob = self._table.setdefault(volume_name(source), _Blob(volume_name(source)))
        async with blob.lock:
            if not blob.filled:
                try:
                    await self.engine.call(lambda api: api.inspect_volume(blob.volume))
                except docker.errors.NotFound:
                    raise RuntimeFailure(f"its template volume {blob.volume} is gone") from None
                blob.filled = True
            blob.users += 1
            blob.dropped = blob.dropped or not source.shared
        return blob.volume

    async def release(self, source: BlobImage) -> list[str]:
        """One user fewer; removed when that was the last and it is dropped (or unshared)."""
        blob = self._table.get(volume_name(source))
        if blob is None:
            return []
        async with blob.lock:
            blob.users = max(0, blob.users - 1)
            return await self._remove_if_unused(blob)

    async def drop(self, source: BlobImage) -> list[str]:
        blob = self._table.get(volume_name(source))
        if blob is None:
            return []
        async with blob.lock:
            blob.dropped = True
            return await self._remove_if_unused(blob)

    async def _remove_if_unused(self, blob: _Blob) -> list[str]:
        if blob.users or not blob.dropped:
            return []
        self._table.pop(blob.volume, None)
        if not blob.filled:
            return []
        try:
            await self.engine.call(_remove_volume, blob.volume)
        except ENGINE_ERRORS as exc:
            raise RuntimeFailure(f"the template volume {blob.volume} could not be removed "
                                 f"({reason(exc)}): remove it with boride clean --all"
                                 ) from None
        return [blob.volume]

    def forget_all(self) -> None:
        """Everything was removed behind the table's back (``boride clean --all``)."""
        self._table.clear()


def _remove_volume(api: docker.APIClient, volume: str) -> None:
    try:
        api.remove_volume(volume, force=True)
    except docker.errors.NotFound:
        return
