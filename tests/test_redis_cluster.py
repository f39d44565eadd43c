"""Vestnik's Redis clients on a real local Redis Cluster (3 masters on loopback ports):
what streams.redis_cluster adds to redis-py 5.3's asyncio RedisCluster, each pinned here
(a redis-py upgrade that changes one of them fails a test, not a deployment)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from arq.constants import abort_jobs_ss
from redis.asyncio import RedisCluster
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeout

from vestnik.streams import lua
from vestnik.streams.keys import Keys
from vestnik.streams.redis import connect, pool, reader
from vestnik.streams.redis_server import ClusterDeployment


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterDeployment]:
    with ClusterDeployment(tmp_path_factory.mktemp("cluster")) as d:
        yield d


@pytest.fixture
async def client(cluster: ClusterDeployment) -> AsyncIterator[RedisCluster]:
    for port in cluster.master_ports():
        import redis as sync_redis

        r = sync_redis.Redis(port=port, socket_timeout=5)
        r.flushall()
        r.close()
    c = connect(cluster.url, timeout=1.0, name="test-cluster", max_connections=4)
    yield c
    await c.aclose()


def test_the_deployment_spreads_slots_over_three_masters(cluster: ClusterDeployment):
    assert cluster.url.startswith("redis+cluster://127.0.0.1:")
    assert len(cluster.master_ports()) == 3


async def test_keys_land_on_every_master_and_the_client_names_itself(
        client: RedisCluster, cluster: ClusterDeployment):
    for i in range(60):
        await client.set(f"k{i}", i)
    import redis as sync_redis

    counts = []
    for port in cluster.master_ports():
        r = sync_redis.Redis(port=port, socket_timeout=5)
        counts.append(r.dbsize())
        names = [c["name"] for c in r.client_list()]
        r.close()
        assert "test-cluster" in names
    assert sum(counts) == 60 and all(n > 0 for n in counts)


async def test_a_burst_waits_for_a_connection_instead_of_failing(client: RedisCluster):
    # redis-py raises MaxConnectionsError past max_connections per node; ours queue
    await asyncio.gather(*(client.incr("{one}n") for _ in range(300)))
    assert await client.get("{one}n") == b"300"


async def test_a_burst_of_pipelines_waits_too(client: RedisCluster):
    # redis-py's pipeline takes a node's connection directly (MaxConnectionsError): 50
    # SSE streams opening at once on an api failed with 503 that way
    async def bump(i: int) -> list[int]:
        pipe = client.pipeline(transaction=i % 2 == 0)
        pipe.incr("{one}n")
        pipe.incr("{one}m")
        return await pipe.execute()

    await asyncio.gather(*(bump(i) for i in range(100)))
    assert await client.mget("{one}n", "{one}m") == [b"100", b"100"]


async def test_a_paused_master_fails_a_command_within_its_timeout(
        client: RedisCluster, cluster: ClusterDeployment):
    """A master that stops answering (SIGSTOP) is a TimeoutError, not a hang."""
    await client.set("paused", "1")
    node = client.get_node_from_key("paused")
    server = next(s for s in cluster.servers if s.port == node.port)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises((RedisTimeout, TimeoutError, ConnectionError, RedisClusterException)):
            await asyncio.wait_for(client.get("paused"), 30)  # bounded for the test's sake
    finally:
        os.kill(server.pid, signal.SIGCONT)
    await asyncio.to_thread(cluster.wait_ok, 30.0)  # the others may have marked it failed
    got = None
    for _ in range(50):  # the client finds the slots again after its errors
        try:
            got = await client.get("paused")
            break
        except Exception:
            await asyncio.sleep(0.2)
    assert got == b"1"


async def test_pipeline_takes_mget_scripts_publish_and_one_slot_transactions(
        client: RedisCluster):
    await client.set("a", "1")
    await client.set("b", "2")
    advance = lua.script("center/advance.lua")
    async with client.pipeline(transaction=False) as pipe:
        pipe.get("a")
        pipe.mget(["a", "b", "missing"])  # three slots, one reply
        await advance(keys=["pos"], args=["5-0"], client=pipe)  # EVAL with the text
        pipe.publish("chan", "x")
        assert len(pipe) == 4
        assert (await pipe.execute())[:3] == [b"1", [b"1", b"2", None], 1]
    async with client.pipeline(transaction=True) as pipe:
        pipe.set("{t}x", "v")
        pipe.incr("{t}n")
        pipe.mget(["{t}x", "{t}n"])
        assert await pipe.execute() == [True, 1, [b"v", b"1"]]
    with pytest.raises(RedisClusterException, match="one slot"):
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("a", "1")
            pipe.set("b", "2")
            await pipe.execute()
    assert await client.get("a") == b"1"  # nothing of the refused transaction ran


async def test_readers_block_on_one_node_and_hear_every_publish(
        client: RedisCluster, cluster: ClusterDeployment):
    blocking = reader(cluster.url, name="test-blocking", like=client)
    sub_client = reader(cluster.url, name="test-pubsub", like=client, block=None)
    ps = sub_client.pubsub()
    try:
        await ps.subscribe("news")
        assert (await ps.get_message(timeout=5))["type"] == "subscribe"
        # a publish to a channel whose name hashes to each master reaches the one node
        for i in range(6):
            await client.publish("news", f"m{i}")
        heard = []
        for _ in range(60):
            m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if m is not None:
                heard.append(m["data"])
            if len(heard) == 6:
                break
        assert heard == [f"m{i}".encode() for i in range(6)]
        await client.xadd("stream", {"f": "1"})
        got = await blocking.xread({"stream": "0"}, block=100)
        assert got[0][1][0][1] == {b"f": b"1"}
    finally:
        await ps.aclose()
        await sub_client.aclose()
        await blocking.aclose()


async def test_a_pool_talks_to_the_master_of_a_named_slot(
        client: RedisCluster, cluster: ClusterDeployment):
    from redis.asyncio import Redis

    keys = Keys("vn:", cluster=True)
    one = Redis(connection_pool=pool(cluster.url, slot_of=keys.forward(0).arq_queue, timeout=1.0))
    try:
        await one.zadd(keys.forward(0).arq_queue, {keys.forward_job("n1", "u1"): 1})
        await one.set("arq:job:" + keys.forward_job("n1", "u1"), "j")  # same tag, same node
        assert await client.zcard(keys.forward(0).arq_queue) == 1
    finally:
        await one.aclose()
    with pytest.raises(ValueError, match="slot_of"):
        pool(cluster.url)


def test_cluster_key_names_keep_each_script_in_one_slot():
    from redis.crc import key_slot

    def slot(k: str) -> int:
        return key_slot(k.encode())

    k = Keys("vn:", cluster=True)
    settings = {slot(x) for x in (k.settings, k.settings_ids, k.settings_by_name("n"),
                                  k.topic("settings"), k.topics, k.state("user"),
                                  k.state_pos("user"), k.silences, k.silences_version)}
    fk = k.forward(0)
    forward = {slot(x) for x in (fk.arq_queue, fk.forward_due, fk.forward_wake,
                                 fk.forward_own(abort_jobs_ss),
                                 "arq:job:" + k.forward_job("n", "u"),
                                 "arq:in-progress:" + k.forward_job("n", "u", "resolved"),
                                 k.deliveries("n"), k.sent_marker("n", "u", "email"),
                                 k.threads("n"), k.digested("n", "u", "email"))}
    assert len(settings) == 1 and len(forward) == 1
    assert slot(k.folded("n1")) == slot(k.notice("n1"))
    assert slot(k.idempotency("key")) == slot(k.notices) == slot(k.notices_dead)
    # a single Redis keeps today's names
    one = Keys("vn:")
    assert (one.settings, one.topic("x"), one.forward(0).arq_queue, one.folded("n"),
            one.forward(0).forward_own(abort_jobs_ss)) == (
        "vn:settings", "vn:topic:x", "vn:arq:queue", "vn:notice:n:folded", abort_jobs_ss)


def test_keys_follow_the_url():
    assert Keys.for_url("vn:", "redis+cluster://127.0.0.1:7000").cluster
    assert not Keys.for_url("vn:", "redis://127.0.0.1:7000/0").cluster
    assert not Keys.for_url("vn:", None).cluster


def test_a_cluster_needs_three_masters(tmp_path: Path):
    with pytest.raises(ValueError, match="masters"):
        ClusterDeployment(tmp_path, masters=2)


def test_the_bridge_refuses_a_cluster_naming_why():
    from vestnik.streams.notifier.bridge import Bridge, BridgeError

    with pytest.raises(BridgeError, match=r"keyspace notifications.*Redis Cluster node"):
        Bridge("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", None,  # type: ignore[arg-type]
               Keys("vn:", cluster=True), {"panel:vm:*": "vm"}, maxlen=10)
