"""Faults: a center worker SIGKILLed mid-stream (its pending entries are claimed by the
other, every notice lands exactly once), the group recreated after a flush, and live
pushes surviving a Redis restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from center_support import K, add_users, entry, feed, lag, pending, unread_count, xadd_many

from support import SSE, Api, eventually
from vestnik.streams.center import run_center
from vestnik.streams.center.plan import derived_id

USERS = [str(u) for u in range(1, 6)]
N = 10_000


@pytest.mark.slow
async def test_sigkilled_worker_loses_nothing_and_duplicates_nothing(redis, start_proc):
    await add_users(redis, *USERS)
    entries = [entry(f"n{i}", f"{USERS[i % 5]},{USERS[(i + 1) % 5]}") for i in range(N)]
    env = {"VESTNIK_CLAIM_IDLE_MS": "1000", "VESTNIK_CENTER_BATCH": "100",
           "VESTNIK_FEED_MAX": str(N)}
    w1 = start_proc("center", "--no-forward", "--consumer", "w1", **env)
    w2 = start_proc("center", "--no-forward", "--consumer", "w2", **env)
    await eventually(lambda: _group_has(redis, "w1", "w2"), timeout=20, what="both workers")

    # kill w1 while it holds a batch it has not acked yet: watched while the entries are
    # added (the workers may keep up with the adding and hold nothing once it is done).
    # Seen holding, it is frozen (SIGSTOP) and looked at again: a batch it still holds
    # then can no longer be acked before the SIGKILL (on a slow box it once acked in the
    # round trip between the look and the kill); otherwise it is thawed and watched on
    async def w1_holds() -> bool:
        return bool(await redis.xpending_range(K.notices, "center", "-", "+", 1,
                                               consumername="w1"))

    async def kill_w1_holding() -> tuple[list, int]:
        """What w1 held and how many feed entries were made, read as it died: later, w2 may
        already have claimed them (they are idle after 1 s; on a slow box adding the
        10,000 entries outlasts that)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if await w1_holds():
                os.kill(w1.pid, signal.SIGSTOP)
                if await w1_holds():
                    w1.kill()
                    left = await redis.xpending_range(K.notices, "center", "-", "+", 1000,
                                                      consumername="w1")
                    return left, sum([len(await feed(redis, u)) for u in USERS])
                os.kill(w1.pid, signal.SIGCONT)
            await asyncio.sleep(0.001)
        raise AssertionError("w1 never held a batch in 20 s")

    killer = asyncio.create_task(kill_w1_holding())
    sids = await xadd_many(redis, entries, chunk=100)
    left, done = await killer
    expected: dict[str, set[str]] = {u: set() for u in USERS}
    for i, sid in enumerate(sids):
        expected[USERS[i % 5]].add(derived_id(sid))
        expected[USERS[(i + 1) % 5]].add(derived_id(sid))
    assert left, "w1 died holding entries that only a claim can recover"
    assert done < 2 * N, "the kill came too late to test anything"

    async def all_done() -> bool:
        return await pending(redis) == 0 and await lag(redis) == 0 and sum(
            [len(await feed(redis, u)) for u in USERS]) >= 2 * N

    await eventually(all_done, timeout=90, interval=0.1, what="every entry stored and acked")
    for u in USERS:
        ids = await feed(redis, u)
        assert len(ids) == len(set(ids)) == len(expected[u]) == 2 * N // 5
        assert set(ids) == expected[u]
        # the per-user seq counts every feed insert: equal to the size means no second copy
        # was ever added (and trimmed) on the way
        assert int(await redis.get(K.user_seq(u))) == len(ids)
        assert await unread_count(redis, u) == len(ids)
    assert await redis.xlen(K.notices_dead) == 0
    assert "claimed" in w2.output()


async def _group_has(redis, *names: str) -> bool:
    try:
        got = {c["name"].decode() for c in await redis.xinfo_consumers(K.notices, "center")}
    except Exception:  # the group does not exist yet
        return False
    return set(names) <= got


async def test_group_is_recreated_after_a_flush(redis, settings):
    """A Redis flushed under a running center (NOGROUP): the group comes back and new
    notices are stored."""
    await add_users(redis, "1")
    task = asyncio.create_task(run_center(settings, consumer="solo", forward=False))
    try:
        await xadd_many(redis, [entry("before")])
        await eventually(lambda: feed(redis, "1"), what="first notice")
        await redis.flushall()
        await add_users(redis, "1")
        # XADD creates the stream again, without the group: the consumer gets NOGROUP
        deadline = time.monotonic() + 20
        while not await feed(redis, "1") and time.monotonic() < deadline:
            await xadd_many(redis, [entry("after")])
            await asyncio.sleep(0.3)
        titles = await feed(redis, "1")
        assert titles, "nothing stored after the flush"
        assert await redis.xinfo_groups(K.notices)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.single_redis("restarts the one redis-server")
async def test_live_push_survives_a_redis_restart(api: Api, redis_server, redis, start_proc,
                                                  user_token):
    await add_users(redis, "1")
    start_proc("center", "--no-forward")
    sse = await SSE(f"{api.base}/api/v1/me/stream?token={user_token('1')}").connect()
    assert (await sse.next()).event == "count"
    async with api.client() as svc:
        r = await svc.post("/api/v1/notices", json={"alert": "disk", "title": "before",
                                                    "recipients": ["1"]})
        assert r.status_code == 202
        assert (await sse.take(1, event="notice"))[0].json()["title"] == "before"
        redis_server.restart()

        async def sent() -> bool:
            try:
                r = await svc.post("/api/v1/notices", json={"alert": "disk", "title": "after",
                                                            "recipients": ["1"]})
            except Exception:
                return False
            return r.status_code == 202

        await eventually(sent, timeout=20, interval=0.2, what="api back")
        got = await sse.take(1, event="notice", timeout=30)
        assert got[0].json()["title"] == "after" and got[0].id == "2"
    await sse.close()
