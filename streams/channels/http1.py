"""A lean HTTP/1.1 client for webhooks: POST a small body on a kept-alive connection, read
the status, headers and body (Content-Length, chunked, or up to close), nothing else.

Why not httpx for webhooks: a profile of B5 put ~50 % of the forwarder's samples in httpx
and httpcore (anyio stream wrappers, the pool's per-request scan of every connection,
h11 events) — about 0.8 ms of CPU per request. This client writes each request with one
`transport.write` and parses the answer in `data_received`, ~0.1 ms per request.

Per (scheme, host, port): at most `per_host` connections, idle ones reused LIFO. A reused
connection the server has closed meanwhile (nothing of the answer received) is replaced
once within the same request, as `SmtpPool` does. No redirects, no proxies, no cookies,
no compression: `WebhookChannel` falls back to httpx when a proxy is configured.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

__all__ = ["HttpError", "HttpPool", "HttpResponse"]

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024  # a webhook answer is read for its status; keep at most this much


class HttpError(OSError):
    """The request did not get a complete answer (refused, reset, closed, malformed)."""


class HttpResponse:
    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code, self.headers, self.content = status_code, headers, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Conn(asyncio.Protocol):
    """One connection; one request at a time. `answer` resolves with the response."""

    __slots__ = ("_body", "_buf", "_chunk_left", "_chunked", "_headers", "_left", "_status",
                 "answer", "closed", "got_bytes", "keep_alive", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answer: asyncio.Future[HttpResponse] | None = None
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._left: int | None = None  # Content-Length still to read; None: to close
        self._chunked = False
        self._chunk_left = -1
        self.got_bytes = False
        self.keep_alive = True

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        fut = self.answer
        if fut is not None and not fut.done():
            if self._status and not self._chunked and self._left is None:
                self._finish()  # body delimited by the close (HTTP/1.0 style)
            else:
                fut.set_exception(HttpError(f"connection closed ({exc or 'EOF'})"))

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost settles the answer

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():
            self.closed = True  # bytes nobody asked for: never reuse this connection
            if self.transport is not None:
                self.transport.close()
            return
        self.got_bytes = True
        try:
            self._feed(data)
        except (ValueError, IndexError) as e:
            self.keep_alive = False
            self.answer.set_exception(HttpError(f"malformed answer: {e}"))
            if self.transport is not None:
                self.transport.close()

    # -- parsing
    def _feed(self, data: bytes) -> None:
        if not self._status:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise ValueError("header section too long")
                return
            head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
            rest = bytes(self._buf[end + 4:])
            self._buf = bytearray()
            version, _, tail = head[0].partition(" ")
            code = int(tail[:3])
            if code < 200:  # 100 Continue and other interim answers: skip
                if rest:
                    self._feed(rest)
                return
            self._status = code
            for line in head[1:]:
                name, _, value = line.partition(":")
                self._headers[name.strip().lower()] = value.strip()
            conn = self._headers.get("connection", "").lower()
            self.keep_alive = ("close" not in conn) if version == "HTTP/1.1" \
                else ("keep-alive" in conn)
            te = self._headers.get("transfer-encoding", "").lower()
            if code in (204, 304):
                self._left = 0
            elif "chunked" in te:
                self._chunked = True
            elif "content-length" in self._headers:
                self._left = int(self._headers["content-length"])
            else:
                self._left = None
                self.keep_alive = False
            data = rest
            if self._left == 0:
                self._finish()
                return
        if self._chunked:
            self._feed_chunked(data)
        elif self._left is None:
            self._keep(data)
        else:
            take = data[:self._left]
            self._keep(take)
            self._left -= len(take)
            if self._left == 0:
                self._finish()

    def _feed_chunked(self, data: bytes) -> None:
        self._buf += data
        while True:
            if self._chunk_left < 0:  # at a size line
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD:
                        raise ValueError("chunk size line too long")
                    return
                size = int(bytes(self._buf[:end]).split(b";", 1)[0].strip(), 16)
                del self._buf[:end + 2]
                if size == 0:  # trailers until an empty line
                    end = self._buf.find(b"\r\n\r\n") if self._buf[:2] != b"\r\n" else 0
                    if end < 0:
                        self._chunk_left = -2
                        return
                    self._finish()
                    return
                self._chunk_left = size
            elif self._chunk_left == -2:
                if self._buf[:2] == b"\r\n" or b"\r\n\r\n" in self._buf:
                    self._finish()
                return
            else:
                if len(self._buf) < self._chunk_left + 2:
                    return
                self._keep(bytes(self._buf[:self._chunk_left]))
                del self._buf[:self._chunk_left + 2]
                self._chunk_left = -1

    def _keep(self, data: bytes) -> None:
        if len(self._body) < MAX_BODY:
            self._body += data[:MAX_BODY - len(self._body)]

    def _finish(self) -> None:
        fut = self.answer
        if fut is not None and not fut.done():
            fut.set_result(HttpResponse(self._status, self._headers, bytes(self._body)))

    # -- use
    async def request(self, data: bytes) -> HttpResponse:
        assert self.transport is not None
        self._reset()
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            return await self.answer
        finally:
            self.answer = None

    def usable(self) -> bool:
        return not self.closed and self.keep_alive and self.transport is not None \
            and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Host:
    def __init__(self, per_host: int) -> None:
        self.idle: deque[_Conn] = deque()
        self.slots = asyncio.Semaphore(per_host)


class HttpPool:
    """Keep-alive connections per host; `post(url, body, headers)` → HttpResponse."""

    def __init__(self, *, per_host: int = 16, connect_timeout: float = 5.0,
                 headers: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.per_host = per_host
        self.connect_timeout = connect_timeout
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._ssl = ssl_context
        self._hosts: dict[tuple[str, str, int], _Host] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> HttpResponse:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise HttpError(f"not an http(s) url: {url!r}")
        port = u.port or (443 if u.scheme == "https" else 80)
        key = (u.scheme, u.hostname, port)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(self.per_host)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        authority = u.netloc.rpartition("@")[2]
        head = [f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n{self.extra}"
                f"Content-Length: {len(body)}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        head.append("\r\n")
        data = "".join(head).encode("latin-1") + body
        async with host.slots:
            conn = None
            while host.idle:
                c = host.idle.pop()
                if c.usable():
                    conn = c
                    break
                c.close()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(u.scheme, u.hostname, port)
            try:
                try:
                    resp = await conn.request(data)
                except HttpError:
                    if not reused or conn.got_bytes:
                        raise
                    # the server closed an idle connection before reading this request
                    conn.close()
                    conn = await self._connect(u.scheme, u.hostname, port)
                    resp = await conn.request(data)
            except BaseException:
                conn.close()
                raise
            if conn.usable():
                host.idle.append(conn)
            else:
                conn.close()
            return resp

    async def _connect(self, scheme: str, hostname: str, port: int) -> _Conn:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(
                _Conn, hostname, port,
                ssl=self._ssl_context() if scheme == "https" else None,
                server_hostname=hostname if scheme == "https" else None)
        return conn

    async def aclose(self) -> None:
        for host in self._hosts.values():
            while host.idle:
                host.idle.pop().close()
        self._hosts.clear()

    def __repr__(self) -> str:  # no URLs (a webhook URL can be a secret)
        return f"HttpPool({len(self._hosts)} hosts)"
