"""A user stream's RESYNC (sent when the api's pub/sub connection comes up, or back) while the
center stores notices: the `count` it sends and the notices after it add up to the feed,
each notice counted once by the rule the inbox widget applies."""

from __future__ import annotations

import asyncio

import msgspec
from redis.asyncio import Redis

from vestnik.app.notices import _frames
from vestnik.streams.center import RESYNC, Inbox, UserSub
from vestnik.streams.fanout import LiveItem
from vestnik.streams.keys import Keys


class _Hub:
    async def unsubscribe(self, sub: UserSub) -> None:
        pass


class _StoredDuringBacklog(Inbox):
    """The center stores three notices for the user just after the stream's backlog read
    (and publishes them: the hub offers them to the subscription)."""

    def __init__(self, redis: Redis, keys: Keys, sub: UserSub) -> None:
        super().__init__(redis, keys)
        self.sub = sub
        self.stored = False

    async def after(self, uid: str, seq: int, limit: int = 500) -> list[tuple[int, bytes]]:
        items = await super().after(uid, seq, limit)
        if not self.stored:
            self.stored = True
            for n in (1, 2, 3):
                body = msgspec.json.encode({"id": f"n{n}", "title": f"t{n}", "seq": n})
                await self.redis.set(self.keys.notice(f"n{n}"), body)
                await self.redis.zadd(self.keys.feed(uid), {f"n{n}": n})
                await self.redis.set(self.keys.user_seq(uid), n)
                self.sub.offer(LiveItem("notice", body, n))
        return items


def _badge(frames: list[bytes]) -> int:
    """The widget's unread badge: a `count` event sets it (and the seq it covers); a notice
    after that seq adds one."""
    count = covered = 0
    for f in frames:
        fields = dict(line.split(b": ", 1) for line in f.strip().split(b"\n"))
        data = msgspec.json.decode(fields[b"data"])
        if fields.get(b"event") == b"count":
            count, covered = data["count"], data["seq"]
        elif fields.get(b"event") == b"notice" and int(fields[b"id"]) > covered:
            count, covered = count + 1, int(fields[b"id"])
    return count


async def test_resync_while_notices_are_stored_counts_each_once(redis: Redis, keys: Keys):
    sub = UserSub("1", 100)
    sub.offer(RESYNC)
    inbox = _StoredDuringBacklog(redis, keys, sub)
    stream = _frames(_Hub(), inbox, sub, 0, 0, None)  # type: ignore[arg-type]
    frames: list[bytes] = []
    try:
        for _ in range(20):  # bounded: the first count, the resync's, three notices
            frames.append(await asyncio.wait_for(anext(stream), 5))
            if frames[-1].startswith(b"id: 3\n"):
                break
    finally:
        await stream.aclose()
    assert inbox.stored and frames[-1].startswith(b"id: 3\n"), frames
    assert _badge(frames) == 3, frames
