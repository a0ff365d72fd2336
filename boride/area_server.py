"""The area helper: a session's :class:`~boride.area.HostArea` served over HTTP.

On Docker a session's files live in engine volumes that boride may not see at all (boride in
a container, a remote engine, a Swarm node). A helper container made from boride's own image
mounts them where components see them (``/workspace/area``, ``/workspace/cyanprint``) and
runs this server; :class:`boride.runtime.docker.helper.HelperArea` is its client. So the
merge, its safety rules and the archive are boride's own code wherever the files are.

Every request must carry the session's token (``Authorization: Bearer ...``, the token given in
``BORIDE_HELPER_TOKEN``): components share the helper's network, never its token. It runs as
root with only the capabilities its file work needs (each component instance has a user of its
own: the helper makes each one's folders for it, gives plugins the merged tree and takes back
what each answered); the area's top is root's, mode 0711, so that a component reaches its own
folders by name only. ``--owner`` is whom folders go to when no owner is named (components
sharing one user). Every walk goes through descriptors (:mod:`boride.fsutil`).

Routes (JSON bodies): ``GET /`` health and protocol version; ``POST /dirs`` (``private``,
``owner``: [uid, gid]); ``POST /hand-over`` (``path``, ``owner``); ``POST /take-back``
(``path``); ``POST /merge`` (an NDJSON stream: ``{"conflict": n, ...}`` asks for a
resolution, answered by ``POST /merge/{id}/answers/{n}``; then ``{"done": true}`` or
``{"errors": [...]}``); ``POST /archive`` (the ``.tar.gz`` stream, or 422 with the
problems); ``GET /names``; ``POST /remove-new``; ``GET /full``; ``POST /unpack`` (a ``.tar.gz`` body
unpacked into a new private folder: ``{"path": ...}``, or 422 with the problems).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hmac
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from boride import aio, archive, merge, output, settings
from boride.area import AreaFailure, HostArea
from boride.errors import BorideError, ComponentError, describe
from boride.settings import SettingError

#: bumped when a route changes: the client refuses a helper speaking another version
PROTOCOL = 3
PORT = 5560
AREA = "/workspace/area"
TEMPLATE = "/workspace/cyanprint"
TOKEN_ENV = "BORIDE_HELPER_TOKEN"

Handler = Callable[[Request], Awaitable[Response]]


class ResolveFailed(ComponentError):
    """The coordinator could not resolve a conflict; its message says why."""


class _BadRequest(BorideError):
    pass


class _Merges:
    """The merges under way: the resolutions each one waits for."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, int], asyncio.Future[tuple[str, bytes]]] = {}

    def answer(self, merge_id: str, n: int, body: dict[str, Any]) -> bool:
        future = self.waiting.get((merge_id, n))
        if future is None or future.done():
            return False
        if "error" in body:
            future.set_exception(ResolveFailed(str(body["error"])))
        else:
            future.set_result((str(body["path"]), base64.b64decode(body["content"])))
        return True


def _owner(body: dict[str, Any]) -> tuple[int, int] | None:
    """The ``owner`` of a request: [uid, gid] of a component's own user (never root), or none."""
    owner = body.get("owner")
    if owner is None:
        return None
    if (not isinstance(owner, list) or len(owner) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in owner)):
        raise _BadRequest("owner must be [uid, gid], both positive")
    return owner[0], owner[1]


def _strs(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _BadRequest(f"{what} must be a list of strings")
    return value


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


def _guarded(token: str, handler: Handler) -> Handler:
    """``handler``, answering 401 without the token and 400/500 with the reason on errors."""
    expected = f"Bearer {token}".encode()

    async def guarded(request: Request) -> Response:
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, expected):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            return await handler(request)
        except (_BadRequest, ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": describe(exc)}, status_code=400)
        except (AreaFailure, OSError) as exc:
            return JSONResponse({"error": describe(exc)}, status_code=500)

    return guarded


def create_app(area: HostArea, token: str) -> Starlette:
    merges = _Merges()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "OK", "protocol": PROTOCOL})

    async def merge_route(request: Request) -> Response:
        body = await _body(request)
        rules = [merge.ResolverRule(str(r["name"]), tuple(_strs(r["globs"], "globs")))
                 for r in body.get("rules", [])]
        return StreamingResponse(
            _merge_events(area, merges, str(body["id"]), _strs(body["outputs"], "outputs"),
                          str(body["target"]), rules, int(body.get("limit", 1))),
            media_type="application/x-ndjson")

    async def answer(request: Request) -> Response:
        found = merges.answer(request.path_params["merge"], int(request.path_params["n"]),
                              await _body(request))
        return JSONResponse({"ok": found}, status_code=200 if found else 404)

    async def archive_route(request: Request) -> Response:
        body = await _body(request)
        try:
            chunks = await area.archive(str(body["tree"]), copy_links=bool(body.get("copy_links")),
                                        level=int(body.get("level", archive.DEFAULT_LEVEL)))
        except archive.ArchiveError as exc:
            return JSONResponse({"errors": exc.errors}, status_code=422)
        return StreamingResponse(chunks, media_type="application/gzip")

    async def names(request: Request) -> Response:
        return JSONResponse({"names": sorted(await area.names())})

    async def remove_new(request: Request) -> Response:
        before = set(_strs((await _body(request))["before"], "before"))
        return JSONResponse({"problems": await area.remove_new(before)})

    async def full(request: Request) -> Response:
        return JSONResponse({"full": await area.full()})

    routes: list[tuple[str, Handler, str]] = [
              ("/", health, "GET"), *_folder_routes(area), ("/merge", merge_route, "POST"),
              ("/merge/{merge}/answers/{n:int}", answer, "POST"),
              ("/archive", archive_route, "POST"), ("/names", names, "GET"),
              ("/remove-new", remove_new, "POST"), ("/full", full, "GET"),
              ("/unpack", functools.partial(_unpack, area), "POST")]
    return Starlette(routes=[Route(path, _guarded(token, fn), methods=[method])
                             for path, fn, method in routes])


def _folder_routes(area: HostArea) -> list[tuple[str, Handler, str]]:
    """``/dirs``, ``/hand-over``, ``/take-back``: the folders each component's user owns."""

    async def new_dir(request: Request) -> Response:
        body = await _body(request)
        return JSONResponse({"path": await area.new_dir(private=bool(body.get("private")),
                                                        owner=_owner(body))})

    async def hand_over(request: Request) -> Response:
        body = await _body(request)
        await area.hand_over(str(body["path"]), _owner(body))
        return JSONResponse({})

    async def take_back(request: Request) -> Response:
        await area.take_back(str((await _body(request))["path"]))
        return JSONResponse({})

    return [("/dirs", new_dir, "POST"), ("/hand-over", hand_over, "POST"),
            ("/take-back", take_back, "POST")]


async def _unpack(area: HostArea, request: Request) -> Response:
    try:
        path = await area.unpack(request.stream())
    except output.OutputError as exc:
        return JSONResponse({"errors": exc.errors}, status_code=422)
    return JSONResponse({"path": path})


async def _merge_events(area: HostArea, merges: _Merges, merge_id: str, outputs: list[str],
                        target: str, rules: list[merge.ResolverRule], limit: int
                        ) -> AsyncIterator[bytes]:
    """Run the merge; yield each conflict a resolver must decide, then how it ended."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    count = 0

    async def resolve(rule: merge.ResolverRule, conflict: merge.Conflict) -> tuple[str, bytes]:
        nonlocal count
        n = count = count + 1
        future: asyncio.Future[tuple[str, bytes]] = asyncio.get_running_loop().create_future()
        merges.waiting[(merge_id, n)] = future
        await events.put({"conflict": n, "rule": rule.name, "path": conflict.path, "versions": [
            {"layer": v.layer, "who": str(v.path), "executable": v.executable,
             "content": base64.b64encode(v.content).decode()} for v in conflict.versions]})
        try:
            return await future
        finally:
            merges.waiting.pop((merge_id, n), None)

    async def run() -> None:
        try:
            await area.merge(outputs, target, rules, resolve, limit=limit)
            await events.put({"done": True})
        except merge.MergeError as exc:
            await events.put({"errors": exc.errors})
        except (ValueError, OSError, AreaFailure) as exc:
            await events.put({"errors": [describe(exc)]})

    merging = aio.TaskGroup(f"merge {merge_id}")  # the merge lives as long as this stream
    merging.start_soon(run(), name=f"merge {merge_id}")
    try:
        while True:
            event = await events.get()
            yield (json.dumps(event) + "\n").encode()
            if "done" in event or "errors" in event:
                break
    finally:
        await merging.aclose()  # the client went away: stop the merge (waited for)


def _close_top(area: Path) -> None:
    """Make the area's top root's, mode 0711: components reach their own folders in it by
    name only (they can neither list it nor make anything in it)."""
    if os.geteuid() != 0:
        return
    os.chown(area, 0, 0)
    os.chmod(area, 0o711)


def copy_template(source: str, root: str, template: str) -> int:
    """Copy the folder ``source`` into ``template``: it must really lie below ``root`` here
    (links resolved in this container, where the host's other folders do not exist)."""
    real = os.path.realpath(source)
    shown = source.removeprefix(root) or "/"
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        print(f"{shown!r} leads outside the allowed development root", file=sys.stderr)
        return 2
    if not os.path.isdir(real):
        print(f"{shown!r} is not a folder (or does not exist)", file=sys.stderr)
        return 2
    try:
        output.copy_into(Path(real), Path(template), within=Path(root))
    except output.OutputError as exc:
        print(f"the template {shown!r} cannot be copied:\n{exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boride.area_server",
                                     description="Serve a session's work area (boride's "
                                                 "helper container).")
    parser.add_argument("--owner", default="65534:65534", help="UID:GID of the components")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--area", default=AREA)
    parser.add_argument("--template", default=TEMPLATE)
    parser.add_argument("--copy-from", metavar="DIR",
                        help="copy DIR into the template folder, then exit")
    parser.add_argument("--copy-root", metavar="DIR", default="/",
                        help="the folder DIR must lie below")
    args = parser.parse_args(argv)
    if args.copy_from:
        return copy_template(args.copy_from, args.copy_root, args.template)
    try:
        token = settings.get(TOKEN_ENV)
    except SettingError as exc:
        print(f"boride helper: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(f"boride helper: {TOKEN_ENV} is not set", file=sys.stderr)
        return 2
    uid, _, gid = args.owner.partition(":")
    try:
        owner = (int(uid), int(gid or uid))
        _close_top(Path(args.area))
    except (ValueError, OSError) as exc:
        print(f"boride helper: cannot take the area as {args.owner}: {describe(exc)}",
              file=sys.stderr)
        return 2
    import uvicorn

    area = HostArea(Path(args.area), Path(args.template), owner, guards_template=True,
                    own_users=os.geteuid() == 0)
    # keep-alive well beyond the coordinator's idle expiry (2 s): it closes first, never we
    uvicorn.run(create_app(area, token), host="0.0.0.0", port=args.port,
                log_level="warning", access_log=False, timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
