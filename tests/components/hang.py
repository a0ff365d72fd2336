"""hang: healthy (``GET /`` → 200), but every call (``/api/process``, ``/api/plug``,
``/api/resolve``) waits forever and never answers.

Plain aiohttp. Port: argv[1], default 5551 (processor); pass 5552/5553 to stand in
for a plugin/resolver.
"""

import asyncio
import sys

from aiohttp import web


async def health(request: web.Request) -> web.Response:
    return web.json_response({"Message": "OK", "Status": "OK"})


async def forever(request: web.Request) -> web.Response:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


if __name__ == "__main__":
    app = web.Application()
    app.add_routes(
        [web.get("/", health)]
        + [web.post(p, forever) for p in ("/api/process", "/api/plug", "/api/resolve")]
    )
    web.run_app(app, host="0.0.0.0", port=int(sys.argv[1]) if len(sys.argv) > 1 else 5551)
