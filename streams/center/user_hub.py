"""The user hub: ONE Redis pub/sub connection per api process serves every connected user.

Channel `keys.live(uid)` is subscribed when a user's first SSE connection arrives
and unsubscribed when the last one leaves. Each message is decoded once and
offered to every connection of that user. Messages on the channel are msgpack arrays
(streams.schemas.LiveMsg; `live_event` makes the SSE event of each):

    ['notice', seq, view]        new feed entry (the center's store scripts)
    ['notice-update', view]      a dedup repeat was folded into it (the center)
    ['read', {ids, read, count, archived?}]   read state changed (the inbox scripts)

Pub/sub is fire-and-forget, so the feed stays the truth: every connection keeps the
last seq it sent and fills any gap from the feed. When the pub/sub connection is
lost, every connection is told to resync from the feed (`RESYNC`), because messages
published meanwhile are gone. A connection that falls `queue_size` messages behind
is cut off (it gets `None`) and resumes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from vestnik.streams.fanout import LiveItem, Mailbox, cancel_and_wait, close_all
from vestnik.streams.keys import Keys
from vestnik.streams.metrics import READER_RECONNECTS, SSE_DROPPED
from vestnik.streams.redis import RETRYABLE, Backoff, reader
from vestnik.streams.schemas import decode_live, live_event

log = logging.getLogger("vestnik.live")


RESYNC: Final = LiveItem("resync", b"{}")


class UserSub(Mailbox[LiveItem]):
    __slots__ = ("uid",)

    def __init__(self, uid: str, queue_size: int) -> None:
        super().__init__(queue_size)
        self.uid = uid


class UserHub:
    def __init__(self, url: str, keys: Keys, *, queue_size: int = 1000,
                 confirm_timeout: float = 5.0) -> None:
        self.url = url
        self.keys = keys
        self.queue_size = queue_size
        self.confirm_timeout = confirm_timeout
        self.subs: dict[str, set[UserSub]] = {}
        self._client: Redis | None = None
        self._ps: PubSub | None = None
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._pending: list[bytes] = []
        self._flusher: asyncio.Task[None] | None = None

    # lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="user-hub")

    def close_subscribers(self) -> None:
        """End every connection's stream (server shutdown: clients resume elsewhere with
        Last-Event-ID). app/server.py calls it on SIGTERM, so a restart does not wait out
        uvicorn's graceful timeout on open SSE connections."""
        close_all(self.subs.values())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self.close_subscribers()
        await cancel_and_wait(self._task)
        await self._drop()

    @property
    def client_count(self) -> int:
        return sum(len(s) for s in self.subs.values())

    # subscribers ---------------------------------------------------------------------
    async def subscribe(self, uid: str) -> UserSub:
        """Register a connection; returns once Redis confirmed the channel subscription, so
        a backlog read after this misses nothing. (When Redis is away it returns after
        `confirm_timeout`; the reconnect then sends RESYNC to every connection.)"""
        sub = UserSub(uid, self.queue_size)
        self.subs.setdefault(uid, set()).add(sub)
        channel = self.keys.live(uid).encode()
        fut = self._confirm.get(channel)
        if fut is None:
            fut = self._confirm[channel] = asyncio.get_running_loop().create_future()
            if self._ps is not None and self._connected.is_set():
                self._queue_subscribe(channel)
            else:
                self._wake.set()  # the reader opens the connection with every channel
        if not fut.done():
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.confirm_timeout)
            except TimeoutError:
                log.warning("user hub: no subscribe confirmation for user %s yet", uid,
                            extra={"user": uid})
        return sub

    def _queue_subscribe(self, channel: bytes) -> None:
        """SUBSCRIBE in batches: users connecting in the same loop tick share one command
        (5,000 clients arriving at once were 5,000 writes on the pub/sub connection)."""
        self._pending.append(channel)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_subscribes())

    async def _flush_subscribes(self) -> None:
        await asyncio.sleep(0)  # let the connections of this tick queue their channels
        for _ in range(1000):  # bounded: each round takes everything queued so far
            if not self._pending or self._ps is None:
                return
            channels, self._pending = self._pending, []
            try:
                await self._ps.subscribe(*channels)
            except RETRYABLE as e:  # the reader loop reconnects and resyncs everyone
                log.warning("user hub: subscribe failed (%s)", e)
                return

    async def unsubscribe(self, sub: UserSub) -> None:
        subs = self.subs.get(sub.uid)
        if subs is None:
            return
        subs.discard(sub)
        if subs:
            return
        del self.subs[sub.uid]
        channel = self.keys.live(sub.uid).encode()
        self._confirm.pop(channel, None)
        if self._ps is not None and self._connected.is_set():
            try:
                await self._ps.unsubscribe(channel)
            except RETRYABLE:
                pass  # the reconnect subscribes only to the users still connected

    # reader loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            try:
                if self._ps is None:
                    if not self.subs:
                        self._wake.clear()
                        try:
                            await asyncio.wait_for(self._wake.wait(), 1.0)
                        except TimeoutError:
                            pass
                        continue
                    await self._open()
                    # whatever was published while we were away is gone: read the feed
                    self._broadcast(RESYNC)
                assert self._ps is not None
                if not self._ps.subscribed:
                    if not self.subs:
                        await self._drop()
                        continue
                    await self._ps.subscribe(*(self.keys.live(u).encode() for u in self.subs))
                # no timeout: redis-py arms an asyncio timeout per read otherwise, a third
                # of this process's CPU in a broadcast to 5,000 users. stop() cancels the
                # read; the last unsubscribe's confirmation ends it when nobody is left;
                # a silent peer is found by the reader's watchdog (streams.redis.reader)
                msg = await self._ps.get_message(timeout=None)
                if msg is not None and self._dispatch(msg):
                    # a queue is full: let its reader run before the next message, which
                    # may already be buffered (a burst read at once never yields)
                    await asyncio.sleep(0)
                backoff.reset()
            except RETRYABLE as e:
                READER_RECONNECTS.labels("users").inc()
                log.warning("user hub lost Redis (%s); reconnecting", e)
                await self._drop()
                await backoff.wait()

    async def _open(self) -> None:
        self._client = reader(self.url, name="vestnik-user-hub", block=None)
        self._ps = self._client.pubsub()
        channels = [self.keys.live(u).encode() for u in self.subs]
        await self._ps.subscribe(*channels)
        self._connected.set()
        # users whose first connection came while we were connecting are not in `channels`
        # (subscribe() left them to us): without this, their stream waited confirm_timeout
        # on every connect and got no live event
        have = set(channels)
        late = [c for c in (self.keys.live(u).encode() for u in self.subs) if c not in have]
        if late:
            await self._ps.subscribe(*late)

    async def _drop(self) -> None:
        self._connected.clear()
        ps, client, self._ps, self._client = self._ps, self._client, None, None
        if ps is not None:
            try:
                await ps.aclose()
            except RETRYABLE:
                pass
        if client is not None:
            try:
                await client.aclose()
            except RETRYABLE:
                pass

    def _broadcast(self, item: LiveItem) -> None:
        for subs in self.subs.values():
            for sub in list(subs):
                if not sub.offer(item):
                    self._cut(sub)

    def _cut(self, sub: UserSub) -> None:
        SSE_DROPPED.labels("user").inc()
        sub.close()
        subs = self.subs.get(sub.uid)
        if subs is not None:
            subs.discard(sub)

    def _dispatch(self, msg: dict) -> bool:
        """Offer `msg` to its user's connections; True when one of them is now full.

        Messages come in bursts the reader loop handles without yielding: several in one
        read (a pipeline of PUBLISHes), and on a Redis Cluster every PUBLISH made on
        another node, which reaches ours over the cluster bus, where Redis 7.0 leaves
        Nagle's algorithm on (valkey-io/valkey#1758): up to 40 ms of messages at once. A
        connection is cut off only if it is still full after its reader had a turn."""
        kind = msg.get("type")
        channel = msg.get("channel")
        if kind == "subscribe":
            fut = self._confirm.get(channel) if isinstance(channel, bytes) else None
            if fut is not None and not fut.done():
                fut.set_result(None)
            return False
        if kind != "message" or not isinstance(channel, bytes):
            return False
        uid = self.keys.live_user(channel.decode())
        subs = self.subs.get(uid)
        if not subs:
            return False
        try:
            item = LiveItem(*live_event(decode_live(msg["data"])))
        except msgspec.DecodeError as e:
            log.error("user hub: bad live message on %r: %s", channel, e)
            return False
        full = False
        for sub in list(subs):  # copy: a slow connection never blocks the others
            if not sub.offer(item):
                self._cut(sub)
            elif sub.full():
                full = True
        return full
