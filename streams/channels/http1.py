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

A request is refused (BadRequest naming the part) when httpx/h11 would refuse it: a scheme
other than http(s), a bad port, a host that is not a DNS name or an IP literal, a header
name that is not an RFC 7230 token, a header value with CR, LF, NUL or another control
character. The path and query are percent-encoded (a raw space or non-ASCII character never
reaches the request line); the fragment is never sent; `user:pw@` becomes Basic auth, as
httpx does. `resolve(host, port)` (the egress policy) names the address to connect to.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import quote, unquote, urlsplit

__all__ = ["BadRequest", "HttpError", "HttpPool", "HttpResponse", "build_request"]

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024  # a webhook answer is read for its status; keep at most this much
# RFC 7230 3.2.6 token; a field value: visible ASCII / obs-text, SP and HTAB inside
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_URL_BAD = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)\Z")
# what stays as it is in a path or query (RFC 3986 pchar, `/`, `?` and `%` escapes)
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"
Resolver = Callable[[str, int], Awaitable[str]]
MAX_IDLE = 256  # idle keep-alive connections kept over all hosts


class HttpError(OSError):
    """The request did not get a complete answer (refused, reset, closed, malformed)."""


class BadRequest(ValueError):
    """The request cannot be sent as it is (a bad URL or header): retrying cannot help."""


# a block of header lines that needs no closer look: token names, printable ASCII values
# with no surrounding space (one regex pass and a count of lines, B5's fast path; anything
# else is checked header by header below, where latin-1 values are allowed and a refusal
# names its header)
_PLAIN_LINES = re.compile(
    r"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+: (?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?\r\n)*")


def _header_lines(headers: dict[str, str]) -> str:
    """`name: value\\r\\n` lines; BadRequest for a name or value h11 would refuse."""
    block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # as many lines as headers: a CR LF inside a name or value would make two plain ones
    if block.count("\r\n") == len(headers) and _PLAIN_LINES.fullmatch(block):
        return block
    out = []
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise BadRequest(f"header name {name!r} is not an RFC 7230 token")
        value = str(value)
        latin1 = value.isascii() or max(value) <= "\xff"
        if _BAD_VALUE.search(value) or value != value.strip(" \t") or not latin1:
            raise BadRequest(f"header {name}: value {value!r} has a control character "
                             "(CR, LF, NUL), surrounding whitespace or is not latin-1")
        out.append(f"{name}: {value}\r\n")
    return "".join(out)


def _basic_auth(username: str, password: str | None) -> str:
    raw = f"{unquote(username)}:{unquote(password or '')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


Target = tuple[tuple[str, str, int], str]
_targets: dict[str, Target] = {}


def _target(url: str) -> Target:
    """`(scheme, host, port)` and the request line + Host (+ Basic auth) of `url`, checked;
    cached per URL (a webhook URL repeats: B5 posts ~8,000 a second)."""
    hit = _targets.get(url)
    if hit is not None:
        return hit
    if _URL_BAD.search(url):  # urlsplit would silently drop a tab, CR or LF
        raise BadRequest(f"url {url!r} has a control character")
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:  # a port out of range or not a number, a bad IPv6 literal
        raise BadRequest(f"bad url {url!r}: {e}") from None
    if u.scheme not in ("http", "https"):
        raise BadRequest(f"not an http(s) url: {url!r}")
    authority = u.netloc.rpartition("@")[2]
    host = authority if authority.endswith("]") else authority.rsplit(":", 1)[0]
    if not u.hostname or not _HOST.match(host):
        raise BadRequest(f"bad host in url {url!r} (a DNS name or an IP literal)")
    if port == 0:
        raise BadRequest(f"bad port 0 in url {url!r}")
    port = port or (443 if u.scheme == "https" else 80)
    path = quote(u.path or "/", safe=_PATH_SAFE) + (
        "?" + quote(u.query, safe=_QUERY_SAFE) if u.query else "")
    auth = _header_lines({"Authorization": _basic_auth(u.username, u.password)}) \
        if u.username is not None else ""
    if len(_targets) >= 1024:
        _targets.clear()
    hit = _targets[url] = ((u.scheme, u.hostname, port),
                           f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}")
    return hit


def build_request(url: str, body: bytes, headers: dict[str, str], extra: str = ""
                  ) -> tuple[tuple[str, str, int], bytes]:
    """`(scheme, host, port)` and the bytes of `POST url`; BadRequest (naming the part)
    when the URL or a header is one httpx would refuse."""
    key, line = _target(url)
    head = f"{line}{extra}Content-Length: {len(body)}\r\n{_header_lines(headers)}\r\n"
    return key, head.encode("latin-1") + body


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
        self.busy = 0  # requests using or waiting for a slot


class HttpPool:
    """Keep-alive connections per host; `post(url, body, headers)` → HttpResponse."""

    def __init__(self, *, per_host: int = 16, connect_timeout: float = 5.0,
                 headers: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 resolve: Resolver | None = None, max_idle: int = MAX_IDLE) -> None:
        self.per_host = per_host
        self.max_idle = max_idle
        self._idle = 0  # idle connections of every host
        self.connect_timeout = connect_timeout
        self.extra = _header_lines(headers or {})
        self._ssl = ssl_context
        self._resolve = resolve
        self._hosts: dict[tuple[str, str, int], _Host] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> HttpResponse:
        key, data = build_request(url, body, headers, self.extra)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(self.per_host)
        host.busy += 1
        try:
            return await self._post(key, host, data)
        finally:
            host.busy -= 1
            if not host.busy and not host.idle and self._hosts.get(key) is host:
                del self._hosts[key]  # nothing kept: forget the host

    async def _post(self, key: tuple[str, str, int], host: _Host, data: bytes
                    ) -> HttpResponse:
        scheme, hostname, port = key
        async with host.slots:
            conn = None
            while host.idle:
                c = host.idle.pop()
                self._idle -= 1
                if c.usable():
                    conn = c
                    break
                c.close()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(scheme, hostname, port)
            try:
                try:
                    resp = await conn.request(data)
                except HttpError:
                    if not reused or conn.got_bytes:
                        raise
                    # the server closed an idle connection before reading this request
                    conn.close()
                    conn = await self._connect(scheme, hostname, port)
                    resp = await conn.request(data)
            except BaseException:
                conn.close()
                raise
            if conn.usable():
                host.idle.append(conn)
                self._idle += 1
                if self._idle > self.max_idle:
                    self._shed(key)
            else:
                conn.close()
            return resp

    def _shed(self, keep: tuple[str, str, int]) -> None:
        """Over `max_idle` idle connections in all (webhook URLs come from data: one host
        each must not keep a socket open for ever): close other hosts' idle ones, the
        hosts first used first, down to half the cap."""
        for key in list(self._hosts):
            if self._idle <= self.max_idle // 2:
                return
            host = self._hosts[key]
            if key == keep:
                continue
            while host.idle:
                host.idle.pop().close()
                self._idle -= 1
            if not host.busy:
                del self._hosts[key]

    async def _connect(self, scheme: str, hostname: str, port: int) -> _Conn:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            # the address the egress policy checked: no second lookup that could rebind
            address = hostname if self._resolve is None \
                else await self._resolve(hostname, port)
            _, conn = await loop.create_connection(
                _Conn, address, port,
                ssl=self._ssl_context() if scheme == "https" else None,
                server_hostname=hostname if scheme == "https" else None)
        return conn

    async def aclose(self) -> None:
        for host in self._hosts.values():
            while host.idle:
                host.idle.pop().close()
        self._hosts.clear()
        self._idle = 0

    def __repr__(self) -> str:  # no URLs (a webhook URL can be a secret)
        return f"HttpPool({len(self._hosts)} hosts)"
