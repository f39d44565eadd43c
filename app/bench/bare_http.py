"""B7's reference rows: what an API on Vestnik's HTTP stack reaches with the least work.

`python -m vestnik.app.bench.bare_http PORT` serves, on the server the api runs (app.server:
uvicorn with httptools on uvloop), a Starlette app whose one route reads the body and
answers 202 with a small JSON body: no auth, no validation, no Redis.

`python -m vestnik.app.bench.bare_http PORT REDIS_URL` is the least a service does that keeps
what it accepted: the route decodes the notice, stores it with one script call (its body,
a feed entry of its recipient, a job record and a queue entry) and answers 202 once Redis
has it; then, in the same process, POSTs it to its webhook and records that with one more
call. No auth, no stream, no second process.

B7 drives both with the same closed-loop client as the api. With one client, the first
bounds what Vestnik's `POST /api/v1/notices` can reach on the box, whatever happens behind
it; the second, what any design reaches that answers only after Redis holds the notice
(as Vestnik's must: nothing accepted may be lost), whatever its internals.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vestnik.app.server import make_server, run
from vestnik.streams import lua
from vestnik.streams.channels import HttpPool
from vestnik.streams.config import Config
from vestnik.streams.redis import connect
from vestnik.streams.schemas import NoticeIn, decoder

ANSWER = b'{"id":"01JBARE0000000000000000000"}'

SENT = b'{"status":"sent"}'


async def accept(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, status_code=202, media_type="application/json")


def stored_app(redis_url: str) -> Starlette:
    redis = connect(redis_url, name="bench-floor")
    store = lua.script("floor_store.lua", package="vestnik.app.bench")
    finish = lua.script("floor_finish.lua", package="vestnik.app.bench")
    hooks = HttpPool(per_host=32)
    decode = decoder(NoticeIn).decode
    running: set[asyncio.Task[None]] = set()
    seq = 0

    async def deliver(nid: str, url: str, body: bytes) -> None:
        await hooks.post(url, body, {"content-type": "application/json"})
        await finish(keys=[f"floor:deliveries:{nid}", f"floor:job:{nid}", "floor:queue"],
                     args=[SENT, nid], client=redis)

    async def accept_stored(request: Request) -> Response:
        nonlocal seq
        notice = decode(await request.body())
        seq += 1
        nid = str(seq)
        uid = notice.recipients[0]
        body = msgspec.json.encode(notice)
        await store(keys=[f"floor:notice:{nid}", f"floor:feed:{uid}", f"floor:seq:{uid}",
                          f"floor:job:{nid}", "floor:queue"], args=[body, nid], client=redis)
        task = asyncio.get_running_loop().create_task(
            deliver(nid, notice.channels.targets["webhook"].url or "", body))
        running.add(task)
        task.add_done_callback(running.discard)
        return Response(ANSWER, status_code=202, media_type="application/json")

    return Starlette(routes=[Route("/api/v1/notices", accept_stored, methods=["POST"])])


def main(argv: list[str]) -> None:
    app = stored_app(argv[1]) if len(argv) > 1 else \
        Starlette(routes=[Route("/api/v1/notices", accept, methods=["POST"])])
    config = Config(host="127.0.0.1", port=int(argv[0]), log_level="warning")
    run(make_server(app, config).serve())


if __name__ == "__main__":
    main(sys.argv[1:])
