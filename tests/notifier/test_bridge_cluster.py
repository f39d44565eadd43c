"""The keyspace bridge on a Redis Cluster (`--redis-cluster` only): each master notifies
its own keys, so the bridge follows every master, and a master's lost pub/sub connection
costs a resubscription and a resync, not a write."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from support import Api, eventually
from vestnik.streams.redis_server import ClusterDeployment

PATTERN = "panel:vm:*=vm"


@pytest.fixture
def cluster(redis_server: Any, on_cluster: bool) -> ClusterDeployment:
    if not on_cluster:
        pytest.skip("masters that each notify their own keys: a cluster's only")
    assert isinstance(redis_server, ClusterDeployment)
    return redis_server


def keys_per_master(cluster: ClusterDeployment, tag: str, per_master: int = 1
                    ) -> dict[int, list[str]]:
    """`per_master` keys `panel:vm:<tag>-<n>` served by each master (port → keys)."""
    wanted: dict[int, list[str]] = {port: [] for port in cluster.master_ports()}
    for n in range(500):  # ~1/3 of the keys land on each master: far fewer are needed
        key = f"panel:vm:{tag}-{n}"
        found = wanted.setdefault(cluster.primary_of(key).port, [])
        if len(found) < per_master:
            found.append(key)
        if all(len(v) == per_master for v in wanted.values()):
            return wanted
    raise AssertionError(f"500 keys did not cover every master: {wanted}")


async def snapshot(api: Api) -> dict[str, Any]:
    async with api.client() as http:
        return (await http.get("/api/v1/topics/vm")).json()["items"]  # type: ignore[no-any-return]


async def bridge_clients(port: int) -> set[int]:
    """Ids of the bridge's pub/sub connections on the master at `port`."""
    async with Redis(port=port, socket_timeout=5) as node:
        clients = await node.client_list(_type="pubsub")
    return {int(c["id"]) for c in clients if c.get("name") == "vestnik-bridge"}


async def start(start_api, start_proc) -> tuple[Api, Any]:
    api = start_api()
    bridge = start_proc("bridge", VESTNIK_KEYSPACE_PATTERNS=PATTERN)

    async def following() -> bool:  # every master subscribed, the first resync done
        return "bridge: following panel:vm:* on 3 masters" in bridge.output()

    await eventually(following, timeout=20, what="bridge ready")
    return api, bridge


async def test_keys_on_every_master_are_bridged(cluster: ClusterDeployment, redis: Redis,
                                                start_api, start_proc):
    before = keys_per_master(cluster, "before")
    for port, names in before.items():  # written before the bridge: its resync finds them
        await redis.set(names[0], f'{{"port": {port}}}')
    api, _ = await start(start_api, start_proc)
    for port in cluster.master_ports():
        assert await bridge_clients(port), f"no bridge subscription on master {port}"
        async with Redis(port=port) as node:
            flags = (await node.config_get("notify-keyspace-events"))["notify-keyspace-events"]
        assert "K" in str(flags), f"keyspace events not enabled on master {port}"

    after = keys_per_master(cluster, "after")
    for port, names in after.items():  # written while it follows: the notifications
        await redis.hset(names[0], mapping={"port": str(port)})
    want = {k.removeprefix("panel:vm:"): {"port": p}
            for p, names in before.items() for k in names}
    want |= {k.removeprefix("panel:vm:"): {"port": str(p)}
             for p, names in after.items() for k in names}

    async def all_bridged() -> bool:
        return await snapshot(api) == want

    await eventually(all_bridged, timeout=15, what="keys of every master in the snapshot")


async def test_a_killed_subscription_is_renewed_and_the_gap_resynced(
        cluster: ClusterDeployment, redis: Redis, start_api, start_proc):
    api, bridge = await start(start_api, start_proc)
    port = cluster.master_ports()[-1]
    gap, later = keys_per_master(cluster, "kill", per_master=2)[port]
    old = await bridge_clients(port)
    assert len(old) == 1
    async with Redis(port=port, socket_timeout=5) as node, node.pipeline() as tx:
        # in one transaction: the write's notification reaches no bridge connection
        tx.execute_command("CLIENT", "KILL", "ID", *old)
        tx.set(gap, '{"written": "in the gap"}')
        await tx.execute()

    async def renewed() -> set[int]:
        return await bridge_clients(port) - old

    await eventually(renewed, timeout=15, what="the bridge resubscribed on that master")
    await redis.set(later, '{"written": "after"}')

    async def bridged() -> bool:
        items = await snapshot(api)
        return items.get(gap.removeprefix("panel:vm:")) == {"written": "in the gap"} and \
            items.get(later.removeprefix("panel:vm:")) == {"written": "after"}

    await eventually(bridged, timeout=15, what="the gap's write (resync) and the next one")
    assert f"bridge lost master 127.0.0.1:{port}" in bridge.output()
