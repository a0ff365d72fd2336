"""The front's routes: the coordinator's API, each call sent to the worker it belongs to
(:mod:`boride.front.forward`)."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from boride import aio
from boride.front.forward import HOP_HEADERS, Front, WorkerLost
from boride.front.workers import NoWorker, Worker
from boride.server.models import SESSION_RE
from boride.server.problems import trace_id_of

log = logging.getLogger("boride.front")


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
        log.info("session %s placed on worker %s", session, worker.describe(),
                 extra={"trace_id": trace_id_of(request.scope)})
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


async def build_trace(request: Request) -> Response:
    session = request.path_params["sessionId"]
    return await _session_call(request, session, "build_trace", new=False)


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
        log.info("DELETE of session %s on lost worker %s: nothing it can reach is left "
                 "(%s)", session, worker.describe(), exc,
                 extra={"trace_id": trace_id_of(request.scope)})
        return JSONResponse({"status": "OK"})
    if answer.is_success:
        front.workers.forget(session, worker)
    return _replay(answer)


def _replay(answer: httpx.Response) -> Response:
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
    return Response(answer.content, status_code=answer.status_code, headers=headers)


async def _fan_out(request: Request, route: str, body: bytes, targets: list[Worker]
                   ) -> list[tuple[Worker, httpx.Response | WorkerLost]]:
    front = _front(request)

    async def one(w: Worker) -> httpx.Response | WorkerLost:
        try:
            return await front.call(request, w, request.url.path, body, route)
        except WorkerLost as exc:
            return exc

    results = await aio.gather(*(one(w) for w in targets))
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
    Route("/executor/{sessionId}/trace", build_trace, methods=["GET"]),
    Route("/template/warm", warm_template, methods=["POST"]),
    Route("/template/{templateId}", drop_template, methods=["DELETE"]),
    Route("/cleanup", cleanup, methods=["DELETE"]),
    Route("/proxy/template/{cyanId}/api/template/init", proxy_template, methods=["POST"]),
    Route("/proxy/template/{cyanId}/api/template/validate", proxy_template, methods=["POST"]),
    Route("/proxy/resolver/{cyanId}/api/resolve", proxy_resolver, methods=["POST"]),
]
