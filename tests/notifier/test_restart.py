"""Redis restarts under a running api: the topic reader reconnects by itself and SSE clients
keep receiving, with nothing lost or repeated."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from support import SSE, eventually


@pytest.mark.single_redis("restarts the one redis-server")
async def test_sse_survives_redis_restart(api, redis_server, user_token):
    sse = await SSE(f"{api.base}/api/v1/topics/vm/stream?token={user_token()}").connect()
    r = Redis.from_url(redis_server.url)
    await r.xadd("vn:topic:vm", {"op": "create", "id": "1", "data": '{"n": 1}'})
    assert (await sse.next()).json()["data"] == {"n": 1}
    await r.aclose()

    redis_server.restart()  # graceful: the AOF keeps the stream and the snapshot

    r = Redis.from_url(redis_server.url)
    for n in range(2, 12):
        await r.xadd("vn:topic:vm", {"op": "update", "id": "1", "data": f'{{"n": {n}}}'})
    got = [e.json()["data"]["n"] for e in await sse.take(10, timeout=20)]
    assert got == list(range(2, 12))
    assert await sse.nothing_for(0.3)
    await sse.close()

    async def snapshot_caught_up():
        async with api.client(user_token()) as http:
            resp = await http.get("/api/v1/topics/vm")
            return resp.status_code == 200 and resp.json()["items"]["1"] == {"n": 11}

    await eventually(snapshot_caught_up, timeout=15, what="snapshot after restart")
    await r.aclose()
