"""The keyspace bridge: products that keep entities as Redis keys get topic events for free.

`keyspace_patterns = {"panel:vm:*" = "vm"}` turns every write of `panel:vm:7`
into an `update` of entity `7` on topic `vm` carrying the value read from the
key (a JSON string or a hash), and every DEL, expiry or eviction into a
`delete`. Keyspace notifications are fire-and-forget, so after (re)connecting
the bridge compares the keys with the topic's state and publishes what differs.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from vestnik.streams import redis_url
from vestnik.streams.keys import Keys
from vestnik.streams.metrics import BRIDGE_EVENTS, READER_RECONNECTS
from vestnik.streams.notifier.hydrate import read_entity
from vestnik.streams.notifier.topics import check_topic
from vestnik.streams.redis import RETRYABLE, Backoff, reader
from vestnik.streams.schemas import TopicEvent, topic_fields

log = logging.getLogger("vestnik.bridge")

NEEDED_FLAGS = "Kg$hxe"
DELETE_EVENTS = {b"del", b"expired", b"evicted", b"rename_from", b"unlink"}
_entity_decode = msgspec.json.Decoder().decode


class BridgeError(Exception):
    """The bridge cannot run against this Redis (e.g. CONFIG is forbidden)."""


@dataclass(frozen=True)
class Pattern:
    glob: str
    topic: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, glob: str, topic: str) -> Pattern:
        check_topic(topic)
        if "*" not in glob:
            raise BridgeError(f"keyspace pattern {glob!r} needs a `*` standing for the entity id")
        regex = re.compile("^" + "(.*?)".join(re.escape(p) for p in glob.split("*")) + "$")
        return cls(glob, topic, regex)

    def entity_id(self, key: str) -> str | None:
        m = self.regex.match(key)
        return ":".join(m.groups()) if m else None


def db_of(url: str) -> int:
    return redis_url.parse(url).db


async def enable_notifications(redis: Redis) -> str:
    """Add the keyspace flags we need to `notify-keyspace-events`; returns the new value."""
    try:
        reply = await redis.config_get("notify-keyspace-events")
        current = next(iter(reply.values()), b"")  # key type varies with the parser
        current = current.decode() if isinstance(current, bytes) else str(current)
        wanted = current
        if "A" not in current:
            wanted += "".join(f for f in NEEDED_FLAGS if f not in current)
        elif "K" not in current:
            wanted += "K"
        if wanted != current:
            await redis.config_set("notify-keyspace-events", wanted)
        return wanted
    except (NoPermissionError, ResponseError) as e:
        raise BridgeError(
            "cannot enable keyspace notifications: CONFIG is not allowed on this Redis "
            f"({e}). Set `notify-keyspace-events {NEEDED_FLAGS}` in redis.conf (or ask your "
            "provider to), then start the bridge again."
        ) from None


class Bridge:
    def __init__(self, url: str, redis: Redis, keys: Keys, patterns: dict[str, str],
                 *, maxlen: int, batch: int = 1000) -> None:
        if not patterns:
            raise BridgeError("no keyspace patterns configured (VESTNIK_KEYSPACE_PATTERNS)")
        if redis_url.parse(url).kind == "cluster":
            raise BridgeError(
                "the bridge follows keyspace notifications, which each Redis Cluster node "
                "sends for its own keys only: on a cluster, publish entity changes to the "
                "topic (HTTP, `vestnik publish`) instead of bridging key writes")
        self.url = url
        self.redis = redis
        self.keys = keys
        self.patterns = [Pattern.parse(g, t) for g, t in patterns.items()]
        self.maxlen = maxlen
        self.batch = batch
        self.db = db_of(url)
        self.prefix = f"__keyspace@{self.db}__:".encode()
        self.ready = asyncio.Event()

    def match(self, key: str) -> tuple[Pattern, str] | None:
        for p in self.patterns:
            eid = p.entity_id(key)
            if eid:
                return p, eid
        return None

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            sub = reader(self.url, name="vestnik-bridge", like=self.redis, block=None)
            pubsub = sub.pubsub()
            try:
                # again after every reconnect: a replica promoted by a failover (or a
                # restarted Redis without the setting in its file) notifies nothing yet
                await enable_notifications(self.redis)
                await pubsub.psubscribe(*(self.prefix + p.glob.encode() for p in self.patterns))
                await self.resync()
                self.ready.set()
                log.info("bridge: following %s", ", ".join(p.glob for p in self.patterns))
                backoff.reset()
                await self._listen(pubsub)
            except RETRYABLE as e:
                READER_RECONNECTS.labels("bridge").inc()
                log.warning("bridge lost Redis (%s); reconnecting and resyncing", e)
                await backoff.wait()
            finally:
                try:
                    await pubsub.aclose()
                    await sub.aclose()
                except RETRYABLE:
                    pass

    async def _listen(self, pubsub) -> None:  # type: ignore[no-untyped-def]
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None:
                continue
            changed: dict[str, bytes] = {}  # key → last event: a burst on one key reads once
            while msg is not None and len(changed) < self.batch:
                if msg["type"] == "pmessage":
                    key = msg["channel"][len(self.prefix):].decode(errors="replace")
                    changed.pop(key, None)
                    changed[key] = msg["data"]
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            await self._publish(changed)

    async def _publish(self, changed: dict[str, bytes]) -> None:
        reads = {k: ev for k, ev in changed.items() if ev not in DELETE_EVENTS}
        values = dict(zip(reads, await asyncio.gather(*(read_entity(self.redis, k)
                                                         for k in reads)), strict=True))
        async with self.redis.pipeline(transaction=False) as pipe:
            n = 0
            topics: set[str] = set()
            for key in changed:
                found = self.match(key)
                if found is None:
                    continue
                pattern, eid = found
                data = values.get(key)
                ev = TopicEvent(op="delete" if data is None else "update", id=eid, data=data,
                                src="bridge")
                pipe.xadd(self.keys.topic(pattern.topic), topic_fields(ev), maxlen=self.maxlen,
                          approximate=True)
                BRIDGE_EVENTS.labels(pattern.topic).inc()
                topics.add(pattern.topic)
                n += 1
            if n:
                pipe.sadd(self.keys.topics, *topics)  # the hubs follow what is in the set
                await pipe.execute()

    async def resync(self) -> None:
        """Publish what changed while no notification could reach us (start, reconnect)."""
        for p in self.patterns:
            state = await self.redis.hgetall(self.keys.state(p.topic))
            seen: set[str] = set()
            changed: dict[str, bytes] = {}
            async for raw in self.redis.scan_iter(match=p.glob, count=1000):
                key = raw.decode(errors="replace")
                eid = p.entity_id(key)
                if not eid:
                    continue
                seen.add(eid)
                value = await read_entity(self.redis, key)
                old = state.get(eid.encode())
                if value is not None and (old is None or _entity_decode(old) != value):
                    changed[key] = b"set"
            await self._publish(changed)
            gone = [eid.decode() for eid in state if eid.decode() not in seen]
            async with self.redis.pipeline(transaction=False) as pipe:
                for eid in gone:
                    pipe.xadd(self.keys.topic(p.topic),
                              topic_fields(TopicEvent(op="delete", id=eid, src="bridge")),
                              maxlen=self.maxlen, approximate=True)
                if gone:
                    pipe.sadd(self.keys.topics, p.topic)
                    await pipe.execute()

