"""RFC 7807 problem details for every failure, as the Go coordinator writes them:
``{"title", "status", "detail", "type", "trace_id", "traceId", "data": [every error]}``.
The CyanPrint CLI reads ``title``, ``status``, ``type``, ``traceId`` and ``data`` only (never
``detail``), so ``data`` always carries the human message(s), for every problem.

The service raises domain errors (:mod:`boride.server.errors`, the pipeline's, the
registry's); :data:`TABLE` is the one place that says which status and title each class gets
(in the spirit of httpx's mapping of transport errors). ``data`` is the error's ``errors``
(every component's own error, say), else its message.

Every request gets a trace id (``X-Trace-Id``, also in each problem body and in the server's
log lines), so a user's error report can be matched with the log: the client's own when it
sends a valid one (``X-Trace-Id``, else the trace id of a W3C ``traceparent``), so that one id
holds from the client through ``boride front`` to its worker.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from boride import pipeline
from boride import registry as reg
from boride.errors import BorideError
from boride.server import errors as errs
from boride.server.streaming import ClientGone

log = logging.getLogger("boride.server")

MEDIA_TYPE = "application/problem+json"
TRACE_HEADER = "X-Trace-Id"


_VALID_TRACE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def new_trace_id() -> str:
    return uuid.uuid4().hex


def incoming_trace_id(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The client's trace id: a valid ``X-Trace-Id`` (1 to 64 of ``A-Z a-z 0-9 - _``), else
    the trace id of a valid W3C ``traceparent`` (version ``ff`` and all-zero ids are not);
    None when neither (anything else is replaced, never echoed)."""
    given: dict[bytes, str] = {}
    for key, value in headers:
        given.setdefault(key.lower(), value.decode("latin-1"))
    trace = given.get(b"x-trace-id", "").strip()
    if _VALID_TRACE.fullmatch(trace):
        return trace
    m = _TRACEPARENT.fullmatch(given.get(b"traceparent", "").strip().lower())
    if m and not m.group(0).startswith("ff") and m.group(1) != "0" * 32 \
            and m.group(2) != "0" * 16:
        return m.group(1)
    return None


def trace_id_of(scope: Scope) -> str:
    state = scope.setdefault("state", {})
    trace = state.get("trace_id")
    if not isinstance(trace, str):
        trace = state["trace_id"] = (incoming_trace_id(scope.get("headers", []))
                                     or new_trace_id())
    return trace


def type_url(status: int) -> str:
    return f"https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/{status}"


@dataclass(frozen=True)
class Rule:
    """How an error class is answered: its status and title, and a fixed ``detail`` (None:
    the error's own message)."""

    status: int
    title: str
    detail: str | None = None


_STARTS = "Some components did not start or never became ready"
_CANNOT_RUN = "Some components cannot run on this server's runtime"

#: Every error class the service raises on purpose, and its problem (the most specific class
#: of an error that is here wins). The Go coordinator's wording, status codes as docs/api.md.
TABLE: dict[type[BaseException], Rule] = {
    errs.InvalidSessionId: Rule(400, "Invalid session id"),
    errs.SessionNotFound: Rule(404, "Unknown session"),
    errs.SessionGone: Rule(409, "Build cancelled"),
    errs.NoTrace: Rule(404, "No trace"),
    errs.SessionExists: Rule(409, "Session collision"),
    errs.OtherTemplate: Rule(409, "Session belongs to another template"),
    errs.TooManySessions: Rule(429, "Too many sessions"),
    errs.TemplateUnknown: Rule(400, "Unknown template"),
    errs.TemplateNotWarm: Rule(404, "Unknown template"),
    errs.NoQuestionServer: Rule(404, "No template component"),
    errs.QuestionServerUnknown: Rule(400, "Template cannot be warmed"),
    errs.TemplateCannotRun: Rule(400, "Failed to warm executor"),
    errs.UnknownNames: Rule(400, "Unknown component"),
    errs.RegistryUnavailable: Rule(502, "Registry unavailable"),
    reg.Unavailable: Rule(502, "Registry unavailable"),
    reg.RegistryError: Rule(400, "Unknown component"),
    errs.ResolverNotFound: Rule(404, "Unknown resolver"),
    errs.ResolverNotRunning: Rule(400, "Resolver not running"),
    errs.UpstreamFailed: Rule(502, "Upstream failed"),
    errs.MissingPath: Rule(400, "Missing path"),
    errs.TryDisabled: Rule(403, "Try from a path is disabled"),
    errs.OutsideDevRoot: Rule(403, "Path outside the development root"),
    errs.InvalidPath: Rule(400, "Invalid path"),
    errs.NotAFolder: Rule(400, "Not a folder"),
    errs.MissingImage: Rule(400, "No blob image"),
    pipeline.CannotRun: Rule(400, "Cannot run components", _CANNOT_RUN),
    pipeline.ComponentsFailed: Rule(503, "Failed to start executor", _STARTS),
    pipeline.AreaUnavailable: Rule(503, "Failed to prepare the session"),
    pipeline.TemplateUnusable: Rule(400, "Unusable template files"),
    pipeline.BuildError: Rule(400, "Build failed"),
    pipeline.ArchiveFailed: Rule(400, "Cannot archive the output",
                                 "The build's output cannot be archived"),
    pipeline.MergeFailed: Rule(400, "Merge failed", "The folders cannot be merged"),
    ClientGone: Rule(499, "Client closed request"),
}

#: Where a route words a problem its own way (by the route's function name).
BY_ROUTE: dict[tuple[str, type[BaseException]], Rule] = {
    ("warm_template", pipeline.ComponentsFailed): Rule(
        503, "Failed to warm template", "Some of the template's components did not start"),
    ("warm_template", pipeline.AreaUnavailable): Rule(503, "Failed to warm template"),
    ("try_executor", pipeline.ComponentsFailed): Rule(
        503, "Failed to set up the try session", "The template's resolvers did not start"),
    ("try_executor", errs.TemplateCannotRun): Rule(400, "Failed to set up the try session"),
}


def rule_for(error: BaseException, route: str | None) -> Rule | None:
    """The problem of ``error`` raised by ``route``: its most specific class in the tables."""
    for cls in type(error).__mro__:
        rule = BY_ROUTE.get((route or "", cls)) or TABLE.get(cls)
        if rule is not None:
            return rule
    return None


def _route(request: Request) -> str | None:
    endpoint = request.scope.get("endpoint")
    return getattr(endpoint, "__name__", None)


def body(status: int, title: str, detail: str, trace_id: str | None,
         data: Sequence[str] | None) -> dict[str, Any]:
    """The problem; ``data`` is never empty (the CLI shows it, not ``detail``): without
    errors of its own, it is the detail."""
    messages = [m for m in (data or ()) if m] or [detail or title]
    return {"title": title, "status": status, "detail": detail, "type": type_url(status),
            "trace_id": trace_id, "traceId": trace_id, "data": messages}


def problem_response(status: int, title: str, detail: str, trace_id: str | None,
                     data: Sequence[str] | None = None,
                     headers: dict[str, str] | None = None) -> Response:
    all_headers = {TRACE_HEADER: trace_id} if trace_id else {}
    all_headers.update(headers or {})
    return JSONResponse(body(status, title, detail, trace_id, data), status_code=status,
                        media_type=MEDIA_TYPE, headers=all_headers)


def problem_bytes(status: int, title: str, detail: str, trace_id: str | None,
                  data: Sequence[str] | None = None) -> bytes:
    return json.dumps(body(status, title, detail, trace_id, data)).encode()


def _where(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    return ".".join(parts) if parts else "(body)"


def validation_problem(exc: RequestValidationError, trace_id: str) -> Response:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        data = []
        for e in errors:
            if e.get("type") == "json_invalid":
                loc = tuple(e.get("loc", ()))
                at = f"at character {loc[1]}: " if len(loc) > 1 else ""
                data.append(f"{at}{e.get('ctx', {}).get('error', e.get('msg'))}")
        return problem_response(400, "Malformed JSON", "The request body is not valid JSON",
                                trace_id, data)
    in_path = [e for e in errors if tuple(e.get("loc", ()))[:1] == ("path",)]
    if in_path:
        names = sorted({str(e["loc"][1]) for e in in_path if len(e["loc"]) > 1})
        data = [f"{_where(e['loc'])}: {e.get('msg')}" for e in in_path]
        if "sessionId" in names:
            return problem_response(400, "Invalid session id", "A session id is 1 to 64 "
                                    "letters, digits and inner dashes (a UUID, for example)",
                                    trace_id, data)
        return problem_response(400, "Invalid path parameter",
                                f"Invalid {', '.join(names) or 'path'}", trace_id, data)
    data = []
    for e in errors:
        msg = e.get("msg", "invalid")
        if e.get("type") == "missing":
            msg = "required field is missing"
        data.append(f"{_where(e.get('loc', ()))}: {msg}")
    return problem_response(400, "Failed to bind request",
                            "The request body does not match what this route reads", trace_id,
                            data)


_TITLES = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized",
           413: "Request body too large", 415: "Unsupported media type"}


def install(app: FastAPI) -> None:
    """Answer every error with a problem, never a bare 500."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        trace = trace_id_of(request.scope)
        rule = rule_for(exc, _route(request))
        if rule is None:  # a BorideError no table knows: a bug, answered as one
            return await on_error(request, exc)
        detail = rule.detail or str(exc)
        assert isinstance(exc, BorideError)
        data = exc.errors or [str(exc)]
        level = logging.WARNING if rule.status >= 500 else logging.INFO
        log.log(level, "%s %s -> %d %s: %s", request.method, request.url.path,
                rule.status, rule.title, "; ".join(data), extra={"trace_id": trace})
        return problem_response(rule.status, rule.title, detail, trace, data)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(exc, trace_id_of(request.scope))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        title = _TITLES.get(exc.status_code, "Request failed")
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.method} {request.url.path}"
        return problem_response(exc.status_code, title, detail, trace_id_of(request.scope),
                                [detail], dict(exc.headers or {}))

    async def on_error(request: Request, exc: Exception) -> Response:
        trace = trace_id_of(request.scope)
        log.exception("%s %s failed", request.method, request.url.path,
                      extra={"trace_id": trace})  # (outside the request's log context)
        return problem_response(500, "Internal error",
                                "boride failed unexpectedly; the server log has the details "
                                f"under trace id {trace}", trace,
                                [f"{type(exc).__name__}: {exc}"])

    app.add_exception_handler(BorideError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
