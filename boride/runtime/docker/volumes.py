"""A session's two engine volumes: ``cyan-template-<s>`` (the template, mounted read-only at
``/workspace/cyanprint`` in processors) and ``cyan-area-<s>`` (the session's area, read-write
at ``/workspace/area`` in processors and plugins; resolvers get files in their request and
see no volume at all). They are the engine's own volumes: boride never sees them on its file
system; its helper container does the file work in them (:mod:`.helper`)."""

from __future__ import annotations

from collections.abc import Mapping

import docker
from docker.types import Mount

from boride import parallel
from boride.runtime.docker.engine import Engine
from boride.runtime.docker.names import SEEN_AREA, SEEN_TEMPLATE, session_labels, volume_names
from boride.types import Kind


def create_volume(api: docker.APIClient, session: str, name: str, role: str,
                  kept: Mapping[str, str] | None = None) -> None:
    api.create_volume(name, driver="local", labels=session_labels(session, role, kept))


async def create_volumes(engine: Engine, session: str, *, area: bool = True,
                         template: bool = True, kept: Mapping[str, str] | None = None) -> None:
    """The volumes of ``session``: its area (unless not ``area``), and its template unless the
    template's files are elsewhere (a blob volume) (:class:`~boride.parallel.ParallelError`
    with the engine's errors when one cannot be made)."""
    tpl_vol, area_vol = volume_names(session)
    specs = [*([(area_vol, "area")] if area else []),
             *([(tpl_vol, "template")] if template else [])]
    report = await parallel.run(
        lambda spec: engine.call(create_volume, session, *spec, kept), specs)
    report.raise_for_failures()


def mounts(session: str, kind: Kind, template_volume: str | None = None) -> list[Mount]:
    """The volumes a component of ``kind`` sees (the template's: the session's own, or
    ``template_volume``)."""
    tpl_vol, area_vol = volume_names(session)
    tpl_vol = template_volume or tpl_vol
    found = []
    if kind in (Kind.PROCESSOR, Kind.TEMPLATE):
        found.append(Mount(SEEN_TEMPLATE, tpl_vol, type="volume", read_only=True, no_copy=True))
    if kind in (Kind.PROCESSOR, Kind.PLUGIN):
        found.append(Mount(SEEN_AREA, area_vol, type="volume", read_only=False, no_copy=True))
    return found
