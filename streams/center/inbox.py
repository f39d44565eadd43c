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

from vestnik.streams.errors import NotFound
from vestnik.streams.keys import REFS_BUCKET, Keys
from vestnik.streams.schemas import notice_view

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


# KEYS: feed, read, archived, live. ARGV: nid, action (read|unread|archive).
# Returns {found(0|1), read(0|1), count, archived(0|1)}.
MARK_LUA = """
local feed, readset, archived, live = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local nid, action = ARGV[1], ARGV[2]
local seq = redis.call('ZSCORE', feed, nid)
if not seq then return {0, 0, 0, 0} end
local changed = 0
local arch = 0
if action == 'unread' then
  changed = redis.call('ZREM', readset, nid)
  redis.call('SREM', archived, nid)
else
  changed = redis.call('ZADD', readset, seq, nid)
  if action == 'archive' then
    changed = changed + redis.call('SADD', archived, nid)
    arch = 1
  end
end
local count = redis.call('ZCARD', feed) - redis.call('ZCARD', readset)
local read = (action == 'unread') and 0 or 1
if changed > 0 then
  redis.call('PUBLISH', live, '{"e":"read","data":{"ids":[' .. cjson.encode(nid) ..
    '],"read":' .. (read == 1 and 'true' or 'false') .. ',"count":' .. count ..
    (arch == 1 and ',"archived":true' or '') .. '}}')
end
return {1, read, count, arch}
"""

# KEYS: feed, read, live. Marks everything read. Returns the number marked.
READ_ALL_LUA = """
local ids = redis.call('ZDIFF', 2, KEYS[1], KEYS[2])
if #ids == 0 then return 0 end
redis.call('COPY', KEYS[1], KEYS[2], 'REPLACE')
local parts = {}
for i, id in ipairs(ids) do parts[i] = cjson.encode(id) end
redis.call('PUBLISH', KEYS[3], '{"e":"read","data":{"ids":[' .. table.concat(parts, ',') ..
  '],"read":true,"count":0}}')
return #ids
"""

# KEYS: feed, read. ARGV: the highest score to look at ('+inf' or '(seq'), how many, the
# most feed entries to look at. The unread entries, newest first, after where to go on
# when the look ran out first (else false): {go_on, id, seq, id, seq, ...}.
UNREAD_PAGE_LUA = """
local feed, readset, top, want = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local out, looked = {false}, 0
while true do
  if looked >= tonumber(ARGV[3]) then
    out[1] = string.sub(top, 2)
    break
  end
  local rows = redis.call('ZREVRANGEBYSCORE', feed, top, '-inf', 'WITHSCORES', 'LIMIT', 0, 200)
  if #rows == 0 then break end
  local ids = {}
  for i = 1, #rows, 2 do ids[#ids + 1] = rows[i] end
  local read = redis.call('ZMSCORE', readset, unpack(ids))
  for i, id in ipairs(ids) do
    if not read[i] then
      out[#out + 1] = id
      out[#out + 1] = rows[2 * i]
      if #out >= 2 * want + 1 then return out end
    end
  end
  looked = looked + #ids
  if #ids < 200 then break end
  top = '(' .. rows[#rows]
end
return out
"""

# Layout 1 → 2 for one user. KEYS: feed, unread (layout 1), read, migrated marker.
# read = feed - unread; the marker makes a second run (a crash midway, two centers) a no-op.
MIGRATE_USER_LUA = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZDIFFSTORE', KEYS[3], 2, KEYS[1], KEYS[2])
  redis.call('DEL', KEYS[2])
else
  redis.call('COPY', KEYS[1], KEYS[3], 'REPLACE')
end
redis.call('SET', KEYS[4], '1', 'EX', 2592000)
return 1
"""


# Notice bodies are shared by their recipients' feeds and deleted by whoever drops the
# last feed entry of one, in the same script (the store's retention, purge_users). The
# count lives in `Keys.refs(nid)`: a field per body held by MORE than one feed, its value
# the feeds beyond the first (no field: one feed; -1: none yet, while a broadcast's later
# calls store it). `adjust(nid, delta, created, later)` moves a body's holders by `delta`
# (`created`: this script made the body, so nothing is counted yet; `later`: more calls of
# the same batch follow, so a body no feed holds yet stays) and deletes the body with its
# `:deliveries` and `:folded` when none is left. `refs` (prefix, bucket length, notice key
# prefix) is filled by the script that includes this, from streams.keys. Returns 1 when the
# body was deleted.
RELEASE_LUA = """
local refs = {}
local function adjust(nid, delta, created, later)
  local bucket = refs.prefix .. string.sub(nid, 1, refs.split)
  local field = string.sub(nid, refs.split + 1)
  local held = 0
  if not created then
    local v = redis.call('HGET', bucket, field)
    held = (v and tonumber(v) or 0) + 1
  end
  held = held + delta
  if held >= 2 then
    redis.call('HSET', bucket, field, held - 1)
  elseif held == 1 then
    if not created then redis.call('HDEL', bucket, field) end
  elseif later then
    redis.call('HSET', bucket, field, -1)
  else
    if not created then redis.call('HDEL', bucket, field) end
    local body = refs.notice .. nid
    redis.call('DEL', body, body .. ':deliveries', body .. ':folded')
    return 1
  end
  return 0
end
"""

# One user's keys, and (ARGV[4] = '1', a single Redis) the bodies only their feed held.
# KEYS: feed, read, seq, archived, migrated marker, layout 1 unread set. ARGV: refs prefix,
# bucket length, notice key prefix, release. Returns {keys deleted, feed entries}.
PURGE_USER_LUA = RELEASE_LUA + """
refs.prefix, refs.split, refs.notice = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if ARGV[4] == '1' then
  for _, id in ipairs(ids) do adjust(id, -1, false, false) end
end
return {redis.call('DEL', unpack(KEYS)), #ids}
"""


def item_json(notice: bytes, seq: int, read: bool, archived: bool) -> bytes:
    """A feed item: the stored notice JSON with the user's seq and state appended."""
    return (notice[:-1] + b',"seq":' + str(seq).encode() + b',"read":'
            + (b"true" if read else b"false") + b',"archived":'
            + (b"true" if archived else b"false") + b"}")


class Inbox:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._mark = redis.register_script(MARK_LUA)
        self._read_all = redis.register_script(READ_ALL_LUA)
        self._unread_page = redis.register_script(UNREAD_PAGE_LUA)

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
            flat = await self._unread_page(keys=[self.keys.feed(uid), self.keys.read(uid)],
                                           args=[top, limit + 1, scan_max])
            go_on = int(flat[0]) if flat[0] else None
            rows = list(zip(flat[1::2], flat[2::2], strict=True))
        else:
            rows = await self.redis.zrevrangebyscore(self.keys.feed(uid), top, "-inf", start=0,
                                                     num=limit + 1, withscores=True)
        more = len(rows) > limit
        rows = rows[:limit]
        items = await self._items(uid, [(r[0].decode(), int(r[1])) for r in rows],
                                  all_unread=unread)
        return FeedPage([msgspec.Raw(i) for _, i in items],
                        int(rows[-1][1]) if more and rows else go_on)

    async def after(self, uid: str, seq: int, limit: int = 500) -> list[tuple[int, bytes]]:
        """Feed items with seq > `seq`, oldest first (at most `limit`): the SSE backlog."""
        rows = await self.redis.zrangebyscore(self.keys.feed(uid), f"({seq}", "+inf",
                                              start=0, num=limit, withscores=True)
        return await self._items(uid, [(r[0].decode(), int(r[1])) for r in rows])

    async def _items(self, uid: str, rows: list[tuple[str, int]], *, all_unread: bool = False
                     ) -> list[tuple[int, bytes]]:
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
        out: list[tuple[int, bytes]] = []
        for (_, seq), body, r, a in zip(rows, bodies, read, archived, strict=True):
            if body is not None:  # a notice body is never deleted before its feed entries
                out.append((seq, item_json(notice_view(body), seq, r, bool(a))))
        return out

    async def mark(self, uid: str, nid: str, action: str) -> Marked:
        """action: read | unread | archive. NotFound unless `nid` is in this user's feed."""
        k = self.keys
        found, read, count, arch = await self._mark(
            keys=[k.feed(uid), k.read(uid), k.archived(uid), k.live(uid)], args=[nid, action])
        if not found:
            raise NotFound(f"no notice {nid!r} in your feed", field="id")
        return Marked(nid, bool(read), int(count), bool(arch))

    async def read_all(self, uid: str) -> MarkedAll:
        k = self.keys
        marked = await self._read_all(keys=[k.feed(uid), k.read(uid), k.live(uid)])
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
        script = redis.register_script(MIGRATE_USER_LUA)
        async for uid in _user_ids(redis, keys.feed):
            done += int(await script(keys=[keys.feed(uid), keys.unread_before_v2(uid),
                                           keys.read(uid), keys.migrated(uid)]))
    await redis.set(keys.inbox_layout, "2")
    if done:
        log.info("inbox layout 2: read sets made for %d users", done)
    await count_refs(redis, keys)
    return done


# Counting the bodies stored before `refs` existed: every feed entry adds one to its
# body's field (KEYS: a feed; ARGV: refs prefix, bucket length) ...
COUNT_FEED_LUA = """
for _, nid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  redis.call('HINCRBY', ARGV[1] .. string.sub(nid, 1, tonumber(ARGV[2])),
             string.sub(nid, tonumber(ARGV[2]) + 1), 1)
end
"""
# ... then each bucket turns holders into holders beyond the first (KEYS: a bucket).
FIX_BUCKET_LUA = """
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local n = tonumber(flat[i + 1]) - 1
  if n > 0 then
    redis.call('HSET', KEYS[1], flat[i], n)
  else
    redis.call('HDEL', KEYS[1], flat[i])
  end
end
"""
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
        count = redis.register_script(COUNT_FEED_LUA)
        async for uid in _user_ids(redis, keys.feed):
            await count(keys=[keys.feed(uid)], args=[keys.refs_prefix, REFS_BUCKET])
            feeds += 1
            if feeds % 1000 == 0:  # still counting: keep the lock
                await redis.pexpire(keys.refs_lock, COUNT_LOCK_MS)
        fix = redis.register_script(FIX_BUCKET_LUA)
        async for key in redis.scan_iter(match=keys.refs_prefix + "*", count=1000,
                                         _type="hash"):
            await fix(keys=[key])
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
    """Remove deleted users' inbox keys (feed, read set, seq, archived, layout markers;
    their live channel is pub/sub, no key) and release the notice bodies they held: a body
    no other feed holds is deleted. One script per user, all in one round trip. On a Redis
    Cluster the bodies live in other slots than the user's keys, so only the user's keys
    go (the bodies stay: docs/design.md). Returns the users that had any key."""
    if not uids:
        return 0
    script = redis.register_script(PURGE_USER_LUA)
    release = "0" if isinstance(redis, RedisCluster) else "1"
    async with redis.pipeline(transaction=False) as pipe:
        for uid in uids:
            await script(keys=[keys.feed(uid), keys.read(uid), keys.user_seq(uid),
                               keys.archived(uid), keys.migrated(uid),
                               keys.unread_before_v2(uid)],
                         args=[keys.refs_prefix, REFS_BUCKET, keys.notice(""), release],
                         client=pipe)
        res = await pipe.execute()
    gone = sum(1 for deleted, _ in res if int(deleted) > 0)
    if gone:
        log.info("purged the inboxes of %d deleted users (%d feed entries)", gone,
                 sum(int(n) for _, n in res))
    return gone
