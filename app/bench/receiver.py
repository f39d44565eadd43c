"""The local receivers of B5 and B7, in a process of their own, and the bench's handle on one.

`python -m vestnik.app.bench.receiver http|smtp PORT STATS_PORT` serves a webhook receiver (a lean
HTTP/1.1 keep-alive protocol answering 200 at once) or an SMTP sink (aiosmtpd), so the
bench's event loop never competes with what it measures. Each request body carries
`"t":<ns>` (the send time); the receiver keeps arrival times and latencies and serves them as
JSON on `GET /stats` (`POST /reset` clears them).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import msgspec

from vestnik.app.bench.env import BenchProc, until_up
from vestnik.streams.channels import HttpPool
from vestnik.streams.redis_server import free_port


class Stats(msgspec.Struct):
    n: int
    first: float  # arrival times, seconds (time.time)
    last: float
    lat_ms: list[float]


_STAMP = re.compile(rb'"t":"?(\d{16,20})')


class _Record:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n, self.first, self.last = 0, 0.0, 0.0
        self.lat: list[float] = []

    def hit(self, body: bytes) -> None:
        now_ns = time.time_ns()
        self.last = now_ns / 1e9
        if not self.n:
            self.first = self.last
        self.n += 1
        for m in _STAMP.finditer(body):  # an Alertmanager POST can carry several alerts
            self.lat.append((now_ns - int(m.group(1))) / 1e6)

    def stats(self) -> bytes:
        return msgspec.json.encode(Stats(self.n, self.first, self.last, self.lat))


class _HttpReceiver(asyncio.Protocol):
    """HTTP/1.1 keep-alive; every request with a body is a hit, answered 200 at once."""

    def __init__(self, rec: _Record) -> None:
        self.rec, self.buf, self.transport = rec, b"", None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            size = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + size:
                return
            body = self.buf[end + 4:end + 4 + size]
            self.buf = self.buf[end + 4 + size:]
            out = b""
            if head.startswith(b"get /stats"):
                out = self.rec.stats()
            elif head.startswith(b"post /reset"):
                self.rec.reset()
            else:
                self.rec.hit(body)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(out), out))


async def _serve(kind: str, port: int, stats_port: int) -> None:
    rec = _Record()
    loop = asyncio.get_running_loop()
    if kind == "smtp":
        from aiosmtpd.controller import Controller

        class Handler:
            async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
                rec.hit(envelope.original_content or b"")
                return "250 OK"

        controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        controller.start()
        # the SMTP sink runs in the controller's thread; stats here, read racily (counts)
        server = await loop.create_server(lambda: _HttpReceiver(rec), "127.0.0.1", stats_port)
    else:
        server = await loop.create_server(lambda: _HttpReceiver(rec), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class Receiver:
    """The bench's handle on one receiver process: its ports, reset, stats, stop."""

    def __init__(self, world_dir: Path, env: dict[str, str], kind: str) -> None:
        self.port = free_port()
        self.stats_port = free_port() if kind == "smtp" else self.port
        self.proc = BenchProc([sys.executable, "-m", "vestnik.app.bench.receiver", kind,
                               str(self.port), str(self.stats_port)], env,
                              world_dir / f"receiver-{kind}.log")
        self.pool = HttpPool(per_host=2)

    async def ready(self) -> None:
        await until_up(self.reset, "receiver", proc=self.proc)

    async def reset(self) -> None:
        await self.pool.post(f"http://127.0.0.1:{self.stats_port}/reset", b"", {})

    async def stats(self) -> Stats:
        req = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", self.stats_port)
        try:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            size = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            return msgspec.json.decode(await reader.readexactly(size), type=Stats)
        finally:
            writer.close()

    async def wait(self, n: int, seconds: float) -> Stats:
        deadline = time.monotonic() + seconds
        while True:
            st = await self.stats()
            if st.n >= n or time.monotonic() > deadline:
                return st
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.pool.aclose()
        self.proc.stop()


def rate(st: Stats) -> float:
    return (st.n - 1) / (st.last - st.first) if st.n > 1 and st.last > st.first else 0.0


def main(argv: list[str]) -> None:
    kind, port, stats_port = argv[0], int(argv[1]), int(argv[2])
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(kind, port, stats_port))
        return
    uvloop.run(_serve(kind, port, stats_port))


if __name__ == "__main__":
    main(sys.argv[1:])
