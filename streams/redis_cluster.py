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
  `max_connections` permits instead, so a burst is queued as on the single server;
- it retries a command that met a lost node or CLUSTERDOWN `cluster_error_retry_attempts`
  times, each after a fresh look at the slots: with each try bounded by `timeout` (and its
  connect by `_Deadline`), a command answers or fails within about
  (1 + CLUSTER_RETRIES) x 2 x `timeout`;
- it has no pub/sub: `streams.redis.reader(block=None)` is a plain client of one node.
  A PUBLISH reaches every node of a cluster, so channels work; keyspace notifications
  do not (each node sends only its own keys') and are refused by the bridge
  (`NotOnCluster`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import TimeoutError as RedisTimeout

from vestnik.streams.redis_url import RedisAddress

CLUSTER_RETRIES = 3  # redis-py's cluster_error_retry_attempts: a failover needs a few


class NotOnCluster(RuntimeError):
    """What Vestnik cannot do on a Redis Cluster; the message names the limitation."""


class _Cluster(RedisCluster):  # type: ignore[misc]
    """RedisCluster whose callers wait for one of `permits` instead of failing with
    MaxConnectionsError when every connection of a node is busy."""

    _permits: asyncio.Semaphore
    command_timeout: float

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self.command_timeout):
                await self._permits.acquire()
        except TimeoutError:  # asyncio's (the builtin)
            raise RedisTimeout(f"no free Redis connection in {self.command_timeout:g}s") from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._permits.release()

    async def publish(self, channel: Any, message: Any) -> int:
        """PUBLISH (missing from redis-py 5.3's asyncio RedisCluster): any node forwards it
        to the subscribers of every node."""
        return int(await self.execute_command("PUBLISH", channel, message))


def _nodes(address: RedisAddress) -> list[ClusterNode]:
    return [ClusterNode(host, port) for host, port in address.nodes]


def cluster(address: RedisAddress, *, max_connections: int, name: str, timeout: float,
            connection_class: type, retry: Any) -> RedisCluster:
    """The pooled client of `streams.redis.connect` for a cluster. `connection_class` maps a
    redis-py connection class to Vestnik's (`streams.redis` passes its hiredis + `_Stall`
    maker); `retry` bounds each (re)connect in time."""
    client = _Cluster(
        startup_nodes=_nodes(address), username=address.username,
        password=address.password, ssl=address.tls, client_name=name,
        max_connections=max_connections, socket_connect_timeout=timeout,
        health_check_interval=30, retry=retry,
        cluster_error_retry_attempts=CLUSTER_RETRIES)
    client._permits = asyncio.Semaphore(max_connections)
    client.command_timeout = timeout
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


def _use(client: RedisCluster, make: Any) -> None:
    """Build every node's connections with `make(redis-py's class)`: the kwargs dict is the
    one the NodesManager makes nodes from; the seed nodes exist already."""
    base = client.connection_kwargs.get("connection_class", Connection)
    made = make(SSLConnection if base is SSLConnection else Connection)
    client.connection_kwargs["connection_class"] = made
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = made
