"""Stand-ins for the outside world of the forwarder: an SMTP sink (aiosmtpd) and a tiny HTTP
server (Telegram, Slack, webhook receivers), both on free 127.0.0.1 ports; plus helpers that
store notices and users in Redis exactly as the notice center does."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from redis.asyncio import Redis

# ------------------------------------------------------------------------- SMTP
# Mail and SmtpSink live in support.py: the fault tests use the same sink
from support import Mail, SmtpSink  # noqa: F401
from vestnik.streams.forward import Delivery, decode_delivery
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.schemas import Notice, User, json_encode

# ------------------------------------------------------------------------- HTTP


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Callable[[Request], tuple[int, Any]]


@dataclass
class HttpSink:
    """A threaded HTTP/1.1 server recording every request; `respond` decides the answer."""

    respond: Responder = lambda req: (200, {"ok": True, "result": {"message_id": 1}})
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    def start(self) -> HttpSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                req = Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                              self.rfile.read(n))
                sink.requests.append(req)
                status, answer = sink.respond(req)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------- center-shaped state


async def store_user(redis: Redis, keys: Keys, user: User) -> None:
    await redis.hset(keys.state(USER_TOPIC), user.id, json_encode(user))


async def store_notice(redis: Redis, keys: Keys, notice: Notice, unread: bool = True) -> None:
    """As the center stores it: the notice once, then per recipient feed at a seq (and,
    with `unread` False, the read set as the inbox marks it)."""
    await redis.set(keys.notice(notice.id), json_encode(notice))
    for uid in notice.recipients:
        seq = await redis.incr(keys.user_seq(uid))
        await redis.zadd(keys.feed(uid), {notice.id: seq})
        if not unread:
            await redis.zadd(keys.read(uid), {notice.id: seq})


async def deliveries(redis: Redis, keys: Keys, nid: str) -> list[Delivery]:
    return [decode_delivery(r) for r in await redis.lrange(keys.deliveries(nid), 0, -1)]
