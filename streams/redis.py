"""Redis connections: one factory with bounded, logged retries and the hiredis parser."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hiredis
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    TimeoutError,
    TryAgainError,
)

from vestnik.streams.metrics import REDIS_ERRORS, REDIS_STALLS
from vestnik.streams.redis_url import RedisAddress, parse, redacted

__all__ = ["RETRYABLE", "Backoff", "blocking", "connect", "pool", "reader", "redacted",
           "timeout_of", "wait_ready"]

log = logging.getLogger("vestnik.redis")

# Redis away for a while: back off and retry (a cluster without a master for some slots
# says CLUSTERDOWN until a replica takes over; a slot being moved, TRYAGAIN)
RETRYABLE = (ConnectionError, TimeoutError, BusyLoadingError, OSError, ClusterDownError,
             TryAgainError)
T = TypeVar("T")

# seconds a command may take (VESTNIK_REDIS_TIMEOUT): the longest a pooled connection waits
# for Redis (`_Stall`), its connect timeout, the longest wait for a free one, and the budget
# of its retries; a blocking read may wait its BLOCK plus this
DEFAULT_TIMEOUT = 2.0
MAX_BLOCK = 10.0  # seconds: the longest BLOCK of streams.consumer.Consumer


POOL_SIZE = 16


class _HiredisPack:
    """Commands packed by hiredis (C) instead of redis-py's asyncio packer (Python), which
    costs 10 µs for a small command and 4.4 µs per notice for the center's store call,
    against 1.3 µs and 0.9 µs here. Anything hiredis does not take (redis-py's packer
    names it in a DataError) and commands named with a space go to redis-py's packer."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str) and " " not in first:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return super().pack_command(*args)  # type: ignore[misc]


_fast: dict[type, type] = {}


def _packing(cls: type) -> type:
    """`cls` (TCP, TLS, unix connection) made to pack commands with hiredis."""
    if not issubclass(cls, AbstractConnection) or issubclass(cls, _HiredisPack):
        return cls
    fast = _fast.get(cls)
    if fast is None:
        fast = _fast[cls] = type(f"Hiredis{cls.__name__}", (_HiredisPack, cls), {})
    return fast


def _quiet(conn: AbstractConnection) -> bool:
    """Open, not at EOF, nothing unread in the socket buffer or the hiredis reader: what
    redis-py's `can_read_destructive` establishes, read without awaiting anything. (The
    attributes read are redis-py 5.3's, pinned, and the StreamReader's buffer, which
    redis-py reads the same way; a parser other than hiredis means "not quiet".)"""
    stream = conn._reader
    parser = getattr(conn._parser, "_reader", None)
    return (stream is not None and conn._writer is not None and not stream.at_eof()
            and not getattr(stream, "_buffer", True) and isinstance(parser, hiredis.Reader)
            and not parser.has_data())


class _Lean:
    """What Vestnik's pools add to redis-py's: connections of the URL's class that pack
    commands with hiredis (`_HiredisPack`), and a checkout that does not cost a loop
    iteration.

    redis-py's own checkout (both pools) asks the connection for unread input by awaiting
    a read under a zero timeout, a pass of the event loop, a future and a cancellation per
    command, and the blocking pool arms a timer for the wait even when a connection is
    free: 11 µs of CPU of a 44 µs GET, 7 % of the center's CPU in B7. Here a free
    connection that `_quiet` passes is handed out at once; anything else (none free, a
    closed or dirty connection) takes redis-py's path, which waits, checks and reconnects
    as before.
    """

    _available_connections: list[AbstractConnection]
    _in_use_connections: set[AbstractConnection]
    connection_class: type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_class = _packing(self.connection_class)

    async def get_connection(self, command_name: Any = None, *keys: Any,
                             **options: Any) -> AbstractConnection:
        free = self._available_connections
        if free and _quiet(free[-1]):
            conn = free.pop()
            self._in_use_connections.add(conn)
            return conn
        try:
            return await super().get_connection()  # type: ignore[misc, no-any-return]
        except (ConnectionError, TimeoutError) as error:  # a (re)connect outside any retry
            REDIS_ERRORS.labels(_kind(error), "failed").inc()
            raise


class _Pool(_Lean, BlockingConnectionPool):
    pass


class _OnePool(_Lean, ConnectionPool):
    pass


class _SentinelPool(_Lean, SentinelConnectionPool, BlockingConnectionPool):
    """`_Pool` whose connections go to the primary the sentinels name now: each one asks
    them when it (re)connects, and one that finds its server demoted (READONLY) drops
    itself, so a failover costs the commands in flight a retry (`_Deadline`), not a
    restart. redis-py's own sentinel pool does not block for a free connection; with
    BlockingConnectionPool after it in the MRO it does, as `_Pool` (tests/test_sentinel.py
    pins the MRO and that a burst waits)."""


class _SentinelOnePool(_Lean, SentinelConnectionPool):
    pass


def _to_sentinels(address: RedisAddress, wait: float) -> dict[str, Any]:
    """How a Sentinel manager (asyncio's, `_sentinel_manager`, or the blocking one) talks
    to the sentinels: its own connections time out like every other, with the sentinels'
    own password."""
    auth = {"password": address.sentinel_password} if address.sentinel_password else {}
    return {"socket_timeout": wait, "socket_connect_timeout": wait, **auth}


def _sentinel_manager(address: RedisAddress, wait: float) -> Sentinel:
    """The asyncio Sentinel manager of `address`. Its connections wait for a sentinel at
    most `wait` by `_Stall`, not redis-py's `socket_timeout`: that wraps each send in
    `asyncio.wait_for`, and Python 3.11's returns the send's result when a cancellation
    arrives as the send completes, dropping the cancellation. A task cancelled while it
    asked the sentinels for the primary (a failover: every reconnect asks) then ran on,
    and whoever awaited its end hung: the forwarder's poll loop waited for its wake-up
    listener forever and sent nothing until restarted (tests/faults/
    test_forward_failover.py)."""
    to_sentinels = _to_sentinels(address, wait)
    del to_sentinels["socket_timeout"]
    manager = Sentinel(list(address.nodes), sentinel_kwargs=to_sentinels)
    for sentinel in manager.sentinels:  # their pools have not connected yet
        own = sentinel.connection_pool
        own.connection_class = _mixing(_Stall, own.connection_class, "stall", wait)
    return manager


def _sentinel_kwargs(address: RedisAddress, wait: float, **kwargs: Any) -> dict[str, Any]:
    """The arguments of a sentinel pool for `address`: a Sentinel manager and the data
    nodes' credentials and db."""
    manager = _sentinel_manager(address, wait)
    return {"service_name": address.primary, "sentinel_manager": manager, "db": address.db,
            "username": address.username, "password": address.password,
            "ssl": address.tls, **kwargs}


PUBSUB_PING_EVERY = 1.0  # seconds between the PINGs of a pub/sub reader (`reader(block=None)`)


class _Watched:
    """A pub/sub connection that notices a silent Redis without a timer per read.

    Its owner reads with no timeout (redis-py arms one per read otherwise: a third of the
    api's CPU in a broadcast), so a frozen or black-holed Redis would keep it waiting
    until TCP keepalive gives up, hours later. Instead a watchdog PINGs it every
    PUBSUB_PING_EVERY seconds (redis-py drops its `pong` as its own health check's, since
    the connection has a `health_check_interval`) and, when nothing at all has been read
    for that plus `silence` (the command timeout), aborts the socket: the blocked read
    fails with ConnectionError and the owner's loop reconnects and resyncs as after any
    lost connection."""

    silence: float = DEFAULT_TIMEOUT
    _writer: asyncio.StreamWriter | None
    _last_read = 0.0
    _watchdog: asyncio.Task[None] | None = None

    async def on_connect(self) -> None:
        await super().on_connect()  # type: ignore[misc]
        self._last_read = time.monotonic()
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name="redis-pubsub-watchdog")

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        response = await super().read_response(*args, **kwargs)  # type: ignore[misc]
        if response is not None:  # None: a read that timed out as its caller asked
            self._last_read = time.monotonic()
        return response

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        dog, self._watchdog = self._watchdog, None
        if dog is not None and dog is not asyncio.current_task():
            dog.cancel()
        await super().disconnect(*args, **kwargs)  # type: ignore[misc]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(PUBSUB_PING_EVERY)
            quiet = time.monotonic() - self._last_read
            if quiet > PUBSUB_PING_EVERY + self.silence:
                log.warning("pub/sub connection silent for %.1fs; dropping it", quiet)
                if self._writer is not None:
                    self._writer.transport.abort()  # close() would wait for a dead peer
                self._watchdog = None
                await self.disconnect(nowait=True)
                return
            try:
                await self.send_command("PING", "redis-py-health-check",  # type: ignore[attr-defined]
                                        check_health=False)
            except RETRYABLE:
                return  # the owner's read fails on the same broken connection


_mixed: dict[tuple[type, type, str, float], type] = {}


def _mixing(mixin: type, cls: type, attr: str, seconds: float) -> type:
    """`cls` (a pool's connection class) with `mixin` and its limit `attr` = `seconds`:
    `_Watched` (silence) for pub/sub readers, `_Stall` (stall) for the others."""
    key = (mixin, cls, attr, seconds)
    made = _mixed.get(key)
    if made is None:
        made = _mixed[key] = type(f"{mixin.__name__[1:]}{cls.__name__}", (mixin, cls),
                                  {attr: seconds})
    return made


class _Stall:
    """A connection whose request waits at most `stall` seconds for Redis: then its socket
    is aborted and the caller gets a TimeoutError.

    Not redis-py's `socket_timeout`: that wraps every send in `asyncio.wait_for` (a task
    and a timer per command on Python 3.11, and 3.11's wait_for loses a cancellation that
    races the send: a wrapper stopping its feed hung on it) and every read in a timer.
    Here a command costs two clock reads; one timer per connection is armed when it starts
    waiting and re-armed at most once per `stall` while it keeps waiting. A read whose
    caller gave its own timeout (pub/sub `get_message(timeout=...)`) is left to it."""

    stall: float = DEFAULT_TIMEOUT
    _writer: asyncio.StreamWriter | None
    _waiting = 0
    _since = 0.0
    _timer: asyncio.TimerHandle | None = None
    _stalled = False

    def _arm(self) -> None:
        self._waiting += 1
        self._since = time.monotonic()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.stall, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self._waiting:
            return  # idle: the next command arms it again
        late = time.monotonic() - self._since
        if late < self.stall:
            self._timer = asyncio.get_running_loop().call_later(self.stall - late, self._check)
        elif self._writer is not None:
            self._stalled = True
            self._writer.transport.abort()  # the pending send or read fails at once

    def _timed_out(self) -> TimeoutError:
        self._stalled = False
        REDIS_STALLS.inc()
        host = self._host_error()  # type: ignore[attr-defined]
        return TimeoutError(f"Timeout waiting for {host} ({self.stall:g}s)")

    # send and read repeat the same guard rather than share a wrapper coroutine: one more
    # coroutine per Redis send and read cost B1 about 14 % (`vestnik bench --quick --only
    # B1`: 24,102 and 24,701 notices/s as here, 20,458 and 21,231 with the wrapper)
    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        self._arm()
        try:
            await super().send_packed_command(*args, **kwargs)  # type: ignore[misc]
        except ConnectionError:
            if self._stalled:
                raise self._timed_out() from None
            raise
        finally:
            self._waiting -= 1

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is not None:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        self._arm()
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ConnectionError:
            if self._stalled:
                raise self._timed_out() from None
            raise
        finally:
            self._waiting -= 1


class _Deadline(Retry):
    """redis-py's retry bounded by time instead of a count: a command is retried (after a
    restart: refused connections, LOADING) only while the retry would still end within
    `budget` seconds of its first try. A count multiplies with the timeout (8 tries x 2 s)
    and redis-py nests the connect's retry inside the command's, so counts multiply
    each other too; one deadline per call bounds both."""

    __slots__ = ("_budget",)

    def __init__(self, budget: float) -> None:
        super().__init__(ExponentialBackoff(cap=max(budget / 2, 0.05), base=0.05), -1,
                         (ConnectionError, TimeoutError, BusyLoadingError))
        self._budget = budget

    async def call_with_retry(self, do: Callable[[], Awaitable[T]],
                              fail: Callable[[Any], Any]) -> T:
        start = time.monotonic()
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                failures += 1
                await fail(error)
                delay = self._backoff.compute(failures)
                if time.monotonic() - start + delay > self._budget:
                    REDIS_ERRORS.labels(_kind(error), "failed").inc()
                    raise error
                REDIS_ERRORS.labels(_kind(error), "retried").inc()
                await asyncio.sleep(delay)


def _address(url: str) -> RedisAddress:
    return parse(url)


def _kind(error: Exception) -> str:
    """The `kind` label of vestnik_redis_errors_total (LOADING is a ConnectionError)."""
    if isinstance(error, BusyLoadingError):
        return "loading"
    return "timeout" if isinstance(error, TimeoutError) else "connection"


def blocking(url: str, *, name: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """A blocking (redis-py sync) client of the same address, for code that has no event
    loop (vestnik.client's `Client`): every command bounded by `timeout`, a Sentinel URL
    followed to the current primary, a Cluster URL a blocking RedisCluster."""
    import redis as sync_redis
    from redis.sentinel import Sentinel as SyncSentinel

    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                               "client_name": name}
    address = _address(url)
    if address.kind == "sentinel":
        manager = SyncSentinel(list(address.nodes),
                               sentinel_kwargs=_to_sentinels(address, timeout))
        return manager.master_for(address.primary, db=address.db, username=address.username,
                                  password=address.password, ssl=address.tls, **options)
    if address.kind == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in address.nodes],
                            username=address.username, password=address.password,
                            ssl=address.tls, **options)
    return sync_redis.Redis.from_url(url, **options)


def timeout_of(redis: Redis) -> float:
    """The command timeout a client of `connect` was built with (for a reader beside it)."""
    own = getattr(redis, "command_timeout", None)  # a cluster's (streams.redis_cluster)
    if own is not None:
        return float(own)
    return getattr(redis.connection_pool, "command_timeout", DEFAULT_TIMEOUT)


def connect(url: str, *, max_connections: int = POOL_SIZE, name: str = "vestnik",
            timeout: float = DEFAULT_TIMEOUT) -> Redis:
    """A pooled client; every command answers or fails within about `timeout` seconds,
    retrying with backoff across a Redis restart while that budget lasts. A
    `redis+cluster://` URL gives a RedisCluster with the same bounds
    (streams.redis_cluster)."""
    address = _address(url)
    if address.kind == "cluster":
        from vestnik.streams import redis_cluster

        return redis_cluster.cluster(  # type: ignore[return-value]
            address, max_connections=max_connections, name=name, timeout=timeout,
            retry=_Deadline(timeout),
            connection_class=lambda cls: _mixing(_Stall, _packing(cls), "stall", timeout),
            one_node=lambda: reader(url, name=name, timeout=timeout, block=None))
    return Redis(connection_pool=pool(url, max_connections=max_connections, name=name,
                                      timeout=timeout))


def pool(url: str, *, max_connections: int = POOL_SIZE, name: str = "vestnik",
         timeout: float = DEFAULT_TIMEOUT, slot_of: str | None = None
         ) -> BlockingConnectionPool:
    """The pool behind `connect` (arq's client is built on one too): bounded, and callers
    wait for a free connection, so a burst never opens more than `max_connections`;
    hiredis packs the commands. `timeout` bounds each of them whole: a paused or
    black-holed Redis is an error (ConnectionError or TimeoutError, HTTP 503) after about
    that long, never a hang: it is the longest wait for Redis's answer (`_Stall`), the
    connect timeout, the wait for a free connection, and the time budget of the retries
    (`_Deadline`). On a cluster, `slot_of` (a key) names the one node it talks to: the
    master of that key's slot (streams.redis_cluster.owner_url)."""
    options: dict[str, Any] = {
        "max_connections": max_connections, "timeout": timeout, "client_name": name,
        "health_check_interval": 30, "socket_connect_timeout": timeout,
        "retry": _Deadline(timeout),
        "retry_on_error": [ConnectionError, TimeoutError, BusyLoadingError],
    }
    address = _address(url)
    seeds: RedisAddress | None = None  # a cluster's: where a slot's master is looked up
    if address.kind == "cluster":
        if slot_of is None:
            raise ValueError("a redis+cluster:// URL has one pool per node: use connect(), "
                             "or name a key (slot_of) whose node the pool talks to")
        from vestnik.streams import redis_cluster

        seeds = address
        url = redis_cluster.owner_url(address, slot_of, timeout)
        address = _address(url)
    made: BlockingConnectionPool
    if address.kind == "sentinel":
        made = _SentinelPool(**_sentinel_kwargs(address, timeout, **options))
    else:
        made = _Pool.from_url(url, **options)
    if slot_of is not None and seeds is not None:  # follow the slot across a failover
        made.connection_class = redis_cluster.following(made.connection_class, seeds,
                                                        slot_of, timeout)
    made.connection_class = _mixing(_Stall, made.connection_class, "stall", timeout)
    made.command_timeout = timeout  # type: ignore[attr-defined]
    return made


def reader(url: str, *, name: str, timeout: float = DEFAULT_TIMEOUT,
           block: float | None = MAX_BLOCK, like: Redis | None = None) -> Redis:
    """A single-connection client for a blocking loop (XREAD BLOCK, pub/sub).

    It waits for Redis at most `block` (the longest BLOCK its owner asks for, in seconds;
    by default the longest a Consumer asks for) plus `timeout` (`_Stall`), so a blocked
    read of a Redis that went silent fails instead of waiting for TCP keepalive.
    `block=None` is for pub/sub: reads have no timeout (redis-py arms a timer per read
    otherwise) and a watchdog PINGs the connection and drops it when Redis stays silent
    past `timeout` (`_Watched`). No retry inside redis-py: the loop that owns it handles
    reconnects itself, so a blocked read is never silently re-issued from a stale
    position. `like`: take `timeout` from this client of `connect`.
    """
    if like is not None:
        timeout = timeout_of(like)
    options: dict[str, Any] = {
        "decode_responses": False, "max_connections": 1, "client_name": name,
        "socket_connect_timeout": timeout, "socket_keepalive": True,
        "health_check_interval": 3600 if block is None else 0}
    address = _address(url)
    one: ConnectionPool
    if address.kind == "cluster" and block is not None:
        from vestnik.streams import redis_cluster

        return redis_cluster.blocking_reader(  # type: ignore[return-value]
            address, name=name, connect_timeout=timeout,
            connection_class=lambda cls: _mixing(_Stall, _packing(cls), "stall",
                                                 block + timeout))
    if address.kind == "cluster":  # pub/sub: one node
        host, port = address.nodes[0]
        one = _OnePool(host=host, port=port, username=address.username,
                       password=address.password,
                       connection_class=SSLConnection if address.tls else Connection,
                       **options)
    elif address.kind == "sentinel":
        one = _SentinelOnePool(**_sentinel_kwargs(address, timeout,
                                                  **options))
    else:
        one = _OnePool.from_url(url, **options)
    if block is None:
        one.connection_class = _mixing(_Watched, one.connection_class, "silence", timeout)
    else:
        one.connection_class = _mixing(_Stall, one.connection_class, "stall", block + timeout)
    return Redis.from_pool(one)


READY_WAIT = 15  # wait_ready's bound, in command timeouts (30 s at the default 2 s)


async def wait_ready(redis: Redis, *, timeout: float | None = None) -> None:
    """Wait until Redis answers PING (and has loaded its data), logging each retry; give
    up (raise the last RETRYABLE) after `timeout` s, by default READY_WAIT command
    timeouts of `redis`, so VESTNIK_REDIS_TIMEOUT bounds a start against a dead Redis."""
    if timeout is None:
        timeout = READY_WAIT * timeout_of(redis)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    while True:
        try:
            await redis.ping()
            return
        except RETRYABLE as e:
            if loop.time() + delay > deadline:
                raise
            log.warning("redis not ready (%s); retrying in %.2fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class Backoff:
    """Exponential backoff for long-running loops: `await b.wait()` after a failure."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base, self.cap, self.delay = base, cap, base

    def reset(self) -> None:
        self.delay = self.base

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)
