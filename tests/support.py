"""Test helpers: run Vestnik processes, a lean SSE client, small waits with a deadline."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
from aiosmtpd.controller import Controller
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from vestnik.streams.keys import Keys
from vestnik.streams.redis_server import (
    ClusterDeployment,
    RedisServer,
    SentinelDeployment,
    free_port,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-" + secrets.token_hex(16)
CLUSTER_ENV = "VESTNIK_TEST_REDIS_CLUSTER"  # "1": the run serves Redis from a cluster


def run_keys(prefix: str = "vn:") -> Keys:
    """The key names of this run's Redis (a cluster's carry tags: `--redis-cluster`), for
    module-level constants that cannot take the `keys` fixture."""
    return Keys(prefix, cluster=os.environ.get(CLUSTER_ENV) == "1")
SERVICE_TOKEN = "svc-test-" + secrets.token_hex(8)
# where a user copies shell lines from: the README's tour and the guide
USER_DOCS = (ROOT / "README.md", ROOT / "docs" / "guide.md")


def documented_line(prefix: str) -> str:
    """The shell line starting with `prefix`, the same wherever the docs give it, so the
    tested command is the documented one."""
    lines = {ln.strip() for doc in USER_DOCS for ln in doc.read_text().splitlines()
             if ln.strip().startswith(prefix)}
    assert len(lines) == 1, f"{prefix!r}: {len(lines)} different lines in the docs"
    return lines.pop()


def base_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a Vestnik child process under test (VESTNIK_* from us only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    env.update({
        "VESTNIK_REDIS_URL": redis_url,
        "VESTNIK_SECRET": SECRET,
        "VESTNIK_SERVICE_TOKENS": SERVICE_TOKEN,
        "VESTNIK_LOG_LEVEL": "info",
        "VESTNIK_SSE_PING": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def need_tool(binary: str | None, why: str) -> str:
    """`binary`, a tool from scripts/bootstrap.sh's VESTNIK_WITH_TEST_TOOLS list; when it
    is missing the test fails where apt-get could have installed it, else it is skipped."""
    if binary is not None:
        return binary
    why += " (`VESTNIK_WITH_TEST_TOOLS=1 scripts/bootstrap.sh` installs it)"
    if shutil.which("apt-get"):
        pytest.fail(why)
    pytest.skip(why + " (and there is no apt-get here)")


def vestnik_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "vestnik.app.cli", *args]


class Proc:
    """A Vestnik child process with its output in a log file, stopped at teardown."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path,
                 cwd: Path | None = None) -> None:
        self.argv, self.env, self.log_path, self.cwd = argv, env, log_path, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=self.log,
                                     cwd=self.cwd or ROOT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        code, self.proc = self.proc.returncode, None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class Api:
    """A running `vestnik api` process."""

    base: str
    proc: Proc
    service_token: str
    env: dict[str, str]

    @property
    def port(self) -> int:
        return urlsplit(self.base).port or 80

    def client(self, token: str | None = None, **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token or self.service_token}"}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=10, **kw)


def wait_http(url: str, timeout: float = 20, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.proc.returncode}:\n{proc.output()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.05)
    out = proc.output() if proc else ""
    raise TimeoutError(f"{url} not ready in {timeout}s ({last})\n{out}")


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 10,
                     interval: float = 0.02, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    result: T | None = None
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {result!r})")


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return msgspec.json.decode(self.data)


@dataclass
class SSE:
    """A lean SSE client over a raw socket: cheap enough to open thousands at once."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    last_id: str | None = None
    _buf: bytes = b""

    async def connect(self, timeout: float = 10) -> SSE:
        u = urlsplit(self.url)
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(u.hostname, u.port), timeout)
        path = u.path + (f"?{u.query}" if u.query else "")
        head = f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nAccept: text/event-stream\r\n"
        for k, v in self.headers.items():
            head += f"{k}: {v}\r\n"
        self.writer.write((head + "\r\n").encode())
        await self.writer.drain()
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = raw.decode().split("\r\n")
        self.status = int(status_line.split()[1])
        self.response_headers = {
            k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)
        }
        if self.status != 200:
            self._buf = await asyncio.wait_for(self.reader.read(65536), timeout)
        return self

    @property
    def body(self) -> bytes:
        return self._buf

    async def _chunk(self) -> bytes:
        """Undo chunked transfer encoding: one chunk's payload."""
        assert self.reader is not None
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.strip().split(b";")[0], 16)
        if size == 0:
            raise EOFError("stream ended")
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def next(self, timeout: float = 10, *, skip_pings: bool = True) -> Event:
        """The next event (comments and pings skipped)."""
        async def read() -> Event:
            while True:
                while b"\n\n" not in self._buf and b"\r\n\r\n" not in self._buf:
                    self._buf += await self._chunk()
                block, _, self._buf = self._buf.replace(b"\r\n", b"\n").partition(b"\n\n")
                ev = Event()
                seen = False
                for line in block.decode().split("\n"):
                    if not line or line.startswith(":"):
                        continue
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    seen = True
                    if name == "event":
                        ev.event = value
                    elif name == "data":
                        ev.data = value if not ev.data else ev.data + "\n" + value
                    elif name == "id":
                        ev.id = value
                if not seen or (skip_pings and ev.event == "ping"):
                    continue
                if ev.id is not None:
                    self.last_id = ev.id
                return ev

        return await asyncio.wait_for(read(), timeout)

    async def take(self, n: int, timeout: float = 10, event: str | None = None) -> list[Event]:
        out: list[Event] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            ev = await self.next(max(0.01, deadline - time.monotonic()))
            if event is None or ev.event == event:
                out.append(ev)
        return out

    async def nothing_for(self, seconds: float, event: str | None = None) -> bool:
        """True when no (matching) event arrives within `seconds`."""
        try:
            while True:
                ev = await self.next(seconds)
                if event is None or ev.event == event:
                    return False
        except TimeoutError:
            return True

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]


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
    """An aiosmtpd server in a thread; `start()` / `stop()` keep the port (down then up).
    `delay` holds each DATA before answering (a slow server, to kill a forwarder mid-send);
    the addresses in `refuse` are answered 550 at RCPT."""

    def __init__(self, port: int | None = None, delay: float = 0.0,
                 refuse: frozenset[str] = frozenset()) -> None:
        self.port = port or free_port()
        self.delay = delay
        self.refuse = refuse
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

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(m.msg["Subject"]) for m in list(self.mails)]

    def start(self) -> SmtpSink:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


async def fill_redis(r: Any) -> int:
    """Make Redis full (`maxmemory` with `noeviction`): write filler values (`filler:<n>`)
    until it refuses even a tiny one with OOM (big ones first, then smaller: a refused big
    value frees its query buffer again), then pin the limit below what is used, so client
    buffers coming and going never let a write in. Returns how many keys it wrote."""
    from redis.exceptions import OutOfMemoryError

    used = int((await r.info("memory"))["used_memory"])
    await r.config_set("maxmemory-policy", "noeviction")
    await r.config_set("maxmemory", str(used + 4 * 1024 * 1024))
    n = 0
    for size in (256 * 1024, 16 * 1024, 1024, 64, 1):
        for _ in range(10_000):  # bounded: maxmemory is a few MB above use
            try:
                await r.set(f"filler:{n}", b"x" * size)
                n += 1
            except OutOfMemoryError:  # redis-py's class for an `OOM ...` answer
                break
        else:
            raise AssertionError("Redis never refused a write")
    used = int((await r.info("memory"))["used_memory"])
    await r.config_set("maxmemory", str(used - 512 * 1024))
    return n


def gone(pid: int) -> bool:
    """No such process, or only a zombie left for its (new) parent to reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (none once it is gone)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except FileNotFoundError:
        pass
    return out


class RawHttpServer:
    """A raw TCP server on 127.0.0.1 that records the bytes of each connection (head and
    Content-Length body, as sent: nothing parsed or repaired) and answers `answer`."""

    def __init__(self, answer: bytes = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
                 ) -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            conn.settimeout(5)
            try:
                while b"\r\n\r\n" not in data and len(data) < 1 << 20:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head = data.split(b"\r\n\r\n", 1)[0].lower()
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.startswith(b"content-length:")), 0)
                while len(data) - len(head) - 4 < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data)
                conn.sendall(self.answer)
            except (OSError, ValueError):
                self.received.append(data)

    def close(self) -> None:
        self.sock.close()


def requirements_of(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    """The Requires-Dist entries of `dist` that apply with these extras on this Python."""
    out = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def installed_closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Every installed distribution `requirements` need, transitively (with their extras and
    this Python's markers), by canonical name: what a wheel or a lock file must carry."""
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    done: set[tuple[str, str]] = set()
    found: dict[str, metadata.Distribution] = {}
    for _ in range(10_000):  # a dependency graph is finite; this bounds a cycle's surprise
        if not todo:
            break
        req = todo.pop()
        name = canonicalize_name(req.name)
        new = {(name, e) for e in req.extras | {""}} - done
        if not new:
            continue
        done |= new
        dist = found.setdefault(name, metadata.distribution(name))
        todo += requirements_of(dist, {e for _, e in new if e})
    return found


def master_ports(server: RedisServer | ClusterDeployment | SentinelDeployment) -> list[int]:
    """The ports of the servers that hold the data now: the one Redis, every master of
    the cluster, or the Sentinel deployment's primary."""
    if isinstance(server, ClusterDeployment):
        return server.master_ports()
    if isinstance(server, SentinelDeployment):
        return [server.primary().port]
    return [server.port]
