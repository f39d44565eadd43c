"""One user's inbox: the feed (newest first, cursor = seq), the unread index (ZCARD = count),
read / unread / archived state. No HTTP here; app/notices.py maps it to routes.

Every change is one Lua call on the user's own keys (one hash tag, one Cluster slot)
that first checks the notice is in THIS user's feed — a user can never touch another
user's notice whatever id they send — then changes the state and PUBLISHes a `read`
message to the user's live channel so every open tab follows.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from .errors import NotFound
from .keys import Keys
from .schemas import notice_view

MAX_LIMIT = 200


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


# KEYS: feed, unread, archived, live. ARGV: nid, action (read|unread|archive).
# Returns {found(0|1), read(0|1), count, archived(0|1)}.
MARK_LUA = """
local feed, unread, archived, live = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local nid, action = ARGV[1], ARGV[2]
local seq = redis.call('ZSCORE', feed, nid)
if not seq then return {0, 0, 0, 0} end
local changed = 0
local arch = 0
if action == 'unread' then
  changed = redis.call('ZADD', unread, seq, nid)
  redis.call('SREM', archived, nid)
else
  changed = redis.call('ZREM', unread, nid)
  if action == 'archive' then
    changed = changed + redis.call('SADD', archived, nid)
    arch = 1
  end
end
local count = redis.call('ZCARD', unread)
local read = (action == 'unread') and 0 or 1
if changed > 0 then
  redis.call('PUBLISH', live, '{"e":"read","data":{"ids":[' .. cjson.encode(nid) ..
    '],"read":' .. (read == 1 and 'true' or 'false') .. ',"count":' .. count ..
    (arch == 1 and ',"archived":true' or '') .. '}}')
end
return {1, read, count, arch}
"""

# KEYS: unread, live. Marks everything read. Returns the number marked.
READ_ALL_LUA = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if #ids == 0 then return 0 end
redis.call('DEL', KEYS[1])
local parts = {}
for i, id in ipairs(ids) do parts[i] = cjson.encode(id) end
redis.call('PUBLISH', KEYS[2], '{"e":"read","data":{"ids":[' .. table.concat(parts, ',') ..
  '],"read":true,"count":0}}')
return #ids
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

    async def count(self, uid: str) -> int:
        return int(await self.redis.zcard(self.keys.unread(uid)))

    async def head(self, uid: str) -> tuple[int, int]:
        """(unread count, last seq) read together."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zcard(self.keys.unread(uid))
            pipe.get(self.keys.user_seq(uid))
            count, seq = await pipe.execute()
        return int(count), int(seq or 0)

    async def page(self, uid: str, *, unread: bool = False, cursor: int | None = None,
                   limit: int = 50) -> FeedPage:
        """Newest first; `cursor` is the seq of the last item of the previous page."""
        limit = max(1, min(limit, MAX_LIMIT))
        key = self.keys.unread(uid) if unread else self.keys.feed(uid)
        top = "+inf" if cursor is None else f"({cursor}"
        rows = await self.redis.zrevrangebyscore(key, top, "-inf", start=0, num=limit + 1,
                                                 withscores=True)
        more = len(rows) > limit
        rows = rows[:limit]
        items = await self._items(uid, [(r[0].decode(), int(r[1])) for r in rows],
                                  all_unread=unread)
        return FeedPage([msgspec.Raw(i) for _, i in items],
                        int(rows[-1][1]) if more and rows else None)

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
                pipe.zmscore(self.keys.unread(uid), ids)
            pipe.smismember(self.keys.archived(uid), ids)
            res: list[Any] = await pipe.execute()
        bodies = res[0]
        unread = [True] * len(ids) if all_unread else [s is not None for s in res[1]]
        archived = res[-1]
        out: list[tuple[int, bytes]] = []
        for (_, seq), body, u, a in zip(rows, bodies, unread, archived, strict=True):
            if body is not None:  # a notice body is never deleted before its feed entries
                out.append((seq, item_json(notice_view(body), seq, not u, bool(a))))
        return out

    async def mark(self, uid: str, nid: str, action: str) -> Marked:
        """action: read | unread | archive. NotFound unless `nid` is in this user's feed."""
        k = self.keys
        found, read, count, arch = await self._mark(
            keys=[k.feed(uid), k.unread(uid), k.archived(uid), k.live(uid)], args=[nid, action])
        if not found:
            raise NotFound(f"no notice {nid!r} in your feed", field="id")
        return Marked(nid, bool(read), int(count), bool(arch))

    async def read_all(self, uid: str) -> MarkedAll:
        marked = await self._read_all(keys=[self.keys.unread(uid), self.keys.live(uid)])
        return MarkedAll(int(marked), 0)
