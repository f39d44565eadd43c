"""From XADD to an inbox: real `vestnik api`, real `vestnik center` (which runs the forward
worker), an SMTP sink. A notice unread after `forward_after` is emailed; one read before
then, or switched off in the user's prefs, never is."""

from __future__ import annotations

import msgspec
import pytest
from fwd_support import SmtpSink
from redis.asyncio import Redis

from support import Api, eventually
from vestnik.streams.forward import arq_keys
from vestnik.streams.ids import ulid
from vestnik.streams.keys import USER_TOPIC, Keys


@pytest.fixture
def center(start_proc, smtp: SmtpSink):
    return start_proc("center", VESTNIK_SMTP_URL=smtp.url,
                      VESTNIK_SMTP_FROM="Vestnik <vestnik@example.org>",
                      VESTNIK_SEND_BACKOFF="0.2")


async def add_user(redis: Redis, keys: Keys, uid: str, **fields) -> None:
    await redis.hset(keys.state(USER_TOPIC), uid, msgspec.json.encode(
        {"id": uid, "name": f"user {uid}", "email": f"u{uid}@example.org", **fields}))


async def xadd(redis: Redis, keys: Keys, to: str, title: str, after: float = 1) -> str:
    nid = ulid()
    await redis.xadd(keys.notices, {
        "id": nid, "alert": "disk", "title": title, "severity": "warning", "recipients": to,
        "channels": msgspec.json.encode({"email": {"users": [to]}}),
        "forward_after": str(after)})
    return nid


async def log_of(http, nid: str) -> list[dict]:
    r = await http.get(f"/api/v1/notices/{nid}/deliveries")
    return r.json().get("items", []) if r.status_code == 200 else []


async def test_unread_notice_is_emailed_after_forward_after(api: Api, redis: Redis, keys: Keys,
                                                            center, smtp: SmtpSink,
                                                            user_token):
    await add_user(redis, keys, "1")
    nid = await xadd(redis, keys, "1", "Disk 95% on web-1")
    async with api.client(user_token("1")) as me:
        async def in_inbox() -> bool:
            items = (await me.get("/api/v1/me/notices")).json()["items"]
            return any(i["id"] == nid and i["read"] is False for i in items)

        await eventually(in_inbox, what="the notice unread in the inbox")
        assert smtp.mails == []  # not before forward_after

    async def mailed() -> bool:
        return len(smtp.mails) == 1

    await eventually(mailed, timeout=15, what="the forwarded email")
    msg = smtp.mails[0].msg
    assert msg["Subject"] == "Disk 95% on web-1" and msg["To"] == "user 1 <u1@example.org>"
    async with api.client() as svc:
        items = await log_of(svc, nid)
    assert [(i["uid"], i["channel"], i["status"]) for i in items] == [("1", "email", "sent")]


async def test_read_before_forward_after_is_never_emailed(api: Api, redis: Redis, keys: Keys,
                                                         center, smtp: SmtpSink, user_token):
    await add_user(redis, keys, "1")
    # 3 s, not 1: on a loaded 2-core CI box storing + reading can take over a second
    nid = await xadd(redis, keys, "1", "Read me quickly", after=3)
    async with api.client(user_token("1")) as me:
        async def read() -> bool:
            r = await me.post(f"/api/v1/me/notices/{nid}/read")
            return r.status_code == 200 and r.json()["read"] is True

        await eventually(read, what="marked read")
    async with api.client() as svc:
        async def skipped() -> list[dict]:
            return [i for i in await log_of(svc, nid) if i["status"] == "skipped_read"]

        got = await eventually(skipped, timeout=15, what="the job to skip it")
    assert [(i["uid"], i["channel"]) for i in got] == [("1", "email")]
    assert smtp.mails == []


async def test_pref_email_off_is_never_emailed(api: Api, redis: Redis, keys: Keys, center,
                                               smtp: SmtpSink, user_token):
    await add_user(redis, keys, "1", prefs={"email": False})
    await add_user(redis, keys, "2")
    off = await xadd(redis, keys, "1", "Not by email", after=0.5)
    on = await xadd(redis, keys, "2", "By email", after=1)

    async def mailed() -> bool:
        return len(smtp.mails) >= 1

    await eventually(mailed, timeout=15, what="the control email to user 2")
    # the in-app notice exists; no job was made for the switched-off channel, none sent
    async with api.client(user_token("1")) as me:
        items = (await me.get("/api/v1/me/notices")).json()["items"]
    assert [i["id"] for i in items] == [off]
    jid = keys.forward_job(off, "1")
    assert await redis.exists(arq_keys(jid).job, arq_keys(jid).result) == 0
    assert await redis.zscore(keys.forward(0).arq_queue, jid) is None
    assert [m.rcpt_tos for m in smtp.mails] == [["u2@example.org"]]
    assert smtp.mails[0].msg["Subject"] == "By email"
    assert on


async def test_a_recipient_without_an_address_is_recorded_and_a_later_one_used(
        api: Api, redis: Redis, keys: Keys, center, smtp: SmtpSink):
    """Profiles are read when the forward runs: user 6 publishes an email after the notice
    was stored and gets it; user 5 never does, and /deliveries says so."""
    nobody = await xadd(redis, keys, "5", "To nobody's mailbox", after=1)
    later = await xadd(redis, keys, "6", "To a later address", after=2)
    async with api.client() as svc:
        async def stored() -> bool:
            return await redis.exists(keys.notice(nobody), keys.notice(later)) == 2

        await eventually(stored, what="both notices stored")
        await add_user(redis, keys, "6")

        async def mailed() -> bool:
            return len(smtp.mails) == 1

        await eventually(mailed, timeout=15, what="the email to the later address")
        assert smtp.mails[0].rcpt_tos == ["u6@example.org"]

        async def skipped() -> list[dict]:
            return await log_of(svc, nobody)

        got = await eventually(skipped, timeout=15, what="user 5's delivery record")
    assert [(i["uid"], i["channel"], i["status"]) for i in got] == [
        ("5", "email", "skipped_no_address")]
