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

from .errors import BadInput
from .ids import now_ms
from .keys import Keys
from .metrics import EVENTS_PUBLISHED
from .schemas import Snapshot, TopicEvent, json_encode, topic_fields
from .together import Appends

TOPIC_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")

_entity_decode = msgspec.json.Decoder(dict[str, Any]).decode

# KEYS: state hash, position key. ARGV: sid, op, id, data (repeated; data '' = keep state)
APPLY_LUA = """
local function parse(sid)
  local a, b = string.match(sid, '^(%d+)-(%d+)$')
  return tonumber(a), tonumber(b)
end
local pms, pseq = -1, -1
local pos = redis.call('GET', KEYS[2])
if pos then pms, pseq = parse(pos) end
local last = false
local applied = 0
for i = 1, #ARGV, 4 do
  local ms, seq = parse(ARGV[i])
  if ms > pms or (ms == pms and seq > pseq) then
    if ARGV[i + 1] == 'delete' then
      redis.call('HDEL', KEYS[1], ARGV[i + 2])
    elseif ARGV[i + 3] ~= '' then
      redis.call('HSET', KEYS[1], ARGV[i + 2], ARGV[i + 3])
    end
    pms, pseq, last = ms, seq, ARGV[i]
    applied = applied + 1
  end
end
if last then redis.call('SET', KEYS[2], last) end
return applied
"""


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
    # (redis-py's XADD trims approximately by default, as Appends does)
    sid = await redis.xadd(keys.topic(topic), topic_fields(event), maxlen=maxlen)
    EVENTS_PUBLISHED.labels(topic, via).inc()
    return sid.decode()


class StateWriter:
    """Applies decoded, hydrated events of a topic to `vn:state:<topic>` in one round trip."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.keys = keys
        self._apply = redis.register_script(APPLY_LUA)

    async def apply(self, topic: str, events: list[tuple[str, TopicEvent]]) -> int:
        if not events:
            return 0
        argv: list[str | bytes] = []
        for sid, ev in events:
            data = b"" if ev.data is None else json_encode(ev.data)
            argv += [sid, ev.op, ev.id, data]
        return int(await self._apply(keys=[self.keys.state(topic), self.keys.state_pos(topic)],
                                     args=argv))


async def read_snapshot(redis: Redis, keys: Keys, topic: str) -> Snapshot:
    """The state hash and its position, read atomically (MULTI)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.state(topic))
        pipe.get(keys.state_pos(topic))
        state, pos = await pipe.execute()
    items = {k.decode(): _entity_decode(v) for k, v in state.items()}
    return Snapshot(topic=topic, last_id=pos.decode() if pos else "0-0", items=items)
