"""The front's workers: where they are (a fixed list, or the swarm's DNS ``tasks.<service>``),
whether they answer (``GET /worker`` every few seconds, with the shared token), what each holds
(sessions, warm templates, running resolvers), and which worker each session lives on.

The session map is the front's only state and is rebuilt from the workers' own lists: a front
that restarts finds every session again on its first round of checks (and at once on a miss,
:meth:`Workers.refresh`)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from boride import aio, parallel
from boride.bounded import AnswerTooBig, read_bounded
from boride.errors import BorideError

log = logging.getLogger("boride.front")
#: the largest answer of a worker the front reads (a worker's are small JSON: its list, a
#: session's status; a build's output is streamed through, never read)
WORKER_ANSWER = 16 * 1024 * 1024

#: A worker whose checks (and calls) have failed for this many seconds, or that discovery no
#: longer finds, is lost: its sessions' calls answer 503 at once. One failed check already
#: stops new sessions going there; until it is lost, its sessions' calls are still tried (a
#: busy worker may answer a check late and still be fine).
LOST_AFTER = 10.0


class NoWorker(BorideError):
    """No healthy worker to send a new session (or a fan-out) to."""


@dataclass(eq=False)  # one object per worker: compared (and hashed) by identity
class Worker:
    url: str  # http://10.0.1.3:9000
    node: str = ""
    healthy: bool = False
    gone: bool = False  # discovery no longer finds it
    failures: int = 0  # checks failed in a row
    failing_since: float | None = None  # when the first of them failed
    lost_after: float = LOST_AFTER
    error: str = ""  # why the last check (or call) failed
    checked: bool = False  # answered at least once
    sessions: set[str] = field(default_factory=set)  # as it listed them last
    sessions_total: int = 0
    templates: set[str] = field(default_factory=set)
    resolvers: set[str] = field(default_factory=set)

    @property
    def address(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def lost(self) -> bool:
        return self.gone or (self.failing_since is not None
                             and time.monotonic() - self.failing_since >= self.lost_after)

    def describe(self) -> str:
        return f"{self.address} (node {self.node or 'unknown'})"


@dataclass
class Placement:
    worker: Worker
    since: float = field(default_factory=time.monotonic)


class Workers:
    """Every worker the front knows, and the session map. ``urls``: fixed workers;
    ``discover``: a DNS name whose addresses are the workers (``tasks.<service>``), on
    ``port``. ``client``: what the checks use (with the token, short timeouts). The checks
    (the loop, a round in progress) are ``tasks``, closed by :meth:`aclose`."""

    def __init__(self, client: httpx.AsyncClient, *, urls: Iterable[str] = (),
                 discover: str | None = None, port: int = 9000, interval: float = 2.0,
                 lost_after: float = LOST_AFTER) -> None:
        self.client = client
        self.discover = discover
        self.port = port
        self.interval = interval
        self.lost_after = lost_after
        self.workers: dict[str, Worker] = {}
        for url in urls:
            url = url.rstrip("/")
            self.workers[url] = Worker(url, lost_after=lost_after)
        self.sessions: dict[str, Placement] = {}
        self.tasks = aio.TaskGroup("worker checks")
        self._round: asyncio.Task[None] | None = None
        self._looping = False
        self.rounds = 0

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if not self._looping:
            self._looping = True
            self.tasks.start_soon(self._forever(), name="worker checks")

    async def aclose(self) -> None:
        """Stop the checks (the loop and a round in progress), waited for."""
        await self.tasks.aclose()

    async def _forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop the checks for good
                log.exception("checking the workers failed")
            await asyncio.sleep(self.interval)

    async def refresh(self) -> None:
        """One round of discovery and checks (joined if one runs already)."""
        if self._round is None or self._round.done():
            self._round = self.tasks.start_soon(self._check_all(), name="worker checks round")
        await asyncio.shield(self._round)  # a caller that goes leaves the round to the others

    # -- discovery and checks -----------------------------------------------------------------
    async def _discover(self) -> None:
        if not self.discover:
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.discover, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            # no task of the service runs (the name is unknown then), or no DNS: all gone
            log.warning("discovery: %s does not resolve (%s)", self.discover, exc)
            infos = []
        found = set()
        for info in infos:
            host = str(info[4][0])
            found.add(f"http://[{host}]:{self.port}" if ":" in host
                      else f"http://{host}:{self.port}")
        for url in found - set(self.workers):
            log.info("discovery: new worker %s", url)
            self.workers[url] = Worker(url, lost_after=self.lost_after)
        for url, w in self.workers.items():
            if url not in found and not w.gone:
                log.warning("discovery: worker %s is gone", w.describe())
                w.gone, w.healthy, w.error = True, False, f"{self.discover} no longer names it"
            elif url in found and w.gone:
                w.gone = False
        # forget gone workers nothing maps to any more
        for url in [u for u, w in self.workers.items() if w.gone and not self._mapped(w)]:
            del self.workers[url]

    def _mapped(self, worker: Worker) -> bool:
        return any(p.worker is worker for p in self.sessions.values())

    async def _check_all(self) -> None:
        await self._discover()
        live = [w for w in self.workers.values() if not w.gone]
        if live:
            await parallel.run(self.check, live, limit=len(live))
        self.rounds += 1

    async def check(self, worker: Worker) -> None:
        """Ask ``worker`` what it holds; update its health and the session map."""
        try:
            async with self.client.stream("GET", f"{worker.url}/worker") as answer:
                body = await read_bounded(answer, WORKER_ANSWER, "GET /worker")
            if answer.status_code != 200:
                raise httpx.HTTPStatusError(
                    f"GET /worker answered {answer.status_code}: "
                    f"{body[:200].decode('utf-8', 'replace')}",
                    request=answer.request, response=answer)
            data = json.loads(body)
            sessions = {str(s) for s in data["sessions"]}
        except AnswerTooBig as exc:
            self.failed(worker, str(exc))
            return
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.failed(worker, f"{type(exc).__name__}: {exc}".rstrip(": "))
            return
        was = worker.healthy
        worker.healthy, worker.failures, worker.error, worker.checked = True, 0, "", True
        worker.failing_since = None
        worker.node = str(data.get("node") or "")
        worker.sessions_total = int(data.get("sessions_total") or 0)
        worker.templates = {str(t) for t in data.get("templates") or []}
        worker.resolvers = {str(r) for r in data.get("resolvers") or []}
        worker.sessions = sessions
        if not was:
            log.info("worker %s is healthy (%d sessions)", worker.describe(), len(sessions))
        self._reconcile(worker, sessions)

    def failed(self, worker: Worker, error: str) -> None:
        """A check or a call could not reach ``worker``."""
        was_lost = worker.lost
        worker.failures += 1
        worker.error = error
        if worker.failing_since is None:
            worker.failing_since = time.monotonic()
        if worker.healthy or worker.lost != was_lost:
            log.warning("worker %s %s: %s", worker.describe(),
                        "is lost" if worker.lost else "does not answer", error)
        worker.healthy = False

    def _reconcile(self, worker: Worker, listed: set[str]) -> None:
        """The map after ``worker`` listed its sessions: each listed one is there (found again
        after a restart); one placed there a while ago that it no longer lists has ended
        (expired, or its warm failed)."""
        for sid in listed:
            placed = self.sessions.get(sid)
            if placed is None or (placed.worker is not worker and placed.worker.lost):
                self.sessions[sid] = Placement(worker)
        grace = 2 * self.interval + 5.0
        now = time.monotonic()
        for sid, placed in list(self.sessions.items()):
            if (placed.worker is worker and sid not in listed
                    and now - placed.since > grace):
                del self.sessions[sid]

    # -- placement ----------------------------------------------------------------------------
    def healthy(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.healthy and not w.lost]

    def load(self, worker: Worker) -> int:
        return sum(1 for p in self.sessions.values() if p.worker is worker)

    def pick(self, prefer: set[Worker] | None = None) -> Worker:
        """The healthy worker with the fewest sessions (among ``prefer`` when some of them
        are healthy)."""
        candidates = self.healthy()
        if not candidates:
            raise NoWorker(self.no_worker())
        if prefer:
            preferred = [w for w in candidates if w in prefer]
            candidates = preferred or candidates
        return min(candidates, key=lambda w: (self.load(w), w.sessions_total, w.url))

    def no_worker(self) -> str:
        if not self.workers:
            where = f"{self.discover} names none" if self.discover else "none is configured"
            return f"no worker to send it to ({where})"
        return "no healthy worker to send it to: " + "; ".join(
            f"{w.describe()}: {w.error or 'not checked yet'}" for w in self.workers.values())

    def place(self, session_id: str) -> tuple[Worker, bool]:
        """The worker of ``session_id``: where it lives, else a new placement (True)."""
        placed = self.sessions.get(session_id)
        if placed is not None:
            return placed.worker, False
        worker = self.pick()
        self.sessions[session_id] = Placement(worker)
        return worker, True

    def find(self, session_id: str) -> Worker | None:
        placed = self.sessions.get(session_id)
        return None if placed is None else placed.worker

    def forget(self, session_id: str, worker: Worker | None = None) -> None:
        placed = self.sessions.get(session_id)
        if placed is not None and (worker is None or placed.worker is worker):
            del self.sessions[session_id]

    def with_template(self, template_id: str) -> set[Worker]:
        return {w for w in self.workers.values() if template_id in w.templates}

    def with_resolver(self, resolver_id: str) -> set[Worker]:
        return {w for w in self.workers.values() if resolver_id in w.resolvers}

    def listing(self) -> list[dict[str, Any]]:
        """``GET /workers``."""
        return [{"address": w.address, "node": w.node, "healthy": w.healthy and not w.lost,
                 "sessions_active": self.load(w), "sessions_total": w.sessions_total}
                for w in sorted(self.workers.values(), key=lambda w: w.url)]
