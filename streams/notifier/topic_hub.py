"""The topic hub: ONE Redis reader per process tails every topic stream, keeps the state
snapshots, and fans each event out to every local subscriber.

Each event is decoded, hydrated and encoded once, whatever the number of
subscribers. A subscriber registers first, then reads its backlog with XRANGE,
and drops any live item at or before the last id it sent: no gap, no duplicate.
A subscriber that falls `queue_size` items behind is cut off (it gets `None`)
instead of slowing the others; it resumes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from vestnik.streams.errors import BadInput
from vestnik.streams.fanout import Mailbox, TopicItem, cancel_and_wait, close_all
from vestnik.streams.ids import parse_stream_id
from vestnik.streams.keys import SETTINGS_TOPIC, USER_TOPIC, Keys
from vestnik.streams.metrics import (
    EVENTS_APPLIED,
    EVENTS_BAD,
    READER_RECONNECTS,
    SSE_DROPPED,
    TOPICS_FOLLOWED,
)
from vestnik.streams.notifier.hydrate import Hydrator
from vestnik.streams.notifier.topics import TOPIC_RE, StateWriter
from vestnik.streams.redis import RETRYABLE, Backoff, reader
from vestnik.streams.schemas import EntityEvent, TopicEvent, decode_topic_entry, json_encode

log = logging.getLogger("vestnik.hub")

StreamKey = tuple[int, int]
OWN_TOPICS = frozenset({USER_TOPIC, SETTINGS_TOPIC})  # followed whenever their stream exists
T = TypeVar("T")


class Subscription(Mailbox[TopicItem]):
    __slots__ = ("topic",)

    def __init__(self, topic: str, queue_size: int) -> None:
        super().__init__(queue_size)
        self.topic = topic


class TopicHub:
    def __init__(
        self,
        url: str,
        redis: Redis,
        keys: Keys,
        hydrator: Hydrator,
        *,
        batch: int = 1000,
        block_ms: int = 1000,
        discover_every: float = 2.0,
        queue_size: int = 10_000,
        materialize: bool = True,
        maxlen: int = 0,
    ) -> None:
        self.url = url
        self.redis = redis
        self.keys = keys
        self.hydrator = hydrator
        self.state = StateWriter(redis, keys, maxlen=maxlen)  # trims what it applied
        self.batch = batch
        self.block_ms = block_ms
        self.discover_every = discover_every
        self.queue_size = queue_size
        self.materialize = materialize
        self.positions: dict[str, str] = {}
        self.subscribers: dict[str, set[Subscription]] = {}
        self._reader: Redis | None = None
        self._reader_id: int | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_discovery = -1e9
        self.ready = asyncio.Event()

    # lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="topic-hub")

    def close_subscribers(self) -> None:
        """End every subscriber's stream (server shutdown: clients reconnect elsewhere)."""
        close_all(self.subscribers.values())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self.close_subscribers()
        await cancel_and_wait(self._task)
        if self._reader is not None:
            await self._reader.aclose()

    # subscribers -------------------------------------------------------------------
    async def subscribe(self, topic: str) -> Subscription:
        sub = Subscription(topic, self.queue_size)
        self.subscribers.setdefault(topic, set()).add(sub)
        if topic not in self.positions:
            await self._follow([topic], asked=True)
            await self._interrupt()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subscribers.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscribers[sub.topic]

    async def tip(self, topic: str) -> str:
        """Id of the newest entry of the topic stream ('0-0' when empty)."""
        last = await self.redis.xrevrange(self.keys.topic(topic), count=1)
        return last[0][0].decode() if last else "0-0"

    async def backlog(self, topic: str, after: str, limit: int = 1000
                      ) -> tuple[list[TopicItem], bool]:
        """Entries strictly after `after` (at most `limit`), and whether trimming removed any
        entry after `after` (a gap the client must fill from the snapshot)."""
        key = self.keys.topic(topic)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(key, min=f"({after}", count=limit)
            pipe.xinfo_stream(key)
            entries, info = await pipe.execute(raise_on_error=False)
        if isinstance(entries, Exception):
            raise entries
        gap = False
        if isinstance(info, dict):
            deleted = info.get("max-deleted-entry-id") or info.get(b"max-deleted-entry-id")
            if isinstance(deleted, bytes):
                deleted = deleted.decode()
            gap = bool(deleted) and parse_stream_id(deleted) > parse_stream_id(after)
        return self._items(topic, await self._decode(topic, entries)), gap

    # reader loop -------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                if self._reader is None:
                    self._reader = reader(self.url, name="vestnik-topic-hub", like=self.redis,
                                          block=self.block_ms / 1000)
                    self._reader_id = int(await self._reader.client_id())
                if loop.time() >= self._next_discovery:
                    await self._discover()
                    self._next_discovery = loop.time() + self.discover_every
                    self.ready.set()
                until_discovery = max(0.001, self._next_discovery - loop.time())
                if not self.positions:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), until_discovery)
                    except TimeoutError:
                        pass
                    continue
                streams = {self.keys.topic(t): p for t, p in self.positions.items()}
                block = max(1, min(self.block_ms, int(until_discovery * 1000)))
                resp = await self._reader.xread(streams, count=self.batch, block=block)
                for key, entries in resp or ():
                    await self._handle(self.keys.topic_of(key.decode()), entries)
                backoff.reset()
            except RETRYABLE as e:
                READER_RECONNECTS.labels("topics").inc()
                log.warning("topic reader lost Redis (%s); reconnecting", e)
                await self._drop_reader()
                await backoff.wait()
            except ResponseError as e:
                if "UNBLOCKED" in str(e):
                    continue
                raise

    async def _drop_reader(self) -> None:
        if self._reader is not None:
            try:
                await self._reader.aclose()
            except RETRYABLE:
                pass
        self._reader, self._reader_id = None, None

    async def _interrupt(self) -> None:
        """Wake a blocked XREAD so it picks up a newly followed topic at once."""
        self._wake.set()
        if self._reader_id is not None:
            try:
                await self.redis.client_unblock(self._reader_id)
            except RETRYABLE:
                pass

    async def _discover(self) -> None:
        """Follow the topics of the topic set (every publisher path adds its topic's name)
        whose stream exists, and stop following a topic whose stream is gone and that no
        local client asks for. Two round trips, whatever the number of keys: no SCAN."""
        names = {m.decode() for m in await self.redis.smembers(self.keys.topics)}
        names |= OWN_TOPICS  # Vestnik's own: products publish users with a plain XADD
        check = sorted({t for t in names if t not in self.positions and TOPIC_RE.match(t)}
                       | {t for t in self.positions if t not in self.subscribers})
        if not check:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in check:
                pipe.exists(self.keys.topic(t))
            there = await pipe.execute()
        for t, n in zip(check, there, strict=True):
            if not n and t not in self.subscribers:
                self.positions.pop(t, None)  # its stream was deleted (or never made)
        await self._follow([t for t, n in zip(check, there, strict=True) if n])
        TOPICS_FOLLOWED.set(len(self.positions))

    async def _follow(self, topics: Iterable[str], *, asked: bool = False) -> None:
        """Start tailing topics from their materialized position (or the beginning).
        `asked`: a client asked for them; the ones whose stream exists go into the topic
        set (a product's plain XADD is found so), a made-up name leaves nothing behind."""
        topics = [t for t in topics if t not in self.positions]
        if not topics:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([self.keys.state_pos(t) for t in topics])
            for t in topics if asked else ():
                pipe.exists(self.keys.topic(t))
            positions, *there = await pipe.execute()
        for topic, pos in zip(topics, positions, strict=True):
            self.positions.setdefault(topic, pos.decode() if pos else "0-0")
        TOPICS_FOLLOWED.set(len(self.positions))
        found = [t for t, n in zip(topics, there, strict=False) if n]
        if found:
            try:
                await self.redis.sadd(self.keys.topics, *found)
            except ResponseError as e:  # Redis full (OOM): the client is served all the same
                log.warning("topics %s not recorded in %s: %s", found, self.keys.topics, e)

    async def _decode(self, topic: str, entries: list) -> list[tuple[str, TopicEvent]]:
        """Decode stream entries (bad ones are counted and skipped) and hydrate thin ones."""
        decoded: list[tuple[str, TopicEvent]] = []
        for raw_sid, fields in entries:
            sid = raw_sid.decode()
            try:
                decoded.append((sid, decode_topic_entry(fields)))
            except BadInput as e:
                EVENTS_BAD.labels(topic).inc()
                log.warning("topic %s entry %s skipped: %s", topic, sid, e.detail)
        if any(self.hydrator.needs(topic, ev) for _, ev in decoded):
            hydrated = await asyncio.gather(
                *(self.hydrator.hydrate(topic, sid, ev) for sid, ev in decoded)
            )
            decoded = [(sid, ev) for (sid, _), ev in zip(decoded, hydrated, strict=True)]
        return decoded

    @staticmethod
    def _items(topic: str, decoded: list[tuple[str, TopicEvent]]) -> list[TopicItem]:
        return [
            TopicItem(sid, json_encode(EntityEvent(
                topic=topic, sid=sid, op=ev.op, id=ev.id, data=ev.data,
                ts=ev.ts or parse_stream_id(sid)[0], src=ev.src,  # raw XADD: ts from the id
            )))
            for sid, ev in decoded
        ]

    async def _handle(self, topic: str, entries: list) -> None:
        decoded = await self._decode(topic, entries)
        if self.materialize and decoded:
            applied = await self.state.apply(topic, decoded)
            if applied:
                EVENTS_APPLIED.labels(topic).inc(applied)
        subs = self.subscribers.get(topic)
        if subs:
            items = self._items(topic, decoded)
            for sub in list(subs):  # copy: a slow subscriber never blocks the others
                for item in items:
                    if not sub.offer(item):
                        SSE_DROPPED.labels("topic").inc()
                        sub.close()
                        subs.discard(sub)
                        break
        self.positions[topic] = entries[-1][0].decode()

    async def catch_up(self, topic: str) -> None:
        """Apply whatever the topic stream holds beyond the state position (for snapshots);
        the topic is followed from then on while its stream exists."""
        pos = await self.redis.get(self.keys.state_pos(topic))
        after = pos.decode() if pos else "0-0"
        if topic not in self.positions:
            await self._follow([topic], asked=True)
            if topic in self.positions and topic not in self.subscribers:
                await self._interrupt()
        for _ in range(1000):  # bounded: 1,000 pages of `batch`
            entries = await self.redis.xrange(self.keys.topic(topic), min=f"({after}",
                                              count=self.batch)
            if not entries:
                return
            await self.state.apply(topic, await self._decode(topic, entries))
            after = entries[-1][0].decode()
