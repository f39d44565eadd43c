"""Stand-ins for the outside world of the forwarder: an SMTP sink (aiosmtpd) and a tiny HTTP
server (Telegram, Slack, webhook receivers), both on free 127.0.0.1 ports; plus helpers that
store notices and users in Redis exactly as the notice center does."""

from __future__ import annotations

import email
import email.policy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from redis.asyncio import Redis

from streams.forward import Delivery, decode_delivery
from streams.keys import USER_TOPIC, Keys
from streams.redis_server import free_port
from streams.schemas import Notice, User, json_encode

# ------------------------------------------------------------------------- SMTP


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def msg(self) -> EmailMessage:
        m = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(m, EmailMessage)
        return m

    def part(self, subtype: str) -> str:
        body = self.msg.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        return body.get_content()


class SmtpSink:
    """An aiosmtpd server in a thread; `start()` / `stop()` keep the port (down then up)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.mails: list[Mail] = []
        self.controller: Controller | None = None
        self.peers: list[Any] = []  # one per SMTP connection (session) opened

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.peers.append(session.peer)
        session.host_name = hostname
        return responses

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    def start(self) -> SmtpSink:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


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
    """As the center stores it: the notice once, then per recipient feed (+ unread) at a seq."""
    await redis.set(keys.notice(notice.id), json_encode(notice))
    for uid in notice.recipients:
        seq = await redis.incr(keys.user_seq(uid))
        await redis.zadd(keys.feed(uid), {notice.id: seq})
        if unread:
            await redis.zadd(keys.unread(uid), {notice.id: seq})


async def deliveries(redis: Redis, keys: Keys, nid: str) -> list[Delivery]:
    return [decode_delivery(r) for r in await redis.lrange(keys.deliveries(nid), 0, -1)]
