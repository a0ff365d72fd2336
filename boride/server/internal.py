"""The Go coordinator's *internal* routes, ``POST /merge/{sessionId}`` and ``POST /zip``: what
its merger container calls back. The CyanPrint CLI never calls them, and they must not be
reachable by components, so ``boride serve`` does not serve them on its public listener.

They are kept as their own ASGI app over the public app's :class:`Service`
(:func:`create_internal_app`), to be served where only boride's own helpers can reach it.
Either route only touches a session's work area (paths anywhere else are refused, 400).
"""

from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Request
from starlette.responses import Response

from boride import __version__
from boride.fsutil import is_within
from boride.pipeline import archive_stream, merge_folders
from boride.server import problems
from boride.server.errors import InvalidFolders, InvalidTarget, ResolverNotRunning
from boride.server.middleware import TraceMiddleware
from boride.server.models import SESSION_ID, MergeReq, StatusRes, ZipReq
from boride.server.service import Service
from boride.server.sessions import SessionState
from boride.server.streaming import FILENAME, MEDIA_TYPE, ArchiveResponse, Hooks

router = APIRouter()

SessionId = Annotated[str, Path(pattern=SESSION_ID, max_length=64)]


def _service(request: Request) -> Service:
    service = request.app.state.service
    assert isinstance(service, Service)
    return service


@router.post("/merge/{sessionId}", response_model=StatusRes, tags=["internal"],
             responses={400: {"description": "Problem details (RFC 7807)"},
                        404: {"description": "Problem details (RFC 7807)"}})
async def merge_dirs(request: Request, sessionId: SessionId, body: MergeReq) -> StatusRes:
    """Merge folders of the session's work area (paths as components see them) into
    ``to_dir``, conflicts decided by the template's running resolvers."""
    service = _service(request)
    await merge_in_session(service, service.sessions.find(sessionId), body)
    return StatusRes()


async def merge_in_session(service: Service, state: SessionState, req: MergeReq) -> None:
    """Merge as a build of the session merges (:func:`boride.pipeline.merge_folders`), with
    the resolvers running in the session or shared by its template."""
    ws = state.session.workspace
    assert ws is not None
    errors = []
    sources: list[FsPath] = []
    for d in req.from_dirs:
        try:
            p = ws.host(d)
        except (OSError, ValueError) as exc:
            errors.append(f"from_dirs: {exc}")
            continue
        if not p.is_dir():
            errors.append(f"from_dirs: {d!r} is not a folder")
        sources.append(p)
    try:
        target = ws.host(req.to_dir)
    except (OSError, ValueError) as exc:
        errors.append(f"to_dir: {exc}")
    if errors:
        raise InvalidFolders(errors)
    resolvers = await service.catalog.resolver_steps(
        req.template.resolvers if req.template is not None else [])
    shared = service.sessions.shared(state)
    missing = state.session.missing([s.component for s in resolvers], shared)
    if missing:
        name = missing[0].name
        raise ResolverNotRunning(name, f"resolver {name!r} is not running (warm the template)")
    async with state.lock:
        await merge_folders(state.session, state.folder, sources, target, resolvers,
                            shared=shared)


@router.post("/zip", tags=["internal"], response_class=Response,
             responses={200: {"description": f"The folder as `{FILENAME}`",
                              "content": {MEDIA_TYPE: {"schema": {"type": "string",
                                                                  "format": "binary"}}}},
                        400: {"description": "Problem details (RFC 7807)"}})
async def zip_dir(request: Request, body: ZipReq) -> Response:
    """Stream a folder of a session's work area as ``cyan-output.tar.gz``."""
    service = _service(request)
    chunks = archive_stream(session_folder(service, body.target_dir))

    async def nothing(complete: bool) -> None:
        return None

    return ArchiveResponse(chunks, service.ctx.executor,
                           Hooks(nothing, on_bytes=service.metrics.archive_bytes.inc))


def session_folder(service: Service, target_dir: str) -> FsPath:
    """A folder inside some session's work area (never anything else), named as components
    see it or by its host path."""
    for s in service.sessions.values():
        ws = s.session.workspace
        if ws is None:
            continue
        try:
            path = ws.host(target_dir)
        except (OSError, ValueError):
            try:
                real = os.path.realpath(target_dir)
            except (OSError, ValueError):
                continue
            if not is_within(real, str(ws.host_area.resolve())):
                continue
            path = FsPath(real)
        if path.is_dir():
            return path
    raise InvalidTarget(target_dir)


def create_internal_app(service: Service) -> FastAPI:
    """The internal routes over ``service`` (the one :func:`boride.server.create_app` made, read
    from its ``app.state.service``). No lifespan of its own: the public app owns the service.
    Serve it in the same event loop as the public app."""
    app = FastAPI(title="boride (internal)", version=__version__, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.service = service
    problems.install(app)
    app.include_router(router)
    app.add_middleware(TraceMiddleware)
    return app
