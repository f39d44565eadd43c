"""The ceiling of B1: the least a consumer-group worker can do per notice.

`python -m app.bench.ceiling_loop REDIS_URL STREAM GROUP`: XREADGROUP of 500 → one XADD and
one HSET per message and one XACK, all in one pipeline (hiredis), until the stream is drained.
"""

from __future__ import annotations

import sys

from redis.asyncio import Redis


async def main(url: str, stream: str, group: str) -> None:
    redis = Redis.from_url(url)
    await redis.xgroup_create(stream, group, id="0")
    for _ in range(10**7):
        resp = await redis.xreadgroup(group, "c1", {stream: ">"}, count=500)
        if not resp:
            return
        entries = resp[0][1]
        async with redis.pipeline(transaction=False) as pipe:
            for sid, fields in entries:
                pipe.xadd(b"ceiling:out", {b"n": sid}, maxlen=1000, approximate=True)
                pipe.hset(b"ceiling:h", sid, fields.get(b"title", b""))
            pipe.xack(stream, group, *(sid for sid, _ in entries))
            await pipe.execute()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
