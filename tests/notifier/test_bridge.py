"""Keyspace bridge: key writes, hash writes, deletes and expiry become topic events carrying
the entity read from the key. Runs on one Redis and on a cluster (`--redis-cluster`, where
the bridge follows every master: tests/notifier/test_bridge_cluster.py has the rest)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from support import SSE, Api, eventually, master_ports


async def notify_flags(port: int) -> str:
    """`notify-keyspace-events` of the Redis on `port`."""
    async with Redis(port=port, socket_timeout=5) as node:
        value = (await node.config_get("notify-keyspace-events"))["notify-keyspace-events"]
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
async def bridged_api(start_api, start_proc) -> Api:
    api = start_api(VESTNIK_KEYSPACE_PATTERNS="panel:vm:*=vm")
    bridge = start_proc("bridge", VESTNIK_KEYSPACE_PATTERNS="panel:vm:*=vm")

    async def following() -> bool:  # subscribed and its start-up resync done
        return "bridge: following panel:vm:*" in bridge.output()

    await eventually(following, what="bridge ready")
    return api


async def test_key_writes_become_events_with_the_entity(bridged_api: Api, redis, redis_server,
                                                        keys, user_token):
    for port in master_ports(redis_server):  # the bridge enabled keyspace notifications
        assert "K" in await notify_flags(port)  # itself (on every master of a cluster)
    sse = await SSE(f"{bridged_api.base}/api/v1/topics/vm/stream?token={user_token()}").connect()

    await redis.set("panel:vm:7", '{"id": 7, "status": "installing"}')
    ev = (await sse.next()).json()
    assert (ev["op"], ev["id"], ev["data"]) == ("update", "7", {"id": 7, "status": "installing"})
    assert ev["src"] == "bridge"
    assert await redis.smembers(keys.topics) == {b"vm"}  # the hubs find the topic (issue 19)

    await redis.hset("panel:vm:8", mapping={"name": "db-1", "status": "running"})
    ev = (await sse.next()).json()
    assert (ev["op"], ev["id"], ev["data"]) == ("update", "8", {"name": "db-1",
                                                                "status": "running"})

    await redis.delete("panel:vm:7")
    ev = (await sse.next()).json()
    assert (ev["op"], ev["id"]) == ("delete", "7") and "data" not in ev

    await redis.set("panel:vm:9", '{"id": 9}', px=50)
    ev = (await sse.next()).json()
    assert (ev["op"], ev["id"]) == ("update", "9")
    # expiry is noticed when Redis expires the key (lazily or by its active cycle)
    ev = (await sse.next(timeout=15)).json()
    assert (ev["op"], ev["id"]) == ("delete", "9")

    await redis.set("other:vm:1", "{}")  # not a configured pattern: nothing
    assert await sse.nothing_for(0.5)
    await sse.close()

    async with bridged_api.client() as http:
        snap = (await http.get("/api/v1/topics/vm")).json()
    assert snap["items"] == {"8": {"name": "db-1", "status": "running"}}


async def test_bridge_resyncs_keys_written_while_it_was_down(start_api, start_proc, redis):
    await redis.set("panel:vm:1", '{"id": 1, "status": "stopped"}')
    api = start_api()
    start_proc("bridge", VESTNIK_KEYSPACE_PATTERNS="panel:vm:*=vm")

    async def synced():
        async with api.client() as http:
            return (await http.get("/api/v1/topics/vm")).json()["items"].get("1")

    assert await eventually(synced, what="resync") == {"id": 1, "status": "stopped"}


async def test_bridge_explains_when_config_is_forbidden(start_proc, redis_server, redis_url):
    ports = master_ports(redis_server)  # a cluster's bridge sets it on every master
    for port in ports:
        async with Redis(port=port) as node:
            await node.execute_command("ACL", "SETUSER", "product", "on", ">pw", "~*", "&*",
                                       "+@all", "-config")
    url = redis_url.replace("://", "://product:pw@", 1)
    proc = start_proc("bridge", VESTNIK_REDIS_URL=url, VESTNIK_KEYSPACE_PATTERNS="panel:vm:*=vm")
    assert proc.proc.wait(20) == 2
    out = proc.output()
    assert "CONFIG is not allowed" in out and "notify-keyspace-events" in out, out
    for port in ports:
        async with Redis(port=port) as node:
            await node.execute_command("ACL", "DELUSER", "product")


def test_bridge_without_patterns_fails_clearly(start_proc):
    proc = start_proc("bridge")
    assert proc.proc.wait(20) == 2
    assert "VESTNIK_KEYSPACE_PATTERNS" in proc.output()



