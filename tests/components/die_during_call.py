"""die_during_call: healthy, but any call (``/api/process``, ``/api/plug``,
``/api/resolve``) kills the process at once with ``os._exit(9)``: the client sees
the connection drop without a response.

Plain aiohttp. Port: argv[1], default 5551.
"""

import os
import sys

from aiohttp import web


async def health(request: web.Request) -> web.Response:
    return web.json_response({"Message": "OK", "Status": "OK"})


async def die(request: web.Request) -> web.Response:
    print("die_during_call: exiting with 9", file=sys.stderr, flush=True)
    os._exit(9)


if __name__ == "__main__":
    app = web.Application()
    app.add_routes(
        [web.get("/", health)]
        + [web.post(p, die) for p in ("/api/process", "/api/plug", "/api/resolve")]
    )
    web.run_app(app, host="0.0.0.0", port=int(sys.argv[1]) if len(sys.argv) > 1 else 5551)
