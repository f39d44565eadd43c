"""The primary SIGKILLed under ~1,000 notices/s, on a Sentinel deployment (one primary, two
replicas, three sentinels on loopback), with VESTNIK_REDIS_WAIT_REPLICAS 0 and 1.

A product POSTs notices with Idempotency-Keys (retrying a 503 or a dropped connection with
the same key) and keeps the id of every notice the api answered 202; every tenth asks for
an email. The api and the center (with its forwarder) find the primary through the
sentinels and are never restarted: they must follow the failover by themselves, and an SSE
client of /me/stream must get every notice once, in order. Measured: acknowledged notices
missing afterwards (none allowed with WAIT 1: the promoted replica has each one), the time
until ingest answers 202 again, SSE gaps and duplicates, emails missing or sent twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fault_support import (
    Follower,
    K,
    Stack,
    add_users,
    drained,
    missing_in_feed,
    record,
    stack,
    token,
)

from support import SmtpSink, eventually
from vestnik.streams.center import Ingest
from vestnik.streams.coalesce import Appends, Replication
from vestnik.streams.errors import NotReplicated
from vestnik.streams.ids import ulid
from vestnik.streams.keys import Keys
from vestnik.streams.redis import RETRYABLE, connect
from vestnik.streams.redis_server import ClusterDeployment, RedisServer, SentinelDeployment
from vestnik.streams.schemas import NoticeIn, convert

__all__ = ["stack"]

RATE = 1000  # notices per second
TICK = 0.02
BEFORE_KILL_S = 3.0
AFTER_RECOVERY_S = 2.0
EMAIL_EVERY = 10
HTTP_EVERY = 20  # one notice in this many is POSTed to the api, the others XADDed
RETRY_FOR_S = 20.0  # how long the product keeps retrying one notice
IN_FLIGHT = 2000  # notices the product has open at once


class Producer:
    """Sends RATE notices per second, acknowledged as a product sees it: most through
    `Ingest` on its own Redis connection (what `vestnik send`, the client's Redis transport
    and the api run, WAIT included), every HTTP_EVERY-th as a POST to the api with an
    Idempotency-Key. A notice is retried (same id, same key) after a 503 or a lost
    connection, with backoff, for RETRY_FOR_S; `acked` holds (time, id) of each one
    accepted. The product has at most IN_FLIGHT notices open: it slows down while Redis
    is away, as a real one would."""

    def __init__(self, ingest: Ingest, http: httpx.AsyncClient,
                 api_log: Callable[[], str] = lambda: "") -> None:
        self.ingest = ingest
        self.http = http
        self.api_log = api_log  # the api's output, for the message of an unexpected answer
        self.acked: list[tuple[float, str]] = []
        self.started: dict[str, float] = {}  # notice id -> its first attempt
        self.emailed: set[str] = set()
        self.titles: dict[str, str] = {}  # notice id -> title (an email's subject)
        self.retries = 0
        self.n = 0

    async def _send(self, nid: str, body: dict, over_http: bool) -> bool:
        if not over_http:
            try:
                await self.ingest.send(convert(body, NoticeIn), via="test",
                                       idempotency_key=nid)
                return True
            except (*RETRYABLE, NotReplicated):
                return False
        try:
            r = await self.http.post("/api/v1/notices", json=body,
                                     headers={"Idempotency-Key": nid})
        except httpx.HTTPError:
            return False
        # anything else is a bug: the api's traceback says which
        assert r.status_code in (202, 503), f"{r.status_code} {r.text}\n{self.api_log()[-4000:]}"
        return r.status_code == 202

    async def _one(self, nid: str, body: dict, over_http: bool) -> None:
        deadline = time.monotonic() + RETRY_FOR_S
        self.started[nid] = time.monotonic()
        delay = 0.1
        while time.monotonic() < deadline:
            if await self._send(nid, body, over_http):
                self.acked.append((time.monotonic(), nid))
                return
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def run(self, until: asyncio.Event) -> None:
        per_tick = int(RATE * TICK)
        t0 = time.monotonic()
        tick = 0
        pending: set[asyncio.Task[None]] = set()
        while not until.is_set() and tick < 10_000:
            if len(pending) < IN_FLIGHT:  # else blocked on Redis: no new notices meanwhile
                for _ in range(per_tick):
                    self.n += 1
                    nid = ulid()
                    title = self.titles[nid] = f"n{self.n}"
                    body = {"id": nid, "alert": "load", "title": title,
                            "recipients": ["1", "2"]}
                    if self.n % EMAIL_EVERY == 0:
                        body |= {"channels": {"email": {"users": ["1"]}}, "forward_after": 0}
                        self.emailed.add(nid)
                    task = asyncio.create_task(self._one(nid, body, self.n % HTTP_EVERY == 0))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            tick += 1
            await asyncio.sleep(max(t0 + tick * TICK - time.monotonic(), 0))
        await asyncio.gather(*pending)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("wait", [0, 1])
async def test_primary_sigkill_with_sentinel(stack: Stack, tmp_path: Path, wait: int):
    with SentinelDeployment(tmp_path / "redis") as deployment:
        smtp = SmtpSink().start()
        try:
            await _run(stack, _Sentinel(deployment), smtp, wait)
        finally:
            smtp.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_master_sigkill_inside_a_cluster(stack: Stack, tmp_path: Path):
    """A 3-master cluster with two replicas per master (as the Sentinel deployment has): the
    master of the ingest stream's slot is SIGKILLed and a replica takes over, the other
    follows it; with WAIT 1 no acknowledged notice is lost (the same load and accounting
    as on Sentinel)."""
    with ClusterDeployment(tmp_path / "redis", masters=3, replicas=2) as deployment:
        smtp = SmtpSink().start()
        try:
            await _run(stack, _Cluster(deployment), smtp, 1)
        finally:
            smtp.stop()


class _Sentinel:
    """What the test needs of a deployment: its URL, key names, the server to kill and a
    wait for the failover."""

    def __init__(self, deployment: SentinelDeployment) -> None:
        self.d, self.url, self.keys, self.name = deployment, deployment.url, K, "sentinel"

    def primary(self) -> RedisServer:
        return self.d.primary()

    def wait_failover(self, old: int) -> int:
        return self.d.wait_failover(old, 30.0)


class _Cluster:
    def __init__(self, deployment: ClusterDeployment) -> None:
        self.d, self.url, self.name = deployment, deployment.url, "cluster"
        self.keys = Keys("vn:", cluster=True)

    def primary(self) -> RedisServer:
        return self.d.primary_of(self.keys.notices)

    def wait_failover(self, old: int) -> int:
        return self.d.wait_failover(old, self.keys.notices, 30.0)


async def _run(stack: Stack, deployment: _Sentinel | _Cluster, smtp: SmtpSink,
               wait: int) -> None:
    url = deployment.url
    r = connect(url, timeout=2.0)
    await add_users(r, "1", "2", keys=deployment.keys)
    env = {"VESTNIK_FEED_MAX": "100000", "VESTNIK_SMTP_URL": smtp.url,
           "VESTNIK_SMTP_FROM": "vestnik@example.org", "VESTNIK_SEND_BACKOFF": "0.2",
           "VESTNIK_SEND_ATTEMPTS": "20", "VESTNIK_CLAIM_IDLE_MS": "2000",
           "VESTNIK_REDIS_WAIT_REPLICAS": str(wait), "VESTNIK_RATE": "off"}
    api = stack.api(url, **env)
    center = stack.proc(url, "center", "--consumer", "c1", **env)
    follower = Follower(api.base, token(url, "1")).start()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    http = httpx.AsyncClient(base_url=api.base, timeout=5, limits=limits,
                             headers={"Authorization": f"Bearer {api.service_token}"})
    ingest = Ingest(r, deployment.keys, Appends(r, Replication.of(wait, 2.0)))
    stop = asyncio.Event()
    run: asyncio.Task[None] | None = None
    try:
        producer = Producer(ingest, http, lambda: api.proc.output())
        run = asyncio.create_task(producer.run(stop))
        await asyncio.sleep(BEFORE_KILL_S)
        old = deployment.primary()
        old.kill()
        killed_at = time.monotonic()
        acked_before = len(producer.acked)
        assert acked_before >= RATE * BEFORE_KILL_S * 0.5, "the load never got going"
        new_port = await asyncio.to_thread(deployment.wait_failover, old.port)
        failover_at = time.monotonic()
        await eventually(lambda: _acked_since(producer, killed_at), timeout=30,
                         interval=0.05, what="a notice accepted after the kill")
        # recovered: the first notice first tried after the kill is accepted
        recovered = min(t for t, nid in producer.acked
                        if producer.started[nid] > killed_at) - killed_at
        await asyncio.sleep(AFTER_RECOVERY_S)
        stop.set()
        await asyncio.wait_for(run, RETRY_FOR_S + 10)
        # the killed primary comes back as a replica of the new one (as an operator would
        # restart it): the deployment is whole again
        old.start()

        acked = [nid for _, nid in producer.acked]
        await eventually(lambda: drained(r), timeout=60, interval=0.5,
                         what="the center drained the stream after the failover")
        lost = {u: await missing_in_feed(r, u, acked) for u in ("1", "2")}
        lost_ids = set(lost["1"]) | set(lost["2"])
        duplicated_in_feed = {}
        for u in ("1", "2"):
            size = await r.zcard(K.feed(u))
            duplicated_in_feed[u] = int(await r.get(K.user_seq(u)) or 0) - size
        tip = int(await r.get(K.user_seq("1")) or 0)
        await eventually(lambda: _caught_up(follower, tip), timeout=30, interval=0.1,
                         what=f"SSE client at seq {tip}")
        seqs = follower.seqs
        sse_gaps = len(set(range(1, tip + 1)) - set(seqs))
        sse_dups = len(seqs) - len(set(seqs))
        due = {nid for nid in producer.emailed if nid in set(acked)} - lost_ids
        titles = producer.titles
        await eventually(lambda: _emailed(smtp, {titles[n] for n in due}), timeout=60,
                         interval=0.5, what="every due email sent")
        sent = Counter(smtp.subjects())
        emails_missing = sum(1 for n in due if sent[titles[n]] == 0)
        emails_twice = sum(1 for n in due if sent[titles[n]] > 1)

        figures = {
            "wait_replicas": wait, "acked_before_kill": acked_before,
            "acked_total": len(acked), "lost": len(lost_ids),
            "failover_s": round(failover_at - killed_at, 2),
            "ingest_recovered_s": round(recovered, 2), "new_primary_port": new_port,
            "producer_retries": producer.retries,
            "duplicated_in_feeds": sum(duplicated_in_feed.values()),
            "sse_gaps": sse_gaps, "sse_duplicates": sse_dups,
            "sse_reconnects": follower.connects - 1, "sse_resets": follower.resets,
            "emails_due": len(due), "emails_missing": emails_missing,
            "emails_sent_twice": emails_twice,
        }
        record(f"{deployment.name}_failover_wait{wait}", figures)
        if wait:
            assert not lost_ids, figures
        assert sse_gaps == 0 and sse_dups == 0, figures
        assert emails_missing == 0, figures
        for proc in (api.proc, center):
            assert proc.proc is not None and proc.proc.poll() is None, proc.output()[-3000:]
    finally:
        stop.set()
        if run is not None:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        await follower.stop()
        await http.aclose()
        await r.aclose()


async def _acked_since(producer: Producer, t: float) -> bool:
    return any(producer.started[nid] > t for _, nid in producer.acked[-2000:])


async def _caught_up(follower: Follower, tip: int) -> bool:
    return bool(follower.seqs) and follower.seqs[-1] >= tip


async def _emailed(smtp: SmtpSink, titles: set[str]) -> bool:
    return titles <= set(smtp.subjects())
