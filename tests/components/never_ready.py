"""never_ready: listens, but ``GET /`` (and every other route) answers 503 forever.

Plain aiohttp. Port: argv[1], default 5551.
"""

import sys

from aiohttp import web


async def unavailable(request: web.Request) -> web.Response:
    return web.json_response({"Message": "starting", "Status": "UNAVAILABLE"}, status=503)


if __name__ == "__main__":
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", unavailable)
    web.run_app(app, host="0.0.0.0", port=int(sys.argv[1]) if len(sys.argv) > 1 else 5551)
