"""The Go coordinator's *internal* routes, ``POST /merge/{sessionId}`` and ``POST /zip``: what
its merger container calls back. The CyanPrint CLI never calls them, and they must not be
reachable by components, so ``boride serve`` does not serve them on its public listener.

They are kept as their own ASGI app over the public app's :class:`Service`
(:func:`create_internal_app`), to be served where only boride's own helpers can reach it.
Either route only touches a session's work area (paths anywhere else are refused, 400).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Request
from starlette.responses import Response

from boride import __version__, archive
from boride.server import problems
from boride.server.middleware import TraceMiddleware
from boride.server.models import SESSION_ID, MergeReq, StatusRes, ZipReq
from boride.server.problems import ProblemError
from boride.server.service import Service
from boride.server.streaming import FILENAME, MEDIA_TYPE, ArchiveResponse

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
    await service.merge_dirs(service.get_session(sessionId), body)
    return StatusRes()


@router.post("/zip", tags=["internal"], response_class=Response,
             responses={200: {"description": f"The folder as `{FILENAME}`",
                              "content": {MEDIA_TYPE: {"schema": {"type": "string",
                                                                  "format": "binary"}}}},
                        400: {"description": "Problem details (RFC 7807)"}})
async def zip_dir(request: Request, body: ZipReq) -> Response:
    """Stream a folder of a session's work area as ``cyan-output.tar.gz``."""
    service = _service(request)
    folder = service.zip_folder(body.target_dir)
    try:
        chunks = archive.iter_archive(folder)
    except archive.ArchiveError as exc:
        raise ProblemError(400, "Cannot archive the folder", str(exc).splitlines()[0],
                           exc.errors) from None

    async def nothing(complete: bool) -> None:
        return None

    return ArchiveResponse(chunks, nothing, service.executor,
                           on_bytes=service.metrics.archive_bytes.inc)


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
