"""A build's calls to its components' instances: which instance a step calls, and a call that
says so when the component dies during it and shows what the component printed about a
failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import httpx

from boride import aio, diagnose, fsutil, logs, merge, protocol
from boride.area import Area
from boride.runtime.base import Instance

T = TypeVar("T")
_DEATH_GRACE = 2.0  # after a broken connection, how long to wait to learn if the component died


class Calls:
    """The instances a build's steps call: ``runner`` maps a step to its instance's name,
    found among ``instances`` (the session's) or ``shared`` (running for others)."""

    def __init__(self, runner: Mapping[str, str], instances: Mapping[str, Instance],
                 shared: Mapping[str, Instance] | None = None) -> None:
        self.runner = runner
        self.instances = instances
        self.shared = shared or {}

    def instance(self, step: str) -> Instance:
        """The instance a step calls (shared by every step of the same runnable)."""
        name = self.runner.get(step, step)
        instance = self.instances.get(name) or self.shared.get(name)
        if instance is None:
            raise protocol.ProtocolError(f"{name!r} is not running")
        return instance

    async def call(self, step: str, call: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        """Run a call to a step's instance; if the component dies meanwhile, say so, and on
        any failure show what the component itself printed about it."""
        instance = self.instance(step)
        named = logs.component.set(step)  # the call's log lines (its task's context) name it
        try:
            task = aio.spawn(call(instance.client))
        finally:
            logs.component.reset(named)
        first = await aio.race(task, instance.wait_exit())
        died = first if first is not task else None
        if died is None and isinstance(task.exception(), protocol.TransportFailed):
            # The connection broke: if the component is dying, say that rather than
            # "disconnected".
            died = await aio.race(instance.wait_exit(), timeout=_DEATH_GRACE)
        if died is not None:
            raise protocol.ProtocolError(f"died during its call: {died.result().describe()}")
        error = task.exception()
        if isinstance(error, protocol.ProtocolError):
            lines = await own_lines(instance)
            short = (f"ran out of memory (its limit: {instance.memory_limit}): "
                     if instance.memory_limit and diagnose.out_of_memory(lines) else "")
            raise protocol.ProtocolError(f"{short}{error}{diagnose.summary(lines)}") from None
        return task.result()  # raises the call's own error


async def own_lines(instance: Instance) -> list[str]:
    """What a component that failed a call printed last (its error line in it, when it
    printed one). A server may log the exception just after answering 500: look again
    briefly for it."""
    lines: list[str] = []
    for pause in (0.05, 0.1, 0.2, 0.4, 0):
        lines = await aio.to_thread(instance.log_tail)
        if diagnose.error_line(lines) is not None or not pause:
            break
        await asyncio.sleep(pause)
    return lines


def checked(area: Area, returned: str, given: str, name: str) -> str:
    """A folder a component returned, if it is in the area, and is the folder it was given
    (``given``, named ``name`` in its request) or lies below it (no other is its own: another
    component's, the area's top); else its call failed."""
    try:
        found = area.check(returned)
    except ValueError as exc:
        raise protocol.ProtocolError(f"returned an unusable outputDir: {exc}") from None
    if not fsutil.is_within(found, area.check(given)):
        raise protocol.ProtocolError(f"returned an unusable outputDir: {returned!r} is "
                                     f"neither its {name} {given} nor below it")
    return found


def resolve_files(resolver: str, conflict: merge.Conflict, template: str
                  ) -> list[protocol.ResolveFile]:
    """What a resolver's call sends about ``conflict``: every version, as UTF-8 text (else the
    call cannot be made)."""
    files = []
    for v in conflict.versions:
        try:
            content = v.content.decode("utf-8")
        except UnicodeDecodeError:
            raise protocol.ProtocolError(
                f"cannot send {conflict.path!r} to resolver {resolver!r}: "
                "it is not UTF-8 text") from None
        files.append(protocol.ResolveFile(path=conflict.path, content=content, origin=(
            protocol.Origin(template=template, layer=v.layer))))
    return files
