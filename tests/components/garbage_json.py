"""garbage_json: healthy, but every call (``/api/process``, ``/api/plug``,
``/api/resolve``) answers 200 with a body that is not JSON.

Plain aiohttp. Port: argv[1], default 5551.
"""

import sys

from aiohttp import web

GARBAGE = "<html>oops</html>"


async def health(request: web.Request) -> web.Response:
    return web.json_response({"Message": "OK", "Status": "OK"})


async def garbage(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text=GARBAGE, content_type="text/html")


if __name__ == "__main__":
    app = web.Application()
    app.add_routes(
        [web.get("/", health)]
        + [web.post(p, garbage) for p in ("/api/process", "/api/plug", "/api/resolve")]
    )
    web.run_app(app, host="0.0.0.0", port=int(sys.argv[1]) if len(sys.argv) > 1 else 5551)
