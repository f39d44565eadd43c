"""The soak's SSE clients: a user's `/me/stream`, followed until told to stop, resuming with
Last-Event-ID after every end of the stream (the api is killed now and then), and the record
of what each one received, in order, for the ledger.

A client resumes from the last notice event it got, or, before any, from the feed seq its
first `count` event named: as a browser that kept the stream's position would, so an event
stored between two connections is owed to it and the ledger may call its absence a gap.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from vestnik.app.bench.sse_client import SSEProtocol

CONNECT_TIMEOUT_S = 5.0
PAUSE_S = (0.2, 2.0)  # reconnect backoff, first and largest
MAX_CONNECTS = 100_000  # per client: bounds the reconnect loop in count too
PATH = "/api/v1/me/stream"

_decode = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(slots=True)
class SSERecord:
    """What one SSE client received: (feed seq, notice id) of every `notice` event, in order."""

    uid: str
    events: list[tuple[int, str]] = field(default_factory=list)
    start: int | None = None  # the feed's last seq when it first connected (its `count`)
    connects: int = 0
    resets: int = 0  # `reset` events: the server's feed was behind our Last-Event-ID

    @property
    def last(self) -> int | None:
        """Where a reconnect resumes: the last notice's seq, else the first count's."""
        return self.events[-1][0] if self.events else self.start

    def on_event(self, event: str, data: bytes) -> dict[str, Any] | None:
        """Record one event; the feed item of a `notice` (for the caller), else None."""
        if event == "notice":
            item = _decode(data)
            self.events.append((int(item["seq"]), str(item["id"])))
            return item
        if event == "count" and self.start is None:
            self.start = int(_decode(data)["seq"])
        elif event == "reset":
            self.resets += 1
        return None


class _Stream(SSEProtocol):
    """The bench's lean SSE protocol, with a future that completes when the connection ends."""

    __slots__ = ("lost",)

    def __init__(self, request: bytes, on_event: Callable[[str, bytes], None]) -> None:
        super().__init__(request, on_event)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)


async def follow(api_url: str, token: Callable[[], str], rec: SSERecord, closing: asyncio.Event,
                 rng: random.Random, on_notice: Callable[[dict[str, Any]], None]) -> None:
    """Follow `rec.uid`'s stream until `closing` is set (or the task is cancelled): connect,
    record, and after any end connect again (backoff PAUSE_S while the api is down)."""
    url = urlsplit(api_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    pause = PAUSE_S[0]

    def on_event(event: str, data: bytes) -> None:
        item = rec.on_event(event, data)
        if item is not None:
            on_notice(item)

    for _ in range(MAX_CONNECTS):
        if closing.is_set():
            return
        head = (f"GET {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Accept: text/event-stream\r\nAuthorization: Bearer {token()}\r\n")
        if rec.last is not None:
            head += f"Last-Event-ID: {rec.last}\r\n"
        proto = _Stream((head + "\r\n").encode(), on_event)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.get_running_loop().create_connection(lambda p=proto: p, host, port)
                status = await proto.connected
            if status != 200:
                raise ConnectionError(f"{PATH}: HTTP {status}")
        except (OSError, TimeoutError):
            proto.close()
            await asyncio.sleep(pause)
            pause = min(pause * 2, PAUSE_S[1])
            continue
        rec.connects += 1
        pause = PAUSE_S[0]
        try:
            await proto.lost
        finally:
            proto.close()
        await asyncio.sleep(rng.uniform(0, pause))
