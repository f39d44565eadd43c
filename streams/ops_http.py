"""The ops listener of the processes without the api (`center`, `forwarder`, `bridge`,
`wrap`): GET /healthz, /readyz and /metrics on `VESTNIK_METRICS_PORT`.

A few lines of asyncio instead of a web framework, so the wrapper runs on a box with only
Redis and this package; one request per connection (`Connection: close`: Prometheus and
health probes open one per scrape). Hostile clients get a bounded head (HEAD_MAX) and a
read timeout (READ_TIMEOUT_S), then the connection is closed. Same JSON as the api's
/healthz and /readyz (`Health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from vestnik.streams.redis import RETRYABLE, timeout_of

log = logging.getLogger("vestnik.ops")

HEAD_MAX = 8 * 1024  # bytes of request line and headers; a longer head gets 431
READ_TIMEOUT_S = 5.0  # a client that has not sent its whole head by then is dropped

Check = Callable[[], Awaitable[str]]  # "ok", or what is not ready yet


class Health(msgspec.Struct):
    """The answer of /healthz and /readyz (the api's too)."""

    status: str
    checks: dict[str, str] = {}


def redis_check(redis: Redis) -> Check:
    """Redis answers PING within its command timeout (VESTNIK_REDIS_TIMEOUT)."""

    async def ping() -> str:
        try:  # the pool's own budget answers first (and counts the error); this is a backstop
            async with asyncio.timeout(2 * timeout_of(redis)):
                await redis.ping()
            return "ok"
        except (TimeoutError, *RETRYABLE) as e:  # no URL in these: no password either
            return f"unreachable ({type(e).__name__})"

    return ping


def group_check(redis: Redis, streams: Sequence[str], group: str) -> Check:
    """Consumer group `group` exists on each of `streams` (a deleted stream takes its
    groups along); "missing on <the streams without it>" otherwise."""

    async def check() -> str:
        missing = []
        for stream in streams:
            try:
                groups = await redis.xinfo_groups(stream)
            except ResponseError:  # no such stream
                missing.append(stream)
                continue
            except RETRYABLE as e:
                return f"unreachable ({type(e).__name__})"
            names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                     for g in groups}
            if group not in names:
                missing.append(stream)
        return f"missing on {', '.join(missing)}" if missing else "ok"

    return check


def flag_check(ready: Callable[[], bool], waiting: str = "starting") -> Check:
    """A readiness the process keeps in memory (a started worker, a subscription)."""

    async def check() -> str:
        return "ok" if ready() else waiting

    return check


async def readiness(checks: Mapping[str, Check]) -> tuple[int, Health]:
    """Run every check at once: 200 when all say "ok", else 503 naming what is not."""
    names = list(checks)
    results = await asyncio.gather(*(checks[n]() for n in names), return_exceptions=True)
    found = {n: r if isinstance(r, str) else f"failed ({type(r).__name__})"
             for n, r in zip(names, results, strict=True)}
    ok = all(v == "ok" for v in found.values())
    return (200 if ok else 503), Health("ok" if ok else "unavailable", found)


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
_JSON = b"application/json"
_encode = msgspec.json.Encoder().encode


def _response(status: int, body: bytes, content_type: bytes = _JSON) -> bytes:
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, _REASONS[status], content_type, len(body))
            + body)


async def answer(head: bytes, checks: Mapping[str, Check]) -> bytes:
    """The whole HTTP response to a request whose head (up to the blank line) is `head`."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400, _encode({"detail": "not an HTTP/1.x request line"}))
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target not in (b"/healthz", b"/readyz", b"/metrics"):
        return _response(404, _encode({"detail": "only /healthz, /readyz and /metrics"}))
    if method != b"GET":
        return _response(405, _encode({"detail": "only GET"}))
    if target == b"/healthz":
        return _response(200, _encode(Health("ok")))
    if target == b"/readyz":
        status, health = await readiness(checks)
        return _response(status, _encode(health))
    return _response(200, generate_latest(), CONTENT_TYPE_LATEST.encode())


async def serve_ops(host: str, port: int, checks: Mapping[str, Check]) -> asyncio.Server:
    """Start the listener (OSError when the port is taken); close the server to stop it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(_response(431, _encode({"detail": "request head too long"})))
            else:
                writer.write(await answer(head, checks))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # a client that went away or never finished its request
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, limit=HEAD_MAX)
    log.info("ops listener on http://%s:%d (/healthz /readyz /metrics)", host, port)
    return server


@contextlib.asynccontextmanager
async def ops_listener(host: str, port: int | None,
                       checks: Mapping[str, Check]) -> AsyncIterator[None]:
    """The listener for the duration of the block; nothing when `port` is None."""
    if port is None:
        yield
        return
    server = await serve_ops(host, port, checks)
    try:
        yield
    finally:
        server.close()
