"""Pure ASGI middleware (no buffering, so streaming and disconnects pass straight through):
a trace id per request, no new work while draining, no requests from components,
bearer-token authentication, and a request body size limit."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from boride.runtime.base import ComponentNetworks
from boride.server.drain import RETRY_AFTER, Drain, admits_work
from boride.server.problems import TRACE_HEADER, problem_bytes, trace_id_of

log = logging.getLogger("boride.server")

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


class TraceMiddleware:
    """Gives each request a trace id and echoes it in ``X-Trace-Id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace = trace_id_of(scope).encode()

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == _TRACE for k, _ in headers):
                    headers.append((_TRACE, trace))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_trace)


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
        log.warning("[%s] refused %s %s from %s: a component's address", trace,
                    scope.get("method", "WEBSOCKET"), scope.get("path", ""), client[0])
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
