"""RFC 7807 problem details for every failure, as the Go coordinator writes them:
``{"title", "status", "detail", "type", "trace_id", "data": [every error]}``.

Every request gets a trace id (``X-Trace-Id``, also in each problem body and in the server's
log lines), so a user's error report can be matched with the log.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from boride.errors import BorideError

log = logging.getLogger("boride.server")

MEDIA_TYPE = "application/problem+json"
TRACE_HEADER = "X-Trace-Id"


def new_trace_id() -> str:
    return uuid.uuid4().hex


def trace_id_of(scope: Scope) -> str:
    state = scope.setdefault("state", {})
    trace = state.get("trace_id")
    if not isinstance(trace, str):
        trace = state["trace_id"] = new_trace_id()
    return trace


def type_url(status: int) -> str:
    return f"https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/{status}"


class ProblemError(BorideError):
    """Raise anywhere in a request to answer with a problem."""

    def __init__(self, status: int, title: str, detail: str,
                 data: Sequence[str] | None = None, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.data = list(data) if data is not None else [detail]
        self.headers = headers or {}


def body(status: int, title: str, detail: str, trace_id: str | None,
         data: Sequence[str] | None) -> dict[str, Any]:
    return {"title": title, "status": status, "detail": detail, "type": type_url(status),
            "trace_id": trace_id, "data": list(data) if data is not None else None}


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
        assert isinstance(exc, ProblemError)
        trace = trace_id_of(request.scope)
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(level, "[%s] %s %s -> %d %s: %s", trace, request.method, request.url.path,
                exc.status, exc.title, "; ".join(exc.data))
        return problem_response(exc.status, exc.title, exc.detail, trace, exc.data, exc.headers)

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
        log.exception("[%s] %s %s failed", trace, request.method, request.url.path)
        return problem_response(500, "Internal error",
                                "boride failed unexpectedly; the server log has the details "
                                f"under trace id {trace}", trace,
                                [f"{type(exc).__name__}: {exc}"])

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
