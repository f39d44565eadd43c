"""Digests on a Redis Cluster (issue 23): a user's bucket and pending digest live in the
user's slot, the due set in its own, the markers, records and bodies in others, so the
forwarder runs each step per slot (streams.forward.digest_store). The first test runs on
a single Redis too; the others build what a crash between two of those steps leaves,
which only a cluster can leave (one Redis does each step in one script), and check that
the user still gets every notice once. Real parts: redis-server(s), `vestnik forwarder`
processes, an aiosmtpd sink."""

from __future__ import annotations

import pytest
from fwd_support import SmtpSink, deliveries, store_notice, store_user
from redis.asyncio import Redis
from test_digest import forwarder, notify, statuses, text_of

from support import eventually
from vestnik.streams.forward import digest_id, digest_member
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import Keys
from vestnik.streams.schemas import Notice, User

DIGEST = {"email": {"digest": {"window": 2}}}


async def user_off_the_due_set_master(redis: Redis, keys: Keys, on_cluster: bool) -> str:
    """A uid whose keys live on another master than the due set (any uid on one Redis)."""
    if not on_cluster:
        return "7"
    await redis.initialize()  # type: ignore[attr-defined]  # the slot map
    due_node = redis.get_node_from_key(keys.digest_due)
    for u in range(7, 200):  # bounded: a third of all uids are on the due set's master
        if redis.get_node_from_key(keys.digests(str(u))) != due_node:
            return str(u)
    raise AssertionError("every uid on the due set's master")


async def test_a_window_of_notices_is_one_email_without_the_read_ones(
        redis: Redis, keys: Keys, start_proc, smtp: SmtpSink, on_cluster: bool):
    uid = await user_off_the_due_set_master(redis, keys, on_cluster)
    await store_user(redis, keys, User(id=uid, email="u@example.org"))
    forwarder(start_proc, smtp)
    nids = await notify(redis, keys, uid, ["Disk A", "Disk B", "Disk C", "Disk D"], DIGEST)

    async def digested() -> bool:
        return all([await statuses(redis, keys, n) == ["digested"] for n in nids])

    await eventually(digested, timeout=15, what="the notices in the bucket")
    await redis.zadd(keys.read(uid), {nids[1]: 2})  # read in the inbox before the window ends

    async def done() -> bool:  # mailed, and nothing pending that could mail again
        return bool(smtp.mails) and await redis.zcard(keys.digest_due) == 0

    await eventually(done, timeout=20, what="the digest")
    assert len(smtp.mails) == 1
    text = text_of(smtp.mails[0])
    assert text.index("Disk D") < text.index("Disk C") < text.index("Disk A")
    assert "Disk B" not in text
    assert await statuses(redis, keys, nids[1]) == ["digested", "skipped_read"]
    for n in (nids[0], nids[2], nids[3]):
        assert await statuses(redis, keys, n) == ["digested", "sent"]
    assert not await redis.exists(keys.digest(uid, "email"), keys.digests(uid))
    assert all([await redis.exists(keys.digested(n, uid, "email")) for n in nids])


async def _bucket(redis: Redis, keys: Keys, uid: str, titles: list[str], at: int
                  ) -> list[str]:
    """Store notices for `uid` (unread) and put them in the email bucket at `at` ms, as
    the forward jobs would have (a `digested` record and marker each)."""
    nids = []
    for i, title in enumerate(titles):
        nid = ulid()
        await store_notice(redis, keys, Notice(
            id=nid, alert="disk", title=title, severity="warning", recipients=[uid],
            channels=DIGEST, created_at=at + i))
        await redis.zadd(keys.digest(uid, "email"), {nid: at + i})
        await redis.set(keys.digested(nid, uid, "email"), "1", ex=86_400)
        nids.append(nid)
    return nids


async def _pending(redis: Redis, keys: Keys, uid: str, due: int, did: str,
                   member_at: float | None) -> None:
    await redis.hset(keys.digests(uid), mapping={"email": due, "email:window": 2000,
                                                 "email:id": did})
    if member_at is not None:
        await redis.zadd(keys.digest_due, {digest_member(uid, "email"): member_at})


@pytest.fixture
def cluster_only(on_cluster: bool) -> None:
    if not on_cluster:
        pytest.skip("the state of a crash between per-slot steps: a cluster's only")


@pytest.mark.usefixtures("cluster_only")
async def test_an_end_cut_short_after_its_sent_marker_sends_nothing_twice(
        redis: Redis, keys: Keys, start_proc, smtp: SmtpSink):
    """The forwarder died after the digest's sent marker landed and before its user's part
    (the bucket, the next id) did; its lease ran out. The listed notices are not mailed
    again; one that came after the digest's due time goes in the next one."""
    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    due = now_ms() - 5000
    sent = await _bucket(redis, keys, "7", ["Old 1", "Old 2"], due - 2000)
    late = await _bucket(redis, keys, "7", ["New 1"], due + 1000)
    did = digest_id("7", "email", due)
    await _pending(redis, keys, "7", due, did, member_at=now_ms())
    await redis.set(keys.sent_marker(did, "7", "email"), "1", ex=86_400)
    forwarder(start_proc, smtp)

    async def mailed() -> bool:
        return bool(smtp.mails) and await redis.zcard(keys.digest_due) == 0

    await eventually(mailed, timeout=20, what="the next digest")
    assert len(smtp.mails) == 1
    text = text_of(smtp.mails[0])
    assert "New 1" in text and "Old" not in text
    assert smtp.mails[0].msg["X-Vestnik-Notice"] != did
    assert await statuses(redis, keys, late[0]) == ["sent"]
    assert await statuses(redis, keys, sent[0]) == []  # (its records went with the crash)
    assert not await redis.exists(keys.digest("7", "email"), keys.digests("7"))


@pytest.mark.usefixtures("cluster_only")
async def test_an_end_cut_short_before_the_due_set_waits_for_the_next_due_time(
        redis: Redis, keys: Keys, start_proc, smtp: SmtpSink):
    """The forwarder died after its user's part scheduled the next digest (a notice came
    meanwhile) and before the due set heard of it: the member's lease ran out first. The
    next digest is not sent early: its member goes back to its due time, then it is sent."""
    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    nxt = now_ms() + 3000
    nids = await _bucket(redis, keys, "7", ["Next 1"], now_ms() - 500)
    await _pending(redis, keys, "7", nxt, digest_id("7", "email", nxt), member_at=now_ms())
    forwarder(start_proc, smtp)

    async def back() -> bool:
        return await redis.zscore(keys.digest_due, digest_member("7", "email")) == nxt

    await eventually(back, timeout=15, what="the member back at the next due time")
    assert smtp.mails == []

    async def mailed() -> bool:
        return bool(smtp.mails) and await redis.zcard(keys.digest_due) == 0

    await eventually(mailed, timeout=20, what="the next digest")
    assert len(smtp.mails) == 1 and "Next 1" in text_of(smtp.mails[0])
    got = await deliveries(redis, keys, nids[0])
    assert [d.status for d in got] == ["sent"] and got[0].at >= nxt


@pytest.mark.usefixtures("cluster_only")
async def test_an_add_cut_short_before_the_due_set_is_mended_by_the_jobs_rerun(
        redis: Redis, keys: Keys, start_proc, smtp: SmtpSink):
    """The forward job died after its user's part (the bucket, a new pending digest) and
    before the due set got the digest's member: no forwarder would ever look. The job runs
    again (its claim ran out), finds the notice in and the member missing, adds it."""
    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    nid = ulid()
    await store_notice(redis, keys, Notice(id=nid, alert="disk", title="Lone", recipients=["7"],
                                           severity="warning", channels=DIGEST,
                                           created_at=now_ms()))
    due = now_ms() + 1000
    await redis.zadd(keys.digest(uid := "7", "email"), {nid: now_ms()})
    await _pending(redis, keys, uid, due, digest_id(uid, "email", due), member_at=None)
    forwarder(start_proc, smtp)
    from vestnik.streams.forward import ForwardJob, add_forward_jobs

    async with redis.pipeline(transaction=False) as pipe:  # the job's second run
        add_forward_jobs(pipe, keys, [ForwardJob(nid, uid, now_ms())])
        await pipe.execute()

    async def mailed() -> bool:
        return bool(smtp.mails) and await redis.zcard(keys.digest_due) == 0

    await eventually(mailed, timeout=20, what="the digest")
    assert len(smtp.mails) == 1 and "Lone" in text_of(smtp.mails[0])
    assert await statuses(redis, keys, nid) == ["digested", "sent"]


@pytest.mark.usefixtures("cluster_only")
async def test_an_add_between_the_two_steps_of_an_end_keeps_its_member(
        redis: Redis, keys: Keys, start_proc, smtp: SmtpSink):
    """An end's user part cleared the user's last digest; before its due set part ran, a
    new notice came and scheduled the next digest. The due set part must not remove the
    member the new digest needs (its score is no longer the end's lease): it is mailed."""
    from vestnik.streams import lua
    from vestnik.streams.forward.digest_store import Add, DigestStore

    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    store = DigestStore(redis, keys)
    old = now_ms() - 3000
    taken = await _bucket(redis, keys, "7", ["Old"], old - 1000)
    await _pending(redis, keys, "7", old, digest_id("7", "email", old), member_at=old)
    now = now_ms()
    members, lease = await store.claim(now, 120_000, 10)
    assert members == [digest_member("7", "email")]
    assert await lua.script("forward/digest_user_end.lua")(  # the end's user part
        keys=[keys.digests("7"), keys.digest("7", "email")],
        args=["email", "done", now + 2000, "", now, 86_400_000, *taken], client=redis) == 0
    new = ulid()  # the add, all its steps
    await store_notice(redis, keys, Notice(id=new, alert="disk", title="New", recipients=["7"],
                                           severity="warning", channels=DIGEST,
                                           created_at=now_ms()))
    due = now_ms() + 1000
    assert await store.add([Add(keys.digest("7", "email"), keys.digests("7"), "email", new,
                                digest_member("7", "email"), keys.digested(new, "7", "email"),
                                2000, due, digest_id("7", "email", due))]) == [due]
    assert await lua.script("forward/digest_due_end.lua")(  # the end's due set part
        keys=[keys.digest_due], args=[digest_member("7", "email"), 0, repr(lease)],
        client=redis) == 0
    forwarder(start_proc, smtp)

    async def mailed() -> bool:
        return bool(smtp.mails) and await redis.zcard(keys.digest_due) == 0

    await eventually(mailed, timeout=20, what="the new digest")
    assert len(smtp.mails) == 1 and "New" in text_of(smtp.mails[0])
