"""B5 (forwarding throughput) and B7 (immediate forward, against a peer).

B5: N forward jobs due at once (one notice each, unread) → messages/s of ONE `vestnik
forwarder` process accepted by a local SMTP sink (aiosmtpd) and by a local webhook
receiver, and messages per forwarder CPU-second (/proc utime+stime, which the box's
load does not bend). Ceiling: the same receiver fed by a bare sender loop (aiosmtplib over
8 connections; the lean HTTP pool with 16), measured in the same run.

B7: `POST /api/v1/notices` (one notice per request, forward_after 0, a webhook channel)
→ arrival at the local receiver: delivered/s with 1 and 8 closed-loop clients, and
p50/p99/max at 100/s and 1,000/s (open loop, paced). With `--peer alertmanager` the same
load runs against Prometheus Alertmanager (group_wait 0s, one alert per POST to
/api/v2/alerts, a webhook to the same receiver) and its rows are `AM:`-prefixed.
The receivers are app.bench.receiver's, each in a process of its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from vestnik.app.bench.core import Bench, percentile
from vestnik.app.bench.env import BenchProc, World, cpu_seconds, fresh_aof, until_up
from vestnik.app.bench.receiver import Receiver, rate
from vestnik.streams.channels import HttpPool
from vestnik.streams.forward import BROADCAST, ForwardJob, add_forward_jobs
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.redis_server import free_port
from vestnik.streams.schemas import ChannelMap, Notice, User, convert, json_encode

K = Keys("vn:")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # webhooks are signed, as in production
ALERTMANAGER = "prometheus-alertmanager"
_peer: str | None = None
# B7 notices go round-robin to this many users: one user's feed past feed_max drops its
# oldest (unread) notices, and a dropped notice counts as read (skipped, never forwarded)
USERS = 5000


def use_peer(peer: str | None) -> None:
    """`vestnik bench --peer NAME`: run B7's load against NAME too (only alertmanager)."""
    global _peer
    _peer = peer


# ------------------------------------------------------------------------------ B5


async def _schedule(r: Redis, n: int, channel: str, receiver_port: int) -> None:
    await r.hset(K.state(USER_TOPIC), "1", json_encode(User(id="1", email="b5@example.org")))
    hook = f"http://127.0.0.1:{receiver_port}/hook"
    target = convert({"email": {"users": ["1"]}} if channel == "email"
                     else {"webhook": {"url": hook}}, ChannelMap)
    uid = "1" if channel == "email" else BROADCAST
    now = now_ms()
    for start in range(0, n, 1000):
        async with r.pipeline(transaction=False) as pipe:
            jobs = []
            for _ in range(start, min(n, start + 1000)):
                nid = ulid()
                notice = Notice(id=nid, alert="bench", title=f"bench {nid}", body="x" * 200,
                                recipients=["1"], channels=target, created_at=now)
                pipe.set(K.notice(nid), json_encode(notice))
                pipe.zadd(K.feed("1"), {nid: 1})  # in the feed, not read: unread
                jobs.append(ForwardJob(nid, uid, now))
            add_forward_jobs(pipe, K, jobs)
            await pipe.execute()


async def bare_smtp(port: int, n: int) -> None:
    import aiosmtplib

    msg = (b"From: b5@example.org\r\nTo: b5@example.org\r\nSubject: bare\r\n\r\n"
           + (b"x" * 75 + b"\r\n") * 20)
    per = n // 8

    async def one() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await smtp.connect()
        for _ in range(per):
            await smtp.sendmail("b5@example.org", ["b5@example.org"], msg)
        smtp.close()

    await asyncio.gather(*(one() for _ in range(8)))


async def _bare_http(port: int, n: int) -> None:
    pool = HttpPool(per_host=16)
    body = b'{"title":"bare"}' + b" " * 400
    per = n // 16

    async def one() -> None:
        for _ in range(per):
            await pool.post(f"http://127.0.0.1:{port}/hook", body,
                            {"content-type": "application/json"})

    await asyncio.gather(*(one() for _ in range(16)))
    await pool.aclose()


async def _b5_one(bench: Bench, channel: str, n: int) -> tuple[float, float, float]:
    """(messages/s, messages per forwarder CPU-s, bare sender's messages/s)."""
    kind = "smtp" if channel == "email" else "http"
    with World() as world:
        r = world.redis()
        receiver = Receiver(world.dir, world.env(), kind)
        try:
            await receiver.ready()
            bare = 1000 if bench.quick else 4000
            await (bare_smtp(receiver.port, bare) if kind == "smtp"
                   else _bare_http(receiver.port, bare))
            ceiling = rate(await receiver.stats())
            await receiver.reset()
            await _schedule(r, n, channel, receiver.port)
            fwd = world.start("forwarder", VESTNIK_SMTP_URL=f"smtp://127.0.0.1:{receiver.port}",
                              VESTNIK_SMTP_FROM="vestnik@example.org",
                              VESTNIK_WEBHOOK_SECRET=SECRET)
            cpu0 = None
            deadline = time.monotonic() + 120
            st = await receiver.stats()
            while st.n < n and time.monotonic() < deadline:
                if fwd.proc.poll() is not None:
                    raise RuntimeError(f"forwarder exited: {fwd.log_path.read_text()[-1500:]}")
                if cpu0 is None and st.n:
                    cpu0 = cpu_seconds(fwd.pid)  # start-up (imports, connects) left out
                await asyncio.sleep(0.02)
                st = await receiver.stats()
            cpu = cpu_seconds(fwd.pid) - (cpu0 or 0.0)
        finally:
            await receiver.close()
            await r.aclose()
    return rate(st), (st.n / cpu if cpu else 0.0), ceiling


async def b5_forwarding(bench: Bench) -> None:
    n = 2000 if bench.quick else 10_000
    task = bench.progress.add_task("B5 forwarding", total=2 * bench.rounds())
    for channel, row, budget in (("email", "smtp", 50), ("webhook", "webhook", 30)):
        rates, per_cpu, ceilings = [], [], []
        for _ in bench.each_round(budget):
            a, b, c = await _b5_one(bench, channel, n)
            rates.append(a)
            per_cpu.append(b)
            ceilings.append(c)
            bench.progress.advance(task)
        receiver = "SMTP sink (aiosmtpd)" if channel == "email" else "webhook receiver"
        bench.record(f"B5:{row}_per_s", f"{n:,} {channel} forwards due at once → {receiver}, one "
                     "forwarder; ceiling: a bare sender loop to the same sink", rates,
                     "msgs/s", ceiling=ceilings, target=1000)
        bench.record(f"B5:{row}_per_cpu_s", f"{channel} messages per forwarder CPU-second "
                     "(utime+stime; robust to the box's load)", per_cpu, "msgs/CPU-s")
    bench.done(task)


# ------------------------------------------------------------------------------ B7


class Target:
    """Where B7 POSTs: Vestnik's API or Alertmanager's, with one request body per send."""

    def __init__(self, name: str, url: str, headers: dict[str, str], hook: str) -> None:
        self.name, self.url, self.headers, self.hook = name, url, headers, hook
        self.pool = HttpPool(per_host=32)
        self.seq = 0
        self.errors = 0

    def body(self) -> bytes:
        self.seq += 1
        t = time.time_ns()
        if self.name == "vestnik":
            return msgspec.json.encode({
                "alert": "b7", "title": f"B7 {self.seq}", "severity": "warning",
                "recipients": [f"u{self.seq % USERS}"], "forward_after": 0, "data": {"t": t},
                "channels": {"webhook": {"url": self.hook}}})
        return msgspec.json.encode([{
            "labels": {"alertname": "b7", "seq": str(self.seq)},
            "annotations": {"t": str(t), "summary": f"B7 {self.seq}"}}])

    async def send(self) -> None:
        resp = await self.pool.post(self.url, self.body(), self.headers)
        if resp.status_code >= 300:
            self.errors += 1


async def _drive(target: Target, clients: int, seconds: float) -> int:
    """`clients` closed loops (each sends its next request when the last is answered) for
    `seconds`; returns the requests answered."""
    stop = time.monotonic() + seconds
    sent = 0

    async def client() -> None:
        nonlocal sent
        while time.monotonic() < stop:
            await target.send()
            sent += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return sent


async def closed_loop(target: Target, receiver: Receiver, clients: int, seconds: float) -> float:
    await receiver.reset()
    sent = await _drive(target, clients, seconds)
    return rate(await receiver.wait(sent, 10))


async def open_loop(target: Target, receiver: Receiver, per_s: int, seconds: float) -> list[float]:
    await receiver.reset()
    tasks: set[asyncio.Task[None]] = set()
    total = int(per_s * seconds)
    sent = 0
    t0 = time.perf_counter()
    while sent < total:
        due = min(int((time.perf_counter() - t0) * per_s) + 1, total)
        for _ in range(due - sent):
            task = asyncio.create_task(target.send())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent = due
        await asyncio.sleep(max(0.0, t0 + sent / per_s - time.perf_counter()))
    await asyncio.gather(*tasks)
    st = await receiver.wait(sent, 10)
    return st.lat_ms + [float("inf")] * (sent - len(st.lat_ms))  # a loss is the worst


async def _b7_load(bench: Bench, target: Target, receiver: Receiver, prefix: str, task: object,
                   fresh: Callable[[], Awaitable[None]] | None = None) -> None:
    """The rows of one system; `prefix` "AM:" for the peer, whose same-run 1-client rate
    then is Vestnik's target and ceiling (else the rate measured in issue 6). `fresh()`
    starts every round from the same state: the peer restarted empty, Vestnik's Redis with
    its AOF rewritten (a rewrite of its own landing in a 4 s round was that round's p99:
    17.7 ms against 6.4 and 7.4 in the others, on a Zen 4 box)."""
    peer_rate = next((r.value for r in bench.rows if r.id == "AM:B7:delivered_per_s"), None)
    quick = bench.quick
    secs = 1.5 if quick else 4.0  # 4 s at 100/s: 400 samples a round, p99 the 4th worst
    closed = 1.0 if quick else 2.5  # a rate: 2.5 s is thousands of deliveries
    async def phase() -> None:
        if fresh is not None:
            await fresh()
            await open_loop(target, receiver, 100, 0.2)

    if fresh is None:
        await open_loop(target, receiver, 100, 0.5)  # warm: connections, scripts
    for clients, row in ((1, f"{prefix}B7"), (8, f"{prefix}B7x8")):
        values = []
        for _ in range(bench.rounds()):
            await phase()
            values.append(await closed_loop(target, receiver, clients, closed))
        mine = not prefix and clients == 1
        bench.record(f"{row}:delivered_per_s", f"{target.name}: POST one notice per request "
                     f"→ webhook arrival, {clients} client(s)", values, "msgs/s",
                     ceiling=peer_rate if mine else None,
                     target=(peer_rate or _PEER_RATE) if mine else None)
        bench.progress.advance(task)
    for per_s in (100, 1000):
        rounds: list[list[float]] = []
        for _ in range(bench.rounds()):  # each round's percentiles; the row is their median
            await phase()
            rounds.append(await open_loop(target, receiver, per_s, secs))
        for name, p in (("p50", 50), ("p99", 99), ("max", 100)):
            bench.record(f"{prefix}B7@{per_s}:{name}_ms", f"{target.name}: POST → webhook "
                         f"arrival at {per_s}/s, {name}", [percentile(lat, p) for lat in rounds],
                         "ms", better="lower",
                         target=10.0 if (per_s == 1000 and name == "p99" and not prefix)
                         else None)
        bench.record(f"{prefix}B7@{per_s}:lost", f"{target.name}: not arrived at {per_s}/s",
                     [sum(1 for lat in rounds for x in lat if x == float("inf"))], "msgs",
                     better="lower", target=0)  # over all rounds: one loss is one too many
        bench.progress.advance(task)
    if target.errors:
        bench.console.log(f"[red]{target.name}: {target.errors} POSTs answered >= 300")


# Alertmanager measured ~2,200 alerts/s with 1 client on the reference box (issue 6); the
# row's target is that figure unless the peer runs in the same run (then compare the rows)
_PEER_RATE = 2200.0


@dataclass
class VestnikB7:
    """What B7 drives on Vestnik's side: the POST target, the webhook receiver, the parts."""

    target: Target
    receiver: Receiver
    api: BenchProc
    center: BenchProc


@asynccontextmanager
async def vestnik_b7(world: World) -> AsyncIterator[VestnikB7]:
    """B7's users, receiver, api and center (forwarding inline) on `world`, not warmed.
    (scripts/bench_parts.py measures the same set up.)"""
    r = world.redis()
    async with r.pipeline(transaction=False) as pipe:
        for i in range(USERS):
            pipe.hset(K.state(USER_TOPIC), f"u{i}", json_encode(User(id=f"u{i}")))
        await pipe.execute()
    await r.aclose()
    receiver = Receiver(world.dir, world.env(), "http")
    try:
        await receiver.ready()
        api, base = world.start_api()
        center = world.start("center", VESTNIK_WEBHOOK_SECRET=SECRET)
        target = Target("vestnik", f"{base}/api/v1/notices",
                        {"authorization": f"Bearer {world.service_token}",
                         "content-type": "application/json"},
                        f"http://127.0.0.1:{receiver.port}/hook")
        try:
            yield VestnikB7(target, receiver, api, center)
        finally:
            await target.pool.aclose()
    finally:
        await receiver.close()


async def _vestnik_b7(bench: Bench, task: object) -> None:
    with World() as world:
        r = world.redis()
        try:
            async with vestnik_b7(world) as v:
                await _b7_load(bench, v.target, v.receiver, "", task, lambda: fresh_aof(r))
        finally:
            await r.aclose()


AM_CONFIG = """route:
  receiver: hook
  group_by: ['...']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 24h
receivers:
- name: hook
  webhook_configs:
  - url: http://127.0.0.1:{port}/am
    send_resolved: false
"""


class Alertmanager:
    """One Alertmanager process; `fresh()` restarts it with empty storage, so every phase
    starts from no active alerts (it keeps each alert until resolve_timeout, and a store
    grown by earlier phases slows it down: that would not be the same load)."""

    def __init__(self, exe: str, tmp: Path, env: dict[str, str], hook_port: int) -> None:
        self.exe, self.tmp, self.env = exe, tmp, env
        self.port = free_port()
        (tmp / "am.yml").write_text(AM_CONFIG.format(port=hook_port))
        self.proc: BenchProc | None = None
        self.runs = 0

    async def fresh(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        self.runs += 1
        data = self.tmp / f"data{self.runs}"
        self.proc = BenchProc([self.exe, f"--config.file={self.tmp / 'am.yml'}",
                               f"--storage.path={data}",
                               f"--web.listen-address=127.0.0.1:{self.port}",
                               "--cluster.listen-address=", "--log.level=warn"],
                              self.env, self.tmp / "am.log")
        probe = HttpPool(per_host=1)
        try:
            await until_up(lambda: probe.post(f"http://127.0.0.1:{self.port}/api/v2/alerts",
                                              b"[]", {"content-type": "application/json"}),
                           "alertmanager", proc=self.proc)
        finally:
            await probe.aclose()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


async def _alertmanager_b7(bench: Bench, task: object) -> None:
    exe = shutil.which(ALERTMANAGER) or shutil.which("alertmanager")
    if exe is None:
        bench.console.log(f"[red]--peer alertmanager: `{ALERTMANAGER}` is not installed "
                          "(apt-get install prometheus-alertmanager); peer rows skipped")
        return
    tmp = Path(tempfile.mkdtemp(prefix="vestnik-bench-am-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    receiver = Receiver(tmp, env, "http")
    am = Alertmanager(exe, tmp, env, receiver.port)
    try:
        await receiver.ready()
        target = Target("alertmanager", f"http://127.0.0.1:{am.port}/api/v2/alerts",
                        {"content-type": "application/json"}, "")

        async def fresh() -> None:
            await target.pool.aclose()  # connections to the previous process
            await am.fresh()

        await _b7_load(bench, target, receiver, "AM:", task, fresh)
        await target.pool.aclose()
    finally:
        am.stop()
        await receiver.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _floor_rounds(bench: Bench, world_dir: Path, env: dict[str, str], receiver: Receiver,
                        redis_url: str | None) -> list[float]:
    """Rounds of app.bench.bare_http (bare, or storing in `redis_url`), one client: answers/s,
    or with a store, deliveries/s at `receiver`."""
    port = free_port()
    proc = BenchProc([sys.executable, "-m", "vestnik.app.bench.bare_http", str(port),
                      *([redis_url] if redis_url else [])], env,
                     world_dir / f"bare_http{'-stored' if redis_url else ''}.log")
    target = Target("vestnik", f"http://127.0.0.1:{port}/api/v1/notices",
                    {"content-type": "application/json"}, f"http://127.0.0.1:{receiver.port}/hook")
    seconds = 1.0 if bench.quick or not redis_url else 1.5
    try:
        await until_up(target.send, "bare_http", proc=proc, seconds=30)
        await _drive(target, 1, 0.3)  # warm
        values = []
        for _ in range(bench.rounds()):
            if redis_url:
                values.append(await closed_loop(target, receiver, 1, seconds))
            else:
                t0 = time.perf_counter()
                answered = await _drive(target, 1, seconds)
                values.append(answered / (time.perf_counter() - t0))
        return values
    finally:
        await target.pool.aclose()
        proc.stop()


async def _floors_b7(bench: Bench, task: object) -> None:
    """The reference rows (app.bench.bare_http): an endpoint doing nothing, and the least a
    service does that answers once Redis holds the notice, on the api's HTTP stack."""
    with World() as world:
        receiver = Receiver(world.dir, world.env(), "http")
        try:
            await receiver.ready()
            bench.record("B7:bare_http_per_s", "an endpoint doing nothing (no auth, no Redis) "
                         "on the api's uvicorn/httptools/uvloop stack: answers/s, 1 client",
                         await _floor_rounds(bench, world.dir, world.env(), receiver, None),
                         "answers/s")
            bench.record("B7:stored_floor_per_s", "one process on the same stack that stores "
                         "each notice with one Redis call before it answers, then POSTs the "
                         "webhook and records it with one more: delivered/s, 1 client",
                         await _floor_rounds(bench, world.dir, world.env(), receiver, world.url),
                         "msgs/s")
        finally:
            await receiver.close()
    bench.progress.advance(task)


async def b7_immediate(bench: Bench) -> None:
    peer = _peer == "alertmanager"
    task = bench.progress.add_task("B7 immediate forward", total=4 * (2 if peer else 1) + 1)
    if peer:
        await _alertmanager_b7(bench, task)
    await _vestnik_b7(bench, task)
    await _floors_b7(bench, task)
    if peer:
        _side_by_side(bench)


def _side_by_side(bench: Bench) -> None:
    from rich.table import Table

    rows = {r.id: r for r in bench.rows}
    t = Table(title="B7: Vestnik vs Alertmanager (same load, same receiver, same run)")
    for col in ("figure", "vestnik", "alertmanager"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    for rid in [r.id for r in bench.rows if r.id.startswith("B7")]:
        peer = rows.get(f"AM:{rid}")
        t.add_row(f"{rid} ({rows[rid].unit})", f"{rows[rid].value:g}",
                  "" if peer is None else f"{peer.value:g}")
    bench.console.print(t)
