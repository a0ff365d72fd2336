"""The public routes of the Go coordinator (same paths, bodies and errors), plus ``/metrics``.

The Go coordinator's internal routes (``/merge``, ``/zip``: what its merger container is
called on) are not served: boride's helper container does that work, on routes of its own
that only the coordinator holds the token for (:mod:`boride.area_server`)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from boride.server import proxy
from boride.server.errors import NoTrace, SessionGone
from boride.server.models import (
    CYAN_ID,
    SESSION_ID,
    BuildReq,
    CleanupRes,
    Problem,
    StartExecutorReq,
    StatusRes,
    TemplateVersionRes,
    TryReq,
    TryRes,
    VolumeRef,
    WarmRes,
    WorkerRes,
)
from boride.server.problems import trace_id_of
from boride.server.service import Service
from boride.server.streaming import (
    FILENAME,
    MEDIA_TYPE,
    ClientGone,
    WorkCancelled,
    until_disconnect,
)

log = logging.getLogger("boride.server")
router = APIRouter()

SessionId = Annotated[str, Path(pattern=SESSION_ID, max_length=64,
                                description="1 to 64 letters, digits and inner dashes "
                                            "(a UUID, for example)")]
CyanId = Annotated[str, Path(pattern=CYAN_ID, max_length=128)]


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": Problem, "description": "Problem details (RFC 7807)",
                "content": {"application/problem+json": {}}} for s in statuses}


_ARCHIVE: dict[int | str, dict[str, Any]] = {200: {
    "description": f"The output as `{FILENAME}`, streamed as it is written",
    "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}}
_RAW_BODY: dict[str, Any] = {"requestBody": {"required": False, "content": {
    "application/json": {"schema": {"type": "object", "additionalProperties": True}}}}}
_RAW_ANSWER: dict[int | str, dict[str, Any]] = {200: {
    "description": "The component's answer, as it gave it",
    "content": {"application/json": {"schema": {}}}}}


def _service(request: Request) -> Service:
    service = request.app.state.service
    assert isinstance(service, Service)
    return service


@router.get("/", response_model=StatusRes, tags=["health"])
async def health() -> StatusRes:
    """Health: always ``{"status": "OK"}`` (and never needs a token)."""
    return StatusRes()


@router.get("/metrics", tags=["health"], response_class=Response,
            responses={200: {"description": "Prometheus text format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    """Builds started/finished/failed/cancelled, builds in flight and waiting, duration of each
    stage, component failures by kind, sessions."""
    return Response(_service(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/worker", response_model=WorkerRes, tags=["health"])
async def worker(request: Request) -> WorkerRes:
    """(boride) What this server holds: the node its components run on, its open sessions,
    the templates warm here and the resolvers running. ``boride front`` polls it to check its
    workers' health, to place new sessions and to find them again after a restart."""
    return await _service(request).worker_status()


@router.post("/executor", response_model=StatusRes, tags=["executor"],
             responses=_problems(400, 409, 429, 502, 503))
async def start_executor(request: Request, body: StartExecutorReq) -> StatusRes:
    """Start a session's processor and plugin components (the versions the template pins) in
    parallel and wait until every one is ready. Makes the session if it does not exist."""
    await _service(request).start_session(
        body.session_id, body.template, body.merger.merger_id if body.merger else "")
    return StatusRes()


@router.post("/executor/try", response_model=TryRes, tags=["executor"],
             responses=_problems(400, 403, 409, 429, 503))
async def try_executor(request: Request, body: TryReq) -> TryRes:
    """A local try session: the template's files come from a folder below ``--dev-root``
    (``source: "path"``); its resolvers start in the session. Build it with
    ``POST /executor/{sessionId}``; ``DELETE /executor/{sessionId}`` removes all of it."""
    await _service(request).try_session(body)
    return TryRes.of(body.session_id, body.local_template_id)


@router.post("/executor/{sessionId}", tags=["executor"], response_class=Response,
             responses={**_ARCHIVE, **_problems(400, 404, 409, 502)})
async def build(request: Request, sessionId: SessionId, body: BuildReq,
                trace: Annotated[bool, Query(description=(
                    "(boride) Keep the build's timeline: `GET /executor/{sessionId}/trace`"
                    ))] = False) -> Response:
    """Build: processors in parallel, merge (conflicts to the template's resolvers), plugins
    in order; the result streams as ``cyan-output.tar.gz`` while it is being compressed.

    Processors and plugins are named ``user/name`` or ``user/name:version`` and resolved to a
    version the template pins. A client that disconnects cancels the build."""
    service = _service(request)
    state = service.sessions.find(sessionId)
    plan, shared = await service.builds.plan(state, body)
    task = state.start_soon(service.builds.run(state, plan, shared, trace=trace))
    try:
        return await until_disconnect(request.receive, task)
    except ClientGone:
        log.info("client of session %s went away: build cancelled, components stopped",
                 sessionId, extra={"trace_id": trace_id_of(request.scope)})
        raise
    except WorkCancelled:
        raise SessionGone(sessionId, f"session {sessionId!r} was deleted during the build") \
            from None


@router.get("/executor/{sessionId}/trace", tags=["executor"], response_class=JSONResponse,
            responses={200: {"description": "Trace Event Format (Perfetto, chrome://tracing)",
                             "content": {"application/json": {"schema": {
                                 "type": "object", "additionalProperties": True}}}},
                       **_problems(400, 404)})
async def build_trace(request: Request, sessionId: SessionId) -> JSONResponse:
    """(boride) The timeline of the session's last build made with ``?trace=true`` (what
    ``boride run --trace`` writes): a row per component instance, its start, readiness
    and calls, the merge, the output, the stages and the parallelism's slots. Only the last
    one is kept; it goes with the session."""
    state = _service(request).sessions.find(sessionId)
    if state.trace is None:
        raise NoTrace(sessionId, f"no build of session {sessionId!r} was traced: build with "
                                 f"POST /executor/{sessionId}?trace=true first")
    return JSONResponse(state.trace.data())


@router.delete("/executor/{sessionId}", response_model=StatusRes, tags=["executor"],
               responses=_problems(400))
async def delete_executor(request: Request, sessionId: SessionId) -> StatusRes:
    """Remove everything of the session: cancel its build, stop its components, delete its
    work area. A session that is not here (unknown, expired, deleted already) answers OK too,
    as the Go coordinator does: there is nothing left to remove."""
    await _service(request).delete_session(sessionId)
    return StatusRes()


@router.delete("/cleanup", response_model=CleanupRes, tags=["executor"])
async def cleanup(request: Request) -> CleanupRes:
    """Remove everything boride made (what ``cyanprint daemon stop`` calls): every session
    of this server, every template's shared components, and what the runtime made for boride
    (on Docker: every container and volume labelled by boride, whichever run made them).
    Answers 200 with what was removed; when something could not be removed, ``status`` is
    not "OK" and ``error`` says what is left."""
    done = await _service(request).cleanup()
    return CleanupRes(
        status="ERROR" if done.errors else "OK", error="; ".join(done.errors),
        containers_removed=list(done.removed.containers),
        volumes_removed=list(done.removed.volumes), sessions_removed=list(done.sessions),
        containers_count=len(done.removed.containers),
        volumes_count=len(done.removed.volumes), sessions_count=len(done.sessions))


@router.post("/executor/{sessionId}/warm", response_model=WarmRes, tags=["executor"],
             responses=_problems(400, 409, 429, 502, 503))
async def warm_executor(request: Request, sessionId: SessionId,
                        body: TemplateVersionRes) -> WarmRes:
    """Prepare a session: its work area, and every image (or command) its processors and
    plugins need. Body: the template."""
    await _service(request).warm_session(sessionId, body)
    return WarmRes(session_id=sessionId,
                   vol_ref=VolumeRef(cyan_id=body.principal.id, session_id=sessionId))


@router.post("/template/warm", response_model=StatusRes, tags=["template"],
             responses=_problems(400, 502, 503))
async def warm_template(request: Request, body: TemplateVersionRes) -> StatusRes:
    """Prepare a template: its files, and its resolvers (and Q&A server, when the registry
    knows how to run it) started, ready and shared by every session of the template."""
    await _service(request).warm_template(body)
    return StatusRes()


@router.delete("/template/{templateId}", response_model=StatusRes, tags=["template"],
               responses=_problems(400, 404))
async def drop_template(request: Request, templateId: CyanId) -> StatusRes:
    """(boride) Stop a warmed template's shared components."""
    await _service(request).drop_template(templateId)
    return StatusRes()


async def _forward(request: Request, instance_path: str, kind: str, cyan_id: str) -> Response:
    service = _service(request)
    content = await request.body()
    instance = (service.templates.question_server(cyan_id) if kind == "template"
                else service.resolver(cyan_id))
    upstream = await proxy.forward(instance, instance_path, content,
                                   request.headers.get("content-type"),
                                   limit=service.config.limits.max_answer)
    return Response(upstream.content, status_code=upstream.status_code,
                    media_type=upstream.content_type)


@router.post("/proxy/template/{cyanId}/api/template/init", tags=["proxy"],
             response_class=Response, openapi_extra=_RAW_BODY,
             responses={**_RAW_ANSWER, **_problems(400, 404, 502)})
async def proxy_template_init(request: Request, cyanId: CyanId) -> Response:
    """Forward to the template's Q&A server (``POST /api/template/init``)."""
    return await _forward(request, "/api/template/init", "template", cyanId)


@router.post("/proxy/template/{cyanId}/api/template/validate", tags=["proxy"],
             response_class=Response, openapi_extra=_RAW_BODY,
             responses={**_RAW_ANSWER, **_problems(400, 404, 502)})
async def proxy_template_validate(request: Request, cyanId: CyanId) -> Response:
    """Forward to the template's Q&A server (``POST /api/template/validate``)."""
    return await _forward(request, "/api/template/validate", "template", cyanId)


@router.post("/proxy/resolver/{cyanId}/api/resolve", tags=["proxy"],
             response_class=Response, openapi_extra=_RAW_BODY,
             responses={**_RAW_ANSWER, **_problems(400, 404, 502)})
async def proxy_resolver(request: Request, cyanId: CyanId) -> Response:
    """Forward to a running resolver (``POST /api/resolve``), by resolver version id."""
    return await _forward(request, "/api/resolve", "resolver", cyanId)
