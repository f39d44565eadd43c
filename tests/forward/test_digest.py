"""Digests (issue 21 §2) against real parts: redis-server, `vestnik forwarder` processes and
an aiosmtpd sink. Notices are stored as the center stores them and their forward jobs
scheduled as the center schedules them; a channel entry (or the user's prefs) with a
`digest` policy turns a user's forwards within the window into ONE email."""

from __future__ import annotations

import re

import msgspec
from fwd_support import SmtpSink, deliveries, store_notice, store_user
from redis.asyncio import Redis

from support import Api, eventually
from vestnik.streams.forward import ForwardJob, add_forward_jobs, digest_member
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import Keys
from vestnik.streams.schemas import Notice, User, json_encode

SMTP_FROM = "vestnik@example.org"



def forwarder(start_proc, sink: SmtpSink):
    return start_proc("forwarder", VESTNIK_SMTP_URL=sink.url, VESTNIK_SMTP_FROM=SMTP_FROM,
                      VESTNIK_SEND_BACKOFF="0.2")


async def notify(redis: Redis, keys: Keys, uid: str, titles: list[str],
                 channels: dict, *, t0: int | None = None) -> list[str]:
    """Store one notice per title for `uid` (created 1 ms apart, in order) and schedule
    their forwards due now; returns their ids."""
    t0 = t0 or now_ms()
    nids = []
    for i, title in enumerate(titles):
        nid = ulid()
        await store_notice(redis, keys, Notice(
            id=nid, alert="disk", title=title, severity="warning", recipients=[uid],
            link=f"https://example.org/n/{i}", channels=channels, created_at=t0 + i))
        nids.append(nid)
    async with redis.pipeline(transaction=False) as pipe:
        add_forward_jobs(pipe, keys, [ForwardJob(nid, uid, now_ms()) for nid in nids])
        await pipe.execute()
    return nids


def text_of(mail) -> str:
    msg = mail.msg
    part = msg.get_body(("plain",)) if msg.is_multipart() else msg
    return part.get_content()


async def statuses(redis: Redis, keys: Keys, nid: str) -> list[str]:
    return [d.status for d in await deliveries(redis, keys, nid)]


async def test_notices_within_a_window_go_as_one_email_newest_first_with_more(
        redis: Redis, keys: Keys, start_proc, smtp: SmtpSink):
    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    forwarder(start_proc, smtp)
    digest = {"email": {"digest": {"window": 2, "limit": 6}}}
    nids = await notify(redis, keys, "7", [f"Disk {i}" for i in range(10)], digest)

    async def all_digested() -> bool:
        return all([await statuses(redis, keys, n) == ["digested"] for n in nids])

    await eventually(all_digested, timeout=15, what="the 10 notices in the bucket")
    assert smtp.mails == []  # nothing went one by one

    async def mailed() -> bool:
        return len(smtp.mails) >= 1

    await eventually(mailed, timeout=20, what="the digest")
    assert len(smtp.mails) == 1
    text = text_of(smtp.mails[0])
    # each notice: "[SEVERITY] title (time)", its link on the next line; newest first
    titles = re.findall(r"^\[WARNING\] (Disk \d) \(", text, flags=re.M)
    assert titles == ["Disk 9", "Disk 8", "Disk 7", "Disk 6", "Disk 5", "Disk 4"]
    assert re.search(r"Disk 9 .*\n\s+https://example.org/n/9\n", text)
    assert "and 4 more" in text
    did = smtp.mails[0].msg["X-Vestnik-Notice"]
    for n in nids:
        got = await deliveries(redis, keys, n)
        assert [d.status for d in got] == ["digested", "sent"]
        assert got[1].detail.startswith(f"digest {did}") and got[1].channel == "email"
    # the digest emptied what it took and owns nothing more
    assert not await redis.exists(keys.digest("7", "email"), keys.digests("7"))
    assert await redis.zcard(keys.digest_due) == 0


async def test_read_or_resolved_before_the_digest_is_left_out(
        redis: Redis, keys: Keys, start_proc, smtp: SmtpSink):
    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    forwarder(start_proc, smtp)
    # the window leaves time to mark them after their jobs recorded them (a loaded box, a
    # cluster's four round trips per add)
    digest = {"email": {"digest": {"window": 5}}}
    kept, read, resolved = await notify(redis, keys, "7", ["Kept", "Read", "Resolved"], digest)

    async def digested() -> bool:
        return all([await statuses(redis, keys, n) == ["digested"]
                    for n in (kept, read, resolved)])

    await eventually(digested, timeout=15, what="the notices in the bucket")
    # read in the inbox, resolved by its alert, before the window ends
    await redis.zadd(keys.read("7"), {read: 1})
    body = msgspec.json.decode(await redis.get(keys.notice(resolved)))
    await redis.set(keys.notice(resolved), json_encode({**body, "status": "resolved",
                                                        "resolved_at": now_ms()}))

    async def mailed() -> bool:
        return len(smtp.mails) >= 1

    await eventually(mailed, timeout=20, what="the digest")
    text = text_of(smtp.mails[0])
    assert "Kept" in text and "Read" not in text and "Resolved" not in text
    assert await statuses(redis, keys, kept) == ["digested", "sent"]
    assert await statuses(redis, keys, read) == ["digested", "skipped_read"]
    assert await statuses(redis, keys, resolved) == ["digested", "skipped_resolved"]


async def test_at_most_one_digest_per_window(redis: Redis, keys: Keys, start_proc,
                                             smtp: SmtpSink):
    """Notices that fall due after a digest left wait for the next one, a whole window
    after it; the two have different ids."""
    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    forwarder(start_proc, smtp)
    digest = {"email": {"digest": {"window": 2}}}
    first = await notify(redis, keys, "7", ["A1", "A2"], digest)

    async def mails(n: int):
        async def check() -> bool:
            return len(smtp.mails) >= n
        return check

    await eventually(await mails(1), timeout=20, what="the first digest")
    sent_at = (await deliveries(redis, keys, first[0]))[-1].at
    second = await notify(redis, keys, "7", ["B1"], digest)

    async def waiting() -> int:
        due = await redis.hget(keys.digests("7"), "email")
        return int(due) if due else 0

    due = await eventually(waiting, timeout=15, what="the second digest scheduled")
    assert due >= sent_at + 2000  # not before a window has passed since the first
    await eventually(await mails(2), timeout=20, what="the second digest")
    one, two = (text_of(m) for m in smtp.mails)
    assert "A1" in one and "A2" in one and "B1" not in one
    assert "B1" in two and "A1" not in two
    assert smtp.mails[0].msg["X-Vestnik-Notice"] != smtp.mails[1].msg["X-Vestnik-Notice"]
    assert await statuses(redis, keys, second[0]) == ["digested", "sent"]


async def test_user_prefs_digest_overrides_the_settings(redis: Redis, keys: Keys, start_proc,
                                                        smtp: SmtpSink):
    """User 7 wants a digest where the setting sends one by one; user 8 switched the
    setting's digest off (`false`); user 9's bad prefs value counts as no digest."""
    await store_user(redis, keys, User(id="7", email="u7@example.org",
                                       prefs={"digest": {"email": {"window": 1.5}}}))
    await store_user(redis, keys, User(id="8", email="u8@example.org",
                                       prefs={"digest": {"email": False}}))
    await store_user(redis, keys, User(id="9", email="u9@example.org",
                                       prefs={"digest": {"email": {"window": -1}}}))
    proc = forwarder(start_proc, smtp)
    plain = await notify(redis, keys, "7", ["P1", "P2", "P3"], {"email": {}})
    off = await notify(redis, keys, "8", ["O1", "O2"], {"email": {"digest": {"window": 1}}})
    bad = await notify(redis, keys, "9", ["X1", "X2"], {"email": {"digest": {"window": 1}}})

    async def mailed() -> bool:
        return len(smtp.mails) >= 5

    await eventually(mailed, timeout=20, what="one digest and four single emails")
    by_rcpt: dict[str, list[str]] = {}
    for m in smtp.mails:
        by_rcpt.setdefault(m.rcpt_tos[0], []).append(text_of(m))
    assert len(by_rcpt["u7@example.org"]) == 1
    assert all(t in by_rcpt["u7@example.org"][0] for t in ("P1", "P2", "P3"))
    assert len(by_rcpt["u8@example.org"]) == 2 and len(by_rcpt["u9@example.org"]) == 2
    assert await statuses(redis, keys, plain[0]) == ["digested", "sent"]
    assert await statuses(redis, keys, off[0]) == ["sent"]
    assert await statuses(redis, keys, bad[0]) == ["sent"]
    assert proc.output().count("prefs.digest.email ignored") == 1  # logged once


async def test_a_digest_cut_short_by_a_crash_is_sent_once_after_the_lease(
        redis: Redis, keys: Keys, start_proc):
    """A forwarder killed while its SMTP server holds the digest's DATA never finished it:
    once the lease is over (here: its score moved to now, as time would) another forwarder
    sends it, once, with the same id."""
    slow = SmtpSink(delay=60).start()
    fast = SmtpSink().start()
    try:
        await store_user(redis, keys, User(id="7", email="u7@example.org"))
        first = forwarder(start_proc, slow)
        nids = await notify(redis, keys, "7", ["C1", "C2"], {"email": {"digest": {"window": 1}}})

        async def in_flight() -> bool:
            lease = await redis.zscore(keys.digest_due, digest_member("7", "email"))
            # leased to the first forwarder (its score past now), which talks to the server
            return bool(slow.peers) and lease is not None and lease > now_ms()

        await eventually(in_flight, timeout=20, what="the digest on the slow server")
        first.kill()
        await redis.zadd(keys.digest_due, {digest_member("7", "email"): now_ms()})
        forwarder(start_proc, fast)

        async def sent() -> bool:
            return await statuses(redis, keys, nids[0]) == ["digested", "sent"]

        await eventually(sent, timeout=20, what="the digest sent by the second forwarder")
        assert len(fast.mails) == 1 and slow.mails == []
        assert await redis.zcard(keys.digest_due) == 0
    finally:
        slow.stop()
        fast.stop()


async def test_two_forwarders_send_each_digest_once(redis: Redis, keys: Keys, start_proc,
                                                    smtp: SmtpSink):
    users = [str(u) for u in range(20, 40)]
    for u in users:
        await store_user(redis, keys, User(id=u, email=f"u{u}@example.org"))
    forwarder(start_proc, smtp)
    forwarder(start_proc, smtp)
    for u in users:
        await notify(redis, keys, u, [f"{u}-a", f"{u}-b"], {"email": {"digest": {"window": 1}}})

    async def all_mailed() -> bool:
        return len(smtp.mails) >= len(users) and await redis.zcard(keys.digest_due) == 0

    await eventually(all_mailed, timeout=30, what="a digest for every user")
    assert sorted(m.rcpt_tos[0] for m in smtp.mails) == sorted(f"u{u}@example.org"
                                                              for u in users)


async def test_a_hostile_window_is_refused_at_settings_time(api: Api):
    async with api.client() as svc:
        for window in (-1, 0, 10 * 86_400, "3600", None):
            r = await svc.post("/api/v1/settings", json={
                "name": "disk", "channel": {"email": {"digest": {"window": window}}}})
            assert r.status_code == 422, (window, r.text)
            assert "$.channel.email.digest.window" in r.text, r.text
        r = await svc.post("/api/v1/settings", json={
            "name": "disk", "channel": {"email": {"digest": {"window": 60, "limit": 0}}}})
        assert r.status_code == 422 and "$.channel.email.digest.limit" in r.text, r.text
        r = await svc.post("/api/v1/settings", json={
            "name": "disk", "channel": {"email": {"digest": {"window": 3600, "limit": 10}}}})
        assert r.status_code in (200, 201), r.text


async def test_a_digest_the_mail_server_refuses_for_now_is_retried(
        redis: Redis, keys: Keys, start_proc):
    """The SMTP server is down when the digest falls due: recorded `retrying`, sent with
    the same id once it is back."""
    sink = SmtpSink()  # not started: connections refused
    try:
        await store_user(redis, keys, User(id="7", email="u7@example.org"))
        forwarder(start_proc, sink)
        nids = await notify(redis, keys, "7", ["R1", "R2"], {"email": {"digest": {"window": 1}}})

        async def retrying() -> bool:
            return "retrying" in await statuses(redis, keys, nids[0])

        await eventually(retrying, timeout=20, what="a failed first try")
        sink.start()

        async def sent() -> bool:
            return (await statuses(redis, keys, nids[0]))[-1] == "sent"

        await eventually(sent, timeout=20, what="the digest after the server is back")
        assert len(sink.mails) == 1
        text = text_of(sink.mails[0])
        assert "R1" in text and "R2" in text
    finally:
        sink.stop()


async def test_the_purge_of_a_deleted_user_drops_their_digests(redis: Redis, keys: Keys,
                                                               start_proc, smtp: SmtpSink):
    from vestnik.streams.center.inbox import purge_users

    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    forwarder(start_proc, smtp)
    nids = await notify(redis, keys, "7", ["G1"], {"email": {"digest": {"window": 2}}})

    async def digested() -> bool:
        return await statuses(redis, keys, nids[0]) == ["digested"]

    await eventually(digested, timeout=15, what="the notice in the bucket")
    await redis.hdel(keys.state("user"), "7")
    assert await purge_users(redis, keys, ["7"]) == 1
    assert not await redis.exists(keys.digest("7", "email"), keys.digests("7"))

    async def dropped() -> bool:  # its due member finds nothing pending
        return await redis.zcard(keys.digest_due) == 0

    await eventually(dropped, timeout=15, what="the due digest dropped")
    assert smtp.mails == []


async def test_a_setting_with_a_digest_through_the_center(redis: Redis, keys: Keys,
                                                          start_proc, smtp: SmtpSink):
    """From XADD to one email: the center stores the notices and runs their forwards
    inline, which put them in the bucket; its forwarder sends the digest."""
    start_proc("center", VESTNIK_SMTP_URL=smtp.url, VESTNIK_SMTP_FROM=SMTP_FROM)
    await store_user(redis, keys, User(id="7", name="Seven", email="u7@example.org"))
    channels = msgspec.json.encode({"email": {"digest": {"window": 2}}, "forward_after": 0})
    for i in range(3):
        await redis.xadd(keys.notices, {"alert": "disk", "title": f"Disk {i}",
                                        "recipients": "7", "channels": channels})

    async def mailed() -> bool:
        return len(smtp.mails) >= 1

    await eventually(mailed, timeout=30, what="the digest")
    text = text_of(smtp.mails[0])
    assert text.index("Disk 2") < text.index("Disk 1") < text.index("Disk 0")
    assert len(smtp.mails) == 1


def test_two_settings_of_one_alert_keep_the_digest():
    """The center merges the channel maps of an alert's settings: the digest of the first
    that has one stays (as its url and secret do)."""
    from vestnik.streams.center.plan import merge_channels
    from vestnik.streams.schemas import AlertSetting, ChannelMap, convert

    def setting(channel: dict) -> AlertSetting:
        return AlertSetting(id=ulid(), name="disk", channel=convert(channel, ChannelMap))

    merged = merge_channels([setting({"email": {"users": ["1"]}}),
                             setting({"email": {"users": ["2"], "digest": {"window": 60}}})])
    target = merged.targets["email"]
    assert target.digest is not None and target.digest.window == 60
    assert target.users == ("1", "2")
