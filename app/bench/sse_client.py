"""A lean SSE client (an asyncio Protocol, no per-connection task) so that 10,000 of them cost
the bench process little and it is the server that gets measured.

It reads the raw HTTP/1.1 byte stream line by line: chunk-size lines never look like SSE
fields (each chunk holds whole frames, as every server send is whole frames), so the
chunked framing can be skipped without decoding it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

OnEvent = Callable[[str, bytes], None]


class SSEProtocol(asyncio.Protocol):
    __slots__ = ("_buf", "_data", "_event", "connected", "on_event", "request", "status",
                 "transport")

    def __init__(self, request: bytes, on_event: OnEvent) -> None:
        self.request = request
        self.on_event = on_event
        self._buf = b""
        self._event = "message"
        self._data: bytes | None = None
        self.status = 0
        self.connected: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data
        if not self.status:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                self._buf = buf
                return
            self.status = int(head.split(b" ", 2)[1])
            if not self.connected.done():
                self.connected.set_result(self.status)
            buf = rest
        *lines, self._buf = buf.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line:
                if self._data is not None:
                    self.on_event(self._event, self._data)
                self._event, self._data = "message", None
            elif line.startswith(b"data:"):
                self._data = line[6:] if line[5:6] == b" " else line[5:]
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed before headers"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_sse(host: str, port: int, path: str, on_event: OnEvent, *,
                   headers: dict[str, str] | None = None, timeout: float = 30) -> SSEProtocol:
    head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    loop = asyncio.get_running_loop()
    proto = SSEProtocol((head + "\r\n").encode(), on_event)
    await asyncio.wait_for(loop.create_connection(lambda: proto, host, port), timeout)
    status = await asyncio.wait_for(proto.connected, timeout)
    if status != 200:
        proto.close()
        raise ConnectionError(f"{path}: HTTP {status}")
    return proto
