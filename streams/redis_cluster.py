"""Redis Cluster clients (`redis+cluster://` URLs), with the single-server client's
guarantees: every command bounded, a bounded pool, hiredis packing, a client name.

redis-py 5.3's asyncio RedisCluster differs from its Redis in four ways this module
makes up for (tests/test_redis_cluster.py pins each):
- it takes no connection class: the one it puts in `connection_kwargs` (shared with its
  NodesManager, which builds every node from it) is swapped for `_Stall` + hiredis
  packing, the same as `streams.redis.pool`'s, so a silent node fails a command after
  `timeout` without redis-py's timer per read;
- its per-node pool never waits: past `max_connections` a command fails with
  MaxConnectionsError. `_Cluster` makes callers wait (at most `timeout`) for one of
  `max_connections` permits instead, so a burst is queued as on the single server; a
  pipeline holds one permit too (it takes at most one connection of each node), and what
  runs under a permit (a pipeline's redirected commands) takes no second one;
- it retries a command that met a lost node or CLUSTERDOWN `cluster_error_retry_attempts`
  times, each after a fresh look at the slots: with each try bounded by `timeout` (and its
  connect by `_Deadline`), a command answers or fails within about
  (1 + CLUSTER_RETRIES) x 2 x `timeout`;
- its pipeline refuses MGET, EVALSHA, PUBLISH and transactions: `_Pipe` sends PUBLISH
  (any node forwards it), an MGET as GETs (its answer still one list), a script as
  EVALSHA (`_Pipe.evalsha`) and a transaction as MULTI/EXEC on the node of its one slot (a
  transaction over several slots is an error naming them; a script in it goes as EVAL
  with its text, so a missing script never splits it);
- its pipeline loads no script: before a pipeline runs, each script it calls is loaded
  (SCRIPT LOAD of its text, streams.lua.TEXTS) on every master that has not had it from
  this client (`_Cluster.scripts_on`, by node name: a new master after a failover is a
  new name), once per process; a NOSCRIPT reply (a SCRIPT FLUSH, a restarted node) means
  the script did not run: the node is forgotten, the script loaded there and that one
  command sent again, once. EVAL would send the whole text with every call, and Redis
  hash it every time (6.7 KB a user's store call);
- it has no pub/sub: `streams.redis.reader(block=None)` is a plain client of one node.
  A PUBLISH reaches every node of a cluster, so channels work; keyspace notifications
  are sent by each node for its own keys only, so the bridge (streams.notifier.bridge)
  subscribes on every master, each with a client of that node (`node_url`).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable, Collection, Generator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import (
    ConnectionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeout
from redis.utils import safe_str

from vestnik.streams.lua import TEXTS
from vestnik.streams.redis_url import RedisAddress

CLUSTER_RETRIES = 3  # redis-py's cluster_error_retry_attempts: a failover needs a few

# set while a task (and the tasks it gathers) holds a permit of `_Cluster`: a pipeline
# that re-sends its redirected commands with `execute_command` must not wait for a
# second permit (a burst of pipelines holding every permit would wait out the timeout)
_HOLDING: contextvars.ContextVar[bool] = contextvars.ContextVar("_HOLDING", default=False)


class _Cluster(RedisCluster):  # type: ignore[misc]
    """RedisCluster whose callers wait for one of `permits` instead of failing with
    MaxConnectionsError when every connection of a node is busy."""

    _permits: asyncio.Semaphore
    command_timeout: float
    one_node: Callable[[], Any]  # a pub/sub client of one node (set by `cluster`)
    scripts_on: dict[str, set[str]]  # node name -> shas this client loaded there

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.permit():
            return await super().execute_command(*args, **kwargs)

    @asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        """One of the permits, for a command or a pipeline (none more if this task holds
        one already)."""
        if _HOLDING.get():
            yield
            return
        try:
            async with asyncio.timeout(self.command_timeout):
                await self._permits.acquire()
        except TimeoutError:  # asyncio's (the builtin)
            raise RedisTimeout(f"no free Redis connection in {self.command_timeout:g}s") from None
        token = _HOLDING.set(True)
        try:
            yield
        finally:
            _HOLDING.reset(token)
            self._permits.release()

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> _Pipe:
        return _Pipe(self, bool(transaction))

    async def load_scripts(self, shas: Collection[str],
                           nodes: Sequence[ClusterNode] | None = None) -> None:
        """SCRIPT LOAD each of `shas` (streams.lua's) on each of `nodes` (None: every
        master) this client has not loaded it on yet, all at once: a pipeline's EVALSHA
        then finds it (a few checks of a set when every master has them)."""
        nodes = self.get_primaries() if nodes is None else nodes
        todo = [(node, sha) for node in nodes for sha in shas
                if sha not in self.scripts_on.get(node.name, ())]
        if todo:
            await asyncio.gather(*(self._load(node, sha) for node, sha in todo))

    async def _load(self, node: ClusterNode, sha: str) -> None:
        await self.execute_command("SCRIPT LOAD", TEXTS[sha], target_nodes=node)
        self.scripts_on.setdefault(node.name, set()).add(sha)

    def pubsub(self, **kwargs: Any) -> Any:
        """A PubSub on one node (a client from `one_node`: streams.redis.reader's for
        pub/sub): the asyncio RedisCluster of redis-py 5.3 has none, and any node gets
        every PUBLISH."""
        return self.one_node().pubsub(**kwargs)

    async def publish(self, channel: Any, message: Any) -> int:
        """PUBLISH (missing from redis-py 5.3's asyncio RedisCluster): any node forwards it
        to the subscribers of every node."""
        return int(await self.execute_command("PUBLISH", channel, message))


class _Pipe(ClusterPipeline):  # type: ignore[misc]
    """A cluster pipeline that takes what Vestnik's code queues on a single Redis's: MGET,
    scripts, and (`transaction`) MULTI/EXEC of keys in one slot."""

    __slots__ = ("_groups", "_shas", "_transaction")

    def __init__(self, client: RedisCluster, transaction: bool = False) -> None:
        super().__init__(client)
        self._transaction = transaction
        self._groups: list[tuple[int, int]] = []  # (first GET, count) of each MGET
        self._shas: set[str] = set()  # the scripts queued (streams.lua's), to load first

    def __await__(self) -> Generator[Any, None, _Pipe]:
        """`await pipe` and `async with pipe` keep what is queued (redis-py's empty it):
        redis-py's scripts await what `evalsha` returns, the pipeline itself, and the
        center fills a pipeline before it enters it."""
        return self._ready().__await__()

    async def __aenter__(self) -> _Pipe:
        return await self._ready()

    async def _ready(self) -> _Pipe:
        if self._client._initialize:
            await self._client.initialize()
        return self

    def __len__(self) -> int:
        """Commands as queued (an MGET is one), as the replies `execute` returns."""
        return len(self._command_stack) - sum(n - 1 for _, n in self._groups)

    def mget(self, keys: Any, *args: Any) -> _Pipe:
        names = [keys, *args] if isinstance(keys, str | bytes) else [*keys, *args]
        self._groups.append((len(self._command_stack), len(names)))
        for name in names:
            self.execute_command("GET", name)
        return self

    def publish(self, channel: Any, message: Any) -> _Pipe:
        return self.execute_command("PUBLISH", channel, message)  # type: ignore[no-any-return]

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """WAIT (keyless) goes to the node of the command queued before it: WAIT counts the
        replicas that have the writes of its own connection, which is that node's."""
        if (args and str(args[0]).upper() == "WAIT" and "target_nodes" not in kwargs
                and self._command_stack):
            key = _key_of(self._command_stack[-1].args)
            if key is not None:
                slot = self._client.keyslot(key)
                kwargs["target_nodes"] = self._client.nodes_manager.get_node_from_slot(slot)
        return super().execute_command(*args, **kwargs)

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> _Pipe:
        """EVALSHA, the script loaded on the masters first (`execute`) when it is one of
        streams.lua's (any other is sent as is: NOSCRIPT unless loaded otherwise)."""
        if sha in TEXTS:
            self._shas.add(sha)
        return self.execute_command("EVALSHA", sha, numkeys, *args)  # type: ignore[no-any-return]

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        groups, self._groups = self._groups, []
        try:
            if self._transaction and self._command_stack:
                try:
                    await self._ready()  # a transaction first on a new client: the slots
                    async with self._client.permit():
                        results = await self._multi_exec()
                finally:
                    self._command_stack = []
            else:  # redis-py's takes a connection of each node it needs, past any bound
                async with self._client.permit():
                    results = await super().execute(raise_on_error, allow_redirections)
        finally:
            self._shas = set()
        for first, count in reversed(groups):
            results[first:first + count] = [results[first:first + count]]
        return results

    async def _execute(self, client: RedisCluster, stack: list[Any],
                       raise_on_error: bool = True, allow_redirections: bool = True
                       ) -> list[Any]:
        """redis-py's (run by its `execute`, again after a lost node), with the queued
        scripts loaded on every master first and each NOSCRIPT reply's command sent again
        once after loading its script on the node (`_rerun`); the errors raised as
        redis-py's do, the first one, so its `execute` retries a lost node's."""
        if self._shas:
            await client.load_scripts(self._shas)
        await super()._execute(client, stack, raise_on_error=False,
                               allow_redirections=allow_redirections)
        await self._rerun(client, stack)
        if raise_on_error:
            for cmd in stack:
                error = cmd.result
                if isinstance(error, Exception):
                    command = " ".join(map(safe_str, cmd.args))
                    msg = (f"Command # {cmd.position + 1} ({command}) of pipeline "
                           f"caused error: {error.args}")
                    error.args = (msg, *error.args[1:])
                    raise error
        return [cmd.result for cmd in stack]

    @staticmethod
    async def _rerun(client: _Cluster, stack: list[Any]) -> None:
        """NOSCRIPT: the script did not run where it was sent (a SCRIPT FLUSH, a restart:
        the node has lost every script), so the node is forgotten (once a pipeline), the
        script loaded there and the command sent again (by its key, once; what it answers
        is its result)."""
        forgotten: set[str] = set()
        for cmd in stack:
            if not isinstance(cmd.result, NoScriptError) or cmd.args[1] not in TEXTS:
                continue
            key = _key_of(cmd.args)
            nodes = (client.get_primaries() if key is None
                     else [client.get_node_from_key(key)])
            for node in nodes:
                if node.name not in forgotten:
                    forgotten.add(node.name)
                    client.scripts_on.pop(node.name, None)
            try:
                await client.load_scripts([cmd.args[1]], nodes)
                cmd.result = await client.execute_command(*cmd.args, **cmd.kwargs)
            except Exception as e:  # the command's result, as redis-py's
                cmd.result = e

    async def _multi_exec(self) -> list[Any]:
        client: RedisCluster = self._client
        stack = self._command_stack
        slots = {await client._determine_slot(*cmd.args) for cmd in stack}
        if len(slots) != 1:
            names = sorted({str(cmd.args[0]) for cmd in stack})
            raise RedisClusterException(
                f"a transaction on a Redis Cluster needs its keys in one slot; "
                f"{', '.join(names)} touch slots {sorted(slots)}")
        node = client.nodes_manager.get_node_from_slot(slots.pop())
        conn = node.acquire_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(
                [("MULTI",), *(_with_text(cmd.args) for cmd in stack), ("EXEC",)]), False)
            error: ResponseError | None = None
            for _ in range(len(stack) + 1):  # +OK, then QUEUED (or an error) for each
                try:
                    await conn.read_response()
                except ResponseError as e:
                    error = error or e
            try:
                raw = await conn.read_response()
            except ResponseError as e:  # EXECABORT: a command was refused when queued
                raise error or e from None
        except BaseException:
            await conn.disconnect()  # a half-read answer must not reach the next command
            raise
        finally:
            node._free.append(conn)
        out = []
        for cmd, value in zip(stack, raw, strict=True):
            if isinstance(value, ResponseError):
                raise value
            callback = client.response_callbacks.get(cmd.args[0])
            options = {k: v for k, v in cmd.kwargs.items() if k != "keys"}  # as redis-py
            out.append(callback(value, **options) if callback else value)
        return out


def _with_text(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A queued EVALSHA of one of streams.lua's scripts as EVAL with its text (inside
    MULTI: a NOSCRIPT there could not be sent again alone)."""
    if args[0] == "EVALSHA" and args[1] in TEXTS:
        return ("EVAL", TEXTS[args[1]], *args[2:])
    return args


def _key_of(args: tuple[Any, ...]) -> Any:
    """The first key of a queued command (a script's first KEY), or None."""
    if str(args[0]).upper() in ("EVAL", "EVALSHA"):
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    return args[1] if len(args) > 1 else None


def _nodes(address: RedisAddress) -> list[ClusterNode]:
    return [ClusterNode(host, port) for host, port in address.nodes]


def cluster(address: RedisAddress, *, max_connections: int, name: str, timeout: float,
            connection_class: type, retry: Any, one_node: Callable[[], Any]) -> RedisCluster:
    """The pooled client of `streams.redis.connect` for a cluster. `connection_class` maps a
    redis-py connection class to Vestnik's (`streams.redis` passes its hiredis + `_Stall`
    maker); `retry` bounds each (re)connect in time; `one_node` makes its pub/sub client."""
    client = _Cluster(
        startup_nodes=_nodes(address), username=address.username,
        password=address.password, ssl=address.tls, client_name=name,
        max_connections=max_connections, socket_connect_timeout=timeout,
        health_check_interval=30, retry=retry,
        cluster_error_retry_attempts=CLUSTER_RETRIES)
    client._permits = asyncio.Semaphore(max_connections)
    client.command_timeout = timeout
    client.one_node = one_node
    client.scripts_on = {}
    _use(client, connection_class)
    return client


def blocking_reader(address: RedisAddress, *, name: str, connect_timeout: float,
                    connection_class: type) -> RedisCluster:
    """A client for one blocking loop (XREAD BLOCK of one stream: one slot, one node): one
    connection per node, no retry inside redis-py (the loop reconnects itself)."""
    client = RedisCluster(
        startup_nodes=_nodes(address), username=address.username,
        password=address.password, ssl=address.tls, client_name=name,
        max_connections=1, socket_connect_timeout=connect_timeout, socket_keepalive=True,
        connection_error_retry_attempts=0, cluster_error_retry_attempts=1)
    _use(client, connection_class)
    return client


def owner_url(address: RedisAddress, key: str, timeout: float) -> str:
    """The `redis://` URL of the master that serves `key`'s slot now, asked of the seed
    nodes in turn (for a client of one node: the forwarders' arq pool, whose keys share
    one tag). It does not follow a later failover or resharding: its owner restarts."""
    import redis as sync_redis
    from redis.crc import key_slot

    slot = key_slot(key.encode())
    last: Exception | None = None
    for host, port in address.nodes:
        client = sync_redis.Redis(host=host, port=port, username=address.username,
                                  password=address.password, ssl=address.tls,
                                  socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            found = _master_of(client.execute_command("CLUSTER SLOTS"), slot, host)
            if found is not None:
                return node_url(address, *found)
        except (sync_redis.RedisError, OSError) as e:
            last = e
        finally:
            client.close()
    raise sync_redis.ConnectionError(
        f"no seed node of the cluster named the master of slot {slot}: {last}")


_MOVED = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")


class _SlotOwner:
    """A connection of a one-node pool on a cluster (the forwarders' arq pool) that follows
    its slot: every (re)connect asks the seed nodes which master serves the slot now, and
    an answer saying the slot is elsewhere or down (MOVED, CLUSTERDOWN: a plain error on a
    client of one node) drops the connection and is raised as a ConnectionError, which the
    pool's retry and its owners' backoff treat like a lost Redis, so a failover inside the
    cluster costs a retry, not a restart."""

    address: RedisAddress
    slot_key: str
    lookup_timeout: float
    host: str
    port: int

    async def connect(self) -> None:
        if not self.is_connected:  # type: ignore[attr-defined]
            self.host, self.port = await _owner(self.address, self.slot_key,
                                                self.lookup_timeout)
        await super().connect()  # type: ignore[misc]

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as e:
            if not str(e).startswith(_MOVED):
                raise
            await self.disconnect()  # type: ignore[attr-defined]
            raise ConnectionError(f"the slot of {self.slot_key!r} moved: {e}") from None


def following(connection_class: type, address: RedisAddress, key: str,
              timeout: float) -> type:
    """`connection_class` made to follow the master of `key`'s slot (`_SlotOwner`)."""
    return type(f"SlotOwner{connection_class.__name__}", (_SlotOwner, connection_class),
                {"address": address, "slot_key": key, "lookup_timeout": timeout})


async def _owner(address: RedisAddress, key: str, timeout: float) -> tuple[str, int]:
    """(host, port) of the master that serves `key`'s slot now, asked of the seed nodes in
    turn; ConnectionError when none answers."""
    from redis.asyncio import Redis
    from redis.crc import key_slot

    slot = key_slot(key.encode())
    last: Exception | None = None
    for host, port in address.nodes:
        # bounded by asyncio.timeout, not redis-py's socket_timeout: that wraps the send in
        # Python 3.11's wait_for, which can drop a cancellation (streams.redis._Stall)
        client = Redis(host=host, port=port, username=address.username,
                       password=address.password, ssl=address.tls,
                       socket_connect_timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                slots = await client.execute_command("CLUSTER SLOTS")
            found = _master_of(slots, slot, host)
            if found is not None:
                return found
        except (RedisError, OSError) as e:
            last = e
        finally:
            await client.aclose()
    raise ConnectionError(f"no seed node of the cluster named the master of slot {slot}: "
                          f"{type(last).__name__ if last else 'no answer'}")


def _master_of(slots: Any, slot: int, asked: str) -> tuple[str, int] | None:
    """(host, port) of `slot`'s master in a CLUSTER SLOTS answer
    (`[[first, last, [host, port, id], replicas...], ...]`; an empty host is the node
    asked, `asked`), or None when no range holds it."""
    for first, end, primary, *_ in slots:
        if int(first) <= slot <= int(end):
            name = primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
            return name or asked, int(primary[1])
    return None


def node_url(address: RedisAddress, host: str, port: int) -> str:
    """The `redis://` URL of one node of the cluster at `address` (its credentials, TLS)."""
    auth = ""
    if address.username or address.password:
        auth = f"{quote(address.username or '', safe='')}:{quote(address.password or '', safe='')}@"
    host = f"[{host}]" if ":" in host else host
    return f"{'rediss' if address.tls else 'redis'}://{auth}{host}:{port}/0"


def _use(client: RedisCluster, make: Any) -> None:
    """Build every node's connections with `make(redis-py's class)`: the kwargs dict is the
    one the NodesManager makes nodes from; the seed nodes exist already."""
    base = client.connection_kwargs.get("connection_class", Connection)
    made = make(SSLConnection if base is SSLConnection else Connection)
    client.connection_kwargs["connection_class"] = made
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = made
