"""The keyspace bridge across a Redis Cluster failover (three masters, a replica each): the
promoted replica is found, its notifications are enabled and followed, and writes on it are
bridged, with no restart of the bridge."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from fault_support import Stack, stack
from redis.asyncio import Redis

from support import eventually
from vestnik.streams.keys import Keys
from vestnik.streams.redis import connect
from vestnik.streams.redis_server import ClusterDeployment

__all__ = ["stack"]

K = Keys("vn:", cluster=True)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[ClusterDeployment]:
    with ClusterDeployment(tmp_path / "redis", replicas=1) as d:
        yield d


async def notify_flags(port: int) -> str:
    async with Redis(port=port, socket_timeout=5) as node:
        value = (await node.config_get("notify-keyspace-events"))["notify-keyspace-events"]
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_bridge_follows_a_master_failover(stack: Stack, deployment: ClusterDeployment):
    bridge = stack.proc(deployment.url, "bridge", VESTNIK_KEYSPACE_PATTERNS="vm:*=vm")
    redis = connect(deployment.url, timeout=1.0)
    try:
        async def bridged(eid: str, value: str) -> bool:
            try:
                await redis.set(f"vm:{eid}", msgspec.json.encode({"v": value}))
                entries = await redis.xrange(K.topic("vm"))
            except Exception:  # any Redis error of the switch
                return False
            return any(f.get(b"id") == eid.encode() and value.encode() in f.get(b"data", b"")
                       for _, f in entries)

        await eventually(lambda: bridged("a", "before"), timeout=30, interval=0.5,
                         what="a key write bridged")
        masters = set(deployment.master_ports())
        replicas = [s.port for s in deployment.servers if s.port not in masters]
        for port in replicas:  # the bridge sets its flags on masters only
            assert "K" not in await notify_flags(port)

        old = deployment.primary_of("vm:a")
        old.kill()
        new = await asyncio.to_thread(deployment.wait_failover, old.port, "vm:a", 30.0)
        await eventually(lambda: bridged("a", "after"), timeout=40, interval=0.5,
                         what="a write on the promoted replica bridged")
        assert "K" in await notify_flags(new)  # enabled by the bridge after the promotion
        assert bridge.proc is not None and bridge.proc.poll() is None, bridge.output()[-2000:]
        assert f"bridge lost master 127.0.0.1:{old.port}" in bridge.output()
    finally:
        await redis.aclose()
