"""The Docker engine: connecting to it (``DOCKER_HOST`` honoured), the errors its calls raise,
and the thread pool its blocking calls run on.

Blocking SDK calls run in a pool of the runtime's own: the event loop's default pool has
``cpu + 4`` threads, which eight long ``wait`` calls would starve.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from boride import aio
from boride.runtime.base import RuntimeFailure

T = TypeVar("T")

API_TIMEOUT = 120

#: What a call to the engine raises when the engine refuses it or cannot be reached.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(timeout: int = API_TIMEOUT, pool: int = 128) -> docker.DockerClient:
    """A client for the engine ``DOCKER_HOST`` names; :class:`RuntimeFailure` with a clear
    message when no engine answers there."""
    try:
        client = docker.from_env(version="auto", timeout=timeout, max_pool_size=pool)
        client.api.ping()
    except ENGINE_ERRORS as exc:
        raise RuntimeFailure(
            f"no Docker engine answers at {engine_address()} ({reason(exc)}); start one "
            "(dockerd, or .ci/docker-setup.sh as root) or point DOCKER_HOST at one") from None
    return client


def reason(exc: BaseException) -> str:
    """Why an engine call failed, in a few words (the engine's own explanation if it gave one)."""
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"no answer from the Docker engine at {engine_address()}"
    text = str(exc).strip()
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        text = str(exc.explanation)
    if len(text) > 300:
        text = text[:300] + "..."
    return text or type(exc).__name__


class Engine:
    """A client of the engine (connected on first use, or the one given) and the pool of
    ``workers`` threads its blocking calls run on."""

    def __init__(self, workers: int = 32, *, client: docker.DockerClient | None = None,
                 thread_name: str = "boride-docker") -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                           thread_name_prefix=thread_name)
        self._client = client
        self._lock = threading.Lock()
        self._node_id = ""

    @property
    def client(self) -> docker.DockerClient:
        """The engine client; :class:`RuntimeFailure` when no engine answers."""
        with self._lock:
            if self._client is None:
                self._client = connect()
            return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    async def node_id(self) -> str:
        """The engine's swarm node id (``docker info``: ``Swarm.NodeID``), else the engine's
        own id; kept once it is a swarm node's (a node's id does not change)."""
        if self._node_id:
            return self._node_id
        try:
            info = await self.call(lambda api: api.info())
        except (RuntimeFailure, *ENGINE_ERRORS) as exc:
            raise RuntimeFailure(f"cannot ask the Docker engine who it is: {reason(exc)}") \
                from None
        node = str((info.get("Swarm") or {}).get("NodeID") or "")
        if node:
            self._node_id = node
        return node or str(info.get("ID") or info.get("Name") or "")

    async def connected(self) -> docker.DockerClient:
        """The client, connecting (on the pool) first if needed."""
        return await self.run(lambda: self.client)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the pool; a cancelled caller waits for it to end. The
        caller's context variables are seen there (its trace: the operations' spans)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await aio.in_thread(self._pool, call)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(api, *args, **kwargs)`` on the pool, ``api`` the engine's (connected there)."""
        return await self.run(lambda: fn(self.api, *args, **kwargs))

    def close(self, wait: bool = False) -> None:
        """Stop the pool (``wait``: until its calls have ended) and close the client."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
