"""Helpers of the notice-center tests: users in the `user` state, notices as stream entries,
and a view of one user's feed straight from Redis."""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from support import run_keys
from vestnik.streams.keys import CENTER_GROUP, USER_TOPIC
from vestnik.streams.schemas import decode_live, live_event

K = run_keys()


def live_event_of(raw: bytes) -> tuple[str, Any, int]:
    """A message of a user's live channel as the user hub turns it into an SSE event: its
    name, its data (decoded JSON) and its seq."""
    event, data, seq = live_event(decode_live(raw))
    return event, msgspec.json.decode(data), seq


async def add_users(redis: Redis, *uids: str, prefs: dict[str, dict[str, Any]] | None = None
                    ) -> None:
    """Users as the topic hub materializes them (HSET of the `user` state)."""
    prefs = prefs or {}
    await redis.hset(K.state(USER_TOPIC), mapping={
        uid: msgspec.json.encode({"id": uid, "name": f"user {uid}", "email": f"u{uid}@example.com",
                                  "prefs": prefs.get(uid, {})})
        for uid in uids})


def entry(title: str = "Disk 95% on web-1", recipients: str = "1", **extra: str
          ) -> dict[str, str]:
    return {"alert": "disk", "title": title, "severity": "warning", "recipients": recipients,
            **extra}


async def xadd_many(redis: Redis, entries: list[dict[str, str]], chunk: int = 1000) -> list[str]:
    ids: list[str] = []
    for i in range(0, len(entries), chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for e in entries[i:i + chunk]:
                pipe.xadd(K.notices, e)
            ids += [x.decode() for x in await pipe.execute()]
    return ids


async def unread_count(redis: Redis, uid: str) -> int:
    """As the inbox counts: feed entries not in the read set."""
    return int(await redis.zcard(K.feed(uid))) - int(await redis.zcard(K.read(uid)))


async def mark_read(redis: Redis, uid: str, *nids: str) -> None:
    """As the inbox marks read: into the read set, at the feed's seq."""
    scores = await redis.zmscore(K.feed(uid), list(nids))
    await redis.zadd(K.read(uid), dict(zip(nids, scores, strict=True)))


async def feed(redis: Redis, uid: str) -> list[str]:
    """The user's feed, oldest first."""
    return [x.decode() for x in await redis.zrange(K.feed(uid), 0, -1)]


async def stored(redis: Redis, nid: str) -> dict[str, Any]:
    raw = await redis.get(K.notice(nid))
    assert raw is not None, nid
    return msgspec.json.decode(raw)


async def pending(redis: Redis) -> int:
    info = await redis.xpending(K.notices, CENTER_GROUP)
    return int(info["pending"])


async def lag(redis: Redis) -> int:
    for g in await redis.xinfo_groups(K.notices):
        if g["name"] in (b"center", "center"):
            return int(g.get("lag") or 0)
    return -1


async def dead(redis: Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()}
            for _, f in await redis.xrange(K.notices_dead)]


async def delayed_forwards(redis: Redis) -> list[str]:
    """The notice ids of the forwards waiting to be due: in the due set on a single Redis,
    as arq jobs in the queue on a cluster (the store's per-user path schedules them)."""
    fk = K.forward(0)
    if K.cluster:
        jobs = await redis.zrange(fk.arq_queue, 0, -1)
        return [j.decode()[len(fk.forward_job_prefix):].split(":")[0] for j in jobs]
    return [msgspec.msgpack.decode(m)[0] for m in await redis.zrange(fk.forward_due, 0, -1)]
