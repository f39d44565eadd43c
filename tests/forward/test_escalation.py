"""Per-channel delays (escalation, issue 21 §4): each channel entry's `after` makes a job of
its own (a `Stage` channel group) that sends only that group's channels, checking unread
when it runs. The plan as pure functions, then a real `vestnik center` (which runs the
forward worker), `vestnik api`, an SMTP sink and a Telegram stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from fwd_support import HttpSink, SmtpSink

from support import Api, eventually
from vestnik.streams.forward import arq_keys
from vestnik.streams.forward.schedule import (
    BROADCAST,
    PLAIN,
    RESOLVED,
    ForwardJob,
    Stage,
    forward_jobs_for,
)
from vestnik.streams.ids import ulid
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.schemas import ChannelMap, Notice, User, convert

ADDRESSES = {"email": "email", "telegram": "telegram_chat_id", "webhook": None}
T0 = 1_000_000


def n(channels: dict[str, Any], **kw: Any) -> Notice:
    return Notice(**{"id": "N", "alert": "a", "title": "t", "created_at": T0,
                     "recipients": ["1"], **kw}, channels=convert(channels, ChannelMap))


def plan(notice: Notice, users: list[User] | None = None, after: float = 300
         ) -> list[ForwardJob]:
    users = users or [User(id=uid, email="x@example.org", telegram_chat_id=1)
                      for uid in notice.recipients]
    return forward_jobs_for(notice, users, ADDRESSES, after, now=T0)


# ------------------------------------------------------------------ the stage's layout


@pytest.mark.parametrize(("stage", "text"), [
    (PLAIN, None),
    (Stage(after_ms=0), "a0"),
    (Stage(after_ms=900_000), "a900000"),
    (Stage(held_until=1_796_457_600_000), "h1796457600000"),
    (Stage(after_ms=900_000, held_until=1_796_457_600_000), "a900000.h1796457600000"),
    (Stage(resolved=True), RESOLVED),
    (Stage(resolved=True, held_until=5), "resolved.h5"),
])
def test_stage_encodes_as_the_job_id_tail_and_back(stage: Stage, text: str | None):
    assert stage.encode() == text
    assert Stage.decode(text) == stage
    if text:
        assert Keys("vn:").forward_job("N", "1", text) == f"vn:fwd:N:1:{text}"


@pytest.mark.parametrize("bad", ["x", "a", "a-1", "a1.a2", "h1.h1", "resolved.resolved",
                                 "a1:h2", "A1", "a" + "9" * 16, "a1\n", "résolu"])
def test_a_stage_that_is_none_of_ours_is_refused(bad: str):
    with pytest.raises(ValueError, match="bad forward stage"):
        Stage.decode(bad)


# ------------------------------------------------------------------ the plan


def test_each_delay_is_a_job_of_its_own():
    """telegram now, email in 15 minutes: no channel is left at the notice's own delay, so
    there is no plain job."""
    assert plan(n({"telegram": {"after": 0}, "email": {"after": 900}})) == [
        ForwardJob("N", "1", T0, "a0"), ForwardJob("N", "1", T0 + 900_000, "a900000")]


def test_channels_without_after_are_the_plain_job():
    assert plan(n({"telegram": {}, "email": {"after": 900}})) == [
        ForwardJob("N", "1", T0 + 300_000), ForwardJob("N", "1", T0 + 900_000, "a900000")]
    # an `after` equal to the notice's delay is the plain job too
    assert plan(n({"telegram": {}, "email": {"after": 60}, "forward_after": 60})) == [
        ForwardJob("N", "1", T0 + 60_000)]
    # the notice's own forward_after is the plain job's delay; a channel's after wins
    assert plan(n({"telegram": {}, "email": {"after": 0}}, forward_after=5)) == [
        ForwardJob("N", "1", T0 + 5_000), ForwardJob("N", "1", T0, "a0")]


def test_a_group_left_with_nothing_to_send_has_no_job():
    u = User(id="1", email="x@example.org", telegram_chat_id=1, prefs={"email": False})
    assert plan(n({"telegram": {"after": 0}, "email": {"after": 900}}), [u]) == [
        ForwardJob("N", "1", T0, "a0")]


def test_shared_targets_are_grouped_too():
    got = plan(n({"webhook": {"url": "https://hooks.example/a", "after": 60},
                  "telegram": {"chat_ids": [5]}, "email": {}}))
    assert got == [ForwardJob("N", "1", T0 + 300_000),
                   ForwardJob("N", BROADCAST, T0 + 60_000, "a60000"),
                   ForwardJob("N", BROADCAST, T0 + 300_000)]


def test_a_huge_after_is_cut():
    got = plan(n({"email": {"after": 1e300}}))
    assert got == [ForwardJob("N", "1", T0 + 365 * 86_400_000, f"a{365 * 86_400_000}")]


# ------------------------------------------------------------------ end to end



@pytest.fixture
def telegram() -> Iterator[HttpSink]:
    sink = HttpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def center(start_proc, smtp: SmtpSink, telegram: HttpSink):
    return start_proc("center", VESTNIK_SMTP_URL=smtp.url,
                      VESTNIK_SMTP_FROM="Vestnik <vestnik@example.org>",
                      VESTNIK_TELEGRAM_API=telegram.base, VESTNIK_TELEGRAM_TOKEN="T",
                      VESTNIK_EGRESS_ALLOW="127.0.0.1/32", VESTNIK_SEND_BACKOFF="0.2")


async def test_telegram_now_email_later_only_if_unread(api: Api, redis, keys: Keys, center,
                                                       smtp: SmtpSink, telegram: HttpSink,
                                                       user_token):
    """Two notices with `{"telegram": {"after": 0}, "email": {"after": 6}}`: both go to
    Telegram at once; the one read in between is never emailed (`skipped_read`), the
    other is emailed when its email group falls due."""
    await redis.hset(keys.state(USER_TOPIC), "1", msgspec.json.encode(
        {"id": "1", "name": "Ann", "email": "ann@example.org", "telegram_chat_id": 42}))
    channels = msgspec.json.encode({"telegram": {"after": 0}, "email": {"after": 6}})
    ids = [ulid(), ulid()]
    for nid, title in zip(ids, ["Unread", "Read soon"], strict=True):
        await redis.xadd(keys.notices, {"id": nid, "alert": "disk", "title": title,
                                        "recipients": "1", "channels": channels})
    unread, read = ids

    async def both_on_telegram() -> bool:
        return len(telegram.requests) == 2

    await eventually(both_on_telegram, timeout=15, what="both notices on Telegram")
    assert smtp.mails == []  # not before their email group is due
    async with api.client(user_token("1")) as me:
        r = await me.post(f"/api/v1/me/notices/{read}/read")
        assert r.status_code == 200
    # the email group is a job of its own, waiting
    jid = keys.forward_job(read, "1", "a6000")
    assert await redis.zscore(keys.forward_of(read).forward_due,
                              msgspec.msgpack.encode([read, "1", "a6000"])) \
        or await redis.exists(arq_keys(jid).job)

    async def mailed() -> bool:
        return len(smtp.mails) == 1

    await eventually(mailed, timeout=30, what="the email of the unread notice")
    assert smtp.mails[0].msg["Subject"] == "Unread"
    async with api.client() as svc:
        async def log_of(nid: str, n: int) -> list[tuple[str, str]] | None:
            r = await svc.get(f"/api/v1/notices/{nid}/deliveries")
            got = [(i["channel"], i["status"]) for i in r.json()["items"]]
            return got if len(got) >= n else None

        assert await eventually(lambda: log_of(unread, 2), timeout=15, what="unread's log") \
            == [("telegram", "sent"), ("email", "sent")]
        assert await eventually(lambda: log_of(read, 2), timeout=15, what="read's log") \
            == [("telegram", "sent"), ("email", "skipped_read")]
    assert len(smtp.mails) == 1


async def test_staged_forwards_are_pumped_and_stored_with_their_stage(redis, keys: Keys):
    """A delayed staged forward waits in the due set as [nid, uid, stage]; the pump makes
    it the job `forward(nid, uid, stage)` under the staged id, beside the plain one."""
    from arq.jobs import Job

    from vestnik.streams.forward import due_member, pump_due
    from vestnik.streams.forward.schedule import job_deserializer
    from vestnik.streams.ids import now_ms

    due = now_ms() - 1
    await redis.zadd(keys.forward(0).forward_due, {due_member("N1", "u:7"): due,
                                                   due_member("N1", "u:7", "a900000"): due})
    assert await pump_due(redis, keys.forward(0)) == 2
    for stage, args in ((None, ["N1", "u:7"]), ("a900000", ["N1", "u:7", "a900000"])):
        job = Job(keys.forward_job("N1", "u:7", stage), redis,
                  _queue_name=keys.forward(0).arq_queue, _deserializer=job_deserializer)
        info = await job.info()
        assert info is not None and list(info.args) == args
