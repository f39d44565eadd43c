"""The ceiling of B2: a bare XADD → XREAD → SSE hop with no Vestnik logic in between.

`python -m vestnik.app.bench.bare_hop REDIS_URL PORT STREAM`: one XREAD loop writes each entry's
`d` field as an SSE frame to every connected client.
"""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
        b"Connection: keep-alive\r\n\r\n")


async def main(url: str, port: int, stream: str) -> None:
    clients: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        clients.add(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    redis = Redis.from_url(url)
    last = "$"
    async with server:
        for _ in range(10**9):
            resp = await redis.xread({stream: last}, count=1000, block=1000)
            for _key, entries in resp or ():
                frames = b"".join(b"data: " + f[b"d"] + b"\n\n" for _, f in entries)
                last = entries[-1][0]
                for w in list(clients):
                    if w.is_closing():  # a client of an earlier round went away
                        clients.discard(w)
                    else:
                        w.write(frames)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
