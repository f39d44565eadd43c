"""Holds (issue 21 §3) and resolved incidents (§1) on the forward side, against real parts:
a redis-server, the forward worker (in this process, or inside a real `vestnik center`),
an SMTP sink and a webhook stand-in.

- at schedule time: a user's forward due while they are held is due at the hold's end;
- at run time: a job that finds the user held (a snooze set after scheduling, quiet hours)
  records `held` and runs again, as a new job, when the hold ends;
- a forward of a notice resolved meanwhile records `skipped_resolved` and sends nothing;
- hostile prefs and snooze records never fail a job."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from fwd_support import HttpSink, SmtpSink, deliveries, store_notice, store_user
from redis.asyncio import Redis

from support import Api, eventually
from vestnik.streams.config import Config, load
from vestnik.streams.forward import ForwardJob, add_forward_jobs, arq_keys, run_forwarder
from vestnik.streams.forward.schedule import BROADCAST, forward_jobs_for
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.schemas import ChannelMap, Notice, User, convert

ADDRESSES = {"email": "email", "telegram": "telegram_chat_id", "webhook": None}



@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink(respond=lambda req: (200, {"ok": True})).start()
    yield sink
    sink.stop()


def make_settings(redis_url: str, smtp: SmtpSink, **env: str) -> Config:
    from support import base_env
    return load(base_env(redis_url, **{
        "VESTNIK_SEND_BACKOFF": "0.05", "VESTNIK_EGRESS_ALLOW": "127.0.0.1/32",
        "VESTNIK_SMTP_URL": smtp.url, "VESTNIK_SMTP_FROM": "vestnik@example.org", **env}))


def notice(**kw: Any) -> Notice:
    base: dict[str, Any] = dict(id=ulid(), alert="disk", title="Disk 95% on web-1",
                                severity="warning", recipients=["1"],
                                channels=convert({"email": {}}, ChannelMap),
                                created_at=now_ms())
    base.update(kw)
    return Notice(**base)


async def schedule(redis: Redis, keys: Keys, *jobs: ForwardJob) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        add_forward_jobs(pipe, keys, list(jobs))
        await pipe.execute()


async def burst(settings: Config, timeout: float = 30) -> None:
    """Run the forwarder until no job is queued or due (a held job's return included)."""
    await asyncio.wait_for(run_forwarder(settings, burst=True), timeout)


def log_of(items: list[Any]) -> list[tuple[str, str]]:
    return [(d.channel, d.status) for d in items]


# ---------------------------------------------------------------- at schedule time


def test_a_held_users_job_is_due_when_the_hold_ends():
    now = int(datetime(2026, 12, 1, 0, 53, tzinfo=UTC).timestamp() * 1000)
    n = Notice(id="N", alert="disk", title="t", created_at=now, recipients=["1", "2", "3"],
               channels=convert({"email": {}, "webhook": {"url": "https://h.example/x"}},
                                ChannelMap))
    quiet = {"quiet": {"from": "00:00", "to": "06:00", "tz": "UTC"}}
    users = [User(id="1", email="a@example.org", prefs=quiet),
             User(id="2", email="b@example.org", snooze={"disk": now + 60_000}),
             User(id="3", email="c@example.org", snooze={"cpu": now + 60_000})]
    six = int(datetime(2026, 12, 1, 6, tzinfo=UTC).timestamp() * 1000)
    assert forward_jobs_for(n, users, ADDRESSES, 0, now=now) == [
        ForwardJob("N", "1", six), ForwardJob("N", "2", now + 60_000),
        ForwardJob("N", "3", now), ForwardJob("N", BROADCAST, now)]  # shared: never held
    # quiet hours hold every severity but those the user lets through
    mail = msgspec.structs.replace(n, channels=convert({"email": {}}, ChannelMap))
    crit = msgspec.structs.replace(mail, severity="critical")
    assert forward_jobs_for(crit, users[:1], ADDRESSES, 0, now=now) == [
        ForwardJob("N", "1", six)]
    quiet_crit = {"quiet": {**quiet["quiet"], "allow": ["critical"]}}
    assert forward_jobs_for(crit, [User(id="1", email="a@example.org", prefs=quiet_crit)],
                            ADDRESSES, 0, now=now) == [ForwardJob("N", "1", now)]
    # a job due later is held by what holds at its due time
    late = msgspec.structs.replace(mail, created_at=now - 7 * 3_600_000)  # due at 01:53
    assert forward_jobs_for(late, users[:1], ADDRESSES, 8 * 3600, now=now) == [
        ForwardJob("N", "1", six)]
    assert forward_jobs_for(late, users[:1], ADDRESSES, 5 * 3600, now=now) == [
        ForwardJob("N", "1", six)]  # due before now (18:53, not quiet): held at now


async def quiet_window_ending_soon() -> tuple[dict[str, str], int]:
    """A UTC quiet window from this minute to the next, entered when 20 to 40 s of it are
    left (waits for that, at most a minute): the prefs and its end (ms)."""
    at = datetime.now(UTC)
    for _ in range(130):
        at = datetime.now(UTC)
        if 20 <= at.second < 40:
            break
        await asyncio.sleep(0.5)
    start = at.replace(second=0, microsecond=0)
    end = start + timedelta(minutes=1)
    return ({"from": start.strftime("%H:%M"), "to": end.strftime("%H:%M"), "tz": "UTC"},
            int(end.timestamp() * 1000))


@pytest.fixture
def center(start_proc, smtp: SmtpSink):
    return start_proc("center", VESTNIK_SMTP_URL=smtp.url,
                      VESTNIK_SMTP_FROM="Vestnik <vestnik@example.org>",
                      VESTNIK_SEND_BACKOFF="0.2")


async def test_quiet_hours_at_schedule_and_at_run_time(api: Api, redis: Redis, keys: Keys,
                                                       center, smtp: SmtpSink):
    """Inside a quiet window that ends soon, a real center: (1) a warning scheduled now is
    due at the window's end (no job runs meanwhile, nothing held is recorded), (2) a
    critical one the user lets through goes at once, (3) a job scheduled without the
    center's hold (a profile that changed since) finds the window when it runs, records
    `held` and goes at the end. In-app, all three are in the feed at once."""
    quiet, end = await quiet_window_ending_soon()
    await redis.hset(keys.state(USER_TOPIC), "1", msgspec.json.encode(
        {"id": "1", "email": "ann@example.org", "prefs": {"quiet": {**quiet,
                                                                     "allow": ["critical"]}}}))
    warn, crit = ulid(), ulid()
    for nid, severity in ((warn, "warning"), (crit, "critical")):
        await redis.xadd(keys.notices, {
            "id": nid, "alert": "disk", "title": severity, "severity": severity,
            "recipients": "1", "channels": msgspec.json.encode({"email": {}}),
            "forward_after": "0"})
    late = notice(title="run time")
    await store_notice(redis, keys, late)
    await schedule(redis, keys, ForwardJob(late.id, "1", now_ms()))

    async def first_mail() -> bool:
        return len(smtp.mails) >= 1

    await eventually(first_mail, timeout=15, what="the critical email")
    assert await redis.zscore(keys.forward_of(warn).forward_due,
                              msgspec.msgpack.encode([warn, "1"])) == end

    async def held() -> list[Any]:
        return [d for d in await deliveries(redis, keys, late.id) if d.status == "held"]

    got = await eventually(held, timeout=15, what="the run-time hold")
    iso = datetime.fromtimestamp(end / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [(d.channel, d.detail) for d in got] == [("email", f"until {iso} (quiet hours)")]
    assert [m.msg["Subject"] for m in smtp.mails] == ["critical"]
    assert await deliveries(redis, keys, warn) == []
    for nid in (warn, crit, late.id):
        assert await redis.zscore(keys.feed("1"), nid) is not None

    async def all_mailed() -> bool:
        return len(smtp.mails) == 3

    await eventually(all_mailed, timeout=90, what="the held emails after the window")
    assert sorted(m.msg["Subject"] for m in smtp.mails[1:]) == ["run time", "warning"]
    assert log_of(await deliveries(redis, keys, warn)) == [("email", "sent")]
    sent = [d for d in await deliveries(redis, keys, late.id) if d.status == "sent"]
    assert len(sent) == 1 and sent[0].at >= end
    # the held run was a job of its own: the first one's result is kept, the second's too
    for stage in (None, f"h{end}"):
        assert await redis.exists(arq_keys(keys.forward_job(late.id, "1", stage)).result)


# ---------------------------------------------------------------- at run time


async def test_snooze_set_after_scheduling_holds_the_job_until_it_ends(
        redis: Redis, keys: Keys, redis_url, smtp: SmtpSink):
    """A snooze of every alert, set after the job was scheduled: the job records `held` per
    channel and runs again when it ends, as another job (its channel group kept); a snooze
    of another alert holds nothing."""
    settings = make_settings(redis_url, smtp)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    n = notice(channels=convert({"email": {"after": 0}}, ChannelMap))  # a group: stage a0
    other = notice(alert="cpu", title="cpu")
    await store_notice(redis, keys, n)
    await store_notice(redis, keys, other)
    until = now_ms() + 1500
    await redis.set(keys.snooze("1"), msgspec.json.encode({"disk": until, "*": until - 500}))
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms(), "a0"))
    await redis.set(keys.snooze("1"), msgspec.json.encode({"disk": until}))
    await schedule(redis, keys, ForwardJob(other.id, "1", now_ms()))
    await burst(settings)
    assert sorted(m.msg["Subject"] for m in smtp.mails) == ["Disk 95% on web-1", "cpu"]
    got = await deliveries(redis, keys, n.id)
    assert log_of(got) == [("email", "held"), ("email", "sent")]
    assert got[0].detail.endswith("(snooze)") and got[1].at >= until
    assert log_of(await deliveries(redis, keys, other.id)) == [("email", "sent")]
    assert await redis.exists(arq_keys(keys.forward_job(n.id, "1", f"a0.h{until}")).result)


async def test_snooze_of_all_alerts_then_released_early(redis: Redis, keys: Keys, redis_url,
                                                        smtp: SmtpSink):
    """DELETE /me/snooze before the end: the held job still waits for the time it was held
    until, then finds no snooze and sends."""
    settings = make_settings(redis_url, smtp)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    n = notice()
    await store_notice(redis, keys, n)
    until = now_ms() + 1000
    await redis.set(keys.snooze("1"), msgspec.json.encode({"*": until}))
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    task = asyncio.create_task(burst(settings))
    await eventually(lambda: deliveries(redis, keys, n.id), what="the hold")
    await redis.delete(keys.snooze("1"))
    await task
    assert log_of(await deliveries(redis, keys, n.id)) == [("email", "held"), ("email", "sent")]
    assert len(smtp.mails) == 1


async def test_a_read_held_notice_is_not_sent_after_the_hold(redis: Redis, keys: Keys,
                                                             redis_url, smtp: SmtpSink):
    settings = make_settings(redis_url, smtp)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    n = notice()
    await store_notice(redis, keys, n)
    await redis.set(keys.snooze("1"), msgspec.json.encode({"*": now_ms() + 1000}))
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()))
    task = asyncio.create_task(burst(settings))
    await eventually(lambda: deliveries(redis, keys, n.id), what="the hold")
    await redis.zadd(keys.read("1"), {n.id: 1})  # as the inbox marks it
    await task
    assert log_of(await deliveries(redis, keys, n.id)) == [("email", "held"),
                                                           ("email", "skipped_read")]
    assert smtp.mails == []


# ---------------------------------------------------------------- resolved incidents


async def test_a_forward_of_a_resolved_incident_sends_nothing(redis: Redis, keys: Keys,
                                                              redis_url, smtp: SmtpSink,
                                                              http_sink: HttpSink):
    """Resolved before its forward was due: the user's job and the `*` job record
    `skipped_resolved` per channel; no email, no webhook."""
    settings = make_settings(redis_url, smtp)
    await store_user(redis, keys, User(id="1", email="ann@example.org"))
    resolved_at = now_ms() - 10
    n = notice(dedup_key="web-1", status="resolved", resolved_at=resolved_at,
               channels=convert({"email": {}, "webhook": {"url": f"{http_sink.base}/h"}},
                                ChannelMap))
    await store_notice(redis, keys, n)
    await schedule(redis, keys, ForwardJob(n.id, "1", now_ms()),
                   ForwardJob(n.id, BROADCAST, now_ms()))
    await burst(settings)
    assert smtp.mails == [] and http_sink.requests == []
    got = await deliveries(redis, keys, n.id)
    assert sorted((d.uid, d.channel, d.status) for d in got) == [
        ("*", "webhook", "skipped_resolved"), ("1", "email", "skipped_resolved")]
    assert all(d.detail.startswith("incident resolved at ") for d in got)
    assert not await redis.exists(keys.threads(n.id))


# ---------------------------------------------------------------- hostile prefs


HOSTILE_QUIET: list[Any] = [
    "22:00-08:00", 7, None, [], {"from": "25:99", "to": "08:00"},
    {"from": "00:00", "to": "23:59", "tz": "Mars/Olympus"},
    {"from": "00:00", "to": "23:59", "tz": "../../etc/passwd"},
    {"from": 0, "to": {"h": 1}}, {"from": "00:00", "to": "23:59", "allow": "all"},
    {"from": "00:00", "to": "23:59", "tz": "UTC", "allow": [None]},
]


async def test_hostile_prefs_and_snooze_records_never_fail_a_job(redis: Redis, keys: Keys,
                                                                 redis_url, smtp: SmtpSink):
    settings = make_settings(redis_url, smtp)
    uids = [str(i) for i in range(len(HOSTILE_QUIET) + 2)]
    for uid, q in zip(uids, HOSTILE_QUIET, strict=False):
        await store_user(redis, keys, User(id=uid, email=f"u{uid}@example.org",
                                           prefs={"quiet": q}))
    for uid, raw in zip(uids[-2:], [b"not json", b'{"*": "soon"}'], strict=True):
        await store_user(redis, keys, User(id=uid, email=f"u{uid}@example.org",
                                           prefs={"quiet": "x" * 10_000}))
        await redis.set(keys.snooze(uid), raw)
    n = notice(recipients=uids)
    await store_notice(redis, keys, n)
    await schedule(redis, keys, *(ForwardJob(n.id, uid, now_ms()) for uid in uids))
    await burst(settings)
    assert sorted(m.rcpt_tos[0] for m in smtp.mails) == sorted(f"u{u}@example.org"
                                                               for u in uids)
    assert {d.status for d in await deliveries(redis, keys, n.id)} == {"sent"}
