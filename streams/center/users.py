"""The recipients' profiles as the notice center reads them: it follows the `user` topic
itself (applies the events an api's hub has not, purges the inboxes of deleted users) and
keeps each decoded record until it changes.

A batch's reads of the topic, the records and the recipients' snoozes (`streams.snoozes`:
they fill `User.snooze`) go into the center's one pipelined round trip (`Users.read`); more
round trips only when user events came in since the last batch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from redis.asyncio import Redis, RedisCluster

from vestnik.streams import lua, snoozes
from vestnik.streams.center import inbox
from vestnik.streams.center.plan import Plan
from vestnik.streams.config import Config
from vestnik.streams.errors import BadInput
from vestnik.streams.ids import now_ms, parse_stream_id
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.notifier import Hydrator, StateWriter
from vestnik.streams.schemas import TopicEvent, User, decode_topic_entry, decode_user

log = logging.getLogger("vestnik.center")

USER_CACHE = 50_000  # decoded user records kept between batches
USER_PAGE = 1000  # user topic events read (and applied) per call
USER_PAGES = 1000  # at most this many pages a batch: bounded, the rest next batch
DELETES_KEPT = 100_000  # user deletes remembered (notices before them skip the user)

_ADVANCE = lua.script("center/advance.lua")  # `Keys.users_seen` forward only


class Users:
    """One per center: where it is in the `user` topic, the recent deletes, the records."""

    def __init__(self, redis: Redis, keys: Keys, settings: Config) -> None:
        self.redis = redis
        self.keys = keys
        # uid -> (record bytes, decoded): the records are read every batch, decoded only
        # when they changed (users are read-only here)
        self._users: dict[str, tuple[bytes, User | str]] = {}
        # the `user` topic: the center applies its events itself (the hub's StateWriter:
        # entries at or before the state's position are skipped, so any number of
        # materializers stay exact), up to `_user_pos`, before it reads recipients
        self._state = StateWriter(redis, keys, maxlen=settings.topic_maxlen)
        self._hydrator = Hydrator(redis, settings.hydrate, settings.hydrate_hosts)
        self._user_pos: str | None = None
        # users whose last seen event deletes them: the delete's stream id. A notice XADDed
        # before it is not stored for them (it may be read after the purge: same batch, a
        # later one, or one storing while this one loads); bounded by DELETES_KEPT
        self._deleted: dict[str, tuple[int, int]] = {}
        self._one_call = not isinstance(redis, RedisCluster)  # MGET spans slots
        # the running snoozes of the last `load`'s recipients that have any (the center's
        # loading lock keeps them until its batch has used them)
        self.snoozes: dict[str, dict[str, int]] = {}

    async def aclose(self) -> None:
        """The hydrator's HTTP client (thin `user` events from an HTTP source)."""
        await self._hydrator.aclose()

    async def start(self) -> None:
        """Once per process: where the centers' purges are (the first center of a Redis:
        where the state is)."""
        if self._user_pos is None:
            start = (await self.redis.get(self.keys.users_seen)
                     or await self.redis.get(self.keys.state_pos(USER_TOPIC)))
            self._user_pos = start.decode() if start else "0-0"

    def read(self, pipe: Any, uids: list[str]) -> int:
        """Queue the reads of a batch's recipients (for `load`; returns how many replies):
        first every user event XADDed before this batch's notices were read, then the
        state's position, then the records (events at or before it, an api's hub applied:
        in the records), then their snoozes."""
        pipe.xrange(self.keys.topic(USER_TOPIC), min=f"({self._user_pos}", count=USER_PAGE)
        pipe.get(self.keys.state_pos(USER_TOPIC))
        pipe.hmget(self.keys.state(USER_TOPIC), uids)
        if self._one_call:
            pipe.mget([self.keys.snooze(uid) for uid in uids])
            return 4
        return 3 + sum(snoozes.read_commands(pipe, self.keys, uid) for uid in uids)

    async def load(self, replies: list[Any], uids: list[str]
                   ) -> dict[str, User | str | None]:
        """The recipients of `read`'s replies, after following the events since the last
        batch: each one's profile (decoded only when it changed; `snooze` filled in from
        `Keys.snooze`, whatever the record says), why it is unreadable, or None when it has
        none."""
        events, pos, records = replies[:3]
        snoozed = self._snoozes(uids, replies[3] if self._one_call else replies[3:])
        if events:
            records = await self._follow(events, pos, uids, records)
        users: dict[str, User | str | None] = {}
        for uid, raw in zip(uids, records, strict=True):
            if raw is None:
                users[uid] = None
                continue
            hit = self._users.get(uid)
            if hit is not None and hit[0] == raw:  # the same record as last time: decoded
                users[uid] = hit[1]
                continue
            users[uid] = decode_user(uid, raw)  # never a `snooze` from the record
            if len(self._users) >= USER_CACHE:
                self._users.clear()
            self._users[uid] = (raw, users[uid])
        for uid, running in snoozed.items():  # a copy: the cached record stays as read
            if isinstance(u := users[uid], User):
                users[uid] = msgspec.structs.replace(u, snooze=running)
        return users

    def _snoozes(self, uids: list[str], values: list[bytes | None]
                 ) -> dict[str, dict[str, int]]:
        """The running snoozes of the recipients that have any (most have none: no entry),
        kept in `snoozes` for the recipients without a profile."""
        now = now_ms()
        self.snoozes = {uid: running for uid, raw in zip(uids, values, strict=True)
                        if raw is not None and (running := snoozes.decode_value(raw, now))}
        return self.snoozes

    def skip_deleted(self, plans: list[Plan]) -> None:
        """No feed entry (or forward) for a recipient deleted after the notice in Redis
        order: the purge already ran, so the entry would make a deleted user's keys again,
        kept for ever. (Both stream ids come from the one Redis clock.)"""
        gone = self._deleted
        if not gone:
            return
        for p in plans:
            at = parse_stream_id(p.entry.sid)
            if any(u.id in gone for u in p.users):
                p.users = [u for u in p.users if gone.get(u.id, (0, 0)) <= at]

    async def _follow(self, entries: list[Any], pos: bytes | None, uids: list[str],
                      records: list[bytes | None]) -> list[bytes | None]:
        """The `user` events since the last batch: purge the users they delete, and apply
        the ones the state lacks (after `pos`, its position when the records were read),
        with the hub's StateWriter, in bounded pages; then read again the recipients they
        touched. With an api's hub ahead of us (the common case), nothing more is sent but
        the purge. Returns the recipients' records."""
        decoded = await self._decode(entries)
        await self._purge(decoded)
        ahead = parse_stream_id(pos.decode()) if pos else (0, 0)
        if len(entries) < USER_PAGE and parse_stream_id(entries[-1][0].decode()) <= ahead:
            self._user_pos = entries[-1][0].decode()
        else:
            records = await self._apply(entries, decoded, uids, records)
        # a center started later goes on from here (deletes an api's hub applied while no
        # center ran are still purged)
        await _ADVANCE(keys=[self.keys.users_seen], args=[self._user_pos], client=self.redis)
        return records

    async def _purge(self, decoded: list[tuple[str, TopicEvent]]) -> None:
        """Every user a seen event deletes, whoever applied it (each center process sees
        each event once; purging is idempotent): before this batch stores anything."""
        last: dict[str, tuple[str, str]] = {}
        for sid, ev in decoded:
            last[ev.id] = (ev.op, sid)
        # a user deleted and created again since is not purged: the feed is theirs
        deleted = sorted(uid for uid, (op, _) in last.items() if op == "delete")
        if len(self._deleted) > DELETES_KEPT:
            self._deleted.clear()
        for uid, (op, sid) in last.items():
            if op == "delete":
                self._deleted[uid] = parse_stream_id(sid)
            else:
                self._deleted.pop(uid, None)
        if deleted:
            await inbox.purge_users(self.redis, self.keys, deleted)

    async def _apply(self, entries: list[Any], decoded: list[tuple[str, TopicEvent]],
                     uids: list[str], records: list[bytes | None]) -> list[bytes | None]:
        """Apply the `user` events after `_user_pos` with the hub's StateWriter (bounded
        pages; the script skips those at or before the state's position, so any number of
        materializers stay exact), and read again the recipients the events touched."""
        topic = self.keys.topic(USER_TOPIC)
        touched: set[str] = set()
        for _ in range(USER_PAGES):
            await self._state.apply(USER_TOPIC, decoded)
            touched.update(ev.id for _, ev in decoded)
            self._user_pos = entries[-1][0].decode()
            if len(entries) < USER_PAGE:
                break
            entries = await self.redis.xrange(topic, min=f"({self._user_pos}",
                                              count=USER_PAGE)
            if not entries:
                break
            decoded = await self._decode(entries)
            await self._purge(decoded)
        again = [uid for uid in uids if uid in touched]
        if not again:
            return records
        fresh = dict(zip(again, await self.redis.hmget(self.keys.state(USER_TOPIC), again),
                         strict=True))
        return [fresh[uid] if uid in fresh else r for uid, r in zip(uids, records, strict=True)]

    async def _decode(self, entries: list[Any]) -> list[tuple[str, TopicEvent]]:
        """Topic entries as the hub decodes them: bad ones skipped, thin ones hydrated."""
        decoded: list[tuple[str, TopicEvent]] = []
        for raw_sid, fields in entries:
            try:
                decoded.append((raw_sid.decode(), decode_topic_entry(fields)))
            except BadInput as e:
                log.warning("topic %s entry %s skipped: %s", USER_TOPIC, raw_sid, e.detail)
        if any(self._hydrator.needs(USER_TOPIC, ev) for _, ev in decoded):
            evs = await asyncio.gather(*(self._hydrator.hydrate(USER_TOPIC, sid, ev)
                                         for sid, ev in decoded))
            decoded = [(sid, ev) for (sid, _), ev in zip(decoded, evs, strict=True)]
        return decoded
