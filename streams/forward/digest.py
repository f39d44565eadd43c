"""Digests: a user's notices due on one channel within a window, sent as ONE message.

Policy
    `digest: {"window": s, "limit"?: n}` on a channel entry (`ChannelTarget.digest`), or
    in the user's prefs per channel (`prefs: {"digest": {"email": {"window": 3600}}}`),
    which wins (`false` there: no digest on that channel). A bad prefs value counts as no
    digest and is logged once (`policy_for`).

Filling (`Digests.divert`, called by a forward job where it would send)
    A channel with a policy for the user does not send: the notice goes into the user's
    bucket for the channel (`Keys.digest(uid, channel)`, zset nid -> ms it fell due) and is
    recorded `digested`. If the user has no digest pending on the channel, one is scheduled
    at now + window: a field `channel -> due ms` of `Keys.digests(uid)` and a member
    msgpack [uid, channel] of `Keys.digest_due` at that ms. A marker per notice, user and
    channel (`Keys.digested`, a day) keeps a re-run job from adding it again. The jobs that
    start together make one script call (digest_add.lua).

Sending (`Digests.run_due`, started by the forwarder's poll)
    The poll takes due members with a lease (digest_claim.lua moves each to now + lease:
    another forwarder does not see it meanwhile; a crashed one's digest is due again after
    it). For each: the bucket (notices that fell due up to the digest's due time), the
    user, then the bodies and read state, all in two pipelines shared by the digests that
    started together. Read, resolved or gone notices are dropped (`skipped_read`,
    `skipped_resolved`, `skipped_gone`), as are those the user's prefs now refuse; the rest
    go newest first, cut at the policy's `limit` ("and N more"), to the channel entry's
    target of the newest one, with `Channel.send_digest`. Each is recorded `sent` with
    detail `digest <id>`. What it took leaves the bucket; what came meanwhile waits for the
    next digest, due a window later: at most one digest per window, user and channel.
    `retry` results are retried with the jobs' backoff until `send_attempts`.

Idempotency
    The digest id is a ULID made of the digest's due time and a hash of user and channel:
    stable across retries and re-runs. After the send, a sent marker
    (`Keys.sent_marker(id, uid, channel)`, a day) is set in the same script that empties
    the bucket (digest_done.lua), so a re-run sends nothing twice; a process that dies
    between the other side's answer and that script resends the one digest (at least
    once, as single forwards).

Key owners: the bucket and the hash expire a day after their digest's due time and are
deleted when the digest empties them; a deleted user's are dropped by the purge
(center/purge_user.lua); markers expire.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from vestnik.streams import lua
from vestnik.streams.channels import Digest, SendResult
from vestnik.streams.coalesce import PerIteration
from vestnik.streams.forward.job import (
    DELIVERIES_TTL_S,
    MARKER_TTL_S,
    SEND_TIMEOUT_S,
    Delivery,
    DeliveryStatus,
    Forwarder,
    Send,
    read_many,
    read_state_commands,
    was_read,
)
from vestnik.streams.forward.schedule import msgpack_encode, user_routes
from vestnik.streams.ids import encode_ulid, now_ms
from vestnik.streams.keys import USER_TOPIC
from vestnik.streams.redis import RETRYABLE
from vestnik.streams.schemas import (
    ChannelTarget,
    DigestPolicy,
    Notice,
    User,
    decode_user,
    decoder,
    json_encode,
)

log = logging.getLogger("vestnik.forward.digest")

LEASE_S = 120.0  # a claimed digest is due again after this (its forwarder died)
BATCH = 256  # digests a poll takes and runs together
MARGIN_S = 86_400  # a bucket outlives its digest's due time by this (forwarders down)
TAKE_MAX = 1000  # notices read from one bucket per digest (the rest: the next one)
POLL_S = 0.25  # the least time between two looks at the due set when nothing was due
DEFAULT_LIMIT = 20

_ADD = lua.script("forward/digest_add.lua")
_CLAIM = lua.script("forward/digest_claim.lua")
_DONE = lua.script("forward/digest_done.lua")

_notice_decoder = decoder(Notice)
_member_decoder = msgspec.msgpack.Decoder(tuple[str, str])
_warned: set[tuple[str, str]] = set()  # (uid, channel) whose bad prefs were logged


def due_member(uid: str, channel: str) -> bytes:
    """The member of `Keys.digest_due` for `uid`'s digest on `channel`."""
    return msgpack_encode([uid, channel])


def digest_id(uid: str, channel: str, due_ms: int) -> str:
    """The id of `uid`'s digest on `channel` due at `due_ms`: a ULID (time-sortable, safe in
    a Message-ID or a webhook-id) that every run of that digest computes alike."""
    h = hashlib.blake2b(f"{uid}\x00{channel}".encode(), digest_size=10).digest()
    return encode_ulid(due_ms, int.from_bytes(h, "big"))


def policy_for(user: User, channel: str, target: ChannelTarget) -> DigestPolicy | None:
    """The digest policy of `channel` for `user`: the user's prefs (`prefs.digest.<channel>`;
    `false` or null: none) win over the channel entry's `digest`. A bad prefs value counts
    as none, logged once per user and channel."""
    mine = user.prefs.get("digest")
    if isinstance(mine, dict) and channel in mine:
        raw = mine[channel]
        if raw is None or raw is False:
            return None
        try:
            return msgspec.convert(raw, DigestPolicy)
        except msgspec.ValidationError as e:
            if (user.id, channel) not in _warned:
                if len(_warned) > 10_000:
                    _warned.clear()
                _warned.add((user.id, channel))
                log.warning("user %s: prefs.digest.%s ignored (no digest): %s", user.id,
                            channel, e)
            return None
    elif mine is not None and not isinstance(mine, dict) and (user.id, "") not in _warned:
        _warned.add((user.id, ""))
        log.warning("user %s: prefs.digest ignored: expected an object", user.id)
    return target.digest


class _Add(msgspec.Struct):
    """One notice into one bucket (a digest_add.lua item)."""

    channel: str
    window_ms: int


class _Claimed(msgspec.Struct):
    """What one due digest read: who, where, and its state."""

    uid: str
    channel: str
    member: bytes
    due: int = 0
    attempt: int = 1
    nids: list[str] = []


class Digests:
    """Diverts forwards into digests and sends the due ones; one per forwarder."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.fw = forwarder
        self.redis, self.keys = forwarder.redis, forwarder.keys
        self._adds: PerIteration[list[list[Any]], list[int]] = PerIteration(self._add_all)
        self._reads: PerIteration[Callable[[Any], None], list[Any]] = PerIteration(
            lambda adds: read_many(self.redis, adds))
        self._ends: PerIteration[list[Any], None] = PerIteration(self._done_all)
        self._next_poll = 0.0

    # ------------------------------------------------------------------ filling

    async def divert(self, notice: Notice, user: User, sends: list[Send],
                     records: list[Delivery], attempt: int) -> list[Send]:
        """The job's hook: of `sends` (to `user`), those whose channel has a digest policy
        go into the user's buckets (recorded in `records`); returns the others."""
        now_sends: list[Send] = []
        adds: list[_Add] = []
        for s in sends:
            policy = policy_for(user, s.channel, s.target)
            if policy is None:
                now_sends.append(s)
            else:
                adds.append(_Add(s.channel, int(policy.window * 1000)))
        if not adds:
            return sends
        k, uid = self.keys, user.id
        dues = await self._adds.submit([
            [k.digest(uid, a.channel), k.digests(uid), a.channel, notice.id,
             due_member(uid, a.channel), k.digested(notice.id, uid, a.channel), a.window_ms]
            for a in adds])  # the member goes as an ARGV of its own (_add_all)
        for a, due in zip(adds, dues, strict=True):
            if due >= 0:
                records.append(self.fw._rec(uid, a.channel, attempt, "digested",
                                            f"digest due at {due}"))
        return now_sends

    async def _add_all(self, batch: list[list[list[Any]]]) -> list[list[int] | BaseException]:
        items = [it for adds in batch for it in adds]
        members = []
        for i, it in enumerate(items):
            members.append(it[4])
            it[4] = 5 + i
        dues = await _ADD(keys=[self.keys.digest_due],
                          args=[msgpack_encode(items), now_ms(), MARKER_TTL_S, MARGIN_S * 1000,
                                *members], client=self.redis)
        out: list[list[int] | BaseException] = []
        at = 0
        for adds in batch:
            out.append([int(d) for d in dues[at:at + len(adds)]])
            at += len(adds)
        return out

    # ------------------------------------------------------------------ sending

    async def poll(self) -> int:
        """Run the due digests, a batch at a time, until none is due (the forwarder's poll
        starts it, one at a time); returns how many ran. Errors are logged: the leases
        bring the digests back."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_poll:
            return 0
        ran = 0
        try:
            while True:
                n = await self.run_due()
                ran += n
                if n < BATCH:
                    break
        except RETRYABLE as e:
            log.warning("digests: redis unavailable (%s); they run after the lease", e)
        except Exception:
            log.exception("digests: a batch failed; its digests run again after the lease")
        self._next_poll = loop.time() + POLL_S
        return ran

    async def run_due(self, limit: int = BATCH) -> int:
        """Take at most `limit` due digests (leased) and run them together."""
        members = await _CLAIM(keys=[self.keys.digest_due],
                               args=[now_ms(), int(LEASE_S * 1000), limit], client=self.redis)
        if not members:
            return 0
        results = await asyncio.gather(*(self._run(m) for m in members),
                                       return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                log.error("digest failed (runs again after the lease): %s: %s",
                          type(res).__name__, res)
        return len(members)

    async def _run(self, member: bytes) -> str:
        try:
            uid, channel = _member_decoder.decode(member)
        except msgspec.DecodeError:
            log.error("digest due member %r is not [uid, channel]: dropped", member[:100])
            await self.redis.zrem(self.keys.digest_due, member)
            return "bad member"
        d = _Claimed(uid, channel, member)
        k = self.keys

        def first(pipe: Any) -> None:
            pipe.hmget(k.digests(uid), [channel, f"{channel}:try"])
            pipe.zrange(k.digest(uid, channel), 0, TAKE_MAX - 1, withscores=True)
            pipe.hget(k.state(USER_TOPIC), uid)

        (due, tries), bucket, raw_user = await self._reads.submit(first)
        if due is None:  # no digest pending (a purged user, an expired hash)
            await self._ends.submit(self._end(d, [], "drop", "", []))
            return "none pending"
        d.due, d.attempt = int(due), int(tries or 0) + 1
        # what fell due up to the digest's due time; what came later waits for the next
        d.nids = [m.decode() for m, score in bucket if score <= d.due]
        user = User(id=uid) if raw_user is None else decode_user(uid, raw_user)
        if isinstance(user, str):
            log.warning("digest of %s: %s", uid, user)
            user = User(id=uid)
        did = digest_id(uid, channel, d.due)
        marker = k.sent_marker(did, uid, channel)

        def second(pipe: Any) -> None:
            pipe.exists(marker)
            for nid in d.nids:
                pipe.get(k.notice(nid))
                read_state_commands(pipe, k, uid, nid)

        replies = await self._reads.submit(second)
        if replies[0]:  # sent already (another forwarder past its lease): what is left waits
            await self._ends.submit(self._end(d, [], "done", "", []))
            return "already sent"
        return await self._send(d, user, did, marker, replies[1:])

    async def _send(self, d: _Claimed, user: User, did: str, marker: str,
                    replies: list[Any]) -> str:
        uid, channel, attempt = d.uid, d.channel, d.attempt
        rec = self.fw._rec
        records: list[tuple[str, Delivery]] = []
        dropped: list[str] = []
        kept: list[tuple[Notice, ChannelTarget]] = []
        for i, nid in enumerate(d.nids):
            body, in_feed, in_read = replies[3 * i:3 * i + 3]
            notice = self._drop(nid, body, in_feed, in_read)
            if isinstance(notice, tuple):
                dropped.append(nid)
                records.append((nid, rec(uid, channel, attempt, *notice)))
                continue
            # the user's prefs now (muted, switched off, no address): as a forward would
            route = next((r for r in user_routes(notice, user, self.fw.channels.addresses)
                          if r.channel == channel), None)
            if route is None or route.skip is not None:
                dropped.append(nid)
                records.append((nid, rec(uid, channel, attempt,
                                         route.skip if route else "skipped_pref",
                                         route.detail if route else
                                         f"{channel} no longer reaches user {uid}")))
                continue
            kept.append((notice, route.target))
        if not kept:
            await self._ends.submit(self._end(d, d.nids, "done", "", records))
            return "nothing to send"
        kept.sort(key=lambda nt: (nt[0].created_at, nt[0].id), reverse=True)
        target = kept[0][1]  # the channel entry of the newest notice
        policy = policy_for(user, channel, target)
        limit = policy.limit if policy is not None else DEFAULT_LIMIT
        listed = [n for n, _ in kept[:limit]]
        digest = Digest(id=did, notices=listed, more=len(kept) - len(listed))
        res = await self._send_one(digest, user, channel, target)
        if res.ok:
            more = f"digest {did} (in \"and {digest.more} more\")"
            records += [(n.id, rec(uid, channel, attempt, "sent",
                                   f"digest {did}" if i < limit else more))
                        for i, (n, _) in enumerate(kept)]
            await self._ends.submit(self._end(d, d.nids, "done", marker, records))
            return f"sent {len(kept)}"
        if res.status == "retry" and attempt < self.fw.settings.send_attempts:
            records += [(n.id, rec(uid, channel, attempt, "retrying",
                                   f"digest {did}: {res.detail}")) for n, _ in kept]
            delay = self.fw.backoff(attempt, res.retry_after)
            await self._ends.submit(self._end(d, dropped, "retry", "", records,
                                              now_ms() + int(delay * 1000)))
            return "retrying"
        records += [(n.id, rec(uid, channel, attempt, "failed", f"digest {did}: {res.detail}"))
                    for n, _ in kept]
        await self._ends.submit(self._end(d, d.nids, "done", "", records))
        return "failed"

    @staticmethod
    def _drop(nid: str, body: bytes | None, in_feed: object, in_read: object
              ) -> Notice | tuple[DeliveryStatus, str]:
        """The notice to list, or why it is dropped (status, detail)."""
        if body is None:
            return "skipped_gone", "the notice left every feed before its digest"
        if was_read(in_feed, in_read):
            return "skipped_read", "read before its digest"
        try:
            notice = _notice_decoder.decode(body)
        except msgspec.DecodeError as e:
            return "failed", f"stored notice {nid} unreadable: {e}"
        if notice.status == "resolved":
            return "skipped_resolved", "resolved before its digest"
        return notice

    async def _send_one(self, digest: Digest, user: User, name: str,
                        target: ChannelTarget) -> SendResult:
        channel = self.fw.channels.get(name)
        if channel is None:
            why = "is not configured" if name in self.fw.channels.classes else "is unknown"
            return SendResult.permanent(f"channel {name} {why}")
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                return await channel.send_digest(digest, user, target)
        except TimeoutError:
            return SendResult.retry(f"no answer in {SEND_TIMEOUT_S:g}s")
        except Exception as e:  # a channel's bug: recorded, never a digest sent twice
            log.exception("digest %s on %s", digest.id, name)
            return SendResult.permanent(f"{type(e).__name__}: {e}")

    def _end(self, d: _Claimed, taken: list[str], outcome: str, marker: str,
             records: list[tuple[str, Delivery]], retry_at: int = 0) -> list[Any]:
        """One digest_done.lua item: what leaves the bucket, the outcome, the records."""
        by_nid: dict[str, list[str]] = {}
        for nid, r in records:
            by_nid.setdefault(nid, []).append(json_encode(r).decode())
        self.fw.count([r for _, r in records])
        k = self.keys
        return [k.digest(d.uid, d.channel), k.digests(d.uid), d.channel, d.member, taken,
                outcome, retry_at, marker,
                [[k.deliveries(nid), recs] for nid, recs in by_nid.items()]]

    async def _done_all(self, batch: list[list[Any]]) -> list[BaseException | None]:
        members = []
        for i, d in enumerate(batch):  # binary: an ARGV of its own (digest_done.lua)
            members.append(d[3])
            d[3] = 2 + i
        await _DONE(keys=[self.keys.digest_due], args=[msgpack_encode([
            [MARKER_TTL_S, DELIVERIES_TTL_S, MARGIN_S * 1000, now_ms()], batch]), *members],
                    client=self.redis)
        return [None] * len(batch)
