"""Clean-up by label: every container and volume boride makes carries ``boride.managed`` and
``boride.session``; a session's things (:meth:`DockerRuntime.close_workspace`) and whatever a
killed run left (``boride clean``, :func:`clean`) are found by label, never by name."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import docker
import docker.errors

from boride import parallel
from boride.errors import describe
from boride.runtime.base import Cleaned, RuntimeFailure
from boride.runtime.docker.engine import Engine, reason
from boride.runtime.docker.names import LABEL_MANAGED, LABEL_SESSION, validate_session

Runner = Callable[..., Awaitable[Any]]

_VOLUME_TRIES = 20  # a volume is still in use (409) for a moment after its container went


def left_behind(session: str, error: BaseException) -> str:
    """What is left of ``session`` when removing it failed with ``error``, and how to remove it."""
    return (f"the session's containers and volumes (label {LABEL_SESSION}={session}) could not "
            f"be removed ({reason(error)}); remove them with: boride clean --session {session}")


async def _remove_container(api: docker.APIClient, run: Runner, c: dict[str, Any]) -> str:
    with contextlib.suppress(docker.errors.NotFound):  # gone already: removed all the same
        await run(api.remove_container, c["Id"], force=True, v=False)
    names = c.get("Names") or [c["Id"][:12]]
    return str(names[0]).lstrip("/")


async def _remove_volume(api: docker.APIClient, run: Runner, v: dict[str, Any]) -> str:
    name = str(v["Name"])
    for attempt in range(_VOLUME_TRIES):
        try:
            await run(api.remove_volume, name, force=True)
            break
        except docker.errors.NotFound:
            break
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or attempt == _VOLUME_TRIES - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    return name


async def remove_labelled(api: docker.APIClient, labels: dict[str, str | None],
                          run: Runner) -> list[str]:
    """Remove every container, then every volume, carrying all ``labels`` (a None value: the
    label is present, whatever its value), calling the engine through ``run``; return the
    names removed. :class:`RuntimeFailure` naming each one that could not be removed."""
    removed = await remove_labelled_by_kind(api, labels, run)
    return [*removed.containers, *removed.volumes]


async def remove_labelled_by_kind(api: docker.APIClient, labels: dict[str, str | None],
                                  run: Runner) -> Cleaned:
    """:func:`remove_labelled`, the names removed given by kind."""
    filters = {"label": [k if v is None else f"{k}={v}" for k, v in labels.items()]}
    containers = await run(api.containers, all=True, filters=filters)
    report = await parallel.run(lambda c: _remove_container(api, run, c), containers, limit=16)
    volumes = (await run(api.volumes, filters=filters)).get("Volumes") or []
    vreport = await parallel.run(lambda v: _remove_volume(api, run, v), volumes, limit=16)
    errors = [o for o in report.outcomes + vreport.outcomes if not o.ok]
    if errors:
        raise RuntimeFailure("could not remove " + "; ".join(
            f"{o.item.get('Names') or o.item.get('Name')}: {describe(o.error)}"
            for o in errors))
    return Cleaned(tuple(str(v) for v in report.values if v),
                   tuple(str(v) for v in vreport.values if v))


def _labels(session: str | None, all_: bool) -> dict[str, str | None]:
    if session is None and not all_:
        raise ValueError("give a session id or all_=True")
    labels: dict[str, str | None] = {LABEL_MANAGED: None}
    if session is not None:
        labels[LABEL_SESSION] = validate_session(session)
    return labels


async def aclean(session: str | None = None, all_: bool = False) -> list[str]:
    """Remove the containers and volumes boride left on the engine: those of one session, or
    (``all_``) every one boride labelled. Return the names removed."""
    labels = _labels(session, all_)
    engine = Engine(workers=16, thread_name="boride-clean")
    try:
        api = (await engine.connected()).api
        return await remove_labelled(api, labels, engine.run)
    finally:
        engine.close(wait=True)


def clean(session: str | None = None, all_: bool = False) -> list[str]:
    """``boride clean [--session ID | --all]``: :func:`aclean` from synchronous code (outside
    an event loop; async code awaits :func:`aclean`). Raises ``ValueError`` for a bad session
    id and :class:`RuntimeFailure` when no engine answers or a removal fails."""
    _labels(session, all_)  # bad arguments first, whatever the caller
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(aclean(session, all_))
    raise RuntimeError("clean() blocks until the engine is done: from async code, await "
                       "aclean() instead")
