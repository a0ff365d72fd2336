"""Clean-up by label: every container and volume boride makes carries ``boride.managed`` and
``boride.session``; a session's things (:meth:`DockerRuntime.close_workspace`) and whatever a
killed run left (``boride clean``, :func:`clean`) are found by label, never by name."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import docker
import docker.errors

from boride import parallel
from boride.errors import describe
from boride.runtime.base import Cleaned, RuntimeFailure
from boride.runtime.docker.engine import ENGINE_ERRORS, Engine, reason
from boride.runtime.docker.names import LABEL_MANAGED, LABEL_SESSION, validate_session

Runner = Callable[..., Awaitable[Any]]

_VOLUME_TRIES = 20  # a volume is still in use (409) for a moment after its container went
_WHY_LENGTH = 160  # the most of the engine's words a line of a failed clean-up shows


class CleanupFailed(RuntimeFailure):
    """Things could not be removed: ``lines`` has one short line for each (its message is
    them, one a line)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = tuple(lines)


def left_behind(session: str, error: BaseException) -> str:
    """What is left of ``session`` when removing it failed with ``error``, and how to remove it."""
    why = "; ".join(error.lines) if isinstance(error, CleanupFailed) else reason(error)
    return (f"the session's containers and volumes (label {LABEL_SESSION}={session}) could not "
            f"be removed ({why}); remove them with: boride clean --session {session}")


def _why(exc: BaseException) -> str:
    """The engine's reason, short and on one line."""
    text = " ".join(reason(exc).split())
    return text if len(text) <= _WHY_LENGTH else text[:_WHY_LENGTH] + "..."


def _name(c: dict[str, Any]) -> str:
    names = c.get("Names") or [str(c["Id"])[:12]]
    return str(names[0]).lstrip("/")


async def _remove_container(api: docker.APIClient, run: Runner, c: dict[str, Any]) -> str:
    try:
        await run(api.remove_container, c["Id"], force=True, v=False)
    except docker.errors.NotFound:  # gone already: removed all the same
        pass
    except ENGINE_ERRORS as exc:
        raise CleanupFailed([f"could not remove container {_name(c)}: {_why(exc)}"]) from None
    return _name(c)


async def _remove_volume(api: docker.APIClient, run: Runner, v: dict[str, Any]
                         ) -> tuple[str, list[str]]:
    """Remove a volume; while a container holds it (409), remove that container first when
    it is boride's (one made after the containers were listed), then try again, a bounded
    number of times. Return the volume's name and those of the containers removed for it;
    :class:`CleanupFailed` with one line when it cannot be removed."""
    name = str(v["Name"])
    users: list[dict[str, Any]] = []
    holders: list[str] = []
    for attempt in range(_VOLUME_TRIES):
        try:
            await run(api.remove_volume, name, force=True)
            return name, holders
        except docker.errors.NotFound:
            return name, holders
        except ENGINE_ERRORS as exc:
            if not isinstance(exc, docker.errors.APIError) or exc.status_code != 409:
                raise CleanupFailed([f"could not remove volume {name}: {_why(exc)}"]) from None
        users = await run(api.containers, all=True, filters={"volume": name})
        foreign = [c for c in users if LABEL_MANAGED not in (c.get("Labels") or {})]
        if foreign:  # never boride's to remove
            raise CleanupFailed([f"could not remove volume {name}: in use by container "
                                 f"{', '.join(str(c['Id'])[:12] for c in foreign)} "
                                 "(not boride's)"])
        for c in users:
            holders.append(await _remove_container(api, run, c))
        if not users:  # (its container went a moment ago: the engine lets go of it soon)
            await asyncio.sleep(0.05 * (attempt + 1))
    held = ", ".join(_name(c) for c in users) or "a container that has gone"
    raise CleanupFailed([f"could not remove volume {name}: still in use by {held} after "
                         f"{_VOLUME_TRIES} tries"])


async def remove_labelled(api: docker.APIClient, labels: dict[str, str | None],
                          run: Runner) -> list[str]:
    """Remove every container, then every volume, carrying all ``labels`` (a None value: the
    label is present, whatever its value), calling the engine through ``run``; return the
    names removed. A volume still held by a boride container (made after the containers
    were listed) goes once that container has gone. :class:`CleanupFailed` with one line for
    each one that could not be removed."""
    removed = await remove_labelled_by_kind(api, labels, run)
    return [*removed.containers, *removed.volumes]


def _line(outcome: parallel.Outcome[dict[str, Any], Any]) -> list[str]:
    if isinstance(outcome.error, CleanupFailed):
        return list(outcome.error.lines)
    what = outcome.item.get("Name") or _name(outcome.item)
    return [f"could not remove {what}: {describe(outcome.error)[:_WHY_LENGTH]}"]


async def remove_labelled_by_kind(api: docker.APIClient, labels: dict[str, str | None],
                                  run: Runner) -> Cleaned:
    """:func:`remove_labelled`, the names removed given by kind."""
    filters = {"label": [k if v is None else f"{k}={v}" for k, v in labels.items()]}
    containers = await run(api.containers, all=True, filters=filters)
    report = await parallel.run(lambda c: _remove_container(api, run, c), containers, limit=16)
    volumes = (await run(api.volumes, filters=filters)).get("Volumes") or []
    vreport = await parallel.run(lambda v: _remove_volume(api, run, v), volumes, limit=16)
    lines = [line for o in report.outcomes + vreport.outcomes if not o.ok for line in _line(o)]
    if lines:
        raise CleanupFailed(lines)
    holders = [h for v in vreport.values if v for h in v[1]]
    return Cleaned(tuple(str(v) for v in [*report.values, *holders] if v),
                   tuple(str(v[0]) for v in vreport.values if v))


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
