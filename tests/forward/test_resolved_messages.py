"""Resolved messages (issue 21 §1, forward side): every firing message of an incident that
went out is kept in `keys.threads(nid)` with its ref, written with its sent marker; the
`resolved` job sends `Channel.send_resolved` on exactly those channels, replying to that
ref, once. Real redis-server, the forward worker, an SMTP sink, a Telegram stand-in and a
plugin channel that gives refs and records what it is asked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from fwd_support import HttpSink, SmtpSink, deliveries, store_notice, store_user
from redis.asyncio import Redis

from support import base_env, eventually
from vestnik.streams.center.inbox import purge_users
from vestnik.streams.channels import Channel, Channels, SendResult, available
from vestnik.streams.config import Config, load
from vestnik.streams.forward import (
    BROADCAST,
    ForwardJob,
    add_forward_jobs,
    arq_keys,
    make_worker,
    resolved_jobs,
    run_forwarder,
)
from vestnik.streams.forward.job import DELIVERIES_TTL_S
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import Keys
from vestnik.streams.schemas import ChannelMap, ChannelTarget, Notice, User, convert


class Pager(Channel):
    """A plugin channel that threads: its sends return a ref; it records every call."""

    name = "pager"
    user_address = "email"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []  # (uid, title)
        self.resolved: list[tuple[str, str | None]] = []  # (uid, reply_to)

    async def send(self, notice: Notice, user: User | None, target: ChannelTarget
                   ) -> SendResult:
        assert user is not None
        if user.id == "3":
            return SendResult.permanent("pager 3 is broken")
        self.sent.append((user.id, notice.title))
        return SendResult.sent("paged", ref=f"page-{user.id}-{len(self.sent)}")

    async def send_resolved(self, notice: Notice, user: User | None, target: ChannelTarget,
                            reply_to: str | None) -> SendResult:
        assert user is not None and notice.status == "resolved"
        self.resolved.append((user.id, reply_to))
        return SendResult.sent("paged resolved", ref="ignored")



@pytest.fixture
def telegram() -> Iterator[HttpSink]:
    sink = HttpSink().start()
    yield sink
    sink.stop()


def make_settings(redis_url: str, smtp: SmtpSink, telegram: HttpSink) -> Config:
    return load(base_env(redis_url, **{
        "VESTNIK_SEND_BACKOFF": "0.05", "VESTNIK_EGRESS_ALLOW": "127.0.0.1/32",
        "VESTNIK_SMTP_URL": smtp.url, "VESTNIK_SMTP_FROM": "vestnik@example.org",
        "VESTNIK_TELEGRAM_API": telegram.base, "VESTNIK_TELEGRAM_TOKEN": "T"}))


async def run(settings: Config, pager: Pager) -> None:
    channels = Channels.from_settings(settings, classes={**available(), "pager": Pager})
    channels.channels["pager"] = pager
    worker = make_worker(settings, burst=True, channels=channels)
    await asyncio.wait_for(run_forwarder(settings, burst=True, worker=worker), 30)


async def schedule(redis: Redis, keys: Keys, jobs: list[ForwardJob]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        add_forward_jobs(pipe, keys, jobs)
        await pipe.execute()


async def resolve(redis: Redis, keys: Keys, n: Notice) -> Notice:
    """What the center does: the body marked resolved (the resolved jobs are scheduled
    by the caller)."""
    done = msgspec.structs.replace(n, status="resolved", resolved_at=now_ms())
    await store_notice(redis, keys, done)
    return done


def statuses(items: list[Any]) -> list[tuple[str, str, str, str]]:
    return sorted((d.uid, d.channel, d.status, d.detail.split(":")[0]) for d in items)


async def test_resolved_goes_where_the_firing_message_went_threaded_once(
        redis: Redis, keys: Keys, redis_url, smtp: SmtpSink, telegram: HttpSink):
    """User 1 gets the firing page and email, user 2 switched the pager off, user 3's pager
    failed, Telegram chat 5 (a shared target) got it. The resolved messages go to user 1's
    pager (replying to its page's ref) and email, and to chat 5; nowhere else; a second
    run of the resolved jobs sends nothing more."""
    settings = make_settings(redis_url, smtp, telegram)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    await store_user(redis, keys, User(id="2", email="bob@example.org",
                                       prefs={"pager": False}))
    await store_user(redis, keys, User(id="3", email="cy@example.org"))
    n = Notice(id=ulid(), alert="disk", title="Disk 95% on web-1", severity="critical",
               recipients=["1", "2", "3"], dedup_key="web-1", status="firing",
               created_at=now_ms(),
               channels=convert({"pager": {}, "email": {"users": ["1"]},
                                 "telegram": {"chat_ids": [5]}}, ChannelMap))
    await store_notice(redis, keys, n)
    pager = Pager()
    await schedule(redis, keys, [ForwardJob(n.id, u, now_ms()) for u in ("1", "2", "3", "*")])
    await run(settings, pager)
    assert pager.sent == [("1", "Disk 95% on web-1")]
    assert len(smtp.mails) == 1 and len(telegram.requests) == 1
    threads = await redis.hgetall(keys.threads(n.id))
    assert threads.keys() == {b"1:pager", b"1:email", b"*:telegram:5"}
    assert threads[b"1:pager"] == b"page-1-1"
    assert 0 < await redis.ttl(keys.threads(n.id)) <= DELIVERIES_TTL_S

    done = await resolve(redis, keys, n)
    jobs = resolved_jobs(done)
    assert {(j.uid, j.stage) for j in jobs} == {(u, "resolved") for u in ("1", "2", "3", "*")}
    await schedule(redis, keys, jobs)
    await run(settings, pager)
    assert pager.resolved == [("1", "page-1-1")]
    assert [m.msg["Subject"] for m in smtp.mails] == ["Disk 95% on web-1",
                                                      "Resolved: Disk 95% on web-1"]
    assert smtp.mails[1].rcpt_tos == ["ann@example.org"]
    assert len(telegram.requests) == 2
    assert "Resolved: Disk 95% on web-1" in telegram.requests[1].json()["text"]
    log = [d for d in await deliveries(redis, keys, n.id) if d.detail.startswith("resolved")]
    assert statuses(log) == [("*", "telegram", "sent", "resolved"),
                             ("1", "email", "sent", "resolved"),
                             ("1", "pager", "sent", "resolved")]
    # the same jobs again (their results dropped): every resolved message is marked sent
    for j in jobs:
        await redis.delete(arq_keys(keys.forward_job(j.nid, j.uid, j.stage)).result)
    await schedule(redis, keys, jobs)
    await run(settings, pager)
    assert len(pager.resolved) == 1 and len(smtp.mails) == 2 and len(telegram.requests) == 2
    # the threads go with the body when the last feed holding it goes
    assert await purge_users(redis, keys, ["1", "2", "3"]) == 3
    assert await redis.exists(keys.notice(n.id), keys.threads(n.id),
                              keys.deliveries(n.id)) == 0


async def test_a_notice_without_incident_keeps_no_threads(redis: Redis, keys: Keys,
                                                          redis_url, smtp: SmtpSink,
                                                          telegram: HttpSink):
    """Only incidents (a dedup_key) can resolve: a plain notice's sends write no thread."""
    settings = make_settings(redis_url, smtp, telegram)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    n = Notice(id=ulid(), alert="disk", title="t", recipients=["1"], created_at=now_ms(),
               channels=convert({"pager": {}, "email": {}}, ChannelMap))
    await store_notice(redis, keys, n)
    await schedule(redis, keys, [ForwardJob(n.id, "1", now_ms())])
    await run(settings, Pager())
    assert len(smtp.mails) == 1
    assert not await redis.exists(keys.threads(n.id))


async def test_resolved_job_of_a_firing_notice_or_a_gone_one_sends_nothing(
        redis: Redis, keys: Keys, redis_url, smtp: SmtpSink, telegram: HttpSink):
    settings = make_settings(redis_url, smtp, telegram)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    n = Notice(id=ulid(), alert="disk", title="t", recipients=["1"], created_at=now_ms(),
               dedup_key="k", status="firing", channels=convert({"email": {}}, ChannelMap))
    await store_notice(redis, keys, n)
    await redis.hset(keys.threads(n.id), "1:email", "")
    await schedule(redis, keys, [ForwardJob(n.id, "1", now_ms(), "resolved"),
                                 ForwardJob("gone", "1", now_ms(), "resolved"),
                                 ForwardJob(n.id, BROADCAST, now_ms(), "resolved")])
    await run(settings, Pager())
    assert smtp.mails == []
    assert await deliveries(redis, keys, n.id) == []
    assert await deliveries(redis, keys, "gone") == []


async def test_a_job_with_a_stage_not_ours_is_dropped(redis: Redis, keys: Keys, redis_url,
                                                      smtp: SmtpSink, telegram: HttpSink):
    settings = make_settings(redis_url, smtp, telegram)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    n = Notice(id=ulid(), alert="disk", title="t", recipients=["1"], created_at=now_ms(),
               channels=convert({"email": {}}, ChannelMap))
    await store_notice(redis, keys, n)
    await schedule(redis, keys, [ForwardJob(n.id, "1", now_ms(), "x:../../"),
                                 ForwardJob(n.id, "1", now_ms())])
    await run(settings, Pager())
    assert len(smtp.mails) == 1  # the plain job; the other one did nothing, and ended
    assert await redis.zcard(keys.forward(0).arq_queue) == 0


async def test_resolved_waits_for_a_firing_forward_still_running(
        redis: Redis, keys: Keys, redis_url, smtp: SmtpSink, telegram: HttpSink):
    """The resolved job runs while the firing forward of the same user is in flight (its
    arq in-progress key): it waits, and once the firing send has landed (its thread
    written, the job done) replies to it."""
    settings = make_settings(redis_url, smtp, telegram)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    n = Notice(id=ulid(), alert="disk", title="Disk full", recipients=["1"],
               created_at=now_ms(), dedup_key="k", status="resolved", resolved_at=now_ms(),
               channels=convert({"pager": {}}, ChannelMap))
    await store_notice(redis, keys, n)
    firing = arq_keys(keys.forward_job(n.id, "1")).in_progress
    await redis.set(firing, "1", px=60_000)  # a forwarder is sending the firing page
    await schedule(redis, keys, resolved_jobs(n))
    pager = Pager()
    task = asyncio.create_task(run(settings, pager))
    jid = keys.forward_job(n.id, "1", "resolved")
    mine = arq_keys(jid)

    async def deferred() -> bool:
        # tried once, not running, still queued: its first run asked to run again later
        return (int(await redis.get(mine.retry) or 0) >= 1
                and not await redis.exists(mine.in_progress)
                and await redis.zscore(keys.forward(0).arq_queue, jid) is not None)

    await eventually(deferred, what="the resolved job deferred")
    assert pager.resolved == []
    await redis.hset(keys.threads(n.id), "1:pager", "page-1")  # the firing send's finish
    await redis.delete(firing)
    await task
    assert pager.resolved == [("1", "page-1")]


async def test_a_resolved_message_waits_for_a_snooze_like_any_forward(
        redis: Redis, keys: Keys, redis_url, smtp: SmtpSink, telegram: HttpSink):
    settings = make_settings(redis_url, smtp, telegram)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    n = Notice(id=ulid(), alert="disk", title="Disk full", recipients=["1"],
               created_at=now_ms(), dedup_key="k", status="resolved", resolved_at=now_ms(),
               channels=convert({"pager": {}}, ChannelMap))
    await store_notice(redis, keys, n)
    await redis.hset(keys.threads(n.id), "1:pager", "page-1")
    until = now_ms() + 800
    await redis.set(keys.snooze("1"), msgspec.json.encode({"disk": until}))
    await schedule(redis, keys, resolved_jobs(n))
    pager = Pager()
    await run(settings, pager)
    assert pager.resolved == [("1", "page-1")]
    got = await deliveries(redis, keys, n.id)
    assert [(d.channel, d.status) for d in got] == [("pager", "held"), ("pager", "sent")]
    assert got[1].at >= until and got[1].detail.startswith("resolved: ")
    assert await redis.exists(arq_keys(keys.forward_job(n.id, "1", f"resolved.h{until}")).result)
