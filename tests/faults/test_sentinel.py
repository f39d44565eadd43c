"""Vestnik on a Sentinel deployment (a primary, two replicas, three sentinels on loopback
ports): every kind of client finds the primary through the sentinels and follows a
failover by itself, and VESTNIK_REDIS_WAIT_REPLICAS holds back an acknowledgement that too
few replicas confirmed. (The primary killed under load: tests/faults/test_sentinel_failover.)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import msgspec
import pytest
from fault_support import K, Stack, echo_alert, stack

from support import eventually
from vestnik.streams.redis import connect, reader
from vestnik.streams.redis_server import SentinelDeployment

__all__ = ["stack"]

T = TypeVar("T")

@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[SentinelDeployment]:
    with SentinelDeployment(tmp_path / "redis") as d:
        yield d


async def _failover(deployment: SentinelDeployment) -> int:
    old = deployment.primary()
    old.kill()
    return await asyncio.to_thread(deployment.wait_failover, old.port, 30.0)


async def _retrying(call: Callable[[], Awaitable[T]], what: str) -> T:
    """`call()` until it succeeds: during a failover a command fails for a moment."""
    last: Exception | None = None
    for _ in range(100):
        try:
            return await call()
        except Exception as e:  # any Redis error of the switch
            last = e
            await asyncio.sleep(0.1)
    raise AssertionError(f"{what} never worked after the failover: {last!r}")


async def test_pooled_blocking_and_pubsub_clients_follow_a_failover(
        deployment: SentinelDeployment):
    pooled = connect(deployment.url, timeout=1.0)
    blocking = reader(deployment.url, name="test-reader", like=pooled)
    pubsub_client = reader(deployment.url, name="test-pubsub", like=pooled, block=None)
    try:
        await pooled.set("k", "before")
        port = await _failover(deployment)
        # the pooled client: writes land on the new primary
        await _retrying(lambda: pooled.set("k", "after"), "a write")
        info = await pooled.info("replication")
        assert info["role"] == "master" and int(
            (await pooled.config_get("port"))["port"]) == port
        # a blocking reader (XREAD BLOCK) reconnects to the new primary
        await pooled.xadd("s", {"f": "1"})
        got = await _retrying(lambda: blocking.xread({"s": "0"}, block=100), "XREAD")
        assert got and got[0][1][0][1] == {b"f": b"1"}
        # a pub/sub reader: subscribes on the new primary and gets what is published there
        ps = pubsub_client.pubsub()
        await _retrying(lambda: ps.subscribe("ch"), "SUBSCRIBE")
        await pooled.publish("ch", "hello")

        async def message() -> bool:
            m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
            return m is not None and m["data"] == b"hello"

        await eventually(message, timeout=10, what="the message on the new primary")
        await ps.aclose()
    finally:
        for c in (pooled, blocking, pubsub_client):
            await c.aclose()


async def test_the_sentinel_pool_waits_for_a_free_connection(deployment: SentinelDeployment):
    """Pins what `_SentinelPool` takes from BlockingConnectionPool (after redis-py's
    SentinelConnectionPool in its MRO): more callers than connections wait for one instead
    of failing with "Too many connections"."""
    from vestnik.streams.redis import _SentinelPool

    redis = connect(deployment.url, max_connections=2, timeout=3.0)
    try:
        assert isinstance(redis.connection_pool, _SentinelPool)
        got = await asyncio.gather(*(redis.blpop(["nothing"], 0.2) for _ in range(8)))
        assert got == [None] * 8
        assert len(redis.connection_pool._in_use_connections) == 0
    finally:
        await redis.aclose()


async def test_a_task_cancelled_while_it_asks_the_sentinels_ends(
        deployment: SentinelDeployment):
    """Every (re)connect of a Sentinel client asks the sentinels for the primary; a task
    cancelled meanwhile must end. (redis-py's socket_timeout sent each query under Python
    3.11's wait_for, which drops a cancellation arriving as the send completes: the task
    ran on, and the forwarder's poll loop, waiting for its cancelled wake-up listener,
    hung after a failover.) Cancelled at varying points of the exchange, 100 times."""
    redis = connect(deployment.url, timeout=1.0)
    pool = redis.connection_pool

    async def ask() -> None:
        for _ in range(100_000):
            await pool.get_master_address()

    try:
        for k in range(100):
            task = asyncio.create_task(ask())
            for _ in range(k % 25):  # the cancel lands at another step each time
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            if not done:
                for _ in range(100):  # stop it (each cancel may be lost as the first)
                    task.cancel()
                    if (await asyncio.wait({task}, timeout=0.1))[0]:
                        break
            assert done, f"cancel {k} was lost: the task kept asking the sentinels"
            assert task.cancelled()
    finally:
        await redis.aclose()


async def test_wait_replicas_holds_back_what_too_few_replicas_have(
        stack: Stack, deployment: SentinelDeployment):
    api = stack.api(deployment.url, VESTNIK_REDIS_WAIT_REPLICAS="2")
    body = {"alert": "a", "title": "t", "recipients": ["1"]}
    async with api.client() as http:
        ok = await http.post("/api/v1/notices", json=body, headers={"Idempotency-Key": "k1"})
        assert ok.status_code == 202, ok.text
        deployment.servers[2].stop()  # one replica away: WAIT 2 cannot be met
        no = await http.post("/api/v1/notices", json=body, headers={"Idempotency-Key": "k2"})
        assert no.status_code == 503 and no.headers["retry-after"] == "1", no.text
        assert no.json()["error"] == "unavailable"
        assert "VESTNIK_REDIS_WAIT_REPLICAS" in no.json()["detail"]
        # the product retries with its key once the replica is back: accepted, one notice
        deployment.servers[2].start()

        async def accepted() -> bool:
            r = await http.post("/api/v1/notices", json=body, headers={"Idempotency-Key": "k2"})
            return r.status_code == 202

        await eventually(accepted, timeout=20, interval=0.3, what="202 with the replica back")
    send = stack.proc(deployment.url, "send", "--alert", "a", "--title", "t",
                      "--recipients", "1", VESTNIK_REDIS_WAIT_REPLICAS="3")
    assert send.proc is not None and send.proc.wait(30) == 3, send.output()
    assert "replicas" in send.output() and "Traceback" not in send.output()


async def test_bridge_and_wrapper_follow_a_failover(stack: Stack, tmp_path: Path,
                                                    deployment: SentinelDeployment):
    url = deployment.url
    (tmp_path / "alert.py").write_text(echo_alert("seen "))
    (tmp_path / "alert.toml").write_text(
        f'name = "echo"\ncommand = ["{sys.executable}", "alert.py"]\n'
        f'topics = ["vm"]\ncwd = "{tmp_path}"\n')
    bridge = stack.proc(url, "bridge", VESTNIK_KEYSPACE_PATTERNS="vm:*=vm")
    wrap = stack.proc(url, "wrap", str(tmp_path / "alert.toml"))
    redis = connect(url, timeout=1.0)
    try:
        async def noticed(eid: str) -> bool:
            try:
                await redis.set(f"vm:{eid}", msgspec.json.encode({"id": eid}))
                entries = await redis.xrange(K.notices)
            except Exception:  # any Redis error of the switch
                return False
            return any(f.get(b"title") == f"seen {eid}".encode() for _, f in entries)

        await eventually(lambda: noticed("a"), timeout=30, interval=0.5,
                         what="key -> bridge -> topic -> wrapper -> notice")
        await _failover(deployment)
        await eventually(lambda: noticed("b"), timeout=40, interval=0.5,
                         what="the same chain on the new primary")
        for p in (bridge, wrap):
            assert p.proc is not None and p.proc.poll() is None, p.output()[-2000:]
    finally:
        await redis.aclose()


async def test_health_of_an_api_on_sentinel(stack: Stack, deployment: SentinelDeployment):
    api = stack.api(deployment.url)
    async with httpx.AsyncClient(base_url=api.base, timeout=5) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text


async def test_the_client_sends_through_sentinel_and_waits_for_replicas(
        deployment: SentinelDeployment):
    from vestnik.client import AsyncClient, Client, Unavailable

    with Client.redis(deployment.url, wait_replicas=2) as sync_client:
        nid = sync_client.send("a", "sync", recipients=["1"], idempotency_key="s1")
        async with AsyncClient.redis(deployment.url, wait_replicas=2) as async_client:
            assert await async_client.send("a", "async", recipients=["1"])
            deployment.servers[2].stop()  # WAIT 2 cannot be met: nothing reported accepted
            with pytest.raises(Unavailable, match="replicas"):
                await async_client.send("a", "async 2", recipients=["1"])
        with pytest.raises(Unavailable, match="replicas"):
            sync_client.send("a", "sync 2", recipients=["1"])
        deployment.servers[2].start()
        old = deployment.primary()
        await _failover(deployment)  # the blocking client follows it too
        old.start()  # back as a replica of the new primary: two replicas again
        again = await _retrying(lambda: asyncio.to_thread(
            sync_client.send, "a", "sync", recipients=["1"], idempotency_key="s1"), "send")
        assert again == nid
