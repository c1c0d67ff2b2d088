"""The baseline for the code benchmark: a bare aiohttp handler that parses the same JSON and answers the same
shape, with no auth, no database and no logic. `python -m bench.bare_server PORT`."""
from __future__ import annotations

import sys

from aiohttp import web


async def verify(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"result": "verified" if len(body.get("code", "")) == 6 else "wrong",
                              "attempts_left": 4})


def main() -> None:
    app = web.Application()
    app.router.add_post(r"/api/v1/visits/{visit_id:\d+}/code", verify)
    app.router.add_get("/healthz", lambda _: web.json_response({"status": "ok"}))
    app.router.add_get("/readyz", lambda _: web.json_response({"status": "ready"}))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
