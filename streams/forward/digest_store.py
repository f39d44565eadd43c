"""Where digests live in Redis (streams.forward.digest): on a single Redis each step is one
script call for a whole batch; on a Redis Cluster the same steps split by slot.

Slots on a cluster: a user's bucket and pending-digests hash share the user's tag
(`{u:<uid>}`, with the feed and the read set); the due set is one key of its own; the
`digested` and sent markers and the attempt records are forward keys (their notice's or
digest's id picks the tag); the bodies and the users hash live elsewhere again. So each
step is one pipeline per round trip (commands and per-user scripts, each in its slot), in
an order chosen so that a crash between two of them never loses a notice from a bucket
and never sends a digest twice within its sent marker's day:

Adding (the forward jobs that start together)
    1. EXISTS each `digested` marker: a re-run job's notice went in before; skipped.
    2. per user (digest_user_add.lua): ZADD the notices to their buckets (NX), schedule
       a pending digest where none is (hash fields), say which were scheduled now.
    3. the due set: ZADD each member at its due time (NX where the digest was pending
       already: that repairs a member a crash left missing; a plain ZADD where it is
       new, which also tells an end in flight that an add came, see Ending).
    4. SET the `digested` markers.
    A job that dies before 4 runs again (its claim expires) and redoes 2 and 3, which are
    idempotent: nothing is lost; one that dies after 4 left everything in place. (A job
    that dies between 2 and 4 and runs again only after that digest went puts its notice
    in the next digest too: at least once, as single forwards.)

Reading (the digests a poll claimed)
    1. per user (digest_user_read.lua): the pending digest and its bucket's due notices
       with their feed state; the users hash (HMGET) in the same round trip.
    2. the sent marker of each digest's id (EXISTS) and the bodies (GET for the unread,
       EXISTS for the rest: a read notice whose body is gone counts as gone, as on a
       single Redis).
    A pending digest whose due time is still ahead (its member's lease ran out after a
    crash between the two steps of Ending) is not sent: its member goes back to that time.

Ending (the digests that ended together)
    1. SET the sent marker, RPUSH the attempt records, and per user (digest_user_end.lua)
       the taken notices leave the bucket and the digest is rescheduled (a new id) or
       cleared: one pipeline. Whichever of marker and user part lands alone, the digest is
       not sent again: the marker makes the next read see it sent (and take the notices it
       listed out of the bucket), the user part gives the digest a new id or clears it.
    2. the due set (digest_due_end.lua): the member at its next due time, or gone when
       nothing is pending -- unless its score is no longer the claim's lease (a lease ends
       on a half ms, a due time never does): an add scheduled a new digest since step 1
       cleared the old one, and the member stays for it.
    A crash between 1 and 2 leaves the member at its lease: after the lease the digest is
    read again and finds its next due time ahead (back to the due set), or nothing pending
    (the member goes).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from vestnik.streams import lua
from vestnik.streams.forward.job import DELIVERIES_TTL_S, MARKER_TTL_S
from vestnik.streams.forward.schedule import msgpack_encode
from vestnik.streams.ids import encode_ulid, now_ms
from vestnik.streams.keys import USER_TOPIC, Keys

MARGIN_MS = 86_400_000  # a bucket outlives its digest's due time by this (forwarders down)
TAKE_MAX = 1000  # notices read from one bucket per digest (the rest: the next one)
GONE, READ = 0, 1  # a notice's state as a read says it (above: unread, seq + 1)

# a single Redis: one call per batch
_ADD = lua.script("forward/digest_add.lua")
_CLAIM = lua.script("forward/digest_claim.lua")
_READ = lua.script("forward/digest_read.lua")
_DONE = lua.script("forward/digest_done.lua")
# a Redis Cluster: the user's part of each (one slot), the due set's part of the end
_USER_ADD = lua.script("forward/digest_user_add.lua")
_USER_READ = lua.script("forward/digest_user_read.lua")
_USER_END = lua.script("forward/digest_user_end.lua")
_DUE_END = lua.script("forward/digest_due_end.lua")


def digest_member(uid: str, channel: str) -> bytes:
    """The member of `Keys.digest_due` for `uid`'s digest on `channel`."""
    return msgpack_encode([uid, channel])


def digest_id(uid: str, channel: str, due_ms: int) -> str:
    """The id of `uid`'s digest on `channel` due at `due_ms`: a ULID (time-sortable, safe in
    a Message-ID or a webhook-id), the same for every run of that digest."""
    h = hashlib.blake2b(f"{uid}\x00{channel}".encode(), digest_size=10).digest()
    return encode_ulid(due_ms, int.from_bytes(h, "big"))


class Add(msgspec.Struct, array_like=True):
    """One notice into one of its user's buckets (an item of digest_add.lua, in order)."""

    bucket: str
    hash: str  # the user's pending digests (`Keys.digests`)
    channel: str
    nid: str
    member: bytes | int  # the due set member; its ARGV index once sent to digest_add.lua
    marker: str  # `Keys.digested`
    window: int  # ms
    due: int  # ms: when a digest scheduled now is due
    id: str  # that digest's id


class End(msgspec.Struct, array_like=True):
    """The end of one digest (an item of digest_done.lua, in order, then the lease)."""

    bucket: str
    hash: str
    channel: str
    member: bytes | int  # its ARGV index once sent to digest_done.lua
    taken: list[str]  # the notices that leave the bucket
    outcome: str  # done | retry | drop | later (the last: a cluster's only)
    ms: int  # the next digest's due time (done), the retry's (retry)
    next_id: str
    marker: str  # the sent marker to set, or ""
    records: list[tuple[str, list[str]]]  # (deliveries key, record JSONs)
    lease: float = 0.0  # the member's score as the claim left it (a cluster's end)


class DigestStore:
    """The digests' Redis calls, by batch: the one-script path or the per-slot one."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self.cluster = keys.cluster

    # ------------------------------------------------------------------ adding

    async def add(self, items: list[Add]) -> list[int]:
        """Each notice into its bucket; per item its digest's due ms, or -1 when its
        `digested` marker says it went in before."""
        if self.cluster:
            return await self._add_slots(items)
        members = []
        for i, it in enumerate(items):  # binary: an ARGV of its own (digest_add.lua)
            members.append(it.member)
            it.member = 5 + i
        dues = await _ADD(keys=[self.keys.digest_due],
                          args=[msgpack_encode(items), now_ms(), MARKER_TTL_S, MARGIN_MS,
                                *members], client=self.redis)
        return [int(d) for d in dues]

    async def _add_slots(self, items: list[Add]) -> list[int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for it in items:
                pipe.exists(it.marker)
            seen = await pipe.execute()
        fresh = [it for it, s in zip(items, seen, strict=True) if not int(s)]
        if not fresh:
            return [-1] * len(items)
        by_user: dict[str, list[Add]] = {}
        for it in fresh:
            by_user.setdefault(it.hash, []).append(it)
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for hash_key, mine in by_user.items():
                buckets: list[str] = []
                args: list[Any] = [now, MARGIN_MS]
                for it in mine:
                    if it.bucket not in buckets:
                        buckets.append(it.bucket)
                    args += [2 + buckets.index(it.bucket), it.channel, it.nid, it.window,
                             it.due, it.id]
                await _USER_ADD(keys=[hash_key, *buckets], args=args, client=pipe)
            replies = await pipe.execute()
        due_of: dict[int, int] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for mine, reply in zip(by_user.values(), replies, strict=True):
                for it, (due, new) in zip(mine, reply, strict=True):
                    due_of[id(it)] = int(due)
                    pipe.zadd(self.keys.digest_due, {it.member: int(due)}, nx=not int(new))
            await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for it in fresh:
                pipe.set(it.marker, "1", nx=True, ex=MARKER_TTL_S)
            await pipe.execute()
        return [due_of.get(id(it), -1) for it in items]

    # ------------------------------------------------------------------ reading

    async def claim(self, now: int, lease_ms: int, limit: int) -> tuple[list[bytes], float]:
        """At most `limit` due members, and the score they got: the end of their lease,
        now + lease_ms + 0.5 (a half ms: see digest_claim.lua)."""
        lease = now + lease_ms + 0.5
        got: list[bytes] = await _CLAIM(keys=[self.keys.digest_due],
                                        args=[now, repr(lease), limit], client=self.redis)
        return got, lease

    async def read(self, who: list[tuple[str, str]]) -> tuple[list[Any], list[bool]]:
        """Per (uid, channel): false when no digest is pending, else [due ms, tries, window
        ms, digest id, the user's record or None, then per notice its id, state (GONE,
        READ or seq + 1) and body (unread only)]; and per digest whether its sent marker
        is set (a single Redis never meets one: digest_read.lua)."""
        k = self.keys
        if not self.cluster:
            replies = await _READ(keys=[], args=[msgpack_encode([
                k.state(USER_TOPIC), k.notice(""), TAKE_MAX,
                [[k.digests(uid), ch, k.digest(uid, ch), uid, k.feed(uid), k.read(uid)]
                 for uid, ch in who]])], client=self.redis)
            return replies, [False] * len(replies)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(k.state(USER_TOPIC), [uid for uid, _ in who])
            for uid, ch in who:
                await _USER_READ(keys=[k.digests(uid), k.digest(uid, ch), k.feed(uid),
                                       k.read(uid)], args=[ch, TAKE_MAX], client=pipe)
            users, *mine = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for (uid, ch), m in zip(who, mine, strict=True):
                if not m:
                    continue
                if not m[3]:  # stored before digests kept their id
                    m[3] = digest_id(uid, ch, int(m[0])).encode()
                pipe.exists(k.sent_marker(m[3].decode(), uid, ch))
                for i in range(4, len(m), 2):
                    nid = m[i].decode()
                    if int(m[i + 1]) > READ:
                        pipe.get(k.notice(nid))
                    else:
                        pipe.exists(k.notice(nid))
            got = await pipe.execute() if len(pipe) else []
        replies: list[Any] = []
        sent: list[bool] = []
        at = 0
        for m, user in zip(mine, users, strict=True):
            if not m:
                replies.append(False)
                sent.append(False)
                continue
            sent.append(bool(got[at]))
            at += 1
            r = [m[0], m[1], m[2], m[3], user]
            for i in range(4, len(m), 2):
                state, x = int(m[i + 1]), got[at]
                at += 1
                if state > READ:
                    r += [m[i], state if x is not None else GONE, x]
                else:
                    r += [m[i], READ if x else GONE, None]
            replies.append(r)
        return replies, sent

    # ------------------------------------------------------------------ ending

    async def end(self, ends: list[End]) -> None:
        """The digests' ends (see End): records, markers, buckets, hash, due set."""
        if self.cluster:
            return await self._end_slots(ends)
        members = []
        for i, e in enumerate(ends):  # binary: an ARGV of its own (digest_done.lua)
            members.append(e.member)
            e.member = 2 + i
        await _DONE(keys=[self.keys.digest_due], args=[msgpack_encode(
            [[MARKER_TTL_S, DELIVERIES_TTL_S, MARGIN_MS, now_ms()], ends]), *members],
                    client=self.redis)
        return None

    async def _end_slots(self, ends: list[End]) -> None:
        now = now_ms()
        at: list[int] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for e in ends:
                if e.marker:
                    pipe.set(e.marker, "1", nx=True, ex=MARKER_TTL_S)
                for key, recs in e.records:
                    pipe.rpush(key, *recs)
                    pipe.expire(key, DELIVERIES_TTL_S)
                at.append(len(pipe))
                await _USER_END(keys=[e.hash, e.bucket],
                                args=[e.channel, e.outcome, e.ms, e.next_id, now, MARGIN_MS,
                                      *e.taken], client=pipe)
            res = await pipe.execute()
        args: list[Any] = []
        for e, i in zip(ends, at, strict=True):
            args += [e.member, int(res[i]), repr(e.lease)]
        await _DUE_END(keys=[self.keys.digest_due], args=args, client=self.redis)
        return None
