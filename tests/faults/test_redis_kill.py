"""Redis SIGKILLed at ~2,000 notices/s and restarted from its AOF, for both fsync modes.

A product XADDs notices (explicit ids) at a steady rate and keeps the id of every XADD
Redis acknowledged; Redis is SIGKILLed mid-stream and started again on the same port and
data directory. Then every acknowledged notice must be in both recipients' feeds, exactly
once, with `appendfsync always`; with `everysec` at most the last second's may be missing
(Redis writes the AOF to the kernel before it replies, so a process kill — as opposed to a
machine crash — is expected to lose nothing there too: the test measures it). The api,
the center (with its forwarder) and a wrapper are never restarted by hand: they must
reconnect by themselves, and an SSE client of /me/stream must get every notice once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import pytest
from fault_support import (
    Follower,
    K,
    Stack,
    add_users,
    drained,
    echo_alert,
    missing_in_feed,
    record,
    stack,
    token,
)
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from support import SmtpSink, eventually
from vestnik.streams.ids import ulid

__all__ = ["stack"]

RATE = 2000  # notices per second
TICK = 0.01
BEFORE_KILL_S = 2.5
AFTER_RESTART_S = 1.0
DOWN_S = 2.0  # Redis stays down this long: every part sees refused connections and backs off

class Producer:
    """XADDs at RATE per second; `acked` holds (ack time, notice id) of every XADD Redis
    answered. A failed pipeline counts nothing as acked (some of it may have been applied:
    those are unacknowledged, so the promise does not cover them)."""

    def __init__(self, url: str) -> None:
        self.redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
        self.acked: list[tuple[float, str]] = []
        self.failed_at: float | None = None
        self.errors = 0
        self.n = 0

    async def run(self, seconds: float, stop_on_error: bool = False) -> None:
        per_tick = int(RATE * TICK)
        t0 = time.monotonic()
        tick = 0
        while time.monotonic() - t0 < seconds:
            ids = [ulid() for _ in range(per_tick)]
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for nid in ids:
                        self.n += 1
                        pipe.xadd(K.notices, {"alert": "load", "title": f"n{self.n}",
                                              "severity": "info", "recipients": "1,2",
                                              "id": nid})
                    await pipe.execute()
                now = time.monotonic()
                self.acked += [(now, nid) for nid in ids]
            except (RedisConnectionError, RedisTimeoutError, ResponseError, OSError):
                self.errors += 1
                if self.failed_at is None:
                    self.failed_at = time.monotonic()
                if stop_on_error:
                    return
                await asyncio.sleep(0.05)
            tick += 1
            # paced: sleep until this tick's slot
            delay = t0 + tick * TICK - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_acknowledged_notices_survive_a_redis_sigkill(stack: Stack, tmp_path: Path,
                                                            fsync: str):
    server = stack.redis(appendfsync=fsync)
    smtp = SmtpSink().start()
    try:
        await _run(stack, tmp_path, server, smtp, fsync)
    finally:
        smtp.stop()


async def _run(stack: Stack, tmp_path: Path, server, smtp: SmtpSink, fsync: str) -> None:
    url = server.url
    r = Redis.from_url(url)
    await add_users(r, "1", "2")
    env = {"VESTNIK_FEED_MAX": "100000", "VESTNIK_SMTP_URL": smtp.url,
           "VESTNIK_SMTP_FROM": "vestnik@example.org", "VESTNIK_SEND_BACKOFF": "0.2",
           "VESTNIK_CLAIM_IDLE_MS": "2000"}
    api = stack.api(url, **env)
    center = stack.proc(url, "center", "--consumer", "c1", **env)
    (tmp_path / "alert.py").write_text(echo_alert("probe "))
    (tmp_path / "alert.toml").write_text(
        f'name = "probe"\ncommand = ["{sys.executable}", "alert.py"]\n'
        f'topics = ["probe"]\ncwd = "{tmp_path}"\n')
    wrap = stack.proc(url, "wrap", str(tmp_path / "alert.toml"))
    follower = Follower(api.base, token(url, "1")).start()
    http = httpx.AsyncClient(base_url=api.base, timeout=10,
                             headers={"Authorization": f"Bearer {api.service_token}"})
    try:
        await _probe(r, "before")
        await eventually(lambda: _feed_has_title(http, url, "probe before"), timeout=30,
                         interval=0.2, what="wrapper and center up")
        assert (await http.post("/api/v1/notices", json={
            "alert": "mail", "title": "mail before", "recipients": ["1"],
            "channels": {"email": {"users": ["1"]}}, "forward_after": 0})).status_code == 202
        await eventually(lambda: _has(smtp, "mail before"), timeout=20, what="first email")

        producer = Producer(url)
        run = asyncio.create_task(producer.run(BEFORE_KILL_S + 5, stop_on_error=True))
        await asyncio.sleep(BEFORE_KILL_S)
        server.kill()
        killed_at = time.monotonic()
        await asyncio.wait_for(run, 10)
        acked_before = list(producer.acked)
        assert len(acked_before) >= RATE * BEFORE_KILL_S * 0.6, "the load never got going"
        rate = len(acked_before) / (acked_before[-1][0] - acked_before[0][0])
        # while Redis is down the api answers 503 with Retry-After, at once
        down = await http.post("/api/v1/notices", json={"alert": "mail", "title": "down",
                                                         "recipients": ["1"]})
        assert down.status_code == 503 and down.headers["retry-after"] == "1", down.text
        # the rest of the outage itself (not a wait for a condition)
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - killed_at)))
        server.start()
        restarted_at = time.monotonic()

        # products write again; the parts reconnect by themselves
        await producer.run(AFTER_RESTART_S)
        await _probe(r, "after")
        assert (await _retry_post(http, {
            "alert": "mail", "title": "mail after", "recipients": ["1"],
            "channels": {"email": {"users": ["1"]}}, "forward_after": 0})) == 202
        await eventually(lambda: drained(r), timeout=60, interval=0.2,
                         what="center drained the stream after the restart")
        acked = [nid for _, nid in producer.acked]
        lost = {u: await missing_in_feed(r, u, acked) for u in ("1", "2")}
        lost_ids = set(lost["1"]) | set(lost["2"])
        last_second = {nid for t, nid in acked_before if t >= killed_at - 1.0}
        await eventually(lambda: _feed_has_title(http, url, "probe after"), timeout=30,
                         interval=0.2, what="the wrapper's notice after the restart")
        await eventually(lambda: _has(smtp, "mail after"), timeout=30,
                         what="the forwarder's email after the restart")

        # exactly one copy: seq counts every feed insert, so seq == size means no second one
        for u in ("1", "2"):
            size = await r.zcard(K.feed(u))
            assert int(await r.get(K.user_seq(u))) == size, u

        # the SSE client saw every notice of user 1 once, in order, across the kill
        tip = int(await r.get(K.user_seq("1")))
        await eventually(lambda: _caught_up(follower, tip), timeout=30, interval=0.1,
                         what=f"SSE client at seq {tip}")
        assert follower.seqs == list(range(1, tip + 1)), "gap or duplicate on the SSE stream"
        assert sorted(smtp.subjects()) == ["mail after", "mail before"]

        figures = {
            "fsync": fsync, "rate_per_s": round(rate), "acked_before_kill": len(acked_before),
            "acked_total": len(acked), "acked_in_last_second": len(last_second),
            "lost": len(lost_ids), "lost_outside_last_second": len(lost_ids - last_second),
            "restart_s": round(restarted_at - killed_at, 2),
            "sse_reconnects": follower.connects - 1, "producer_errors": producer.errors,
        }
        record(f"redis_sigkill_{fsync}", figures)
        if fsync == "always":
            assert not lost_ids, figures
        else:
            assert not lost_ids - last_second, figures
        for proc in (api.proc, center, wrap):
            assert proc.proc is not None and proc.proc.poll() is None, proc.output()[-3000:]
    finally:
        await follower.stop()
        await http.aclose()
        await r.aclose()


async def _probe(r: Redis, eid: str) -> bool:
    """An entity event for the wrapper's alert (retried while Redis comes back)."""
    for _ in range(100):
        try:
            await r.xadd(K.topic("probe"), {"op": "create", "id": eid, "data": "{}"})
            return True
        except (RedisConnectionError, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError("Redis never came back")


async def _retry_post(http: httpx.AsyncClient, body: dict) -> int:
    code = 0
    for _ in range(100):
        try:
            code = (await http.post("/api/v1/notices", json=body)).status_code
        except httpx.HTTPError:
            code = 0
        if code == 202:
            return code
        await asyncio.sleep(0.1)
    return code


async def _feed_has_title(http: httpx.AsyncClient, url: str, title: str) -> bool:
    try:
        r = await http.get("/api/v1/me/notices?limit=20",
                           headers={"Authorization": f"Bearer {token(url, '1')}"})
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and any(i["title"] == title for i in r.json()["items"])


async def _has(smtp: SmtpSink, subject: str) -> bool:
    return subject in smtp.subjects()


async def _caught_up(follower: Follower, tip: int) -> bool:
    return bool(follower.seqs) and follower.seqs[-1] >= tip
