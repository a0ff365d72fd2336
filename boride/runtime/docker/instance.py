"""A running container as the pipeline sees it: its HTTP client, its output, and a watcher
thread that learns when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import docker
import requests.exceptions

from boride.runtime.base import LOG_TAIL, ExitInfo, Instance, UserPool
from boride.runtime.docker.containers import Container, http_client
from boride.runtime.docker.engine import ENGINE_ERRORS, reason
from boride.types import Component

log = logging.getLogger(__name__)


def decode_lines(raw: bytes | str, lines: int) -> list[str]:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return [line.rstrip("\r") for line in text.splitlines()][-lines:]


def loop_settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[ExitInfo],
                info: ExitInfo) -> None:
    """Give ``future`` (of ``loop``, running in another thread) its result, unless it has one."""

    def settle() -> None:
        if not future.done():
            future.set_result(info)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


class DockerInstance(Instance):
    """A started container, reached on ``network``; a daemon thread waits for it to stop (it
    never holds up the interpreter's exit, whatever the engine does)."""

    def __init__(self, component: Component, container: Container, network: str,
                 api: docker.APIClient, port: int | None = None,
                 memory_limit: str | None = None, user: tuple[int, int] | None = None,
                 users: UserPool | None = None) -> None:
        self.component = component
        self.memory_limit = memory_limit
        self.user = user
        self._users = users  # the pool ``user`` came from
        self.container = container
        self.client = http_client(container, port or component.kind.port, network)
        self._api = api
        self._released = threading.Event()
        self._final_tail: list[str] | None = None
        loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[ExitInfo] = loop.create_future()
        threading.Thread(target=self._watch, args=(loop,), daemon=True,
                         name=f"boride-wait-{container.name}").start()

    @property
    def name(self) -> str:
        return self.container.name

    async def release(self) -> None:
        """The container is going away on purpose: stop watching it (its output is not
        needed any more) and close the HTTP client. Idempotent."""
        self._released.set()
        await self.client.aclose()

    def user_gone(self) -> None:
        """The container is removed: its user is free again (idempotent)."""
        if self._users is not None:
            self._users.give_back(self.user)
            self._users = None

    def _wait(self) -> int | None:
        """The container's exit code, once it stopped (None: unknown, or released)."""
        while True:
            try:
                status = self._api.wait(self.container.id, timeout=None).get("StatusCode")
                return int(status) if status is not None else None
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                if self._released.wait(0.2):
                    return None
            except ENGINE_ERRORS as exc:  # removed (404) or the engine went away
                log.debug("stopped waiting for %s: %s", self.name, reason(exc))
                return None

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        info = ExitInfo(None)
        try:
            code = self._wait()
            if self._final_tail is None and not self._released.is_set():
                # (once stopped on purpose, nobody needs its output: spare the engine the call)
                self._final_tail = self._logs(LOG_TAIL)
            info = ExitInfo(code, self._final_tail or [])
            if code is not None and not self._released.is_set() and self._oom_killed():
                info.memory_limit, info.oom_killed = self.memory_limit or "?", True
        finally:  # whatever happens (an unexpected error goes on, in this thread), it settles
            loop_settle(loop, self._exit, info)

    def _oom_killed(self) -> bool:
        """Whether the engine says the kernel killed it for its memory limit."""
        try:
            state = self._api.inspect_container(self.container.id).get("State") or {}
        except ENGINE_ERRORS as exc:
            log.debug("no state of %s: %s", self.name, reason(exc))
            return False
        return bool(state.get("OOMKilled"))

    def _logs(self, lines: int) -> list[str]:
        try:
            raw = self._api.logs(self.container.id, stdout=True, stderr=True, tail=lines)
        except ENGINE_ERRORS as exc:  # removed, or the engine went away: no lines to show
            log.debug("no output of %s: %s", self.name, reason(exc))
            return []
        return decode_lines(raw, lines)

    async def wait_exit(self) -> ExitInfo:
        return await asyncio.shield(self._exit)

    def log_tail(self, lines: int = LOG_TAIL) -> list[str]:
        if self._final_tail is not None:
            return self._final_tail[-lines:]
        return self._logs(lines)
