"""Helpers of the fault tests: a private redis-server per test (killed and restarted at will,
the session one is never disturbed), real Vestnik processes against it, a reconnecting
SSE reader of /me/stream, and small stand-ins (SMTP, Telegram) that go down and come back
on the same port."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import SSE, Api, Proc, base_env, run_keys, vestnik_argv, wait_http
from vestnik.app.tokens import issue_token
from vestnik.streams.config import load
from vestnik.streams.consumer import group_drained
from vestnik.streams.keys import CENTER_GROUP, USER_TOPIC, Keys
from vestnik.streams.redis_server import RedisServer, free_port

K = run_keys()


class Stack:
    """Processes of one fault test; everything is stopped at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[RedisServer] = []
        self.procs: list[Proc] = []

    def redis(self, **kw: Any) -> RedisServer:
        server = RedisServer(self.tmp / f"redis-{len(self.servers)}", **kw).start()
        self.servers.append(server)
        return server

    def proc(self, url: str, *args: str, **env: str) -> Proc:
        p = Proc(vestnik_argv(*args), base_env(url, **env),
                 self.tmp / f"{args[0]}-{len(self.procs)}.log").start()
        self.procs.append(p)
        return p

    def api(self, url: str, port: int | None = None, **env: str) -> Api:
        port = port or free_port()
        full = base_env(url, **env)
        p = Proc(vestnik_argv("api", "--port", str(port)), full,
                 self.tmp / f"api-{port}-{len(self.procs)}.log").start()
        self.procs.append(p)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", proc=p, timeout=30)
        return Api(base, p, full["VESTNIK_SERVICE_TOKENS"], full)

    def close(self) -> None:
        for p in self.procs:
            p.stop(timeout=10)
        for s in self.servers:
            s.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.close()


def echo_alert(prefix: str) -> str:
    """An alert program (Python) that prints a notice `<prefix><entity id>` to user 1 for
    every entity it is fed, but deletes: a probe of the whole chain topic → wrapper →
    notice."""
    return f"""
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("type") == "entity" and m.get("op") != "delete":
        print(json.dumps({{"type": "notice", "title": {prefix!r} + m["id"],
                          "recipients": ["1"]}}), flush=True)
"""


def token(url: str, uid: str) -> str:
    return issue_token(load(base_env(url)), uid, 3600)


def user_record(uid: str, **extra: Any) -> bytes:
    return json.dumps({"id": uid, "name": f"user {uid}", "email": f"u{uid}@example.org",
                       **extra}).encode()


async def add_users(redis: Any, *uids: str, keys: Keys = K, **extra: Any) -> None:
    await redis.hset(keys.state(USER_TOPIC), mapping={u: user_record(u, **extra)
                                                       for u in uids})


@dataclass
class Follower:
    """Follows GET /me/stream for one user, reconnecting with Last-Event-ID whenever the
    stream ends or the api is away; records every `notice` seq it gets, in order."""

    base: str
    token: str
    seqs: list[int] = field(default_factory=list)
    connects: int = 0
    resets: int = 0
    last: int | None = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> Follower:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            url = f"{self.base}/api/v1/me/stream?token={self.token}"
            if self.last is not None:
                url += f"&last_event_id={self.last}"
            sse = SSE(url)
            try:
                await sse.connect(timeout=5)
                if sse.status != 200:
                    raise ConnectionError(f"status {sse.status}")
                self.connects += 1
                while True:
                    ev = await sse.next(timeout=3600)
                    if ev.event == "notice":
                        seq = int(ev.id or 0)
                        self.seqs.append(seq)
                        self.last = seq
                    elif ev.event == "reset":
                        self.resets += 1
                    elif ev.event == "count" and self.last is None:
                        self.last = int(ev.json()["seq"])
            except (OSError, EOFError, ConnectionError, asyncio.IncompleteReadError,
                    TimeoutError, ValueError):
                await asyncio.sleep(0.1)
            finally:
                await sse.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class FlakyHttp:
    """A Telegram Bot API stand-in on a fixed port: `start()` / `stop()` (connection
    refused while down). Records every sendMessage payload."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> FlakyHttp:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                sink.requests.append(json.loads(self.rfile.read(n)))
                data = json.dumps({"ok": True, "result": {"message_id": len(sink.requests)}})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


async def deliveries(api: Api, nid: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=api.base, timeout=10, headers={
            "Authorization": f"Bearer {api.service_token}"}) as http:
        r = await http.get(f"/api/v1/notices/{nid}/deliveries")
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return r.json()["items"]


def elapsed(t0: float) -> float:
    return time.monotonic() - t0


def record(name: str, figures: dict[str, Any]) -> None:
    """Measured figures of a fault test, for docs/reliability.md (artifacts/ is ignored)."""
    out = Path(__file__).resolve().parents[2] / "artifacts" / "faults"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=1, sort_keys=True))
    print(f"\n[{name}] {json.dumps(figures, sort_keys=True)}")


async def missing_in_feed(redis: Any, uid: str, ids: list[str]) -> list[str]:
    """The ids of `ids` not in user `uid`'s feed."""
    out: list[str] = []
    for i in range(0, len(ids), 2000):
        chunk = ids[i:i + 2000]
        scores = await redis.zmscore(K.feed(uid), chunk)
        out += [nid for nid, s in zip(chunk, scores, strict=True) if s is None]
    return out


async def drained(redis: Any) -> bool:
    """The center group has every entry of the ingest stream, none pending."""
    return await group_drained(redis, K.notices, CENTER_GROUP)
