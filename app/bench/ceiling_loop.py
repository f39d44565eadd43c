"""The ceiling of B1: the least a consumer-group worker can do per notice.

`python -m vestnik.app.bench.ceiling_loop REDIS_URL STREAM GROUP [--packed]`: XREADGROUP of 500 →
one XADD and one HSET per message and one XACK, all in one pipeline (hiredis), until the
stream is drained. As issue 6 defines it, the client is redis-py's own; `--packed` uses
Vestnik's (`streams.redis.connect`: commands packed by hiredis too), for reference.
"""

from __future__ import annotations

import sys

from redis.asyncio import Redis

from vestnik.streams.redis import connect

PREFIX = "ceiling:"  # every key the loop writes (app.bench.env.fresh_aof drops them)


async def main(url: str, stream: str, group: str, packed: bool = False) -> None:
    redis = connect(url) if packed else Redis.from_url(url)
    await redis.xgroup_create(stream, group, id="0")
    table = f"{PREFIX}h:{group}".encode()  # a hash of its own: inserts, not overwrites
    out = f"{PREFIX}out".encode()
    for _ in range(10**7):
        resp = await redis.xreadgroup(group, "c1", {stream: ">"}, count=500)
        if not resp:
            return
        entries = resp[0][1]
        async with redis.pipeline(transaction=False) as pipe:
            for sid, fields in entries:
                pipe.xadd(out, {b"n": sid}, maxlen=1000, approximate=True)
                pipe.hset(table, sid, fields.get(b"title", b""))
            pipe.xack(stream, group, *(sid for sid, _ in entries))
            await pipe.execute()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1], sys.argv[2], sys.argv[3], "--packed" in sys.argv[4:]))
