"""Topic streams: publish an event, apply events to the state snapshot, read the snapshot.

Applying is one Lua call per batch that skips any entry at or before the
recorded position, so several processes may materialize the same topic and the
state still reflects every event exactly once, in stream order.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from redis.asyncio import Redis

from vestnik.streams import lua
from vestnik.streams.coalesce import Appends
from vestnik.streams.errors import BadInput
from vestnik.streams.ids import now_ms
from vestnik.streams.keys import Keys
from vestnik.streams.metrics import EVENTS_PUBLISHED
from vestnik.streams.schemas import Snapshot, TopicEvent, json_encode, topic_fields

TOPIC_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}\Z")  # \Z: `$` matches before a final LF

_entity_decode = msgspec.json.Decoder(dict[str, Any]).decode

TRIM_SLACK = 100  # entries over maxlen before a trim (one stream node; `~` cuts whole ones)
TRIM_STEP = 1000  # the most entries one call reads to find where to cut
_APPLY = lua.script("notifier/apply.lua", TRIM_SLACK=TRIM_SLACK, TRIM_STEP=TRIM_STEP)


def check_topic(topic: str) -> str:
    if not TOPIC_RE.match(topic):
        raise BadInput(
            "topic must be 1-100 characters of letters, digits, `_`, `.` or `-`", field="topic"
        )
    return topic


async def publish(
    redis: Redis | Appends, keys: Keys, topic: str, event: TopicEvent, *, maxlen: int,
    via: str = "api"
) -> str:
    """XADD one event to the topic stream (trimmed with MAXLEN ~); returns its stream id.
    Through `Appends` (the api), the events of requests that arrive together share one
    pipeline."""
    check_topic(topic)
    if not event.ts:
        event.ts = now_ms()
    # (redis-py's XADD trims approximately by default, as Appends does); the topic's name
    # goes into the topic set in the same round trip, for the hubs to follow
    if isinstance(redis, Appends):
        sid = await redis.xadd(keys.topic(topic), topic_fields(event), maxlen=maxlen,
                               member_of=(keys.topics, topic))
    else:
        async with redis.pipeline(transaction=False) as pipe:
            queue_publish(pipe, keys, topic, event, maxlen=maxlen)
            sid, _ = await pipe.execute()
    EVENTS_PUBLISHED.labels(topic, via).inc()
    return sid.decode()


def queue_publish(pipe: Any, keys: Keys, topic: str, event: TopicEvent, *, maxlen: int) -> None:
    """Queue one event's XADD and its topic's SADD on a pipeline, asyncio's or redis-py's
    blocking one (the sync `vestnik.client`): its execute() answers [stream id, added]."""
    check_topic(topic)
    if not event.ts:
        event.ts = now_ms()
    pipe.xadd(keys.topic(topic), topic_fields(event), maxlen=maxlen)
    pipe.sadd(keys.topics, topic)


class StateWriter:
    """Applies decoded, hydrated events of a topic to `vn:state:<topic>` in one round trip,
    and trims the topic stream to about `maxlen` behind what it applied (0: no trim)."""

    def __init__(self, redis: Redis, keys: Keys, *, maxlen: int = 0) -> None:
        self.keys = keys
        self.maxlen = maxlen
        self.redis = redis

    async def apply(self, topic: str, events: list[tuple[str, TopicEvent]]) -> int:
        if not events:
            return 0
        argv: list[str | bytes | int] = []
        for sid, ev in events:
            data = b"" if ev.data is None else json_encode(ev.data)
            argv += [sid, ev.op, ev.id, data]
        k = self.keys
        keys = [k.state(topic), k.state_pos(topic)]
        if self.maxlen:
            keys.append(k.topic(topic))
            argv.append(self.maxlen)
        return int(await _APPLY(keys=keys, args=argv, client=self.redis))


async def read_snapshot(redis: Redis, keys: Keys, topic: str) -> Snapshot:
    """The state hash and its position, read atomically (MULTI)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.state(topic))
        pipe.get(keys.state_pos(topic))
        state, pos = await pipe.execute()
    items = {k.decode(): _entity_decode(v) for k, v in state.items()}
    return Snapshot(topic=topic, last_id=pos.decode() if pos else "0-0", items=items)
