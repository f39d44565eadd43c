"""Helpers of the client tests: either client (sync or async) called the same way, the
recipient's feed read over HTTP as a user would, and a local HTTP server on 127.0.0.1 that
answers the first requests itself (503, 429) and passes the rest to a real api."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from support import Api, eventually
from vestnik.client import AsyncClient, Client, Retries

KINDS = ("sync", "async")


def make(kind: str, transport: str, target: str, token: str = "",
         retries: Retries | None = None) -> Client | AsyncClient:
    cls = Client if kind == "sync" else AsyncClient
    if transport == "redis":
        return cls.redis(target)
    return cls.http(target, token, timeout=10, **({"retries": retries} if retries else {}))


async def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`method(*args, **kwargs)` of either client: awaited when it is a coroutine."""
    got = method(*args, **kwargs)
    return await got if inspect.isawaitable(got) else got


async def close(client: Client | AsyncClient) -> None:
    await call(client.close)


async def feed(api: Api, token: str, want: int = 1, timeout: float = 20
               ) -> list[dict[str, Any]]:
    """The user's feed (GET /api/v1/me/notices) once it holds `want` notices."""
    async with api.client(token) as http:
        async def page() -> list[dict[str, Any]] | None:
            items = (await http.get("/api/v1/me/notices")).json()["items"]
            return items if len(items) >= want else None

        return await eventually(page, timeout=timeout, what=f"{want} notice(s) in the feed")


class FlakyFront:
    """`answers` (status, Retry-After) are given to the first requests, one each; every
    later one is passed to `upstream` as it came. `seen` keeps each request's method, path
    and Idempotency-Key."""

    def __init__(self, upstream: str, answers: list[tuple[int, str]]) -> None:
        self.upstream, self.answers = upstream, list(answers)
        self.seen: list[tuple[str, str, str | None]] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                front.seen.append((self.command, self.path, self.headers.get("Idempotency-Key")))
                if front.answers:
                    status, after = front.answers.pop(0)
                    self.send_response(status)
                    self.send_header("Retry-After", after)
                    self.send_header("Content-Type", "application/json")
                    payload = b'{"error":"unavailable","detail":"try later","path":null}'
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                r = httpx.request(self.command, front.upstream + self.path, content=body,
                                  headers=headers, timeout=10)
                self.send_response(r.status_code)
                for k in ("Content-Type", "ETag", "Retry-After"):
                    if k in r.headers:
                        self.send_header(k, r.headers[k])
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
