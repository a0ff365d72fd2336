"""A session of the Docker runtime as the runtime keeps it: its helper, its template's volume,
the creations under way on the engine (owned by its task group), the labels of its note."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from boride import aio
from boride.config import COMPONENT_UIDS
from boride.runtime.base import BlobImage, RuntimeFailure, UserPool
from boride.runtime.docker.helper import HelperArea
from boride.runtime.docker.instance import DockerInstance

T = TypeVar("T")


@dataclass
class DockerSession:
    """A session of the Docker runtime: what it made and what it is making."""

    id: str
    area: HelperArea | None = None
    blob: BlobImage | None = None  # where its template's files are, when an image's
    template_volume: str | None = None  # the blob's volume (else the session's own)
    helper_job: asyncio.Future[DockerInstance] | None = None  # its helper being started
    #: its creations under way (its helper, its components' containers), for its life
    tasks: aio.TaskGroup = field(default_factory=lambda: aio.TaskGroup("docker session"))
    closing: bool = False  # no creation starts any more
    #: the labels of its server's note, on everything made for it (:func:`.names.kept_labels`)
    kept: dict[str, str] = field(default_factory=dict)
    #: its component instances' users (one each; adopted ones held)
    users: UserPool = field(default_factory=lambda: UserPool(COMPONENT_UIDS))

    @contextlib.contextmanager
    def user_for(self, own: bool) -> Iterator[tuple[int, int] | None]:
        """A user of its own for an instance being started (with ``own``; else None), given
        back when the start fails."""
        user = self.users.take() if own else None
        try:
            yield user
        except BaseException:
            self.users.give_back(user)
            raise

    def create(self, make: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """``make`` (a creation on the engine) in the background, owned by the session;
        :class:`RuntimeFailure` once the session is closing."""
        self._refuse_if_closing()
        return self.tasks.start_soon(make, name=f"{name} of session {self.id}")

    async def start(self, fn: Callable[[aio.TaskStatus[T]], Coroutine[Any, Any, Any]],
                    name: str) -> T:
        """``fn`` (a creation on the engine) owned by the session, waited for until it says
        what it made (:meth:`aio.TaskGroup.start`); :class:`RuntimeFailure` once the session
        is closing."""
        self._refuse_if_closing()
        return await self.tasks.start(fn, name=f"{name} of session {self.id}")

    def _refuse_if_closing(self) -> None:
        if self.closing:
            raise RuntimeFailure(f"session {self.id!r} is closing")

    async def creations_ended(self) -> None:
        """Close the session's task group once every creation under way has ended (their
        outcomes go to whoever asked for them): none can start any more."""
        self.closing = True
        await self.tasks.join()
        await self.tasks.aclose()
