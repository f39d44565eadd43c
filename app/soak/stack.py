"""The soak's stack: a private Redis (AOF, `appendfsync always`), every Vestnik part as a
process of its own, the sinks, the users and the settings; and the faults' handles on them.

Everything listens on loopback ports chosen at start and kept across restarts (a client
reconnects to the same address, as to a restarted service). Each part runs in a session of
its own and gets SIGTERM if the soak dies (PR_SET_PDEATHSIG); `__aexit__` stops all of them.
Every kill, restart, pause and sink switch is noted in `events` (wall time, kind, target),
so the ledger can tell whether a forward duplicate followed a fault within the window.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx
import msgspec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vestnik.app.soak.sink import read_records
from vestnik.app.tokens import issue_token
from vestnik.streams.config import Config, load
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.redis import connect
from vestnik.streams.redis_server import (
    RedisServer,
    SentinelDeployment,
    _die_with_parent,
    free_port,
)

PROCESSES = ("api", "center-1", "center-2", "forwarder", "bridge", "wrap")
UP_S = 30.0  # a part must answer within this after a start
REDIS_UP_S = 120.0  # Redis loading an hour's AOF on a busy box
FAILOVER_S = 60.0  # sentinels promote a replica within this after the primary's kill
POLL_S = 0.05
ALERT = "soak-alert"  # the wrapped alert's name and its setting's
ALERT_TOPICS = ("soak-alert", "soak-keys")  # the wrapped alert follows both
KEYSPACE_PATTERN = "soak:key:*"  # the bridge turns these keys into events of "soak-keys"
MAIL_ALERT = "soak-mail"  # a setting forwarding by email (ui + email, forward_after)
HOOK_ALERT = "soak-hook"  # a setting forwarding to the webhook receiver

# The alert program: a notice for every entity created or updated on its topics, to the
# entity's `recipients`, carrying its `seq`. A dedup key per entity: a restarted wrapper
# replays the whole snapshot, and the repeats fold into the first notice (no new copy).
ALERT_PROGRAM = r"""
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("type") != "entity" or m.get("op") == "delete" or not m.get("data"):
        continue
    d = m["data"]
    print(json.dumps({"type": "notice", "severity": "info",
                      "title": d.get("title") or "soak alert " + m["id"],
                      "recipients": d.get("recipients") or [],
                      "dedup_key": m["topic"] + ":" + m["id"],
                      "entity": {"topic": m["topic"], "id": m["id"]},
                      "data": {"seq": d.get("seq"), "entity": m["id"]}}), flush=True)
"""


class Part:
    """One process of the stack by name: started again with the same argv, env and ports."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path,
                 ready_url: str) -> None:
        self.name, self.argv, self.env, self.log_path, self.ready_url = (
            name, argv, env, log, ready_url)
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True,
                                         preexec_fn=_die_with_parent)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def signal(self, sig: int, wait_s: float = 15.0) -> None:
        """Send `sig` to the part's process group (its children too: the wrapped alert),
        then wait for it to end (SIGKILL after `wait_s`)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        for _ in range(int(wait_s / POLL_S)):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(POLL_S)
        self._reap_group()  # after `wait_s`, or what is left of its session
        await asyncio.to_thread(self.proc.wait, 5)

    def _reap_group(self) -> None:
        """SIGKILL whatever is left in the part's session (an orphaned alert program)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-1500:]


def _popen_redis(s: RedisServer) -> None:
    """RedisServer.start's spawn without its blocking wait. On the loop's thread, on
    purpose: PR_SET_PDEATHSIG fires when the *thread* that spawned the child ends, so a
    worker thread of asyncio.to_thread would be the wrong parent."""
    s.data_dir.mkdir(parents=True, exist_ok=True)
    s.proc = subprocess.Popen(s.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              start_new_session=True, preexec_fn=_die_with_parent)


def _without_replicaof(extra: list[str]) -> list[str]:
    out, skip = [], 0
    for arg in extra:
        if skip:
            skip -= 1
        elif arg == "--replicaof":
            skip = 2
        else:
            out.append(arg)
    return out


class StackError(RuntimeError):
    """The stack could not be brought up (the message names the part and its log's tail)."""


class Stack:
    """Redis, the six parts, the sinks, users and settings: an async context manager.

    `sentinel=True`: Redis is a primary, a replica and three sentinels (every part finds the
    primary through them and acknowledges a write once the replica has it,
    VESTNIK_REDIS_WAIT_REPLICAS=1, in `wait_replicas`); a Redis kill is then the primary's,
    with a failover, and the old primary comes back as a replica."""

    def __init__(self, *, users: int = 50, forward_after_s: float = 2.0,
                 root: Path | None = None, keep: bool = False, sentinel: bool = False
                 ) -> None:
        self.dir = root or Path(tempfile.mkdtemp(prefix="vestnik-soak-"))
        self.keep = keep
        self.forward_after_s = forward_after_s
        self.alert = ALERT
        self.alert_topics = ALERT_TOPICS
        self.keyspace_pattern = KEYSPACE_PATTERN
        self.mail_alert, self.hook_alert = MAIL_ALERT, HOOK_ALERT
        self.users = [f"u{i}" for i in range(1, users + 1)]
        self.sentinel: SentinelDeployment | None = None
        if sentinel:
            # a primary down for 6 s is failed over: not during a CLIENT PAUSE (at most 5 s,
            # faults.PAUSE_MS), which stays a pause, as it would with production settings
            self.sentinel = SentinelDeployment(self.dir / "redis", replicas=1, sentinels=3,
                                               appendfsync="always", down_after_ms=6000)
            self.servers = self.sentinel.servers
            self.redis_url = self.sentinel.url
        else:
            self.servers = [RedisServer(self.dir / "redis", appendonly=True,
                                        appendfsync="always")]
            self.redis_url = self.servers[0].url
        self.wait_replicas = 1 if sentinel else 0
        self.service_token = "svc_" + secrets.token_urlsafe(16)
        self._secret = secrets.token_urlsafe(32)
        self.smtp_port, self.hook_port, self.control_port = free_port(), free_port(), free_port()
        self.webhook_url = f"http://127.0.0.1:{self.hook_port}/hook"
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env = self._env()
        self.config: Config = load(self.env)
        self.keys = Keys.of(self.config)
        self.parts: dict[str, Part] = {}
        self.sink: Part | None = None
        self.events: list[tuple[float, str, str]] = []  # (time.time(), kind, target)
        # parts (or "redis", "sinks") found down that no fault had killed: a defect
        self.died: list[tuple[float, str]] = []
        self._killed: set[str] = set()  # killed by a fault, not restarted yet
        self._admin: Redis | None = None
        self._http = httpx.AsyncClient(timeout=10, headers={
            "Authorization": f"Bearer {self.service_token}"})

    # ------------------------------------------------------------------ configuration

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
        env.update({
            "VESTNIK_REDIS_URL": self.redis_url, "VESTNIK_SECRET": self._secret,
            "VESTNIK_SERVICE_TOKENS": self.service_token, "VESTNIK_LOG_LEVEL": "warning",
            "VESTNIK_FORWARD_AFTER": f"{self.forward_after_s:g}",
            "VESTNIK_SMTP_URL": f"smtp://127.0.0.1:{self.smtp_port}",
            "VESTNIK_SMTP_FROM": "vestnik-soak@example.org",
            "VESTNIK_EGRESS_ALLOW": "127.0.0.1",  # the webhook receiver is on loopback
            "VESTNIK_KEYSPACE_PATTERNS": f"{KEYSPACE_PATTERN}={ALERT_TOPICS[1]}",
            # a sink down for a while (at most faults.SINK_DOWN_S) must not exhaust the
            # retries: 10 attempts from 0.5 s doubling span over four minutes
            "VESTNIK_SEND_ATTEMPTS": "10", "VESTNIK_SEND_BACKOFF": "0.5",
            # a killed center's batch is claimed by the other one after 5 s, not 30
            "VESTNIK_CLAIM_IDLE_MS": "5000",
            # a feed never drops a notice (a dropped one counts as read: never forwarded)
            "VESTNIK_FEED_MAX": "10000000",
            "VESTNIK_RATE": "off", "VESTNIK_SSE_PING": "5",
            "VESTNIK_REDIS_WAIT_REPLICAS": str(self.wait_replicas),
        })
        return env

    def _part(self, name: str, *args: str) -> Part:
        if name == "api":
            argv = ["api", "--port", str(self.api_port)]
            ready = f"{self.api_url}/readyz"
        else:
            port = free_port()
            argv = [*args, "--metrics-port", str(port)]
            ready = f"http://127.0.0.1:{port}/readyz"
        return Part(name, [sys.executable, "-m", "vestnik.app.cli", *argv], self.env,
                    self.dir / f"{name}.log", ready)

    def _write_alert(self) -> Path:
        program = self.dir / "alert.py"
        program.write_text(ALERT_PROGRAM)
        toml = self.dir / "alert.toml"
        topics = ", ".join(f'"{t}"' for t in ALERT_TOPICS)
        toml.write_text(f'name = "{ALERT}"\ncommand = ["{sys.executable}", "{program}"]\n'
                        f"topics = [{topics}]\nqueue_size = 100000\n"
                        "[restart]\npolicy = \"always\"\nbackoff_min = 0.2\nbackoff_max = 2.0\n")
        return toml

    # ------------------------------------------------------------------ up and down

    async def __aenter__(self) -> Stack:
        try:
            await self._up()
        except BaseException:
            await self._down(failed=True)
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        failed = et is not None and not issubclass(et, asyncio.CancelledError
                                                   | KeyboardInterrupt)
        await self._down(failed=failed)

    async def _up(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.sentinel is not None:
            self.sentinel.start(timeout=UP_S)  # blocks a few seconds, before anything runs
        else:
            await self._spawn_redis(self.servers[0])
        self.sink = Part("sinks", [sys.executable, "-m", "vestnik.app.soak.sink", str(self.dir),
                                   str(self.smtp_port), str(self.hook_port),
                                   str(self.control_port)],
                         self.env, self.dir / "sinks.log",
                         f"http://127.0.0.1:{self.control_port}/ping")
        self.sink.spawn()
        await self._until_ready(self.sink)
        toml = self._write_alert()
        self.parts = {
            "api": self._part("api"),
            "center-1": self._part("center-1", "center", "--no-forward", "--consumer", "soak-1"),
            "center-2": self._part("center-2", "center", "--no-forward", "--consumer", "soak-2"),
            "forwarder": self._part("forwarder", "forwarder"),
            "bridge": self._part("bridge", "bridge"),
            "wrap": self._part("wrap", "wrap", str(toml)),
        }
        api = self.parts["api"]
        api.spawn()
        await self._until_ready(api)
        await self._seed()
        for name in PROCESSES[1:]:
            self.parts[name].spawn()
        for name in PROCESSES[1:]:
            await self._until_ready(self.parts[name])

    async def _seed(self) -> None:
        """The users (events of the `user` topic, email at the sink) and the settings."""
        for uid in self.users:
            await self._post(f"/api/v1/topics/{USER_TOPIC}/events", {
                "op": "create", "id": uid,
                "data": {"id": uid, "name": f"soak user {uid}", "email": f"{uid}@example.org"}})
        ui = {"users": list(self.users)}
        fa = self.forward_after_s
        for name, channel in ((ALERT, {"ui": ui, "email": {}, "forward_after": fa}),
                              (MAIL_ALERT, {"ui": ui, "email": {}, "forward_after": fa}),
                              (HOOK_ALERT, {"ui": ui, "webhook": {"url": self.webhook_url},
                                            "forward_after": fa})):
            await self._post("/api/v1/settings", {"name": name, "metric": {},
                                                  "channel": channel, "enabled": True})
        r = self.admin()
        for _ in range(int(UP_S / POLL_S)):
            if await r.hlen(self.keys.state(USER_TOPIC)) >= len(self.users):
                return
            await asyncio.sleep(POLL_S)
        raise StackError(f"the {len(self.users)} users did not reach the `user` topic's "
                         f"state in {UP_S:g} s: {self.parts['api'].tail()}")

    async def _post(self, path: str, body: object) -> None:
        resp = await self._http.post(self.api_url + path, content=msgspec.json.encode(body),
                                     headers={"content-type": "application/json"})
        if resp.status_code >= 300:
            raise StackError(f"POST {path}: {resp.status_code} {resp.text[:500]}")

    async def _down(self, *, failed: bool) -> None:
        for name in reversed(PROCESSES):
            if name in self.parts:
                await self.parts[name].signal(signal.SIGTERM)
        if self.sink is not None:
            await self.sink.signal(signal.SIGTERM)
        if self._admin is not None:
            await self._admin.aclose()
        await self._http.aclose()
        if self.sentinel is not None:
            await asyncio.to_thread(self.sentinel.stop)
        else:
            await asyncio.to_thread(self.servers[0].stop)
        if self.keep or failed:
            # the logs stay (the parts', Redis's, the sentinels'), and the sinks' records;
            # the data (an hour's AOF is hundreds of MB) goes
            for data in self.dir.glob("redis/**/appendonlydir"):
                shutil.rmtree(data, ignore_errors=True)
            sys.stderr.write(f"soak: the stack's logs are in {self.dir}\n")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _until_ready(self, part: Part) -> None:
        """Poll the part's /readyz every 50 ms until 200, at most UP_S; at once, with its
        log's tail, if it exits."""
        async with httpx.AsyncClient(timeout=1) as http:
            for _ in range(int(UP_S / POLL_S)):
                if not part.running():
                    raise StackError(f"{part.name} exited: {part.tail()}")
                try:
                    if (await http.get(part.ready_url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(POLL_S)
        raise StackError(f"{part.name} not ready in {UP_S:g} s: {part.tail()}")

    async def _spawn_redis(self, s: RedisServer) -> None:
        """Start redis-server without blocking the loop (a long AOF loads for seconds while
        the load and the SSE clients keep running): spawn, then poll PING."""
        _popen_redis(s)
        assert s.proc is not None
        probe = Redis.from_url(s.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            for _ in range(int(REDIS_UP_S / POLL_S)):
                if s.proc.poll() is not None:
                    log = (s.data_dir / "redis.log").read_text(errors="replace")[-1500:]
                    raise StackError(f"redis-server exited with {s.proc.returncode}: {log}")
                try:
                    await probe.ping()  # -LOADING while the AOF is read: an error
                    return
                except (RedisConnectionError, RedisTimeoutError, ResponseError, OSError):
                    await asyncio.sleep(POLL_S)
        finally:
            await probe.aclose()
        raise StackError(f"redis-server did not answer in {REDIS_UP_S:g} s")

    # ------------------------------------------------------------------ for the load

    def user_token(self, uid: str) -> str:
        return issue_token(self.config, uid, 6 * 3600)

    def redis(self) -> Redis:
        """A client with its own pool (of the primary, under Sentinel); the caller closes it."""
        if self.sentinel is not None:
            return connect(self.redis_url, name="vestnik-soak", timeout=5, max_connections=64)
        return Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=2,
                              max_connections=64)

    def admin(self) -> Redis:
        """The stack's own client (CLIENT PAUSE, readiness), closed with the stack."""
        if self._admin is None:
            if self.sentinel is not None:
                self._admin = connect(self.redis_url, name="vestnik-soak-admin", timeout=5,
                                      max_connections=4)
            else:
                self._admin = Redis.from_url(self.redis_url, socket_timeout=5,
                                             socket_connect_timeout=2, max_connections=4)
        return self._admin

    def _redis_names(self) -> list[tuple[str, RedisServer]]:
        if self.sentinel is None:
            return [("redis", self.servers[0])]
        return [(f"redis-{i}", s) for i, s in enumerate(self.servers)]

    async def mails(self) -> list[bytes]:
        return await asyncio.to_thread(read_records, self.dir / "mails.bin")

    async def hooks(self) -> list[bytes]:
        return await asyncio.to_thread(read_records, self.dir / "hooks.bin")

    def down(self) -> list[str]:
        """The parts not running now (and "redis" or "sinks" if they died)."""
        out = [n for n in PROCESSES if n in self.parts and not self.parts[n].running()]
        out += [name for name, s in self._redis_names()
                if s.proc is None or s.proc.poll() is not None]
        if self.sentinel is not None:
            out += [f"sentinel-{i}" for i, p in enumerate(self.sentinel.sentinel_procs)
                    if p is None or p.poll() is not None]
        if self.sink is None or not self.sink.running():
            out.append("sinks")
        return out

    # ------------------------------------------------------------------ for the faults

    def _note(self, kind: str, target: str) -> None:
        self.events.append((time.time(), kind, target))

    async def kill(self, name: str) -> None:
        """SIGKILL one part (and its session: the wrapped alert with the wrapper)."""
        part = self.parts[name]
        if not part.running() and name not in self._killed:
            self._died(name)
        self._note("kill", name)
        self._killed.add(name)
        await part.signal(signal.SIGKILL)

    async def restart(self, name: str) -> None:
        """Start a part that is down again, on the same ports; wait until it is ready."""
        part = self.parts[name]
        if part.running():
            return
        self._note("restart", name)
        part.spawn()
        await self._until_ready(part)
        self._killed.discard(name)

    def _died(self, name: str) -> None:
        self.died.append((time.time(), name))
        self._note("died", name)

    async def revive(self) -> list[str]:
        """Start again whatever is down although no fault killed it (noted in `died`: the
        soak fails on it, but carries on whole). Returns their names."""
        found = [n for n in self.down() if n not in self._killed and n != "sinks"]
        for name in found:
            self._died(name)
            servers = dict(self._redis_names())
            if name in servers:
                await self._spawn_redis(servers[name])
                self._note("redis-up", "redis")
            elif name.startswith("sentinel-") and self.sentinel is not None:
                self.sentinel.start_sentinel(int(name.split("-")[1]))
            else:
                await self.restart(name)
        return found

    async def redis_kill_and_restart(self) -> None:
        """SIGKILL redis-server (no shutdown save) and start it again on the same port and
        directory: it loads the AOF, which `appendfsync always` keeps up to every reply.
        Under Sentinel: SIGKILL the primary, wait for the sentinels to promote the replica,
        then start the old primary again as the new one's replica."""
        if self.sentinel is not None:
            await self._failover()
            return
        self._note("redis-kill", "redis")
        self._killed.add("redis")
        await asyncio.to_thread(self.servers[0].kill)
        if self._admin is not None:
            await self._admin.connection_pool.disconnect()
        await self._spawn_redis(self.servers[0])
        self._killed.discard("redis")
        self._note("redis-up", "redis")

    async def _failover(self) -> None:
        assert self.sentinel is not None
        d = self.sentinel
        old = await asyncio.to_thread(d.primary)
        name = f"redis-{self.servers.index(old)}"
        self._note("redis-kill", f"redis primary {name}")
        self._killed.add(name)
        await asyncio.to_thread(old.kill)
        new_port = await asyncio.to_thread(d.wait_failover, old.port, FAILOVER_S)
        self._note("redis-failover", f"redis primary 127.0.0.1:{new_port}")
        # back as the new primary's replica at once, never for a moment a stale primary
        old.extra = [*_without_replicaof(old.extra), "--replicaof", "127.0.0.1", str(new_port)]
        await self._spawn_redis(old)
        self._killed.discard(name)
        self._note("redis-up", f"redis {name}")

    async def redis_pause(self, ms: int) -> None:
        """CLIENT PAUSE ms (ALL): every client's command waits, then runs. Returns at once."""
        self._note("redis-pause", f"{ms}ms")
        await self.admin().execute_command("CLIENT", "PAUSE", str(ms), "ALL")

    async def sink_mode(self, which: Literal["smtp", "webhook"],
                        mode: Literal["up", "down", "slow"]) -> None:
        """Switch the SMTP sink or the webhook receiver up, down (refused) or slow."""
        if which not in ("smtp", "webhook") or mode not in ("up", "down", "slow"):
            raise ValueError(f"sink_mode: which must be smtp|webhook and mode up|down|slow, "
                             f"not {which!r}, {mode!r}")
        self._note(f"sink-{mode}", which)
        url = f"http://127.0.0.1:{self.control_port}/mode/{which}/{mode}"
        async with httpx.AsyncClient(timeout=15) as http:
            (await http.post(url)).raise_for_status()
