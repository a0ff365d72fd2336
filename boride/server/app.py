"""The application factory of ``boride serve``."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from boride import __version__, aio, telemetry
from boride import registry as reg
from boride.runtime import get_runtime
from boride.runtime.base import Runtime
from boride.server import problems, routes
from boride.server.middleware import (
    DOCS_PATHS,
    AuthMiddleware,
    BodyLimitMiddleware,
    ComponentGuardMiddleware,
    DrainMiddleware,
    TraceMiddleware,
)
from boride.server.service import ServerConfig, Service
from boride.telemetry import RequestSpans

DESCRIPTION = """\
boride's HTTP API: the routes, bodies and errors of the CyanPrint Go coordinator (Boron), so a
client written for it works unchanged. Errors are RFC 7807 problem details
(`{"title", "status", "detail", "type", "trace_id", "traceId", "data": [every error]}`;
the CyanPrint CLI shows `title`, `status`, `type`, `traceId` and `data`).

Typical flow: `POST /template/warm` → `POST /executor/{sessionId}/warm` → `POST /executor` →
`POST /executor/{sessionId}` (streams `cyan-output.tar.gz`) → `DELETE /executor/{sessionId}`.
For local development: `POST /executor/try` (a folder below `--dev-root`) →
`POST /executor/{sessionId}` → `DELETE /executor/{sessionId}`.
"""


def create_app(config: ServerConfig | None = None, *, runtime: Runtime | None = None,
               registry: reg.Registry | None = None) -> FastAPI:
    """The ASGI app. ``runtime`` and ``registry`` default to what ``config`` names; a registry
    file that cannot be used raises :class:`boride.registry.RegistryFileError` here."""
    config = config or ServerConfig()
    if registry is None:
        registry = reg.open_registry(config.registry)
    if runtime is None:
        runtime = get_runtime(config.runtime)
    service = Service(config, runtime, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.adopt()
        service.start_background()
        try:
            yield
        finally:
            try:
                await service.aclose()
            finally:
                await aio.to_thread(telemetry.flush)

    # The request's span is boride's (RequestSpans, the front's too); FastAPI's own (from
    # its native telemetry, in newer versions) would be a second one for the same request.
    supported = "telemetry" in inspect.signature(FastAPI.__init__).parameters
    native: dict[str, Any] = {"telemetry": {"tracing": False}} if supported else {}
    app = FastAPI(title="boride", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, **native)
    app.state.service = service
    problems.install(app)
    app.include_router(routes.router)
    # Added innermost first: the trace id wraps everything, then the drain (its count of
    # requests in flight), then the refusal of components' addresses, then authentication,
    # then the limit.
    app.add_middleware(BodyLimitMiddleware, limit=config.limits.max_body)
    app.add_middleware(AuthMiddleware, token=config.token, public=DOCS_PATHS)
    app.add_middleware(ComponentGuardMiddleware, networks=runtime.component_networks)
    app.add_middleware(DrainMiddleware, drain=service.drain)
    app.add_middleware(TraceMiddleware, observe=service.metrics.observe_request)
    # outermost: its trace id is the logs' too (passes through while traces are off)
    app.add_middleware(RequestSpans)
    _document_problems(app, token=config.token is not None)
    return app


def _document_problems(app: FastAPI, *, token: bool) -> None:
    """Say in the OpenAPI document what the server really answers to invalid requests: 400
    problem details (FastAPI documents 422 by default); and that every route but ``/`` takes
    the bearer token of a server started with ``--token`` (scheme ``bearer``; optional, ``{}``
    among the alternatives, on a server without one)."""
    security: list[dict[str, list[str]]] = [{"bearer": []}] if token else [{"bearer": []}, {}]
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None and "400" not in responses:
                    responses["400"] = {
                        "description": "Problem details (RFC 7807)",
                        "content": {"application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}}}}
                if path is not schema["paths"].get("/"):
                    operation.setdefault("security", security)
                    responses.setdefault("401", {
                        "description": "Missing or wrong bearer token (servers with --token)",
                        "content": {"application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}}}})
                    responses.setdefault("413", {
                        "description": "Request body over the size limit",
                        "content": {"application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}}}})
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer",
            "description": "The server's token (--token, BORIDE_TOKEN); needed only when set"}
        schemas = components.get("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
