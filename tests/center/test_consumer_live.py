"""The consumer loop and the user hub in-process against the real Redis: a poison entry is
dead-lettered after its retries while the rest flows; burst mode ends; a slow connection
is cut off without holding up the others; the hub keeps one channel per connected user."""

from __future__ import annotations

import asyncio

import pytest
from center_support import K, dead, pending

from support import eventually
from vestnik.streams.center import UserHub
from vestnik.streams.center.user_hub import UserSub
from vestnik.streams.consumer import Consumer, DeadLetter, Entry
from vestnik.streams.errors import BadInput
from vestnik.streams.redis import reader
from vestnik.streams.schemas import LiveNotice, encode_live


def decode(fields: dict[bytes, bytes]) -> str:
    value = fields.get(b"v", b"").decode()
    if not value:
        raise BadInput("field `v` is required", field="$.v")
    return value


async def test_poison_entry_is_dead_lettered_after_retries(redis, redis_url):
    seen: list[str] = []

    async def handle(entries: list[Entry[str]]) -> list[DeadLetter]:
        if any(e.value == "boom" for e in entries):
            raise RuntimeError("handler bug")
        seen.extend(e.value for e in entries)
        return []

    blocking = reader(redis_url, name="test-consumer")
    c = Consumer(redis, blocking, stream=K.notices, group="center", consumer="t", decode=decode,
                 handle=handle, dead_stream=K.notices_dead, batch=1, claim_idle_ms=100,
                 max_deliveries=3, burst=True)
    await c.ensure_group()
    for v in ("a", "boom", "", "b"):
        await redis.xadd(K.notices, {"v": v} if v else {"x": "1"})
    try:
        await asyncio.wait_for(c.run(), 30)
    finally:
        await blocking.aclose()
    assert seen == ["a", "b"]
    letters = await dead(redis)
    reasons = sorted((d["field"], d["reason"].split(":")[0]) for d in letters)
    assert reasons == [("$", "failed 3 times"), ("$.v", "field `v` is required")]
    assert await pending(redis) == 0


@pytest.mark.parametrize("depth", [1, 3])
async def test_single_entries_are_acked_while_the_consumer_waits_for_more(redis, redis_url,
                                                                          depth):
    """One entry at a time (no backlog): each is acked, a bad one dead-lettered, by the time
    the consumer waits in its next read (they go in the same round trip as that read), and
    what was handled last is acked when the consumer stops."""
    seen: list[str] = []

    async def handle(entries: list[Entry[str]]) -> list[DeadLetter]:
        seen.extend(e.value for e in entries)
        return []

    blocking = reader(redis_url, name="test-consumer")
    c = Consumer(redis, blocking, stream=K.notices, group="center", consumer="t", decode=decode,
                 handle=handle, dead_stream=K.notices_dead, batch=50, block_ms=5000, depth=depth)
    await c.ensure_group()
    task = asyncio.create_task(c.run())
    try:
        for i, v in enumerate(["a", "", "b", "c"]):
            await redis.xadd(K.notices, {"v": v} if v else {"x": "1"})
            want = len([x for x in ["a", "", "b", "c"][:i + 1] if x])

            async def handled(n: int = want) -> bool:
                return len(seen) == n

            await eventually(handled, timeout=10, what=f"{v!r} handled")

            async def acked() -> bool:
                return await pending(redis) == 0

            # handled, then acked within the 5 s block: not at the read's timeout
            await eventually(acked, timeout=2, what=f"{v!r} acked while waiting")
        assert [d["field"] for d in await dead(redis)] == ["$.v"]
        assert c.processed == 4
        c.stop()
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        await blocking.aclose()
    assert seen == ["a", "b", "c"]


@pytest.mark.parametrize("depth", [1, 2])
async def test_poison_in_a_batch_takes_none_of_the_others_with_it(redis, redis_url, depth):
    """A bad entry in a batch of 10 is dead-lettered alone: its 9 neighbours are handled
    (one by one after the batch failed). With depth 2 the next batch is handled while one
    waits (as the center's store call does), and still nothing is lost or left pending."""
    seen: list[str] = []
    inflight = peak = 0

    async def handle(entries: list[Entry[str]]) -> list[DeadLetter]:
        nonlocal inflight, peak
        if any(e.value == "boom" for e in entries):
            raise RuntimeError("handler bug")
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.02)  # a store call in flight
        inflight -= 1
        seen.extend(e.value for e in entries)
        return []

    blocking = reader(redis_url, name="test-consumer")
    c = Consumer(redis, blocking, stream=K.notices, group="center", consumer="t", decode=decode,
                 handle=handle, dead_stream=K.notices_dead, batch=10, claim_idle_ms=100,
                 max_deliveries=2, burst=True, depth=depth)
    await c.ensure_group()
    values = [f"v{i}" for i in range(200)]
    values.insert(95, "boom")
    async with redis.pipeline(transaction=False) as pipe:
        for v in values:
            pipe.xadd(K.notices, {"v": v})
        await pipe.execute()
    try:
        await asyncio.wait_for(c.run(), 60)
    finally:
        await blocking.aclose()
    assert peak == depth
    assert sorted(set(seen)) == sorted(v for v in values if v != "boom")
    assert [d["reason"].split(":")[0] for d in await dead(redis)] == ["failed 2 times"]
    assert await pending(redis) == 0


async def test_user_hub_cuts_off_a_slow_connection_only(redis, redis_url):
    hub = UserHub(redis_url, K, queue_size=5)
    await hub.start()
    try:
        slow = await hub.subscribe("1")
        fast = await hub.subscribe("1")
        other = await hub.subscribe("2")
        assert hub.client_count == 3
        got: list[int] = []
        task = asyncio.create_task(_drain(fast, got))
        for seq in range(1, 21):
            await redis.publish(K.live("1"), encode_live(LiveNotice(seq, '{"id":"n"}')))
            await asyncio.sleep(0.005)
        await eventually(lambda: _is(got, list(range(1, 21))), what="fast got all")
        # the slow one (never read) was cut off: its queue ends with the end marker
        assert slow.pending() == 1 and await slow.get() is None
        assert other.pending() == 0
        await hub.unsubscribe(other)
        assert set(hub.subs) == {"1"}
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await hub.stop()


async def test_user_hub_keeps_a_reading_connection_through_a_burst(redis, redis_url):
    """Messages that arrive together (a pipeline of PUBLISHes; on a cluster, PUBLISHes
    forwarded over the cluster bus) do not cut off a connection that reads."""
    hub = UserHub(redis_url, K, queue_size=5)
    await hub.start()
    try:
        fast = await hub.subscribe("1")
        got: list[int] = []
        task = asyncio.create_task(_drain(fast, got))
        async with redis.pipeline(transaction=False) as pipe:
            for seq in range(1, 21):
                pipe.publish(K.live("1"), encode_live(LiveNotice(seq, '{"id":"n"}')))
            await pipe.execute()
        await eventually(lambda: _is(got, list(range(1, 21))), what="fast got all")
        assert hub.client_count == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await hub.stop()


async def _drain(sub: UserSub, got: list[int]) -> None:
    """Read `sub` as a live connection does, keeping the seq of each notice in `got`."""
    for _ in range(1000):  # bounded: the tests send 20 notices, a resync, the end marker
        item = await sub.get()
        if item is None:
            return
        if item.seq:
            got.append(item.seq)


async def _is(a: list[int], b: list[int]) -> bool:
    return a == b
