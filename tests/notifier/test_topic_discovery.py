"""Issue 19 items 15 and 16: the topic hub finds topic streams through the topic set that
every publisher path writes (no SCAN of the keyspace), follows a topic only while its
stream exists or a client asks for it, and trims what it has applied to about
VESTNIK_TOPIC_MAXLEN — never an entry it has not applied yet."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from support import Api, eventually
from vestnik.streams.keys import Keys
from vestnik.streams.notifier import Hydrator, StateWriter, TopicHub
from vestnik.streams.schemas import TopicEvent


@pytest.fixture
async def hub(redis_url: str, redis: Redis, keys: Keys) -> AsyncIterator[TopicHub]:
    hub = TopicHub(redis_url, redis, keys, Hydrator(redis, {}, []), discover_every=0.05,
                   block_ms=50)
    await hub.start()
    yield hub
    await hub.stop()


async def all_keys(redis: Redis) -> set[bytes]:
    return {k async for k in redis.scan_iter(count=1000)}


async def test_made_up_topics_cost_nothing_once_their_clients_leave(hub: TopicHub, redis,
                                                                     keys):
    await redis.xadd(keys.topic("vm"), {"op": "update", "id": "1", "data": "{}"})
    await redis.sadd(keys.topics, "vm")
    await eventually(lambda: _true("vm" in hub.positions), what="vm followed")
    before = await all_keys(redis)
    names = [f"made-up-{i}" for i in range(1000)]
    subs = [await hub.subscribe(t) for t in names]
    for t in names[:100]:  # a snapshot request asks for a topic too
        await hub.catch_up(t)
    assert set(names) <= hub.positions.keys()
    for s in subs:
        hub.unsubscribe(s)
    await eventually(lambda: _true(set(hub.positions) == {"vm"}), what="made-up names dropped")
    assert await all_keys(redis) == before


async def test_topics_come_from_the_set_and_go_with_their_stream(hub: TopicHub, redis, keys):
    # a product's plain XADD is not found by itself (no SCAN) ...
    await redis.xadd(keys.topic("quiet"), {"op": "update", "id": "1", "data": "{}"})
    # ... but an SADD of the name makes the hub follow and materialize it
    await redis.xadd(keys.topic("disk"), {"op": "update", "id": "sda", "data": '{"used":91}'})
    await redis.sadd(keys.topics, "disk")
    await eventually(lambda: _hget(redis, keys.state("disk"), "sda"), what="disk materialized")
    assert "quiet" not in hub.positions
    # Vestnik's own topics need no SADD: products publish users with a plain XADD
    await redis.xadd(keys.topic("user"), {"op": "update", "id": "7", "data": '{"id":"7"}'})
    await eventually(lambda: _hget(redis, keys.state("user"), "7"), what="user materialized")
    # the first client (or snapshot) asking for it follows it and records it in the set
    await hub.catch_up("quiet")
    assert await redis.sismember(keys.topics, "quiet")
    await eventually(lambda: _true("quiet" in hub.positions), what="quiet followed")
    # a deleted stream is no longer followed
    await redis.delete(keys.topic("disk"))
    await eventually(lambda: _true("disk" not in hub.positions), what="disk dropped")
    assert "quiet" in hub.positions


async def test_every_publisher_path_records_its_topic(api: Api, redis, keys, start_proc):
    async with api.client() as http:
        r = await http.post("/api/v1/topics/vm/events", json={"op": "update", "id": "1",
                                                              "data": {"id": 1}})
        assert r.status_code == 201
        r = await http.post("/api/v1/settings", json={
            "name": "disk", "channel": {"ui": {"users": ["1"]}}})
        assert r.status_code == 201, r.text
    proc = start_proc("publish", "host", "--id", "h1", "--data", '{"id":"h1"}')
    assert proc.proc.wait(30) == 0, proc.output()
    assert await redis.smembers(keys.topics) == {b"vm", b"settings", b"host"}


async def test_the_api_trims_a_plain_xadd_stream_it_has_applied(start_api, redis, keys,
                                                                user_token):
    n = 3000
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(keys.topic("metrics"), {"op": "update", "id": str(i), "data": "{}"})
        await pipe.execute()
    await redis.sadd(keys.topics, "metrics")
    api = start_api(VESTNIK_TOPIC_MAXLEN="500")
    await eventually(lambda: _len_at_most(redis, keys.topic("metrics"), 700), timeout=20,
                     what="stream trimmed")
    assert await redis.hlen(keys.state("metrics")) == n  # every entry was applied first
    async with api.client(user_token("1")) as http:
        assert len((await http.get("/api/v1/topics/metrics")).json()["items"]) == n
        text = (await http.get("/metrics")).text
    assert re.search(r"^vestnik_topics_followed 1\.0$", text, re.M), text[-400:]


async def test_an_entry_not_applied_yet_is_never_trimmed(redis, keys):
    key = keys.topic("t")
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(2000):
            pipe.xadd(key, {"op": "update", "id": str(i), "data": "{}"})
        sids = [s.decode() for s in await pipe.execute()]
    writer = StateWriter(redis, keys, maxlen=100)
    first = [(sid, TopicEvent(op="update", id=str(i), data={})) for i, sid in
             enumerate(sids[:300])]
    assert await writer.apply("t", first) == 300
    left = [s.decode() for s, _ in await redis.xrange(key)]
    assert set(sids[300:]) <= set(left)  # 1,700 not applied: all kept, beyond maxlen
    rest = [(sid, TopicEvent(op="update", id=str(i), data={})) for i, sid in
            enumerate(sids[300:], 300)]
    for i in range(0, len(rest), 100):
        await writer.apply("t", rest[i:i + 100])
    assert 100 <= await redis.xlen(key) <= 300
    assert await redis.hlen(keys.state("t")) == 2000


async def _true(value: bool) -> bool:
    return value


async def _hget(redis: Redis, key: str, field: str) -> bool:
    return await redis.hget(key, field) is not None


async def _len_at_most(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) <= n


async def test_made_up_topics_asked_over_http_leave_nothing_behind(api: Api, redis,
                                                                  user_token):
    before = await all_keys(redis)
    async with api.client(user_token("1")) as http:
        for i in range(200):
            r = await http.get(f"/api/v1/topics/made-up-{i}")
            assert r.status_code == 200 and r.json()["items"] == {}
        sse = [await http.send(http.build_request(
            "GET", f"/api/v1/topics/made-up-sse-{i}/stream"), stream=True) for i in range(20)]
        assert all(s.status_code == 200 for s in sse)
        assert await _followed(http) >= 20
        for s in sse:
            await s.aclose()

        async def none_followed() -> bool:
            return await _followed(http) == 0
        await eventually(none_followed, what="made-up topics dropped")
    assert await all_keys(redis) == before


async def _followed(http) -> float:
    text = (await http.get("/metrics")).text
    found = re.search(r"^vestnik_topics_followed (\S+)$", text, re.M)
    assert found, text[-400:]
    return float(found.group(1))
