"""`vestnik up --demo`: everything a newcomer needs to watch Vestnik work, in one process.

Beside the parts `vestnik up` always runs (api, notice center, forwarder), the demo:

- seeds two users with email addresses (topic `user`) and six VMs (topic `vm`);
- creates the alert setting `disk-usage` (disk above 90%, channels `ui` and `email`,
  `forward_after` 20 s) unless one exists;
- runs the demo alert (app/demo_alert.py) under the wrapper, as `vestnik wrap` child;
- runs a simulator that changes the VMs' metrics every second, so disks fill up, cross
  the threshold (a notice) and get cleaned up again (resolved);
- runs a local SMTP sink on a free port (VESTNIK_SMTP_URL points at it) whose mail is
  kept in Redis and shown at /demo/mail;
- prints the URLs, each with a ready-to-use token.

A VESTNIK_SMTP_URL or VESTNIK_FORWARD_AFTER that is configured wins over the demo's.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from vestnik.app.pages import MAILBOX_MAX
from vestnik.app.tokens import issue_token
from vestnik.streams.config import Config
from vestnik.streams.configurator import SettingsStore
from vestnik.streams.ids import now_ms
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.notifier import publish
from vestnik.streams.redis import RETRYABLE, connect
from vestnik.streams.redis_server import free_port
from vestnik.streams.schemas import ChannelMap, SettingIn, TopicEvent, convert

log = logging.getLogger("vestnik.demo")

ALERT = "disk-usage"
SENDER = "vestnik-demo@example.test"
FORWARD_AFTER = 20.0
DEFAULT_FORWARD_AFTER = 300.0  # streams.config's default: "not configured"
TICK = 1.0
USERS = [
    {"id": "1", "name": "Alice", "email": "alice@example.test"},
    {"id": "2", "name": "Bob", "email": "bob@example.test"},
]
VMS = [
    # web-2 starts close to the threshold: the first notice comes within seconds
    {"id": "1", "name": "web-1", "status": "running", "cpu": 22, "mem": 41, "disk": 54},
    {"id": "2", "name": "web-2", "status": "running", "cpu": 35, "mem": 58, "disk": 86},
    {"id": "3", "name": "db-1", "status": "running", "cpu": 48, "mem": 72, "disk": 67},
    {"id": "4", "name": "cache-1", "status": "running", "cpu": 9, "mem": 83, "disk": 31},
    {"id": "5", "name": "build-1", "status": "stopped", "cpu": 0, "mem": 0, "disk": 75},
    {"id": "7", "name": "web-7", "status": "installing", "cpu": 3, "mem": 12, "disk": 8},
]


# the SMTP sink `prepare` promised (it set smtp_url to it): run_demo starts it
_sink: tuple[str, int] | None = None


def prepare(config: Config) -> Config:
    """The config of a demo run: mail to the local sink, a short forward_after."""
    global _sink
    changes: dict[str, object] = {}
    if not config.smtp_url:
        _sink = ("127.0.0.1", free_port())
        changes["smtp_url"] = f"smtp://{_sink[0]}:{_sink[1]}"
        changes["smtp_from"] = config.smtp_from or SENDER
    if config.forward_after == DEFAULT_FORWARD_AFTER:
        changes["forward_after"] = FORWARD_AFTER
    return msgspec.structs.replace(config, **changes) if changes else config


def base_url(config: Config) -> str:
    host = config.host if config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{config.port}"


# ------------------------------------------------------------------------- SMTP sink


class MailSink:
    """A tiny SMTP server that accepts every message and keeps it in Redis for /demo/mail.

    Enough SMTP for a client such as aiosmtplib (EHLO/HELO, MAIL, RCPT, DATA with dot
    unstuffing, RSET, NOOP, QUIT; several messages per connection); no relaying, no auth.
    """

    MAX_LINE = 1 << 16
    MAX_MESSAGE = 10 << 20

    def __init__(self, redis: Redis, key: str, host: str, port: int) -> None:
        self.redis, self.key, self.host, self.port = redis, key, host, port
        self.server: asyncio.Server | None = None
        self.received = 0

    async def start(self) -> MailSink:
        self.server = await asyncio.start_server(self._session, self.host, self.port,
                                                 limit=self.MAX_LINE)
        await self.redis.set(self.key + ":on", str(self.port))
        log.info("demo SMTP sink on %s:%d (mail at /demo/mail)", self.host, self.port)
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        try:
            await self.redis.delete(self.key + ":on")
        except RETRYABLE as e:  # Redis already gone at shutdown: nothing to clean
            log.debug("demo SMTP sink: could not clear its marker: %s", e)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> None:
        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        sender, rcpts = "", []
        try:
            await reply("220 vestnik-demo ESMTP sink")
            while True:
                raw = await asyncio.wait_for(reader.readline(), 300)
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\r\n")
                verb = line[:4].upper()
                if verb == "EHLO":
                    await reply("250-vestnik-demo\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
                                f"250 SIZE {self.MAX_MESSAGE}")
                elif verb == "HELO":
                    await reply("250 vestnik-demo")
                elif verb == "MAIL":
                    sender, rcpts = _address(line), []
                    await reply("250 OK")
                elif verb == "RCPT":
                    rcpts.append(_address(line))
                    await reply("250 OK")
                elif verb == "DATA":
                    if not rcpts:
                        await reply("503 RCPT first")
                        continue
                    await reply("354 End data with <CR><LF>.<CR><LF>")
                    data = await self._data(reader)
                    if data is None:
                        await reply("552 message too large")
                    else:
                        await self._store(sender, rcpts, data)
                        await reply("250 OK: queued")
                    sender, rcpts = "", []
                elif verb == "RSET":
                    sender, rcpts = "", []
                    await reply("250 OK")
                elif verb == "NOOP":
                    await reply("250 OK")
                elif verb == "QUIT":
                    await reply("221 Bye")
                    return
                else:
                    await reply("502 command not implemented")
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            return  # a client that went away or sent a line over the limit
        finally:
            writer.close()

    async def _data(self, reader: asyncio.StreamReader) -> bytes | None:
        lines: list[bytes] = []
        size = 0
        while True:
            raw = await asyncio.wait_for(reader.readline(), 60)
            if not raw:
                raise ConnectionError("client left during DATA")
            if raw in (b".\r\n", b".\n"):
                break
            if raw.startswith(b"."):
                raw = raw[1:]  # dot unstuffing (RFC 5321 4.5.2)
            size += len(raw)
            if size <= self.MAX_MESSAGE:
                lines.append(raw)
        return b"".join(lines) if size <= self.MAX_MESSAGE else None

    async def _store(self, sender: str, rcpts: list[str], data: bytes) -> None:
        # SMTP lines end in CRLF; the page shows the text as written
        msg = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
        text = html = None
        for kind in ("plain", "html"):
            part = msg.get_body(preferencelist=(kind,))  # type: ignore[attr-defined]
            if part is not None:
                content = part.get_content()
                if kind == "plain":
                    text = content
                else:
                    html = content
        self.received += 1
        record = {
            "id": f"{now_ms()}-{self.received}", "at": now_ms(),
            "from": str(msg.get("From") or sender), "to": rcpts,
            "subject": str(msg.get("Subject") or ""), "text": text, "html": html,
        }
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(self.key, msgspec.json.encode(record))
            pipe.ltrim(self.key, 0, MAILBOX_MAX - 1)
            await pipe.execute()
        log.info("demo mail to %s: %s", ", ".join(rcpts), record["subject"])


def _address(line: str) -> str:
    _, _, rest = line.partition(":")
    rest = rest.strip()
    if rest.startswith("<"):
        return rest[1:rest.find(">")] if ">" in rest else rest[1:]
    return rest.split(" ")[0]


# ------------------------------------------------------------------------- seeding


async def seed(redis: Redis, keys: Keys, config: Config, forward_after: float) -> None:
    for user in USERS:
        await publish(redis, keys, USER_TOPIC, TopicEvent(op="create", id=user["id"], data=user,
                                                          src="demo"),
                      maxlen=config.topic_maxlen, via="demo")
    for vm in VMS:
        await publish(redis, keys, "vm", TopicEvent(op="create", id=vm["id"], data=dict(vm),
                                                    src="demo"),
                      maxlen=config.topic_maxlen, via="demo")
    store = SettingsStore(redis, keys, topic_maxlen=config.topic_maxlen, src="demo")
    if not (await store.list(ALERT, limit=1)).items:
        ids = [u["id"] for u in USERS]
        await store.create(SettingIn(
            name=ALERT,
            metric={"name": "disk_used_percent", "threshold": 90},
            channel=convert({"ui": {"users": ids}, "email": {"users": ids},
                             "forward_after": forward_after}, ChannelMap),
        ))


# ------------------------------------------------------------------------- simulator


class Simulator:
    """Random walks for CPU and memory; disks fill slowly, one VM at a time fills fast,
    stays nearly full for longer than `forward_after` (its notice, left unread, is emailed)
    and is then cleaned up (the alert resolves its incident); a VM that installs becomes
    running."""

    def __init__(self, redis: Redis, keys: Keys, config: Config, seed: int | None = None
                 ) -> None:
        self.redis, self.keys, self.config = redis, keys, config
        self.rand = random.Random(seed)
        self.vms = {vm["id"]: dict(vm) for vm in VMS}
        self.filling = "2"
        self.ticks = 0
        self.full_for = 0  # ticks the filling VM has been nearly full
        # the unread notice is forwarded before the disk is cleaned up and it resolves
        self.keep_full = int(config.forward_after / TICK) + 10

    def step(self) -> list[dict[str, Any]]:
        """One tick: the VMs that changed (whole entities)."""
        self.ticks += 1
        changed: list[dict[str, Any]] = []
        r = self.rand
        for vm in self.vms.values():
            before = dict(vm)
            if vm["status"] == "installing":
                vm["disk"] = min(30, vm["disk"] + 3)
                if self.ticks >= 8:
                    vm["status"] = "running"
            if vm["status"] == "running":
                vm["cpu"] = _clamp(vm["cpu"] + r.uniform(-8, 8), 2, 98)
                vm["mem"] = _clamp(vm["mem"] + r.uniform(-3, 3), 10, 95)
                if vm["id"] == self.filling:
                    vm["disk"] = _clamp(vm["disk"] + r.uniform(0.8, 1.8), 0, 99.5)
                    if vm["disk"] >= 98:
                        self.full_for += 1
                    if self.full_for > self.keep_full:
                        self.full_for = 0
                        vm["disk"] = round(r.uniform(35, 55), 1)  # cleaned up: resolved
                        others = [i for i, v in self.vms.items()
                                  if v["status"] == "running" and i != vm["id"]]
                        self.filling = r.choice(others) if others else vm["id"]
                        self.vms[self.filling]["disk"] = max(self.vms[self.filling]["disk"], 80)
                else:
                    vm["disk"] = _clamp(vm["disk"] + r.uniform(-0.05, 0.1), 0, 89)
            if vm != before:
                changed.append(dict(vm))
        return changed

    async def run(self, tick: float = TICK) -> None:
        while True:
            for vm in self.step():
                await publish(self.redis, self.keys, "vm",
                              TopicEvent(op="update", id=vm["id"], data=vm, src="demo-sim"),
                              maxlen=self.config.topic_maxlen, via="demo")
            await asyncio.sleep(tick)


def _clamp(x: float, lo: float, hi: float) -> float:
    return round(min(hi, max(lo, x)), 1)


# ------------------------------------------------------------------------- the alert


def alert_config(config: Config) -> Path:
    """Write the demo alert's alert.toml (run by `vestnik wrap`) under data_dir/demo/."""
    path = Path(config.data_dir).resolve() / "demo" / f"{ALERT}.toml"
    program = Path(__file__).resolve().parent / "demo_alert.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by `vestnik up --demo`\n"
        f'name = "{ALERT}"\n'
        f"command = [{_toml(sys.executable)}, {_toml(str(program))}]\n"
        'topics = ["vm"]\n'
        'admins = ["1"]\n'
        f"redis_url = {_toml(config.redis_url or '')}\n"
        f"prefix = {_toml(config.prefix)}\n"
        "grace = 2.0\n"
        "[env]\n"
        f"VESTNIK_DEMO_BASE = {_toml(base_url(config))}\n"
        "[restart]\n"
        'policy = "always"\n'
    )
    return path


def _toml(s: str) -> str:
    return msgspec.json.encode(s).decode()  # a JSON string is a valid TOML basic string


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


async def run_wrapped_alert(config: Config, alert_toml: Path) -> None:
    """`vestnik wrap <alert_toml>` as a child, restarted if it ends, stopped with us."""
    env = {**os.environ, "VESTNIK_REDIS_URL": config.redis_url or ""}
    backoff = 1.0
    while True:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vestnik.app.cli", "wrap", str(alert_toml), env=env,
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent)
        started = time.monotonic()
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            raise
        if code == 0:  # stopped by a signal (we are shutting down) or the alert ended for good
            log.info("demo alert wrapper exited")
            return
        log.warning("demo alert wrapper exited with %s; restarting in %.0fs", code, backoff)
        backoff = 1.0 if time.monotonic() - started > 30 else min(30.0, backoff * 2)
        await asyncio.sleep(backoff)


# ------------------------------------------------------------------------- the part


def banner(config: Config, sink: tuple[str, int] | None, forward_after: float) -> str:
    base = base_url(config)
    week = 7 * 86400
    lines = ["", "Vestnik demo is running — open these in a browser:"]
    for user in USERS:
        token = issue_token(config, user["id"], week)
        lines.append(f"  inbox ({user['name']})".ljust(18) + f"{base}/?token={token}")
    lines.append("  live VMs".ljust(18)
                 + f"{base}/demo/vms?token={issue_token(config, '1', week)}")
    lines.append("  admin".ljust(18) + f"{base}/admin?token={config.service_tokens[0]}")
    if sink is not None:
        lines.append("  mail".ljust(18) + f"{base}/demo/mail  (SMTP sink on {sink[0]}:{sink[1]})")
    lines += [
        f"The `{ALERT}` alert fires when a VM's disk passes 90%; a notice left unread for "
        f"{forward_after:g} s is emailed" + (" to the sink." if sink else "."),
        "",
    ]
    return "\n".join(lines)


async def run_demo(config: Config) -> None:
    """The demo part of `vestnik up --demo`: sink, seed, wrapped alert and simulator."""
    assert config.redis_url
    redis = connect(config.redis_url, name="vestnik-demo")
    keys = Keys.of(config)
    sink_at = _sink if _sink and config.smtp_url == f"smtp://{_sink[0]}:{_sink[1]}" else None
    sink: MailSink | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        if sink_at is not None:
            sink = await MailSink(redis, keys.demo_mail, *sink_at).start()
        forward_after = config.forward_after
        await seed(redis, keys, config, forward_after)
        alert_toml = alert_config(config)
        tasks = [
            asyncio.create_task(run_wrapped_alert(config, alert_toml), name="demo-alert"),
            asyncio.create_task(Simulator(redis, keys, config).run(), name="demo-simulator"),
        ]
        print(banner(config, sink_at, forward_after), file=sys.stderr, flush=True)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            t.result()  # a failed task is a bug: surface it
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if sink is not None:
            await sink.close()
        await redis.aclose()
