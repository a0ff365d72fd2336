"""``boride front``: the coordinator's API in front of many workers (``boride serve`` on each
node, :mod:`boride.front.workers`). A client (the CyanPrint CLI) talks to it unchanged.

* A new session goes to the healthy worker with the fewest sessions; every later call of the
  session goes to that worker. Answers pass through as the worker gave them, the build's
  ``cyan-output.tar.gz`` streamed chunk by chunk (never held whole); a client that goes away
  closes the worker's connection too, which cancels the build there.
* A session whose worker is lost: 503 "Worker lost", naming the session and the worker;
  ``DELETE`` answers 200 (nothing it can reach is left to delete).
* ``POST /template/warm`` goes to every healthy worker; a worker that has not warmed a template
  (it joined later) warms it before the first session of that template starts there. The
  Q&A and resolver proxies go to a worker that has the template (resolver) running.
* ``DELETE /cleanup`` and ``DELETE /template/{id}`` go to every worker.
* ``GET /workers``: every worker, its node, health and sessions; ``GET /metrics``: the front's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from boride import aio
from boride.config import Limits
from boride.errors import describe
from boride.front.metrics import FrontMetrics
from boride.front.workers import NoWorker, Worker, Workers
from boride.server.middleware import AuthMiddleware, BodyLimitMiddleware, TraceMiddleware
from boride.server.models import SESSION_RE
from boride.server.problems import TRACE_HEADER, problem_response, trace_id_of
from boride.server.streaming import ClientGone, until_disconnect, wait_disconnect

log = logging.getLogger("boride.front")

#: Headers that belong to one connection, never passed on (RFC 9110 7.6.1), and what the
#: front sets itself.
_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
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


class WorkerLost(Exception):
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
        self._warming: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def aclose(self) -> None:
        await self.workers.aclose()
        await self.client.aclose()
        await self.checks.aclose()

    # -- forwarding ---------------------------------------------------------------------------
    def _headers(self, request: Request) -> dict[str, str]:
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        headers[TRACE_HEADER] = trace_id_of(request.scope)
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
        sending = asyncio.ensure_future(self.client.send(req, stream=True))
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
            await answer.aread()
        except httpx.TransportError as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.workers.failed(worker, error)
            raise WorkerLost(worker, error) from None
        finally:
            await answer.aclose()
        return answer

    def lost(self, request: Request, exc: WorkerLost, session: str | None) -> Response:
        w = exc.worker
        self.metrics.lost_calls.inc()
        if session:
            detail = (f"session {session!r} lives on worker {w.describe()}, which is lost "
                      f"({exc}); its work there cannot be reached: start a new session")
        else:
            detail = f"worker {w.describe()} is lost ({exc})"
        log.warning("[%s] %s %s: %s", trace_id_of(request.scope), request.method,
                    request.url.path, detail)
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
            job = asyncio.ensure_future(self._warm_one(request, worker, tid, template))
            self._warming[key] = job
            job.add_done_callback(lambda _: self._warming.pop(key, None))
        await asyncio.shield(job)

    async def _warm_one(self, request: Request, worker: Worker, tid: str,
                        template: dict[str, Any]) -> None:
        try:
            answer = await self.client.post(f"{worker.url}/template/warm", json=template,
                                            headers={TRACE_HEADER: trace_id_of(request.scope)})
        except httpx.HTTPError as exc:
            log.warning("warming template %s on %s: %s", tid, worker.describe(), describe(exc))
            return
        if answer.is_success:
            log.info("template %s warmed on %s (its first session there)", tid,
                     worker.describe())
            worker.templates.add(tid)
        else:
            log.warning("warming template %s on %s: %d %s", tid, worker.describe(),
                        answer.status_code, answer.text[:300])


class Relayed(Response):
    """A worker's answer, passed on as it arrives (the body never held whole); the worker's
    connection is closed at the end, and as soon as the client goes away."""

    def __init__(self, upstream: httpx.Response, on_bytes: Callable[[int], None]) -> None:
        super().__init__(status_code=upstream.status_code)
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1"))
                            for k, v in upstream.headers.multi_items() if k.lower() not in _HOP]
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


# -- routes -----------------------------------------------------------------------------------
def _front(request: Request) -> Front:
    front = request.app.state.front
    assert isinstance(front, Front)
    return front


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


async def health(request: Request) -> Response:
    return JSONResponse({"status": "OK"})


async def metrics(request: Request) -> Response:
    body, media_type = _front(request).metrics.render()
    return Response(body, media_type=media_type)


async def workers(request: Request) -> Response:
    return JSONResponse(_front(request).workers.listing())


async def _session_call(request: Request, session: str, route: str, *, new: bool,
                        template: Any = None) -> Response:
    """A call of ``session``: to its worker (placed now when ``new`` allows it)."""
    front = _front(request)
    body = await request.body()
    path = request.url.path
    if not SESSION_RE.fullmatch(session):  # the worker words the problem
        return await _anywhere(request, body, route)
    worker = front.workers.find(session)
    if worker is None:
        await front.workers.refresh()  # made before a restart of the front?
        worker = front.workers.find(session)
    placed_now = False
    if worker is None:
        if not new:
            detail = (f"no session {session!r} (start one with POST /executor, "
                      "POST /executor/{sessionId}/warm or POST /executor/try)")
            return front.problem(request, 404, "Unknown session", detail)
        try:
            worker, placed_now = front.workers.place(session)
        except NoWorker as exc:
            return front.no_worker(request, exc)
        log.info("[%s] session %s placed on worker %s", trace_id_of(request.scope), session,
                 worker.describe())
        front.metrics.placements.labels(worker.address).inc()
    if template is not None and not worker.lost:
        await front.ensure_warm(request, worker, template)
    response = await front.relay(request, worker, path, body, route, session)
    if placed_now and not 200 <= response.status_code < 300:
        front.workers.forget(session, worker)  # refused there: nothing was made
    return response


async def _anywhere(request: Request, body: bytes, route: str,
                    prefer: set[Worker] | None = None) -> Response:
    """To one healthy worker (of ``prefer`` when one of them is)."""
    front = _front(request)
    try:
        worker = front.workers.pick(prefer)
    except NoWorker as exc:
        return front.no_worker(request, exc)
    return await front.relay(request, worker, request.url.path, body, route)


async def warm_executor(request: Request) -> Response:
    session = request.path_params["sessionId"]
    return await _session_call(request, session, "warm_executor", new=True)


async def build(request: Request) -> Response:
    session = request.path_params["sessionId"]
    body = _json(await request.body())
    template = body.get("template") if isinstance(body, dict) else None
    return await _session_call(request, session, "build", new=False, template=template)


async def start_executor(request: Request) -> Response:
    body = _json(await request.body())
    session = body.get("session_id") if isinstance(body, dict) else None
    if not isinstance(session, str):
        return await _anywhere(request, await request.body(), "start_executor")
    return await _session_call(request, session, "start_executor", new=True,
                               template=body.get("template"))


async def try_executor(request: Request) -> Response:
    body = _json(await request.body())
    session = None
    if isinstance(body, dict):
        session = body.get("sessionId", body.get("session_id"))
    if not isinstance(session, str):
        return await _anywhere(request, await request.body(), "try_executor")
    return await _session_call(request, session, "try_executor", new=True)


async def delete_executor(request: Request) -> Response:
    front = _front(request)
    session = request.path_params["sessionId"]
    if not SESSION_RE.fullmatch(session):
        return await _anywhere(request, b"", "delete_executor")
    worker = front.workers.find(session)
    if worker is None:
        await front.workers.refresh()
        worker = front.workers.find(session)
    if worker is None:  # as a worker answers a session it does not know
        return JSONResponse({"status": "OK"})
    try:
        answer = await front.call(request, worker, request.url.path, b"", "delete_executor")
    except WorkerLost as exc:
        front.workers.forget(session, worker)
        log.info("[%s] DELETE of session %s on lost worker %s: nothing it can reach is left "
                 "(%s)", trace_id_of(request.scope), session, worker.describe(), exc)
        return JSONResponse({"status": "OK"})
    if answer.is_success:
        front.workers.forget(session, worker)
    return _replay(answer)


def _replay(answer: httpx.Response) -> Response:
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
    return Response(answer.content, status_code=answer.status_code, headers=headers)


async def _fan_out(request: Request, route: str, body: bytes, targets: list[Worker]
                   ) -> list[tuple[Worker, httpx.Response | WorkerLost]]:
    front = _front(request)

    async def one(w: Worker) -> httpx.Response | WorkerLost:
        try:
            return await front.call(request, w, request.url.path, body, route)
        except WorkerLost as exc:
            return exc

    results = await asyncio.gather(*(one(w) for w in targets))
    return list(zip(targets, results, strict=True))


async def warm_template(request: Request) -> Response:
    """To every healthy worker. OK when every worker that answered said OK; the first
    refusal otherwise (the same template is refused the same way everywhere)."""
    front = _front(request)
    body = await request.body()
    targets = front.workers.healthy()
    if not targets:
        return front.no_worker(request, NoWorker(front.workers.no_worker()))
    template = _json(body)
    tid = ""
    if isinstance(template, dict):
        tid = str((template.get("principal") or {}).get("id") or "")
    results = await _fan_out(request, "warm_template", body, targets)
    answered = [(w, r) for w, r in results if isinstance(r, httpx.Response)]
    for w, r in answered:
        if not r.is_success:
            return _replay(r)
        if tid:
            w.templates.add(tid)
    if not answered:
        lost = next(r for _, r in results if isinstance(r, WorkerLost))
        return front.lost(request, lost, None)
    if tid:
        front.wanted(tid)
    return _replay(answered[0][1])


async def drop_template(request: Request) -> Response:
    front = _front(request)
    tid = request.path_params["templateId"]
    front.warm_wanted.pop(tid, None)
    targets = [w for w in front.workers.workers.values() if not w.lost]
    results = await _fan_out(request, "drop_template", b"", targets)
    answered = [r for _, r in results if isinstance(r, httpx.Response)]
    for w in targets:
        w.templates.discard(tid)
    ok = [r for r in answered if r.is_success]
    if ok:
        return _replay(ok[0])
    if answered:
        return _replay(answered[0])
    return front.no_worker(request, NoWorker(front.workers.no_worker()))


async def cleanup(request: Request) -> Response:
    """To every worker that is not lost; the answers summed up. A lost worker's sessions are
    forgotten (nothing of them can be reached), and named in ``error``."""
    front = _front(request)
    targets = [w for w in front.workers.workers.values() if not w.lost]
    results = await _fan_out(request, "cleanup", b"", targets)
    total: dict[str, Any] = {"status": "OK", "error": "", "containers_removed": [],
                             "volumes_removed": [], "sessions_removed": []}
    errors: list[str] = []
    for w, r in results:
        if isinstance(r, WorkerLost):
            errors.append(f"worker {w.describe()} is lost: {r}")
            continue
        data = _json(r.content)
        if not r.is_success or not isinstance(data, dict):
            errors.append(f"worker {w.describe()}: {r.status_code} {r.text[:300]}")
            continue
        for key in ("containers_removed", "volumes_removed", "sessions_removed"):
            total[key] += list(data.get(key) or [])
        if data.get("error") or str(data.get("status", "OK")).lower() != "ok":
            errors.append(f"worker {w.describe()}: {data.get('error') or data.get('status')}")
    for w in front.workers.workers.values():
        if w.lost:
            lost = sorted(s for s, p in front.workers.sessions.items() if p.worker is w)
            errors.append(f"worker {w.describe()} is lost" +
                          (f" with sessions {', '.join(lost)}" if lost else ""))
    front.workers.sessions.clear()
    front.warm_wanted.clear()
    if errors:
        total["status"], total["error"] = "ERROR", "; ".join(errors)
    for key in ("containers", "volumes", "sessions"):
        total[f"{key}_count"] = len(total[f"{key}_removed"])
    return JSONResponse(total)


async def proxy_template(request: Request) -> Response:
    front = _front(request)
    tid = request.path_params["cyanId"]
    return await _anywhere(request, await request.body(), "proxy_template",
                           front.workers.with_template(tid))


async def proxy_resolver(request: Request) -> Response:
    front = _front(request)
    rid = request.path_params["cyanId"]
    return await _anywhere(request, await request.body(), "proxy_resolver",
                           front.workers.with_resolver(rid))


async def not_found(request: Request) -> Response:
    detail = f"No route {request.method} {request.url.path}"
    return _front(request).problem(request, 404, "Not found", detail)


ROUTES = [
    Route("/", health, methods=["GET", "HEAD"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/workers", workers, methods=["GET"]),
    Route("/executor", start_executor, methods=["POST"]),
    Route("/executor/try", try_executor, methods=["POST"]),
    Route("/executor/{sessionId}", build, methods=["POST"]),
    Route("/executor/{sessionId}", delete_executor, methods=["DELETE"]),
    Route("/executor/{sessionId}/warm", warm_executor, methods=["POST"]),
    Route("/template/warm", warm_template, methods=["POST"]),
    Route("/template/{templateId}", drop_template, methods=["DELETE"]),
    Route("/cleanup", cleanup, methods=["DELETE"]),
    Route("/proxy/template/{cyanId}/api/template/init", proxy_template, methods=["POST"]),
    Route("/proxy/template/{cyanId}/api/template/validate", proxy_template, methods=["POST"]),
    Route("/proxy/resolver/{cyanId}/api/resolve", proxy_resolver, methods=["POST"]),
]


def create_front_app(config: FrontConfig) -> Starlette:
    front = Front(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        front.workers.start()
        try:
            yield
        finally:
            await front.aclose()

    async def on_404(request: Request, exc: Exception) -> Response:
        return await not_found(request)

    async def on_405(request: Request, exc: Exception) -> Response:
        detail = f"{request.method} is not served on {request.url.path}"
        return front.problem(request, 405, "Method not allowed", detail)

    async def on_error(request: Request, exc: Exception) -> Response:
        trace = trace_id_of(request.scope)
        log.exception("[%s] %s %s failed", trace, request.method, request.url.path)
        return front.problem(request, 500, "Internal error",
                             f"boride front failed unexpectedly (trace id {trace}): "
                             f"{type(exc).__name__}: {exc}")

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody reads it

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: on_404, 405: on_405, ClientGone: on_client_gone, Exception: on_error}
    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers=handlers)
    app.state.front = front
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body)
    app.add_middleware(AuthMiddleware, token=config.token)
    app.add_middleware(TraceMiddleware)
    return app


__all__ = ["ClientGone", "Front", "FrontConfig", "create_front_app"]
