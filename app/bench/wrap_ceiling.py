"""Ceilings of B4: the alert's two pipes with nothing of the wrapper in between.

`out URL FILE`: read the lines of FILE and XADD each raw line to `vn:notices` in pipelines
of 1,000 (no parsing, no validation, no enrichment).
`in URL COUNTER`: XREAD the `vm` topic from the start and write each entry's data as a line
to the stdin of the COUNTER alert (no decoding, no coalescing queue).
"""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis


async def out(url: str, path: str) -> None:
    redis = Redis.from_url(url)
    with open(path, "rb") as f:  # noqa: ASYNC230 - the ceiling reads like `cat` would
        batch: list[bytes] = []
        for line in f:
            batch.append(line)
            if len(batch) == 1000:
                await _flush(redis, batch)
        await _flush(redis, batch)


async def _flush(redis: Redis, batch: list[bytes]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for line in batch:
            pipe.xadd("vn:notices", {"raw": line})
        await pipe.execute()
    batch.clear()


async def into(url: str, counter: str) -> None:
    redis = Redis.from_url(url)
    proc = await asyncio.create_subprocess_exec(sys.executable, counter,
                                                stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(b'{"type":"ready"}\n')
    last = "0"
    for _ in range(10**6):
        resp = await redis.xread({"vn:topic:vm": last}, count=1000, block=200)
        if not resp:
            break
        entries = resp[0][1]
        proc.stdin.write(b"".join(b'{"type":"entity","topic":"vm","op":"update","id":"'
                                  + f[b"id"] + b'","data":' + f[b"data"] + b"}\n"
                                  for _, f in entries))
        await proc.stdin.drain()
        last = entries[-1][0]
    proc.stdin.close()
    out, _ = await proc.communicate()
    sys.stdout.write(out.decode().strip().splitlines()[-1] + "\n")  # the counter's "done" line


if __name__ == "__main__":
    mode, url, arg = sys.argv[1:4]
    asyncio.run(out(url, arg) if mode == "out" else into(url, arg))
