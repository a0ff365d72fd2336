"""The front's forwarding: sending a call to a worker and passing its answer on (the body
streamed through, never held whole), what a lost worker answers, and warming a template on a
worker that lacks it. The routes are :mod:`boride.front.routes`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from boride import aio, telemetry
from boride.bounded import AnswerTooBig, read_bounded
from boride.config import Limits
from boride.errors import RuntimeFailure, describe
from boride.front.metrics import FrontMetrics
from boride.front.workers import WORKER_ANSWER, NoWorker, Worker, Workers
from boride.server.problems import TRACE_HEADER, problem_response, trace_id_of
from boride.server.streaming import ClientGone, until_disconnect, wait_disconnect

log = logging.getLogger("boride.front")

#: Headers that belong to one connection, never passed on (RFC 9110 7.6.1), and what the
#: front sets itself.
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                  "te", "trailer", "transfer-encoding", "upgrade", "host", "authorization",
                  "content-length", "date", "server"})


@dataclass(frozen=True)
class FrontConfig:
    """What ``boride front`` is told (see ``boride front --help``)."""

    workers: tuple[str, ...] = ()  # fixed worker URLs
    discover: str | None = None  # a DNS name whose addresses are the workers
    worker_port: int = 9000
    worker_token: str | None = None  # the shared token the workers require
    token: str | None = None  # the token the front's own clients must send (None: none)
    interval: float = 2.0  # seconds between rounds of checks
    check_timeout: float = 5.0
    connect_timeout: float = 5.0
    lost_after: float = 10.0  # seconds of failed checks before a worker counts as lost
    max_body: int = Limits().max_body


class WorkerLost(RuntimeFailure):
    """A worker that cannot be reached (the message says how it failed)."""

    def __init__(self, worker: Worker, error: str) -> None:
        super().__init__(error)
        self.worker = worker


class Front:
    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        headers = ({"authorization": f"Bearer {config.worker_token}"}
                   if config.worker_token else {})
        # Idle connections are dropped well before a worker's own keep-alive timeout
        # (uvicorn: 5 s), so a request never goes out on a connection the worker is closing;
        # a connection that cannot be made is tried once more (nothing was sent on it).
        self.client = httpx.AsyncClient(
            headers=headers, trust_env=False,
            transport=httpx.AsyncHTTPTransport(retries=1, limits=httpx.Limits(
                max_connections=1024, max_keepalive_connections=128, keepalive_expiry=2.0)),
            timeout=httpx.Timeout(connect=config.connect_timeout, read=None, write=120.0,
                                  pool=None))
        self.checks = httpx.AsyncClient(
            headers=headers, trust_env=False, timeout=config.check_timeout,
            limits=httpx.Limits(keepalive_expiry=min(2.0, config.interval / 2)))
        self.workers = Workers(self.checks, urls=config.workers, discover=config.discover,
                               port=config.worker_port, interval=config.interval,
                               lost_after=config.lost_after)
        self.metrics = FrontMetrics(self.workers)
        self.warm_wanted: dict[str, None] = {}  # templates warmed through the front (ordered)
        self._warming: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: the front's own background work (templates being warmed on a worker)
        self.tasks = aio.TaskGroup("front")

    async def aclose(self) -> None:
        await self.tasks.aclose()
        await self.workers.aclose()
        await self.client.aclose()
        await self.checks.aclose()

    # -- forwarding ---------------------------------------------------------------------------
    def _headers(self, request: Request) -> dict[str, str]:
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        headers[TRACE_HEADER] = trace_id_of(request.scope)
        headers.update(telemetry.headers())  # the worker's request span: a child of ours
        return headers

    async def send(self, request: Request, worker: Worker, path: str, body: bytes,
                   route: str) -> httpx.Response:
        """Send the request to ``worker`` and wait for its answer's head (the body is read by
        the caller); :class:`WorkerLost` when it cannot be reached, :class:`ClientGone` when
        the client went away first (the worker's connection is closed, which cancels what it
        was doing for it)."""
        if worker.lost:
            raise WorkerLost(worker, worker.error or "it does not answer")
        req = self.client.build_request(request.method, worker.url + path, content=body,
                                        headers=self._headers(request),
                                        params=request.url.query or None)
        t0 = time.perf_counter()
        sending = aio.spawn(self.client.send(req, stream=True))  # raced, awaited right here
        try:
            answer = await until_disconnect(request.receive, sending)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.workers.failed(worker, error)
            raise WorkerLost(worker, error) from None
        self.metrics.forward_seconds.labels(route).observe(time.perf_counter() - t0)
        return answer

    async def relay(self, request: Request, worker: Worker, path: str, body: bytes,
                    route: str, session: str | None = None) -> Response:
        """Forward and answer what the worker answered, its body streamed through."""
        try:
            answer = await self.send(request, worker, path, body, route)
        except WorkerLost as exc:
            return self.lost(request, exc, session)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        return Relayed(answer, self.metrics.bytes_streamed.inc)

    async def call(self, request: Request, worker: Worker, path: str, body: bytes,
                   route: str) -> httpx.Response:
        """Forward and read the whole (small) answer."""
        answer = await self.send(request, worker, path, body, route)
        try:
            content = await read_bounded(answer, WORKER_ANSWER, f"{request.method} {path}")
        except (httpx.TransportError, AnswerTooBig) as exc:
            error = str(exc) if isinstance(exc, AnswerTooBig) else \
                f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.workers.failed(worker, error)
            raise WorkerLost(worker, error) from None
        finally:
            await answer.aclose()
        # (decoded already: without the headers that described the encoded body)
        headers = [(k, v) for k, v in answer.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        return httpx.Response(answer.status_code, headers=headers, content=content,
                              request=answer.request)

    def lost(self, request: Request, exc: WorkerLost, session: str | None) -> Response:
        w = exc.worker
        self.metrics.lost_calls.inc()
        if session:
            detail = (f"session {session!r} lives on worker {w.describe()}, which is lost "
                      f"({exc}); its work there cannot be reached: start a new session")
        else:
            detail = f"worker {w.describe()} is lost ({exc})"
        log.warning("%s %s: %s", request.method, request.url.path, detail,
                    extra={"trace_id": trace_id_of(request.scope)})
        return problem_response(503, "Worker lost", detail, trace_id_of(request.scope),
                                [detail])

    def problem(self, request: Request, status: int, title: str, detail: str) -> Response:
        return problem_response(status, title, detail, trace_id_of(request.scope), [detail])

    def no_worker(self, request: Request, exc: NoWorker) -> Response:
        return self.problem(request, 503, "No worker", str(exc))

    # -- templates ----------------------------------------------------------------------------
    def wanted(self, template_id: str) -> None:
        self.warm_wanted.pop(template_id, None)
        self.warm_wanted[template_id] = None
        while len(self.warm_wanted) > 10_000:
            del self.warm_wanted[next(iter(self.warm_wanted))]

    async def ensure_warm(self, request: Request, worker: Worker, template: Any) -> None:
        """Before a session's components start on ``worker``: the template warm there too,
        when it was warmed through the front and the worker has not (it joined later). A
        failure is left to the call that follows (it answers what is wrong)."""
        if not isinstance(template, dict):
            return
        tid = str((template.get("principal") or {}).get("id") or "")
        if not tid or tid not in self.warm_wanted or tid in worker.templates:
            return
        key = (worker.url, tid)
        job = self._warming.get(key)
        if job is None:
            # the front's (one warming for every request asking; none outlives the front)
            job = self.tasks.start_soon(self._warm_one(request, worker, tid, template),
                                        name=f"warm {tid}")
            self._warming[key] = job
            job.add_done_callback(lambda _: self._warming.pop(key, None))
        await asyncio.shield(job)

    async def _warm_one(self, request: Request, worker: Worker, tid: str,
                        template: dict[str, Any]) -> None:
        try:
            async with self.client.stream(
                    "POST", f"{worker.url}/template/warm", json=template,
                    headers={TRACE_HEADER: trace_id_of(request.scope),
                             **telemetry.headers()}) as answer:
                said = await read_bounded(answer, WORKER_ANSWER, "POST /template/warm")
        except (httpx.HTTPError, AnswerTooBig) as exc:
            log.warning("warming template %s on %s: %s", tid, worker.describe(), describe(exc))
            return
        if answer.is_success:
            log.info("template %s warmed on %s (its first session there)", tid,
                     worker.describe())
            worker.templates.add(tid)
        else:
            log.warning("warming template %s on %s: %d %s", tid, worker.describe(),
                        answer.status_code, said[:300].decode("utf-8", "replace"))


class Relayed(Response):
    """A worker's answer, passed on as it arrives (the body never held whole); the worker's
    connection is closed at the end, and as soon as the client goes away."""

    def __init__(self, upstream: httpx.Response, on_bytes: Callable[[int], None]) -> None:
        super().__init__(status_code=upstream.status_code)
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1"))
                            for k, v in upstream.headers.multi_items()
                            if k.lower() not in HOP_HEADERS]
        length = upstream.headers.get("content-length")
        if length is not None and "content-encoding" not in upstream.headers:
            self.raw_headers.append((b"content-length", length.encode()))
        self.upstream = upstream
        self.on_bytes = on_bytes

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for chunk in self.upstream.aiter_raw():
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.on_bytes(len(chunk))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            first = await aio.race(self._stream(send), wait_disconnect(receive))
            if first is not None and not first.cancelled() and first.exception() is not None:
                log.warning("relaying %s %s: %s", scope.get("method"), scope.get("path"),
                            describe(first.exception()))
        finally:
            await aio.shielded(self.upstream.aclose())
