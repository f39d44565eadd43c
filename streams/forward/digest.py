"""Digests: a user's notices due on one channel within a window, sent as ONE message.

Policy
    `digest: {"window": s, "limit"?: n}` on a channel entry (`ChannelTarget.digest`), or
    in the user's prefs per channel (`prefs: {"digest": {"email": {"window": 3600}}}`),
    which wins (`false` there: no digest on that channel). A bad prefs value counts as no
    digest and is logged once (`policy_for`).

Filling (`Digests.divert`, called by a forward job to a user where it would send)
    A channel with a policy for the user does not send: the notice goes into the user's
    bucket for the channel (`Keys.digest(uid, channel)`, zset nid -> ms it fell due) and is
    recorded `digested`. If the user has no digest pending on the channel, one is scheduled
    at now + window: fields `<channel>` (due ms), `<channel>:window`, `<channel>:id` of
    `Keys.digests(uid)` and a member msgpack [uid, channel] (`digest_member`) of
    `Keys.digest_due` at that ms. A marker per notice, user and channel (`Keys.digested`,
    a day) keeps a re-run job from adding it again. The jobs that start together make one
    script call (digest_add.lua) on a single Redis, one round trip per step on a cluster
    (`digest_store`). Not digested: the shared targets (uid `*`: a webhook URL, a Telegram
    chat, a Slack channel are nobody's digest), and a resolved notice (its "resolved"
    message goes at once).

Sending (`Digests.poll`, started by the forwarder's poll, a batch at a time)
    The poll takes due members with a lease (digest_claim.lua moves each to now + lease:
    another forwarder does not see it meanwhile; a crashed one's digest is due again after
    it), then reads every digest of the batch (`DigestStore.read`: the pending digest, the
    user, the notices of its bucket that fell due by its due time, each one's body when
    still unread, and on a cluster its sent marker; one call on a single Redis). Read,
    resolved or gone notices are dropped (`skipped_read`, `skipped_resolved`,
    `skipped_gone`), as are those the user's prefs now refuse (`user_routes`, as a
    forward); the rest go newest first, cut at the policy's `limit` ("and N more"), to the
    channel entry's target of the newest one, with `Channel.send_digest`. Each is recorded
    `sent` with detail `digest <id>`. What it took leaves the bucket; what came meanwhile
    waits for the next digest, due a window after this one left: at most one digest per
    window, user and channel. `retry` results are retried with the jobs' backoff until
    `send_attempts` (the tries: `<channel>:try`). The ends of the digests that end
    together are one script call (digest_done.lua) on a single Redis, two round trips on
    a cluster.

Idempotency
    The digest id is a ULID of the digest's due time and a hash of user and channel
    (`digest_id`), stored with the pending digest: the same for every retry and re-run.
    After the send a sent marker (`Keys.sent_marker(id, uid, channel)`, a day) is set with
    the end that takes the listed notices out of the bucket and gives the digest its next
    id (or clears it): on a single Redis in one script, so no read meets a sent id; on a
    cluster in one pipeline of per-slot calls, and a read that finds the marker set sends
    nothing and only takes the notices out (the order of the steps and what a crash
    between them leaves: `digest_store`). A process that dies between the other side's
    answer and that end resends the one digest (at least once, as single forwards; a
    webhook can dedupe on the id).

Key owners: the bucket and the hash expire a day after their digest's due time and are
deleted when the digest empties them; a deleted user's are dropped by the purge
(center/purge_user.lua); markers expire.
"""

from __future__ import annotations

import asyncio
import logging
from operator import attrgetter

import msgspec

from vestnik.streams.channels import Digest, SendResult
from vestnik.streams.coalesce import PerIteration
from vestnik.streams.forward.digest_store import (
    GONE,
    READ,
    Add,
    DigestStore,
    End,
    digest_id,
    digest_member,
)
from vestnik.streams.forward.job import SEND_TIMEOUT_S, Delivery, DeliveryStatus, Forwarder, Send
from vestnik.streams.forward.schedule import user_routes
from vestnik.streams.ids import now_ms
from vestnik.streams.redis import RETRYABLE
from vestnik.streams.schemas import (
    NO_CHANNELS,
    ChannelMap,
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
BATCH = 128  # digests a poll takes and runs together
IN_FLIGHT = 4  # batches at once
POLL_S = 0.25  # the least time between two looks at the due set when nothing was due
DEFAULT_LIMIT = 20


class _Stored(Notice, kw_only=True, omit_defaults=True):
    """A stored notice with its channel map left undecoded: a digest needs the map of its
    newest notice only (the target), and decoding it is most of a body's decode time."""

    channels: msgspec.Raw = msgspec.Raw(b"{}")  # type: ignore[assignment]


_stored_decoder = decoder(_Stored)
_map_decoder = decoder(ChannelMap)
_member_decoder = msgspec.msgpack.Decoder(tuple[str, str])
_warned: set[tuple[str, str]] = set()  # (uid, channel) whose bad prefs were logged


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
            _warn_once(user.id, channel, f"prefs.digest.{channel} ignored (no digest): {e}")
            return None
    if mine is not None and not isinstance(mine, dict):
        _warn_once(user.id, "", "prefs.digest ignored: expected an object")
    return target.digest


def _warn_once(uid: str, channel: str, what: str) -> None:
    if (uid, channel) in _warned:
        return
    if len(_warned) >= 10_000:  # bounded: a flood of bad profiles logs again, rarely
        _warned.clear()
    _warned.add((uid, channel))
    log.warning("user %s: %s", uid, what, extra={"user": uid})


class _Due(msgspec.Struct):
    """One due digest as read: who, where, its state, and the notices of its window."""

    uid: str
    channel: str
    member: bytes
    lease: float  # the member's score as the claim left it
    due: int
    attempt: int
    window_ms: int
    id: str
    user: User
    sent: bool
    notices: list[tuple[str, int, bytes | None]]  # (id, GONE/READ/seq + 1, body if unread)


class Digests:
    """Diverts forwards into digests and sends the due ones; one per forwarder."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.fw = forwarder
        self.redis, self.keys = forwarder.redis, forwarder.keys
        self.store = DigestStore(self.redis, self.keys)
        self._adds: PerIteration[list[Add], list[int]] = PerIteration(self._add_all)
        self._ends: PerIteration[End, None] = PerIteration(self._done_all)
        self._next_poll = 0.0

    # ------------------------------------------------------------------ filling

    async def divert(self, notice: Notice, user: User, sends: list[Send],
                     records: list[Delivery], attempt: int) -> list[Send]:
        """The job's hook: of `sends` (to `user`), those whose channel has a digest policy
        go into the user's buckets (recorded in `records`); returns the others."""
        if notice.status == "resolved":  # the "resolved" message of an incident: at once
            return sends
        now_sends: list[Send] = []
        adds: list[tuple[str, int]] = []
        for s in sends:
            policy = policy_for(user, s.channel, s.target)
            if policy is None:
                now_sends.append(s)
            else:
                adds.append((s.channel, int(policy.window * 1000)))
        if not adds:
            return sends
        k, uid, now = self.keys, user.id, now_ms()
        dues = await self._adds.submit([
            Add(k.digest(uid, ch), k.digests(uid), ch, notice.id, digest_member(uid, ch),
                k.digested(notice.id, uid, ch), window, now + window,
                digest_id(uid, ch, now + window))
            for ch, window in adds])
        for (ch, _), due in zip(adds, dues, strict=True):
            if due >= 0:
                records.append(self.fw._rec(uid, ch, attempt, "digested",
                                            f"digest due at {due}"))
        return now_sends

    async def _add_all(self, batch: list[list[Add]]) -> list[list[int] | BaseException]:
        dues = await self.store.add([it for adds in batch for it in adds])
        out: list[list[int] | BaseException] = []
        at = 0
        for adds in batch:
            out.append(dues[at:at + len(adds)])
            at += len(adds)
        return out

    # ------------------------------------------------------------------ sending

    async def poll(self) -> int:
        """Run the due digests until none is due (the forwarder's poll starts it, one at a
        time); returns how many ran. IN_FLIGHT batches go at once, so the channels have
        work while a batch ends and the next is read (B8: twice the rate of one)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_poll:
            return 0
        ran = sum(await asyncio.gather(*(self._drain() for _ in range(IN_FLIGHT))))
        self._next_poll = loop.time() + POLL_S
        return ran

    async def _drain(self) -> int:
        """Batch after batch while full ones are due. Errors are logged: the leases bring
        the digests back."""
        ran = 0
        try:
            while True:
                n = await self.run_due()
                ran += n
                if n < BATCH:
                    return ran
        except RETRYABLE as e:
            log.warning("digests: redis unavailable (%s); they run after the lease", e)
        except Exception:
            log.exception("digests: a batch failed; its digests run again after the lease")
        return ran

    async def run_due(self, limit: int = BATCH) -> int:
        """Take at most `limit` due digests (leased), read them (one call), send them."""
        now = now_ms()
        members, lease = await self.store.claim(now, int(LEASE_S * 1000), limit)
        if not members:
            return 0
        due = await self._read(members, now, lease)
        results = await asyncio.gather(*(self._run(d) for d in due), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                log.error("digest failed (runs again after the lease): %s: %s",
                          type(res).__name__, res)
        return len(members)

    async def _read(self, members: list[bytes], now: int, lease: float) -> list[_Due]:
        """The state of the claimed digests (`DigestStore.read`); a bad member is dropped, a
        digest no longer pending is ended ("drop"), one not due yet (a cluster's, after a
        crash between the steps of its last end: digest_store) goes back ("later")."""
        k = self.keys
        who: list[tuple[str, str, bytes]] = []
        for m in members:
            try:
                uid, channel = _member_decoder.decode(m)
            except msgspec.DecodeError:
                log.error("digest due member %r is not [uid, channel]: dropped", m[:100])
                await self.redis.zrem(k.digest_due, m)
                continue
            who.append((uid, channel, m))
        if not who:
            return []
        replies, sent = await self.store.read([(uid, ch) for uid, ch, _ in who])
        out: list[_Due] = []
        for (uid, channel, member), r, was_sent in zip(who, replies, sent, strict=True):
            if not r or (self.store.cluster and int(r[0]) > now):
                # no digest pending (a purged user, an expired hash), or not due yet
                await self._ends.submit(self._end(uid, channel, member, [],
                                                  "later" if r else "drop", "", [],
                                                  lease=lease))
                continue
            raw_user = r[4]
            user = User(id=uid) if not raw_user else decode_user(uid, raw_user)
            if isinstance(user, str):
                log.warning("digest of %s: %s", uid, user, extra={"user": uid})
                user = User(id=uid)
            out.append(_Due(uid, channel, member, lease, int(r[0]), int(r[1]) + 1, int(r[2]),
                            r[3].decode() if r[3] else digest_id(uid, channel, int(r[0])),
                            user, was_sent,
                            [(r[i].decode(), int(r[i + 1]), r[i + 2] or None)
                             for i in range(5, len(r), 3)]))
        return out

    async def _run(self, d: _Due) -> str:
        """Send one digest, record it, end it."""
        uid, channel, attempt, user = d.uid, d.channel, d.attempt, d.user
        rec = self.fw._rec
        taken = [nid for nid, _, _ in d.notices]
        if d.sent:  # sent already (a cluster's end cut short: digest_store): what it listed
            # leaves the bucket (the notices that fell due by its due time), the rest waits
            await self._ends.submit(self._end_due(d, taken, "done", "", []))
            return "already sent"
        records: list[tuple[str, Delivery]] = []
        dropped: list[str] = []
        unread: list[tuple[int, int, _Stored]] = []
        for nid, state, body in d.notices:
            why = self._drop(nid, state, body)
            if isinstance(why, _Stored):
                unread.append((why.created_at, state, why))
            else:
                dropped.append(nid)
                records.append((nid, rec(uid, channel, attempt, *why)))
        # newest first: created (ms), then the user's feed order (stored in the same ms)
        unread.sort(key=lambda t: t[:2], reverse=True)
        kept, target, skip = self._routes([n for _, _, n in unread], user, channel)
        for n, (status, detail) in skip:
            dropped.append(n.id)
            records.append((n.id, rec(uid, channel, attempt, status, detail)))
        if not kept or target is None:
            await self._ends.submit(self._end_due(d, taken, "done", "", records))
            return "nothing to send"
        policy = policy_for(user, channel, target)
        limit = policy.limit if policy is not None else DEFAULT_LIMIT
        listed = [_notice(n) for n in kept[:limit]]
        digest = Digest(id=d.id, notices=listed, more=len(kept) - len(listed))
        res = await self._send_one(digest, user, channel, target)
        if res.ok:
            more = f"digest {d.id} (in \"and {digest.more} more\")"
            records += [(n.id, rec(uid, channel, attempt, "sent",
                                   f"digest {d.id}" if i < limit else more))
                        for i, n in enumerate(kept)]
            await self._ends.submit(self._end_due(
                d, taken, "done", self.keys.sent_marker(d.id, uid, channel), records))
            return f"sent {len(kept)}"
        if res.status == "retry" and attempt < self.fw.settings.send_attempts:
            records += [(n.id, rec(uid, channel, attempt, "retrying",
                                   f"digest {d.id}: {res.detail}")) for n in kept]
            delay = self.fw.backoff(attempt, res.retry_after)
            await self._ends.submit(self._end_due(d, dropped, "retry", "", records,
                                                  now_ms() + int(delay * 1000)))
            return "retrying"
        records += [(n.id, rec(uid, channel, attempt, "failed", f"digest {d.id}: {res.detail}"))
                    for n in kept]
        await self._ends.submit(self._end_due(d, taken, "done", "", records))
        return "failed"

    @staticmethod
    def _drop(nid: str, state: int, body: bytes | None
              ) -> _Stored | tuple[DeliveryStatus, str]:
        """The unread notice to list, or why it is dropped (status, detail)."""
        if state == READ:
            return "skipped_read", "read before its digest"
        if state == GONE or body is None:
            return "skipped_gone", "the notice left every feed before its digest"
        try:
            notice = _stored_decoder.decode(body)
        except msgspec.DecodeError as e:
            return "failed", f"stored notice {nid} unreadable: {e}"
        if notice.status == "resolved":
            return "skipped_resolved", "resolved before its digest"
        return notice

    def _routes(self, unread: list[_Stored], user: User, channel: str
                ) -> tuple[list[_Stored], ChannelTarget | None,
                           list[tuple[_Stored, tuple[DeliveryStatus, str]]]]:
        """Which unread notices the user still takes on `channel` (`user_routes`, as a
        forward: muted alert, channel switched off, no address), newest first, and the
        target: the channel entry of the newest one. Only that one's channel map is
        decoded: an entry that reached the user when the notice went into the bucket still
        does (a notice's map never changes); the rest is the user's."""
        kept: list[_Stored] = []
        skip: list[tuple[_Stored, tuple[DeliveryStatus, str]]] = []
        target: ChannelTarget | None = None
        for i, n in enumerate(unread):
            if target is not None:
                if user.mutes(n.alert):
                    skip.append((n, ("skipped_pref", f"user {user.id} muted alert {n.alert}")))
                else:
                    kept.append(n)
                continue
            full = msgspec.structs.replace(_notice(n), channels=self._map(n))
            route = next((r for r in user_routes(full, user, self.fw.channels.addresses)
                          if r.channel == channel), None)
            if route is None:
                skip.append((n, ("skipped_pref", f"{channel} no longer reaches {user.id}")))
            elif route.skip is None:
                target = route.target
                kept.append(n)
            elif user.mutes(n.alert):
                skip.append((n, (route.skip, route.detail)))
            else:  # the channel switched off, or no address: so for every notice
                skip += [(m, (route.skip, route.detail)) for m in unread[i:]]
                break
        return kept, target, skip

    @staticmethod
    def _map(n: _Stored) -> ChannelMap:
        try:
            return _map_decoder.decode(n.channels)
        except (msgspec.DecodeError, ValueError):
            return NO_CHANNELS

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

    def _end_due(self, d: _Due, taken: list[str], outcome: str, marker: str,
                 records: list[tuple[str, Delivery]], retry_at: int = 0) -> End:
        nxt = now_ms() + max(d.window_ms, 1000)
        return self._end(d.uid, d.channel, d.member, taken, outcome, marker, records,
                         retry_at or nxt, digest_id(d.uid, d.channel, nxt), lease=d.lease)

    def _end(self, uid: str, channel: str, member: bytes, taken: list[str], outcome: str,
             marker: str, records: list[tuple[str, Delivery]], ms: int = 0,
             next_id: str = "", *, lease: float) -> End:
        """One digest's end: what leaves the bucket, the outcome, the records."""
        by_nid: dict[str, list[str]] = {}
        for nid, r in records:
            by_nid.setdefault(nid, []).append(json_encode(r).decode())
        self.fw.count([r for _, r in records])
        k = self.keys
        return End(k.digest(uid, channel), k.digests(uid), channel, member, taken, outcome, ms,
                   next_id, marker, [(k.deliveries(nid), recs) for nid, recs in by_nid.items()],
                   lease)

    async def _done_all(self, batch: list[End]) -> list[BaseException | None]:
        await self.store.end(batch)
        return [None] * len(batch)


_LISTED_FIELDS = tuple(f for f in Notice.__struct_fields__ if f != "channels")


def _notice(n: _Stored) -> Notice:
    """A listed notice as channels take it (its channel map left out: not rendered)."""
    return Notice(**dict(zip(_LISTED_FIELDS, attrgetter(*_LISTED_FIELDS)(n), strict=True)))
