"""B7's reference row: how many requests an API on Vestnik's HTTP stack answers, doing nothing.

`python -m app.bench.bare_http PORT` serves, on the server the api runs (app.server:
uvicorn with httptools on uvloop), a Starlette app whose one route reads the body and
answers 202 with a small JSON body: no auth, no validation, no Redis. B7 drives it with
the same closed-loop client as the api. With one client, that rate bounds what Vestnik's
`POST /api/v1/notices` can reach on the box, whatever happens behind it, and so shows
how far B7's one-client target (the peer's whole pipeline, in Go) is within reach.
"""

from __future__ import annotations

import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.server import make_server, run
from streams.config import Settings

ANSWER = b'{"id":"01JBARE0000000000000000000"}'


async def accept(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, status_code=202, media_type="application/json")


def main(argv: list[str]) -> None:
    app = Starlette(routes=[Route("/api/v1/notices", accept, methods=["POST"])])
    settings = Settings(host="127.0.0.1", port=int(argv[0]), log_level="warning")
    run(make_server(app, settings).serve())


if __name__ == "__main__":
    main(sys.argv[1:])
