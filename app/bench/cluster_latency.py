"""C1's B2: XADD → SSE of the recipient through an api and the layout's centers on a local
N-master Redis Cluster, beside the same on one Redis in the same run.

What a user gets on a cluster: the center PUBLISHes each live message on the master of the
user's `{u:<uid>}` slot (on a cluster always: PUBSUB NUMSUB counts one node's
subscribers), the cluster bus copies it to every other node, and the api's user hub,
SUBSCRIBEd on one node (the URL's first), passes it on to the SSE stream. No SSUBSCRIBE:
the path measured is the one the api takes today. The bus hop alone is measured too
(`bus_publish` rows): a bare PUBLISH relayed from another master, against one on the
subscriber's own master.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from vestnik.app.bench.cluster import Layout, OneRedis, ingest_streams, world_for
from vestnik.app.bench.core import Bench, percentile
from vestnik.app.bench.suite import latency_run, notice_fields
from vestnik.streams.redis_server import _ask
from vestnik.streams.schemas import json_encode

RATES = (100, 2000, 5000)  # B2's
BUS_CHANNEL = "bench:bus-hop"


async def _rewrite_aofs(world: OneRedis, timeout: float = 120) -> None:
    """Each master's AOF rewritten and the rewrite done, as B2 starts each phase: Redis
    rewrites by itself at 64 MB of growth, and a fork inside a round is its p99."""
    ports = world.ports()
    for port in ports:
        _ask(port, "BGREWRITEAOF")  # None when one runs already: then wait for it
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [p for p in ports if (info := _ask(p, "INFO", "persistence") or {})
                and (info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled"))]
        if not busy:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the AOF rewrites did not finish in {timeout:g}s")


def _sender(streams: list[str]) -> Callable[[Redis, int], Awaitable[None]]:
    """A B2 sender: `k` notices to u1 stamped with the time, spread over the streams."""
    turn = [0]

    async def send(r: Redis, k: int) -> None:
        async with r.pipeline(transaction=False) as pipe:
            for i in range(k):
                turn[0] += 1
                pipe.xadd(streams[turn[0] % len(streams)],
                          notice_fields(i, "u1", forward=False, t=time.time_ns()))
            await pipe.execute()

    return send


async def latencies(world: OneRedis, seconds: float) -> dict[int, tuple[list[float], int]]:
    """{rate: (ms of each notice that arrived, notices sent)} for each of B2's rates."""
    keys = world.keys
    r = world.redis()
    try:
        async with r.pipeline(transaction=False) as pipe:
            for i in range(10):
                pipe.hset(keys.state("user"), f"u{i}", json_encode(
                    {"id": f"u{i}", "name": f"User {i}", "email": f"u{i}@example.test"}))
            await pipe.execute()
        _, base = world.start_api()
        for _ in range(world.layout.centers):
            world.start("center")
        port = int(base.rsplit(":", 1)[1])
        me = f"/api/v1/me/stream?token={world.token('u1')}"
        send = _sender(ingest_streams(keys))
        # warm-up: the whole path (centers, api, pub/sub) has carried a notice before timing
        await latency_run(r, port, me, 50, 1.0, send)
        out = {}
        for rate in RATES:
            await _rewrite_aofs(world)
            out[rate] = await latency_run(r, port, me, rate, seconds, send)
        return out
    finally:
        await r.aclose()


async def _bus_hops(sub_port: int, pub_port: int, n: int) -> list[float]:
    """ms from a PUBLISH on `pub_port` to its arrival at a SUBSCRIBE on `sub_port`, one at
    a time, 5 ms apart (the api's hub is subscribed on one node; most users' live
    messages are PUBLISHed on another and cross the cluster bus)."""
    sub = Redis(port=sub_port, socket_timeout=5)
    pub = Redis(port=pub_port, socket_timeout=5)
    ps = sub.pubsub()
    out: list[float] = []
    try:
        await ps.subscribe(BUS_CHANNEL)
        for _ in range(n):
            await pub.publish(BUS_CHANNEL, str(time.perf_counter_ns()))
            for _ in range(50):  # at most 50 x 0.1 s: a message lost is not waited for
                msg = await ps.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if msg is not None:
                    out.append((time.perf_counter_ns() - int(msg["data"])) / 1e6)
                    break
            await asyncio.sleep(0.005)
    finally:
        await ps.aclose()
        await sub.aclose()
        await pub.aclose()
    return out


async def c1_latency(bench: Bench, layout: Layout) -> None:
    seconds = 2 if bench.quick else 10
    m = layout.masters
    task = bench.progress.add_task(f"C1 cluster x{m} B2", total=2)
    with world_for(Layout(0, layout.centers, layout.partitions)) as world:
        single = await latencies(world, seconds)
    bench.progress.advance(task)
    with world_for(layout) as world:
        runs = await latencies(world, seconds)
        ports = world.ports()
        hops = 200 if bench.quick else 2000
        relayed = await _bus_hops(ports[0], ports[1], hops)
        local = await _bus_hops(ports[0], ports[0], hops)
    bench.progress.advance(task)
    for rate in RATES:
        values, sent = runs[rate]
        ceil, ceil_sent = single[rate]
        for name, p in (("p50", 50), ("p99", 99)):
            bench.record(f"C1:cluster{m}_B2@{rate}:{name}_ms", f"XADD → SSE of the recipient "
                         f"at {rate}/s through an api and {layout.describe()} on the "
                         f"{m}-master cluster, {name}; ceiling: the same on one Redis",
                         [percentile(values, p)], "ms", better="lower",
                         ceiling=[percentile(ceil, p)])
        bench.record(f"C1:cluster{m}_B2@{rate}:lost", f"notices not received at {rate}/s on "
                     f"the cluster (one Redis: {ceil_sent - len(ceil)})",
                     [sent - len(values)], "notices", better="lower", target=0)
    for name, p in (("p50", 50), ("p99", 99)):
        bench.record(f"C1:cluster{m}_bus_publish_{name}_ms", f"a bare PUBLISH on one master to "
                     f"a SUBSCRIBE on another (over the cluster bus), {hops} one by one, "
                     f"{name}; ceiling: both on one master", [percentile(relayed, p)], "ms",
                     better="lower", ceiling=[percentile(local, p)])
    bench.done(task)
