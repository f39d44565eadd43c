"""One user's inbox: the feed (newest first, cursor = seq), the read set (a subset of the
feed; unread count = ZCARD feed - ZCARD read), read / unread / archived state. No HTTP
here; app/notices.py maps it to routes.

Every change is one Lua call on the user's own keys (one hash tag, one Cluster slot)
that first checks the notice is in THIS user's feed — a user can never touch another
user's notice whatever id they send — then changes the state and PUBLISHes a `read`
message to the user's live channel so every open tab follows.

Layout 2 keeps the READ ids (layout 1 kept the unread ones in `:unread`): a new notice is
unread by not being in the read set, so storing one is a single ZADD (into the feed)
instead of two. `migrate` converts layout 1 data, once, before a center stores anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis, RedisCluster

from vestnik.streams import lua
from vestnik.streams.errors import NotFound
from vestnik.streams.keys import REFS_BUCKET, Keys
from vestnik.streams.schemas import feed_item, notice_view


class _Flags(msgspec.Struct):
    """The one field of a stored notice the SSE backlog looks at (the rest is skipped)."""

    silenced: bool = False


_flags = msgspec.json.Decoder(_Flags).decode

log = logging.getLogger("vestnik.inbox")

MAX_LIMIT = 200
UNREAD_SCAN_MAX = 20_000  # an unread-only page looks at most this many feed entries


class FeedPage(msgspec.Struct):
    items: list[msgspec.Raw]
    next: int | None = None


class Count(msgspec.Struct):
    count: int


class Marked(msgspec.Struct):
    id: str
    read: bool
    count: int
    archived: bool = False


class MarkedAll(msgspec.Struct):
    marked: int
    count: int


_MARK = lua.script("center/mark.lua")
_READ_ALL = lua.script("center/read_all.lua")
_UNREAD_PAGE = lua.script("center/unread_page.lua")
_MIGRATE_USER = lua.script("center/migrate_user.lua")
_PURGE_USER = lua.script("center/purge_user.lua")
_COUNT_FEED = lua.script("center/count_feed.lua")
_FIX_BUCKET = lua.script("center/fix_bucket.lua")


class Inbox:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def count(self, uid: str) -> int:
        return (await self.head(uid))[0]

    async def head(self, uid: str) -> tuple[int, int]:
        """(unread count, last seq) as of one moment. Not MULTI (Redis at maxmemory refuses
        commands queued in one, and the inbox must still answer): the seq is read before
        and after; every store (and its retention) moves it, so the same seq twice means
        the feed did not change in between, and a mark only moves the read set."""
        k = self.keys
        for _ in range(3):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(k.user_seq(uid))
                pipe.zcard(k.feed(uid))
                pipe.zcard(k.read(uid))
                pipe.get(k.user_seq(uid))
                before, total, read, after = await pipe.execute()
            if before == after:
                break
        return int(total) - int(read), int(after or 0)

    async def page(self, uid: str, *, unread: bool = False, cursor: int | None = None,
                   limit: int = 50, scan_max: int = UNREAD_SCAN_MAX) -> FeedPage:
        """Newest first; `cursor` is the seq of the last item of the previous page (an
        unread-only page that looked at `scan_max` feed entries may come short, or empty,
        with a `next` to go on from)."""
        limit = max(1, min(limit, MAX_LIMIT))
        top = "+inf" if cursor is None else f"({cursor}"
        go_on = None  # an unread page that looked at UNREAD_SCAN_MAX entries: go on from here
        if unread:
            flat = await _UNREAD_PAGE(keys=[self.keys.feed(uid), self.keys.read(uid)],
                                      args=[top, limit + 1, scan_max], client=self.redis)
            go_on = int(flat[0]) if flat[0] else None
            rows = list(zip(flat[1::2], flat[2::2], strict=True))
        else:
            rows = await self.redis.zrevrangebyscore(self.keys.feed(uid), top, "-inf", start=0,
                                                     num=limit + 1, withscores=True)
        more = len(rows) > limit
        rows = rows[:limit]
        items = await self._items(uid, [(r[0].decode(), int(r[1])) for r in rows],
                                  all_unread=unread)
        return FeedPage([msgspec.Raw(i) for _, i in items if i is not None],
                        int(rows[-1][1]) if more and rows else go_on)

    async def after(self, uid: str, seq: int, limit: int = 500
                    ) -> list[tuple[int, bytes | None]]:
        """Feed items with seq > `seq`, oldest first (at most `limit`): the SSE backlog. A
        silenced notice is never pushed live, so here it is `(seq, None)`: its seq is
        passed, nothing is sent."""
        rows = await self.redis.zrangebyscore(self.keys.feed(uid), f"({seq}", "+inf",
                                              start=0, num=limit, withscores=True)
        return await self._items(uid, [(r[0].decode(), int(r[1])) for r in rows], live=True)

    async def _items(self, uid: str, rows: list[tuple[str, int]], *, all_unread: bool = False,
                     live: bool = False) -> list[tuple[int, bytes | None]]:
        if not rows:
            return []
        ids = [nid for nid, _ in rows]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([self.keys.notice(nid) for nid in ids])
            if not all_unread:
                pipe.zmscore(self.keys.read(uid), ids)
            pipe.smismember(self.keys.archived(uid), ids)
            res: list[Any] = await pipe.execute()
        bodies = res[0]
        read = [False] * len(ids) if all_unread else [s is not None for s in res[1]]
        archived = res[-1]
        out: list[tuple[int, bytes | None]] = []
        for (_, seq), body, r, a in zip(rows, bodies, read, archived, strict=True):
            if body is None:  # a notice body is never deleted before its feed entries
                continue
            if live and _flags(body).silenced:
                out.append((seq, None))
            else:
                out.append((seq, feed_item(notice_view(body), seq, r, bool(a))))
        return out

    async def mark(self, uid: str, nid: str, action: str) -> Marked:
        """action: read | unread | archive. NotFound unless `nid` is in this user's feed."""
        k = self.keys
        found, read, count, arch = await _MARK(
            keys=[k.feed(uid), k.read(uid), k.archived(uid), k.live(uid)], args=[nid, action],
            client=self.redis)
        if not found:
            raise NotFound(f"no notice {nid!r} in your feed", field="id")
        return Marked(nid, bool(read), int(count), bool(arch))

    async def read_all(self, uid: str) -> MarkedAll:
        k = self.keys
        marked = await _READ_ALL(keys=[k.feed(uid), k.read(uid), k.live(uid)], client=self.redis)
        return MarkedAll(int(marked), 0)


async def migrate(redis: Redis, keys: Keys) -> int:
    """Layout 1 → 2 (unread sets → read sets), once per Redis, run by each center before it
    stores anything. Data is layout 1 when any user has an `:unread` set (layout 2 never
    writes one; a layout-1 Redis where every notice was read has none, and its notices come
    back unread). Then every user with a feed gets read = feed - unread (each once, should
    the run be cut short or two centers run it). Then the bodies' feed counts, once
    (count_refs). Returns the users changed."""
    if await redis.get(keys.inbox_layout) == b"2":
        await count_refs(redis, keys)
        return 0
    done = 0
    if await _first_user_key(redis, keys.unread_before_v2) is not None:
        async for uid in _user_ids(redis, keys.feed):
            done += int(await _MIGRATE_USER(keys=[keys.feed(uid), keys.unread_before_v2(uid),
                                                 keys.read(uid), keys.migrated(uid)],
                                            client=redis))
    await redis.set(keys.inbox_layout, "2")
    if done:
        log.info("inbox layout 2: read sets made for %d users", done)
    await count_refs(redis, keys)
    return done


COUNT_LOCK_MS = 600_000  # a center that dies counting is taken over after this
COUNT_WAIT_S = 3600.0  # how long a center waits for another one's count


async def count_refs(redis: Redis, keys: Keys) -> int:
    """Give the bodies stored before this version their feed counts, once per Redis, before
    a center stores anything (else one held by several feeds would go with the first that
    drops it). One center counts, under a lock, from scratch (a run cut short leaves
    nothing that counts); the others wait for it. Returns the feeds counted."""
    if await redis.get(keys.refs_counted) == b"1" or isinstance(redis, RedisCluster):
        return 0
    me = os.urandom(8).hex()
    deadline = time.monotonic() + COUNT_WAIT_S
    while not await redis.set(keys.refs_lock, me, nx=True, px=COUNT_LOCK_MS):
        if await redis.get(keys.refs_counted) == b"1":
            return 0
        if time.monotonic() > deadline:
            raise TimeoutError(f"another center held {keys.refs_lock} for {COUNT_WAIT_S:g} s")
        await asyncio.sleep(0.5)
    try:
        await _drop_buckets(redis, keys)
        feeds = 0
        async for uid in _user_ids(redis, keys.feed):
            await _COUNT_FEED(keys=[keys.feed(uid)], args=[keys.refs_prefix, REFS_BUCKET],
                              client=redis)
            feeds += 1
            if feeds % 1000 == 0:  # still counting: keep the lock
                await redis.pexpire(keys.refs_lock, COUNT_LOCK_MS)
        async for key in redis.scan_iter(match=keys.refs_prefix + "*", count=1000,
                                         _type="hash"):
            await _FIX_BUCKET(keys=[key], client=redis)
        await redis.set(keys.refs_counted, "1")
        if feeds:
            log.info("notice bodies: feed counts made from %d feeds", feeds)
        return feeds
    finally:
        if await redis.get(keys.refs_lock) == me.encode():
            await redis.delete(keys.refs_lock)


async def _drop_buckets(redis: Redis, keys: Keys) -> None:
    batch: list[Any] = []
    async for key in redis.scan_iter(match=keys.refs_prefix + "*", count=1000, _type="hash"):
        batch.append(key)
        if len(batch) >= 1000:
            await redis.delete(*batch)
            batch = []
    if batch:
        await redis.delete(*batch)


async def _user_ids(redis: Redis, key_of: Callable[[str], str]) -> AsyncIterator[str]:
    """The users that have a sorted set `key_of(uid)` (one SCAN of the keyspace)."""
    head, tail = key_of("\0").split("\0")
    async for raw in redis.scan_iter(match=f"{head}*{tail}", count=1000, _type="zset"):
        key = raw.decode() if isinstance(raw, bytes) else raw
        yield key[len(head):len(key) - len(tail)]


async def _first_user_key(redis: Redis, key_of: Callable[[str], str]) -> str | None:
    async for uid in _user_ids(redis, key_of):
        return uid
    return None


async def purge_users(redis: Redis, keys: Keys, uids: Sequence[str]) -> int:
    """Remove deleted users' inbox keys (feed, read set, seq, archived, layout markers,
    snoozes; their live channel is pub/sub, no key) and release the notice bodies they
    held: a body no other feed holds is deleted. One script per user, all in one round
    trip. On a Redis Cluster the bodies live in other slots than the user's keys, so only
    the user's keys go (the bodies stay: docs/design.md). Returns the users that had any key."""
    if not uids:
        return 0
    release = "0" if isinstance(redis, RedisCluster) else "1"
    async with redis.pipeline(transaction=False) as pipe:
        for uid in uids:
            await _PURGE_USER(keys=[keys.feed(uid), keys.read(uid), keys.user_seq(uid),
                                    keys.archived(uid), keys.migrated(uid),
                                    keys.unread_before_v2(uid), keys.snooze(uid),
                                    keys.digests(uid)],
                              args=[keys.refs_prefix, REFS_BUCKET, keys.notice(""), release,
                                    keys.digest(uid, ""), *keys.forward_notice_prefixes],
                              client=pipe)
        res = await pipe.execute()
    gone = sum(1 for deleted, _ in res if int(deleted) > 0)
    if gone:
        log.info("purged the inboxes of %d deleted users (%d feed entries)", gone,
                 sum(int(n) for _, n in res))
    return gone
