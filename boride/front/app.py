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
* SIGTERM drains it as it drains a worker (:mod:`boride.server.drain`): new sessions and
  builds answer 503, the calls in flight (a build streaming through) get ``--drain-timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from boride import aio, telemetry
from boride.front.forward import Front, FrontConfig
from boride.front.routes import ROUTES, not_found
from boride.server.drain import Drain
from boride.server.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    DrainMiddleware,
    TraceMiddleware,
)
from boride.server.problems import trace_id_of
from boride.server.streaming import ClientGone
from boride.telemetry import RequestSpans

log = logging.getLogger("boride.front")


def create_front_app(config: FrontConfig) -> Starlette:
    front = Front(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        front.workers.start()
        try:
            yield
        finally:
            try:
                await front.aclose()
            finally:
                await aio.to_thread(telemetry.flush)

    async def on_404(request: Request, exc: Exception) -> Response:
        return await not_found(request)

    async def on_405(request: Request, exc: Exception) -> Response:
        detail = f"{request.method} is not served on {request.url.path}"
        return front.problem(request, 405, "Method not allowed", detail)

    async def on_error(request: Request, exc: Exception) -> Response:
        trace = trace_id_of(request.scope)
        log.exception("%s %s failed", request.method, request.url.path,
                      extra={"trace_id": trace})  # (outside the request's log context)
        return front.problem(request, 500, "Internal error",
                             f"boride front failed unexpectedly (trace id {trace}): "
                             f"{type(exc).__name__}: {exc}")

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody reads it

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: on_404, 405: on_405, ClientGone: on_client_gone, Exception: on_error}
    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers=handlers)
    app.state.front = front
    app.state.drain = Drain()
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body)
    app.add_middleware(AuthMiddleware, token=config.token)
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    app.add_middleware(TraceMiddleware)
    # outermost: its trace id is the logs' too (passes through while traces are off)
    app.add_middleware(RequestSpans)
    return app


__all__ = ["Front", "FrontConfig", "create_front_app"]
