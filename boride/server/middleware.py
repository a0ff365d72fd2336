"""Pure ASGI middleware (no buffering, so streaming and disconnects pass straight through):
a trace id per request (and its access line), no new work while draining, no requests from
components, bearer-token authentication, and a request body size limit."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from boride import logs
from boride.runtime.base import ComponentNetworks
from boride.server.drain import RETRY_AFTER, Drain, admits_work
from boride.server.problems import TRACE_HEADER, problem_bytes, trace_id_of

log = logging.getLogger("boride.server")
access = logging.getLogger("boride.access")

#: ``observe(method, route, status, seconds)``: a finished request, for the metrics.
Observer = Callable[[str, str, int, float], None]

_TRACE = TRACE_HEADER.lower().encode()


async def send_problem(send: Send, status: int, title: str, detail: str, scope: Scope,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with a problem (RFC 7807) of the request's trace id, from a middleware."""
    await _send_problem(send, status, title, detail, trace_id_of(scope), extra)


async def _send_problem(send: Send, status: int, title: str, detail: str, trace: str,
                        extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = problem_bytes(status, title, detail, trace, [detail])
    headers = [(b"content-type", b"application/problem+json"),
               (b"content-length", str(len(payload)).encode()), (_TRACE, trace.encode()),
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class DrainMiddleware:
    """Counts the requests in flight for :class:`Drain`; while draining, answers ``GET /``,
    ``GET /worker`` (``boride front`` then places no new session here) and what
    :func:`admits_work` with 503, ``Retry-After`` and a problem body."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if self.drain.draining and (path in ("/", "/worker") or admits_work(method, path)):
            await send_problem(send, 503, "Server draining",
                               "This server is stopping: it takes no new sessions or builds. "
                               f"Try again in {RETRY_AFTER}s (its successor takes the "
                               "sessions over)", scope,
                               [(b"retry-after", str(RETRY_AFTER).encode())])
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()


def session_of(path: str) -> str | None:
    """The session a request's path names (``/executor/{sessionId}...``), if any."""
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[1] == "executor" and parts[2] and parts[2] != "try":
        return parts[2][:128]
    return None


def route_of(scope: Scope) -> str:
    """The template of the route that served the request (``/executor/{sessionId}``, never the
    raw path: bounded label values), or ``unmatched``."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


#: The probes' routes: health (``GET /``), the front's checks of its workers (``GET /worker``,
#: every few seconds), its own listing, the metrics scrapes. Their access lines are DEBUG's.
PROBES = frozenset({"/", "/worker", "/workers", "/metrics"})


def access_level(method: str, path: str, status: int) -> int:
    """A request's access line level: DEBUG for a probe that succeeded, else INFO."""
    probe = method in ("GET", "HEAD") and path in PROBES and status < 400
    return logging.DEBUG if probe else logging.INFO


class TraceMiddleware:
    """Gives each request a trace id (the client's when valid, see
    :func:`~boride.server.problems.trace_id_of`), echoes it in ``X-Trace-Id``, sets the log
    context (:mod:`boride.logs`) for the request's lines, and logs one access line when it is
    answered, at INFO (a probe's at DEBUG: :func:`access_level`; ``observe``: the same, for
    the metrics)."""

    def __init__(self, app: ASGIApp, observe: Observer | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_text = trace_id_of(scope)
        trace = trace_text.encode()
        tokens = (logs.trace_id.set(trace_text), logs.session.set(session_of(scope["path"])))
        status = 500  # what the server answers when the app fails before answering
        t0 = time.perf_counter()

        async def send_with_trace(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(k.lower() == _TRACE for k, _ in headers):
                    headers.append((_TRACE, trace))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        finally:
            seconds = time.perf_counter() - t0
            method, path = scope["method"], scope["path"]
            access.log(access_level(method, path, status), "%s %s %d %.1fms", method, path,
                       status, seconds * 1000, extra={
                           "method": method, "path": path, "status": status,
                           "duration_ms": round(seconds * 1000, 3)})
            if self.observe is not None:
                self.observe(method, route_of(scope), status, seconds)
            logs.session.reset(tokens[1])
            logs.trace_id.reset(tokens[0])


class ComponentGuardMiddleware:
    """Refuses every request from a components' network with 403, before any route runs
    (``GET /`` included): a component must not drive boride, token or not. ``networks`` is
    the runtime's :meth:`~boride.runtime.base.Runtime.component_networks`."""

    def __init__(self, app: ASGIApp,
                 networks: Callable[[], Awaitable[ComponentNetworks]]) -> None:
        self.app = app
        self.networks = networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if (scope["type"] not in ("http", "websocket") or not client
                or not (await self.networks()).holds(str(client[0]))):
            await self.app(scope, receive, send)
            return
        trace = trace_id_of(scope)
        log.warning("refused %s %s from %s: a component's address",
                    scope.get("method", "WEBSOCKET"), scope.get("path", ""), client[0],
                    extra={"trace_id": trace})
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_problem(send, 403, "Forbidden for components",
                            f"{client[0]} is on the components' network: components cannot "
                            "call boride's API", trace)


#: The API's description, readable without the token on ``boride serve`` (not a secret).
DOCS_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class AuthMiddleware:
    """With a token, every route but ``GET /`` (and ``GET`` of the ``public`` paths, such as
    :data:`DOCS_PATHS`) needs ``Authorization: Bearer TOKEN``."""

    def __init__(self, app: ASGIApp, token: str | None,
                 public: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.public = public | {"/"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.token is None or scope["type"] != "http"
                or (scope["method"] in ("GET", "HEAD") and scope["path"] in self.public)):
            await self.app(scope, receive, send)
            return
        given = b""
        for key, value in scope.get("headers", []):
            if key.lower() == b"authorization":
                given = value
                break
        scheme, _, credential = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token):
            await self.app(scope, receive, send)
            return
        detail = ("Send 'Authorization: Bearer TOKEN' with the server's token" if not given
                  else "The bearer token is not the server's token")
        await _send_problem(send, 401, "Unauthorized", detail, trace_id_of(scope),
                            [(b"www-authenticate", b'Bearer realm="boride"')])


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes with 413, by ``Content-Length`` before
    reading anything, and while reading for chunked bodies."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"The request body is larger than this server's limit of {self.limit} bytes"
        for key, value in scope.get("headers", []):
            if key.lower() == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _send_problem(send, 400, "Invalid Content-Length",
                                        "Content-Length is not a number", trace_id_of(scope))
                    return
                if length > self.limit:
                    await _send_problem(send, 413, "Request body too large", detail,
                                        trace_id_of(scope), [(b"connection", b"close")])
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, detail)
            return message

        await self.app(scope, counting_receive, send)
