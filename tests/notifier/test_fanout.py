"""Architecture: one api process serves 1,000 SSE clients of many topics from ONE Redis reader;
its Redis connection count does not grow with the number of clients."""

from __future__ import annotations

import asyncio
import resource

from support import SSE, run_keys
from vestnik.streams.redis import POOL_SIZE

K = run_keys()


async def vestnik_connections(redis) -> list[str]:
    clients = await redis.client_list()
    return sorted(c["name"] for c in clients if c.get("name", "").startswith("vestnik"))


async def test_1000_clients_share_one_reader(start_api, redis, user_token):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    api = start_api(VESTNIK_SSE_PER_USER="1000")  # 1,000 streams of one user
    token = user_token()
    topics = [f"t{i}" for i in range(10)]

    few = [await SSE(f"{api.base}/api/v1/topics/{t}/stream?token={token}").connect()
           for t in topics]
    for t in topics:
        await redis.xadd(K.topic(t), {"op": "update", "id": "1", "data": "{}"})
    await asyncio.gather(*(c.next() for c in few))

    sem = asyncio.Semaphore(100)

    async def connect(i: int) -> SSE:
        async with sem:
            return await SSE(f"{api.base}/api/v1/topics/{topics[i % 10]}/stream?token={token}"
                             ).connect(timeout=30)

    many = await asyncio.gather(*(connect(i) for i in range(990)))
    assert all(c.status == 200 for c in many)
    for t in topics:
        await redis.xadd(K.topic(t), {"op": "update", "id": "2", "data": '{"n": 2}'})
    clients = few + many
    got = await asyncio.gather(*(c.next(timeout=30) for c in clients))
    assert all(ev.json()["id"] == "2" for ev in got)
    assert len(clients) == 1000

    with_many = await vestnik_connections(redis)
    # the reader, and a pool bounded by its size: not one connection per client
    assert with_many.count("vestnik-topic-hub") == 1
    assert len(with_many) <= POOL_SIZE + 1, with_many
    await asyncio.gather(*(c.close() for c in clients))
