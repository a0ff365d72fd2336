"""A session's helper container and its client, :class:`HelperArea`.

The helper (``cyan-merger-<s>``, boride's own image ``boride/serve:latest`` or
``BORIDE_HELPER_IMAGE``) mounts the session's two volumes where components see them and serves
its work area over HTTP (:mod:`boride.area_server`) on the session's network, to the holder of
the session's token only. It runs as root with three capabilities (``CHOWN``, ``FOWNER``,
``DAC_OVERRIDE``: to make each component's folders its own user's and take back what each
answered), every other privilege dropped, a read-only root file system, no published port.

Template files get into the template volume through the engine only:

* a folder of boride's machine is streamed in as a tar.gz (:mod:`boride.archive`'s rules:
  modes normalised, links leading out refused) into the helper before it starts;
* a folder of the engine's machine (a ``try --dev`` path, :class:`HostFolder`) is copied by a
  short-lived container of the same image binding its root read-only: the engine resolves
  host paths, not boride, and the copy checks, inside that container, that the folder really
  lies below the root.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import posixpath
import uuid
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import docker
import docker.errors
import httpx
from docker.types import Mount

from boride import aio, archive, health, output, settings, telemetry
from boride.area import TRANSPORT_LEVEL, Area, AreaFailure
from boride.area_server import PROTOCOL, TOKEN_ENV
from boride.bounded import AnswerTooBig, read_bounded
from boride.config import HELPER_MEMORY, Timeouts
from boride.errors import describe
from boride.merge import Conflict, MergeError, ResolveFn, ResolverRule, Version
from boride.protocol import plain_http
from boride.runtime.base import HostFolder, RuntimeFailure, TemplateRefused
from boride.runtime.docker.containers import Container, remove_container, start_created
from boride.runtime.docker.engine import ENGINE_ERRORS
from boride.runtime.docker.instance import DockerInstance
from boride.runtime.docker.names import (
    LABEL_KIND,
    SEEN_AREA,
    SEEN_TEMPLATE,
    session_labels,
    volume_names,
)
from boride.runtime.docker.settings import DockerSettings
from boride.types import Component, Kind

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE = "boride/serve:latest"
IMAGE_ENV = "BORIDE_HELPER_IMAGE"
_ENTRY = ["python3", "-m", "boride.area_server"]
_COPY_TIMEOUT = 600
#: the largest answer of the helper read (its JSON: a path, the area's names, problems)
HELPER_ANSWER = 64 * 1024 * 1024


def helper_image() -> str:
    return settings.get(IMAGE_ENV) or IMAGE


HELPER = "helper"  # the helper's ``boride.component`` on its spans


def _round_trip(what: str) -> Any:
    """A round trip to the helper's span (``helper POST /dirs``; nothing when traces are
    off)."""
    if not telemetry.enabled():
        return contextlib.nullcontext()
    return telemetry.operation(f"helper {what}", image=helper_image(), component=HELPER,
                               operation=what)


def helper_name(session: str) -> str:
    return f"cyan-merger-{session}"


def _owner(settings: DockerSettings) -> str:
    uid, _, gid = settings.user.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        raise RuntimeFailure(f"the components' user must be numeric (UID:GID) on Docker, "
                             f"got {settings.user!r}")
    return f"{uid}:{gid or uid}"


def _locked_down(api: docker.APIClient, settings: DockerSettings, mounts: list[Mount],
                 caps: list[str], network: str) -> dict[str, Any]:
    return api.create_host_config(
        mounts=mounts, network_mode=network, mem_limit=HELPER_MEMORY, memswap_limit=HELPER_MEMORY,
        pids_limit=settings.pids, security_opt=["no-new-privileges:true"], cap_drop=["ALL"],
        cap_add=caps, read_only=True, tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"})


def template_chunks(template: Path) -> Iterator[bytes]:
    """``template`` (a folder of boride's machine) as the tar.gz streamed into its volume,
    scanned now: :class:`TemplateRefused` naming what cannot be copied (links leading out,
    special files)."""
    try:
        return archive.iter_archive(template, level=TRANSPORT_LEVEL)
    except archive.ArchiveError as exc:
        raise TemplateRefused(f"the template {template} cannot be copied: "
                              + "; ".join(exc.errors[:5])) from None


def create_helper(api: docker.APIClient, settings: DockerSettings, session: str, token: str,
                  template: Iterator[bytes] | None, template_volume: str | None = None,
                  kept: Mapping[str, str] | None = None) -> Container:
    """Make the session's helper, stream ``template`` (:func:`template_chunks`) into its
    template volume, start it; removed again when any of that fails. ``template_volume``: a
    volume filled already (a blob's), mounted read-only instead of the session's own."""
    owner = _owner(settings)
    about = {"image": helper_image(), "component": HELPER, "kind": "merger"}
    with telemetry.operation("container create", **about, operation="create"):
        created = api.create_container(
            helper_image(), name=helper_name(session), entrypoint=_ENTRY,
            command=["--owner", owner], user="0:0",
            labels={**session_labels(session, "helper", kept), LABEL_KIND: "merger"},
            environment={TOKEN_ENV: token, "PYTHONUNBUFFERED": "1",
                         "PYTHONDONTWRITEBYTECODE": "1"},
            host_config=_locked_down(api, settings, _helper_mounts(session, template_volume),
                                     ["CHOWN", "DAC_OVERRIDE", "FOWNER"], settings.network),
            networking_config=api.create_networking_config(
                {settings.network: api.create_endpoint_config()}))  # type: ignore[arg-type]
    container_id = str(created["Id"])

    def fill() -> None:
        if template is not None:
            api.put_archive(container_id, SEEN_TEMPLATE, template)

    return start_created(api, container_id, helper_name(session), settings.network,
                         fill if template is not None else None, about=about)


def fill_template(api: docker.APIClient, settings: DockerSettings, session: str,
                  template: Path) -> None:
    """Stream ``template`` (a folder of boride's machine) into the session's template volume
    through a container that is made for that and never started."""
    tpl_vol, _ = volume_names(session)
    created = api.create_container(
        helper_image(), name=f"cyan-fill-{session}", entrypoint=["true"], user="0:0",
        labels={**session_labels(session, "fill"), LABEL_KIND: "fill"},
        host_config=_locked_down(api, settings, [Mount(SEEN_TEMPLATE, tpl_vol, type="volume",
                                                       read_only=False, no_copy=True)],
                                 [], "none"))
    try:
        api.put_archive(str(created["Id"]), SEEN_TEMPLATE, template_chunks(template))
    finally:
        remove_container(api, str(created["Id"]))


def _helper_mounts(session: str, template_volume: str | None) -> list[Mount]:
    tpl_vol, area_vol = volume_names(session)
    return [Mount(SEEN_TEMPLATE, template_volume or tpl_vol, type="volume",
                  read_only=template_volume is not None, no_copy=True),
            Mount(SEEN_AREA, area_vol, type="volume", read_only=False, no_copy=True)]


def copy_host_folder(api: docker.APIClient, settings: DockerSettings, session: str,
                     folder: HostFolder) -> None:
    """Copy ``folder`` (on the engine's machine) into the session's template volume with a
    short-lived container binding ``folder.root`` read-only; :class:`RuntimeFailure` with
    that container's own words when it refuses or fails."""
    rel = posixpath.relpath(posixpath.normpath(folder.path), posixpath.normpath(folder.root))
    if rel == ".." or rel.startswith("../"):
        raise TemplateRefused(f"{folder.path!r} is not below {folder.root}")
    tpl_vol, _ = volume_names(session)
    mounts = [Mount("/source", folder.root, type="bind", read_only=True),
              Mount(SEEN_TEMPLATE, tpl_vol, type="volume", read_only=False, no_copy=True)]
    created = api.create_container(
        helper_image(), name=f"cyan-copy-{session}-{uuid.uuid4().hex[:6]}", entrypoint=_ENTRY,
        command=["--copy-from", str(PurePosixPath("/source", rel)), "--copy-root", "/source"],
        user="0:0", labels={**session_labels(session, "copy"), LABEL_KIND: "copy"},
        host_config=_locked_down(api, settings, mounts, ["DAC_READ_SEARCH"], "none"))
    container_id = str(created["Id"])
    try:
        api.start(container_id)
        code = int(api.wait(container_id, timeout=_COPY_TIMEOUT).get("StatusCode", 1))
        if code != 0:
            said = api.logs(container_id, stdout=True, stderr=True, tail=20)
            text = said.decode("utf-8", "replace").strip() if isinstance(said, bytes) else said
            raise TemplateRefused(f"{folder.path!r}: "
                                  + (text or f"the copy failed (exit code {code})"))
    finally:
        remove_container(api, container_id)


async def _awaited(aw: Awaitable[T]) -> T:
    """``aw`` as a coroutine (a task runs coroutines only)."""
    return await aw


class HelperArea(Area):
    """A session's area in engine volumes, worked on by its helper container."""

    root = SEEN_AREA
    template = SEEN_TEMPLATE
    guards_template = True  # mounted read-only in processors: the engine guards it

    def __init__(self, starting: asyncio.Future[DockerInstance], token: str, name: str) -> None:
        """``starting``: the helper being made and started (in the background, while the
        session's components start); every operation waits until it answers. The area's
        tasks (that wait, its exchanges with the helper) are its own, ended by
        :meth:`aclose`."""
        self.name = name
        self._token = token
        self._starting = starting
        self.instance: DockerInstance | None = None
        self.client = httpx.AsyncClient(verify=plain_http())  # the helper's once it runs
        self._tasks = aio.TaskGroup(f"area of {name}")
        self._ready = self._tasks.start_soon(self._wait_ready(), name=f"{name} ready")

    @staticmethod
    def helper_component() -> Component:
        return Component("helper", Kind.PLUGIN, image=helper_image())

    async def _wait_ready(self) -> None:
        try:
            self.instance = await asyncio.shield(self._starting)
        except (RuntimeFailure, *ENGINE_ERRORS) as exc:
            raise AreaFailure(f"the session's helper container {self.name} could not start: "
                              f"{describe(exc)}") from None
        await self.client.aclose()
        self.client = self.instance.client
        self.client.headers["authorization"] = f"Bearer {self._token}"
        try:
            await health.wait_ready(self.instance, Timeouts().ready)
            async with self.client.stream("GET", "/") as r:
                said = json.loads(await read_bounded(r, 64 * 1024, "GET /"))
        except (health.NotReady, httpx.HTTPError, ValueError, AnswerTooBig) as exc:
            raise AreaFailure(f"the session's helper container {self.name} "
                              f"{describe(exc)}") from None
        if said.get("protocol") != PROTOCOL:
            raise AreaFailure(f"the helper image {helper_image()} speaks protocol "
                              f"{said.get('protocol')}, this boride {PROTOCOL}: rebuild it "
                              "(make image)")

    async def _up(self) -> None:
        await asyncio.shield(self._ready)

    def _failed(self, what: str, exc: BaseException) -> AreaFailure:
        return AreaFailure(f"the session's helper container {self.name} failed "
                           f"({what}): {describe(exc)}")

    async def _while_alive(self, aw: Awaitable[T]) -> T:
        """``aw`` (an exchange with the helper), unless the helper stops first: then an
        :class:`AreaFailure` saying how it ended and what it printed (a container killed
        from outside would otherwise leave a connection waiting for an answer forever)."""
        assert self.instance is not None, "_up() first"
        try:
            task = self._tasks.start_soon(_awaited(aw), name=f"{self.name} exchange")
        except RuntimeError:  # (the area's group refused it: closed)
            if isinstance(aw, Coroutine):
                aw.close()
            raise AreaFailure(f"the session's helper container {self.name}: its area is "
                              "closed") from None
        first = await aio.race(task, self.instance.wait_exit())
        if first is not None and first is not task:
            raise AreaFailure(f"the session's helper container {self.name} "
                              f"{first.result().describe()}")
        return task.result()

    async def _call(self, method: str, path: str, body: Any = None, *,
                    content: AsyncIterator[bytes] | None = None) -> Any:
        await self._up()

        async def exchange() -> tuple[int, bytes]:
            async with self.client.stream(method, path, json=body, content=content) as r:
                return r.status_code, await read_bounded(r, HELPER_ANSWER, f"{method} {path}")

        try:
            with _round_trip(f"{method} {path}"):
                status, raw = await self._while_alive(exchange())
        except (httpx.HTTPError, AnswerTooBig) as exc:
            raise self._failed(path, exc) from None
        try:
            said = json.loads(raw)
        except ValueError:
            said = {"error": raw[:200].decode("utf-8", "replace")}
        if not isinstance(said, dict):
            said = {"error": f"not a JSON object: {raw[:200].decode('utf-8', 'replace')}"}
        if status == 422 and isinstance(said.get("errors"), list):
            raise output.OutputError([str(e) for e in said["errors"]])
        if status != 200:
            raise AreaFailure(f"the session's helper container {self.name} refused {path}: "
                              f"{said.get('error') or said}")
        return said

    async def new_dir(self, *, private: bool = False,
                      owner: tuple[int, int] | None = None) -> str:
        body = {"private": private, "owner": list(owner) if owner else None}
        return str((await self._call("POST", "/dirs", body))["path"])

    async def hand_over(self, folder: str, owner: tuple[int, int] | None = None) -> None:
        await self._call("POST", "/hand-over",
                         {"path": folder, "owner": list(owner) if owner else None})

    async def take_back(self, folder: str) -> None:
        await self._call("POST", "/take-back", {"path": folder})

    async def unpack(self, chunks: AsyncIterator[bytes]) -> str:
        try:
            return str((await self._call("POST", "/unpack", content=chunks))["path"])
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def names(self) -> set[str]:
        return set((await self._call("GET", "/names"))["names"])

    async def remove_new(self, before: set[str]) -> list[str]:
        return list((await self._call("POST", "/remove-new", {"before": sorted(before)})
                     )["problems"])

    async def full(self) -> bool:
        try:
            return bool((await self._call("GET", "/full"))["full"])
        except AreaFailure:
            return False  # asked after a failure: the helper may be the one that failed

    async def archive(self, tree: str, *, copy_links: bool = False,
                      level: int = archive.DEFAULT_LEVEL) -> AsyncIterator[bytes]:
        await self._up()
        request = self.client.build_request("POST", "/archive", json={
            "tree": tree, "copy_links": copy_links, "level": level})
        try:
            with _round_trip("POST /archive"):  # (its answer's head: the rest streams)
                response = await self._while_alive(self.client.send(request, stream=True))
        except httpx.HTTPError as exc:
            raise self._failed("archive", exc) from None
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            try:
                errors = json.loads(body).get("errors") or [json.loads(body).get("error")]
            except ValueError:
                errors = [body.decode("utf-8", "replace")[:200]]
            if response.status_code == 422:
                raise archive.ArchiveError([str(e) for e in errors])
            raise AreaFailure(f"archive: {'; '.join(str(e) for e in errors)}")
        return self._relay(response)

    async def _relay(self, response: httpx.Response) -> AsyncIterator[bytes]:
        chunks = response.aiter_raw()
        try:
            while (chunk := await self._while_alive(anext(chunks, None))) is not None:
                yield chunk
        except httpx.HTTPError as exc:
            raise self._failed("archive", exc) from None
        finally:
            await response.aclose()

    async def merge(self, outputs: Sequence[str], target: str,
                    rules: Sequence[ResolverRule], resolve: ResolveFn, *,
                    limit: int) -> None:
        await self._up()
        merge_id = uuid.uuid4().hex
        body = {"id": merge_id, "outputs": list(outputs), "target": target, "limit": limit,
                "rules": [{"name": r.name, "globs": list(r.globs)} for r in rules]}
        with _round_trip("POST /merge"):  # (its conflicts' resolutions within)
            ended = await self._while_alive(self._merge_stream(body, rules, resolve))
        if "errors" in ended:
            raise MergeError([str(e) for e in ended["errors"]])
        if not ended:
            raise AreaFailure(f"the session's helper container {self.name} stopped "
                              "answering during the merge")

    async def _merge_stream(self, body: dict[str, Any], rules: Sequence[ResolverRule],
                            resolve: ResolveFn) -> dict[str, Any]:
        """Follow the helper's merge; answer each conflict it sends; return how it ended."""
        merge_id = str(body["id"])
        by_name = {r.name: r for r in rules}
        ended: dict[str, Any] = {}
        answers = aio.TaskGroup(f"merge {merge_id}")  # resolutions being made and sent back
        try:
            async with self.client.stream("POST", "/merge", json=body) as r:
                if r.status_code != 200:
                    said = (await r.aread()).decode("utf-8", "replace")[:300]
                    raise AreaFailure(f"the session's helper container {self.name} refused "
                                      f"the merge: {said}")
                async for line in r.aiter_lines():
                    event = json.loads(line) if line.strip() else {}
                    if "conflict" in event:
                        answers.start_soon(self._answer(merge_id, event, by_name, resolve),
                                           name=f"merge {merge_id} answer")
                    elif "done" in event or "errors" in event:
                        ended = event
        except httpx.HTTPError as exc:
            raise self._failed("merge", exc) from None
        finally:  # (the merge ends once every answer is in: only a failure leaves some)
            await answers.aclose()
        return ended

    async def _answer(self, merge_id: str, event: dict[str, Any],
                      rules: dict[str, ResolverRule], resolve: ResolveFn) -> None:
        conflict = Conflict(str(event["path"]), tuple(
            Version(int(v["layer"]), Path(str(v["who"])), base64.b64decode(v["content"]),
                          bool(v["executable"])) for v in event["versions"]))
        try:
            path, content = await resolve(rules[str(event["rule"])], conflict)
            answer = {"path": path, "content": base64.b64encode(content).decode()}
        except Exception as exc:  # whatever failed is the resolution's error, named there
            answer = {"error": describe(exc)}
        try:
            await self.client.post(f"/merge/{merge_id}/answers/{event['conflict']}",
                                   json=answer)
        except httpx.HTTPError as exc:  # the helper is gone: its merge stream says so
            log.debug("merge %s: answer not delivered: %s", merge_id, describe(exc))

    async def aclose(self) -> None:
        await self._tasks.aclose()
        await self.client.aclose()
        if self.instance is not None:
            await self.instance.release()
