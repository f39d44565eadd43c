"""Notifier: raw XADD and HTTP publishing reach SSE clients with the whole entity; the
snapshot follows; resume with Last-Event-ID is exact."""

from __future__ import annotations

import asyncio
import subprocess

import msgspec
import pytest

from support import SSE, Api, documented_line, eventually


@pytest.mark.single_redis("the documented line names the single-Redis key (vn:topic:vm)")
async def test_documented_redis_cli_line_reaches_sse_and_snapshot(api: Api, redis_url, user_token):
    token = user_token("1")
    sse = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={token}").connect()
    assert sse.status == 200
    port = redis_url.split(":")[2].split("/")[0]
    # run the documented line verbatim through redis-cli (as a product would)
    line = documented_line("redis-cli XADD vn:topic:vm")
    out = subprocess.run(line.replace("redis-cli", f"redis-cli -p {port}", 1), shell=True,
                         check=True,
                         capture_output=True, text=True).stdout.strip()
    ev = await sse.next()
    assert ev.event == "entity"
    assert ev.id == out
    body = ev.json()
    assert body["op"] == "update" and body["id"] == "42" and body["topic"] == "vm"
    assert body["data"] == {"id": 42, "name": "web-1", "status": "running"}
    await sse.close()
    async with api.client(token) as http:
        snap = (await http.get("/api/v1/topics/vm")).json()
    assert snap["items"]["42"]["status"] == "running"
    assert snap["last_id"] == out


async def test_resume_gets_exactly_the_missed_events(api: Api, user_token):
    token = user_token("1")
    async with api.client() as http:
        first = (await http.post("/api/v1/topics/vm/events",
                                 json={"op": "create", "id": "1", "data": {"n": 0}})).json()["sid"]
        sse = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={token}",
                        headers={"Last-Event-ID": first}).connect()
        sids = []
        for i in range(1, 101):
            r = await http.post("/api/v1/topics/vm/events",
                                json={"op": "update", "id": "1", "data": {"n": i}})
            assert r.status_code == 201
            sids.append(r.json()["sid"])
    await sse.close()
    # disconnected at `first`: reconnect and get exactly the 100 events after it, in order
    sse = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={token}",
                    headers={"Last-Event-ID": first}).connect()
    got = await sse.take(100)
    assert [e.id for e in got] == sids
    assert [e.json()["data"]["n"] for e in got] == list(range(1, 101))
    assert await sse.nothing_for(0.5)
    await sse.close()


async def test_http_publish_validates_and_snapshot_deletes(api: Api, user_token):
    async with api.client() as http:
        r = await http.post("/api/v1/topics/vm/events", json={"op": "explode", "id": "1"})
        assert r.status_code == 422
        assert r.json()["error"] == "invalid" and r.json()["path"] == "$.op"
        r = await http.post("/api/v1/topics/vm/events", json={"op": "create", "id": "1",
                                                              "data": {}, "color": "red"})
        assert r.status_code == 422 and "color" in r.json()["detail"]
        r = await http.post("/api/v1/topics/bad topic/events", json={"op": "create", "id": "1"})
        assert r.status_code == 422
        await http.post("/api/v1/topics/vm/events", json={"op": "create", "id": "1",
                                                         "data": {"a": 1}})
        await http.post("/api/v1/topics/vm/events", json={"op": "create", "id": "2",
                                                         "data": {"a": 2}})
        await http.post("/api/v1/topics/vm/events", json={"op": "delete", "id": "1"})
        snap = (await http.get("/api/v1/topics/vm")).json()
    assert snap["items"] == {"2": {"a": 2}}


async def test_events_published_together_each_land_once_with_their_own_id(api: Api, redis,
                                                                          keys):
    """Concurrent POSTs share the api's XADD pipelines: each still gets its own stream id."""
    async with api.client() as http:
        rs = await asyncio.gather(*(
            http.post("/api/v1/topics/vm/events",
                      json={"op": "create", "id": f"vm-{i}", "data": {"n": i}})
            for i in range(30)))
        assert [r.status_code for r in rs] == [201] * 30
        sids = [r.json()["sid"] for r in rs]
        entries = {sid.decode(): fields for sid, fields in await redis.xrange(keys.topic("vm"))}
        assert len(entries) == 30 and set(sids) == set(entries)
        for i, sid in enumerate(sids):
            assert entries[sid][b"id"] == f"vm-{i}".encode()
        await eventually(lambda: _count(http, "vm", 30), what="all 30 in the snapshot")


async def _count(http, topic, n):
    return len((await http.get(f"/api/v1/topics/{topic}")).json()["items"]) == n


async def test_vestnik_publish_command(api: Api, start_proc, user_token):
    sse = await SSE(f"{api.base}/api/v1/topics/billing/stream?token={user_token('1')}").connect()
    proc = start_proc("publish", "billing", "--op", "create", "--id", "acc-1",
                      "--data", '{"balance": 3}')
    assert proc.proc.wait(20) == 0
    ev = await sse.next()
    assert msgspec.json.decode(ev.data)["data"] == {"balance": 3}
    await sse.close()
    async with api.client() as http:
        await eventually(lambda: _has(http, "billing", "acc-1"), what="snapshot")


async def _has(http, topic, eid):
    return eid in (await http.get(f"/api/v1/topics/{topic}")).json()["items"]


async def test_new_topic_found_among_many_keys(api: Api, redis, keys, user_token):
    """A product's first XADD to a topic nobody watches is materialized when a snapshot
    asks for it, however many other keys the keyspace holds (no SCAN)."""
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(20_000):
            pipe.set(keys.notice(f"filler-{i}"), b"{}")
        await pipe.execute()
    sid = (await redis.xadd(keys.topic("disk"), {"op": "update", "id": "sda",
                                                 "data": '{"id":"sda","used":91}'})).decode()
    async with api.client(user_token("1")) as http:
        async def materialized() -> bool:
            snap = (await http.get("/api/v1/topics/disk")).json()
            return snap.get("last_id") == sid and snap["items"]["sda"]["used"] == 91
        await eventually(materialized, timeout=20, what="topic disk materialized")
