"""Forwards due now (`forward_after` 0) run in the center's own process, claimed by the
store call: sent once, the arq job finished, and — should the center die after the claim —
sent by any forwarder once the claim expires. Real Redis, a real webhook receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from fwd_support import HttpSink, deliveries
from redis.asyncio import Redis
from standardwebhooks import Webhook

from support import base_env, eventually
from vestnik.streams.center.batch import Center
from vestnik.streams.config import Config, load
from vestnik.streams.consumer import Entry
from vestnik.streams.forward import (
    BROADCAST,
    ForwardWorker,
    arq_keys,
    make_worker,
    run_forwarder,
)
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.schemas import decode_notice_entry

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def hook() -> Iterator[HttpSink]:
    sink = HttpSink(respond=lambda req: (204, b"")).start()
    yield sink
    sink.stop()


def make_settings(redis_url: str) -> Config:
    return load(base_env(redis_url, VESTNIK_WEBHOOK_SECRET=SECRET, VESTNIK_SEND_BACKOFF="0.05",
                         VESTNIK_EGRESS_ALLOW="127.0.0.1"))


def fields(nid: str, hook: HttpSink) -> dict[bytes, bytes]:
    return {b"id": nid.encode(), b"alert": b"disk", b"title": b"Disk 95% on web-1",
            b"severity": b"critical", b"recipients": b"1", b"forward_after": b"0",
            b"channels": msgspec.json.encode({"webhook": {"url": f"{hook.base}/hook"}})}


def received(hook: HttpSink, n: int):
    async def check() -> bool:
        return len(hook.requests) >= n
    return check


def sid() -> str:
    return f"{now_ms()}-0"


async def handle(center: Center, sid: str, raw: dict[bytes, bytes]) -> None:
    assert await center.handle([Entry(sid, decode_notice_entry(raw), raw)]) == []


async def job_state(redis: Redis, keys: Keys, jid: str) -> dict[str, Any]:
    arq = arq_keys(jid)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(arq.job)
        pipe.exists(arq.in_progress)
        pipe.exists(arq.result)
        pipe.zscore(keys.forward(0).arq_queue, jid)
        job, progress, result, queued = await pipe.execute()
    return {"job": job, "in_progress": progress, "result": result, "queued": queued}


@pytest.fixture
async def setup(redis: Redis, keys: Keys) -> None:
    await redis.hset(keys.state(USER_TOPIC), "1", msgspec.json.encode({"id": "1"}))


async def test_due_now_forward_is_sent_once_and_its_job_finished(
        redis: Redis, keys: Keys, redis_url: str, hook: HttpSink, setup: None):
    settings = make_settings(redis_url)
    worker = make_worker(settings)
    center = Center(redis, keys, settings, inline=worker)
    nid = ulid()
    raw = fields(nid, hook)
    entry_id = sid()
    await handle(center, entry_id, raw)
    await eventually(received(hook, 1), timeout=10)
    req = hook.requests[0]
    Webhook(SECRET).verify(req.body, req.headers)
    assert req.json()["id"] == nid
    jid = keys.forward_job(nid, BROADCAST)

    async def finished() -> bool:
        return await job_state(redis, keys, jid) == {"job": 0, "in_progress": 0, "result": 1,
                                              "queued": None}
    await eventually(finished, timeout=5)
    assert [(d.channel, d.status) for d in await deliveries(redis, keys, nid)] == \
        [("webhook", "sent")]
    # the same entry again (a re-delivery after a crash before its ack): nothing more
    await handle(center, entry_id, raw)
    await asyncio.sleep(0.5)
    assert len(hook.requests) == 1
    await worker.close()
    await worker.ctx["forwarder"].channels.aclose()


class DiesAfterClaim(ForwardWorker):
    """A center process that dies right after its store call claimed the jobs."""

    def start_inline(self, claims: list[Any]) -> None:
        self.claimed = claims


async def test_claim_of_a_dead_center_is_sent_by_a_forwarder_once(
        redis: Redis, keys: Keys, redis_url: str, hook: HttpSink, setup: None):
    settings = make_settings(redis_url)
    dead = make_worker(settings)
    dead.__class__ = DiesAfterClaim
    dead.in_progress_timeout_s = 1.0  # the claim expires after 1 s (130 s in production)
    center = Center(redis, keys, settings, inline=dead)
    nid = ulid()
    await handle(center, sid(), fields(nid, hook))
    assert len(dead.claimed) == 1 and dead.claimed[0].notice.id == nid
    jid = keys.forward_job(nid, BROADCAST)
    state = await job_state(redis, keys, jid)
    assert state["job"] == 1 and state["in_progress"] == 1 and state["queued"] is not None

    forwarder = asyncio.create_task(run_forwarder(settings))
    try:
        await asyncio.sleep(0.5)
        assert hook.requests == []  # claimed: no forwarder touches it meanwhile
        await eventually(received(hook, 1), timeout=10)
        await asyncio.sleep(0.3)
        assert len(hook.requests) == 1
        assert [d.status for d in await deliveries(redis, keys, nid)] == ["sent"]
    finally:
        forwarder.cancel()
        await asyncio.gather(forwarder, return_exceptions=True)
        await dead.close()
        await dead.ctx["forwarder"].channels.aclose()
