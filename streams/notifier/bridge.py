"""The keyspace bridge: products that keep entities as Redis keys get topic events for free.

`keyspace_patterns = {"panel:vm:*" = "vm"}` turns every write of `panel:vm:7`
into an `update` of entity `7` on topic `vm` carrying the value read from the
key (a JSON string or a hash), and every DEL, expiry or eviction into a
`delete`. Keyspace notifications are fire-and-forget, so after (re)connecting
the bridge compares the keys with the topic's state and publishes what differs.

On a Redis Cluster each master sends the notifications of its own keys only, so the
bridge keeps one pub/sub connection per master (`_follow`), enables the notifications on
each, and re-reads the masters (CLUSTER SLOTS) after any lost connection and every
TOPOLOGY_EVERY seconds, following a failover or a new master. A key write during a
master's failover (or while its connection is down) sends its notification to nobody:
every (re)subscription, on any master, is followed by the same resync (a SCAN of every
master), which publishes what the lost notifications would have. Events of all masters
share one publishing path; one key is one slot, on one master, so its events keep their
order.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisClusterException, ResponseError

from vestnik.streams import redis_cluster, redis_url
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
TOPOLOGY_EVERY = 10.0  # seconds between reads of a cluster's masters (a lost connection: at once)


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


async def enable_notifications(redis: Redis, **where: Any) -> str:
    """Add the keyspace flags we need to `notify-keyspace-events`; returns the new value.
    `where`: on a cluster, `target_nodes=` the master to set it on."""
    try:
        reply = await redis.config_get("notify-keyspace-events", **where)
        current = next(iter(reply.values()), b"")  # key type varies with the parser
        current = current.decode() if isinstance(current, bytes) else str(current)
        wanted = current
        if "A" not in current:
            wanted += "".join(f for f in NEEDED_FLAGS if f not in current)
        elif "K" not in current:
            wanted += "K"
        if wanted != current:
            await redis.config_set("notify-keyspace-events", wanted, **where)
        return wanted
    except (NoPermissionError, ResponseError) as e:
        raise BridgeError(
            "cannot enable keyspace notifications: CONFIG is not allowed on this Redis "
            f"({e}). Set `notify-keyspace-events {NEEDED_FLAGS}` in redis.conf (or ask your "
            "provider to), then start the bridge again."
        ) from None


Master = tuple[str, int]  # (host, port) of a cluster's master


class Bridge:
    def __init__(self, url: str, redis: Redis, keys: Keys, patterns: dict[str, str],
                 *, maxlen: int, batch: int = 1000,
                 topology_every: float = TOPOLOGY_EVERY) -> None:
        if not patterns:
            raise BridgeError("no keyspace patterns configured (VESTNIK_KEYSPACE_PATTERNS)")
        self.url = url
        self.address = redis_url.parse(url)
        self.redis = redis
        self.keys = keys
        self.patterns = [Pattern.parse(g, t) for g, t in patterns.items()]
        self.maxlen = maxlen
        self.batch = batch
        self.db = db_of(url)
        self.prefix = f"__keyspace@{self.db}__:".encode()
        self.ready = asyncio.Event()
        self.topology_every = topology_every
        # held by a resync for its whole run and by each batch of events: a batch that
        # arrives during a resync is published after it, as on one connection
        self._publishing = asyncio.Lock()
        self._masters: set[Master] = set()  # a cluster's, as last read
        self._subscribed: set[Master] = set()  # masters whose pub/sub is up now
        self._resync_wanted = asyncio.Event()  # a master (re)subscribed: resync
        self._topology_changed = asyncio.Event()  # a pub/sub connection failed: re-read

    def match(self, key: str) -> tuple[Pattern, str] | None:
        for p in self.patterns:
            eid = p.entity_id(key)
            if eid:
                return p, eid
        return None

    async def run(self) -> None:
        """Follow the key writes until cancelled; BridgeError when it cannot."""
        if self.address.kind == "cluster":
            await self._run_cluster()
        else:
            await self._run_one()

    async def _run_one(self) -> None:
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
            async with self._publishing:
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
        """Publish what changed while no notification could reach us (start, reconnect).
        On a cluster the SCAN visits every master."""
        async with self._publishing:
            for p in self.patterns:
                await self._resync(p)

    async def _resync(self, p: Pattern) -> None:
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

    # -- a Redis Cluster: one pub/sub connection per master ------------------------------

    async def _run_cluster(self) -> None:
        """Keep a follower (`_follow`) on each master, as re-read after a follower's lost
        connection and every `topology_every` seconds; one resync task for them all. A
        follower's BridgeError (CONFIG refused) or bug ends the bridge."""
        followers: dict[Master, asyncio.Task[None]] = {}
        syncer = asyncio.create_task(self._resyncs(), name="bridge-resync")
        backoff = Backoff()
        try:
            while True:
                self._topology_changed.clear()
                try:
                    masters = await self._read_masters()
                except (*RETRYABLE, RedisClusterException) as e:
                    log.warning("bridge cannot read the cluster's masters (%s); retrying", e)
                    await backoff.wait()
                    continue
                backoff.reset()
                if masters != self._masters:
                    log.info("bridge: cluster masters %s",
                             ", ".join(f"{h}:{p}" for h, p in sorted(masters)))
                self._masters = masters
                for gone in followers.keys() - masters:
                    task = followers.pop(gone)
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                for new in sorted(masters - followers.keys()):
                    followers[new] = asyncio.create_task(self._follow(*new),
                                                         name=f"bridge-{new[0]}:{new[1]}")
                changed = asyncio.create_task(self._topology_changed.wait())
                done, _ = await asyncio.wait([changed, syncer, *followers.values()],
                                             timeout=self.topology_every,
                                             return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                for task in done - {changed}:
                    task.result()  # they only end by raising: let it surface
        finally:
            tasks = [syncer, *followers.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_masters(self) -> set[Master]:
        """The masters CLUSTER SLOTS names now, asked of the known nodes in turn. When they
        differ from the cluster client's view, that client re-reads the slots too (as it
        would at its next MOVED), so a new master has a node to send CONFIG to."""
        await self.redis.initialize()  # type: ignore[attr-defined]
        last: Exception | None = None
        # a node whose pub/sub is up first: asking a dead one costs redis-py's reset of the
        # cluster client (it drops every connection)
        nodes = sorted(self.redis.get_nodes(),  # type: ignore[attr-defined]
                       key=lambda n: (n.host, n.port) not in self._subscribed)
        for node in nodes:
            try:
                slots = await self.redis.cluster_slots(target_nodes=node)  # type: ignore[attr-defined]
            except RETRYABLE as e:
                last = e
                continue
            masters = {(host or node.host, int(port))
                       for host, port in (s["primary"] for s in slots.values())}
            known = {(n.host, n.port) for n in self.redis.get_primaries()}  # type: ignore[attr-defined]
            if masters != known:
                await self.redis.nodes_manager.initialize()  # type: ignore[attr-defined]
            return masters
        raise RedisClusterException(f"no node of the cluster answered CLUSTER SLOTS: {last}")

    async def _follow(self, host: str, port: int) -> None:
        """Subscribe to the keyspace events of one master, enabling them there first, again
        after every lost connection (a promoted replica, a restarted node without the
        setting in its file, notify nothing yet); each subscription asks for a resync."""
        master = (host, port)
        url = redis_cluster.node_url(self.address, host, port)
        backoff = Backoff()
        while True:
            sub = reader(url, name="vestnik-bridge", like=self.redis, block=None)
            pubsub = sub.pubsub()
            try:
                node = self.redis.get_node(host=host, port=port)  # type: ignore[attr-defined]
                if node is None:  # not in the client's view yet: the next read adds it
                    raise ConnectionError(f"{host}:{port} is not among the cluster's nodes")
                await enable_notifications(self.redis, target_nodes=node)
                await pubsub.psubscribe(*(self.prefix + p.glob.encode() for p in self.patterns))
                self._subscribed.add(master)
                self._resync_wanted.set()
                log.info("bridge: subscribed on %s:%d", host, port)
                backoff.reset()
                await self._listen(pubsub)
            except RETRYABLE as e:
                READER_RECONNECTS.labels("bridge").inc()
                log.warning("bridge lost master %s:%d (%s); re-reading the masters, "
                            "resubscribing and resyncing", host, port, e)
                self._topology_changed.set()
                await backoff.wait()
            finally:
                self._subscribed.discard(master)
                try:
                    await pubsub.aclose()
                    await sub.aclose()
                except RETRYABLE:
                    pass

    async def _resyncs(self) -> None:
        """One resync after each (re)subscription, however many masters asked at once;
        `ready` once every master is subscribed and a resync ran after that."""
        backoff = Backoff()
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted.clear()
            covered = set(self._subscribed)
            try:
                await self.resync()
            except (*RETRYABLE, RedisClusterException) as e:
                log.warning("bridge resync failed (%s); retrying", e)
                self._resync_wanted.set()
                await backoff.wait()
                continue
            backoff.reset()
            if not self.ready.is_set() and self._masters and covered >= self._masters:
                self.ready.set()
                log.info("bridge: following %s on %d masters",
                         ", ".join(p.glob for p in self.patterns), len(covered))
