"""The api process restarted (SIGTERM, then started again on the same port, as in a deploy)
under 500 SSE clients of /me/stream while notices keep coming: every client reconnects
with its Last-Event-ID and ends with every seq of its user exactly once, in order."""

from __future__ import annotations

import asyncio
import time

import pytest
from fault_support import Follower, K, Stack, add_users, record, stack, token
from redis.asyncio import Redis

from support import eventually

__all__ = ["stack"]

USERS = [str(u) for u in range(1, 51)]
PER_USER = 10  # 500 clients
RATE = 5  # notices per second, each to all 50 users


async def _produce(r: Redis, stop: asyncio.Event) -> int:
    n = 0
    recipients = ",".join(USERS)
    while not stop.is_set():
        n += 1
        await r.xadd(K.notices, {"alert": "deploy", "title": f"n{n}", "recipients": recipients})
        try:
            await asyncio.wait_for(stop.wait(), 1 / RATE)
        except TimeoutError:
            pass
    return n


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_api_restart_under_500_sse_clients_no_gap_no_duplicate(stack: Stack):
    server = stack.redis(appendonly=False)
    url = server.url
    r = Redis.from_url(url)
    await add_users(r, *USERS)
    api = stack.api(url, VESTNIK_FEED_MAX="100000")
    stack.proc(url, "center", "--no-forward", VESTNIK_FEED_MAX="100000")
    followers = [Follower(api.base, token(url, u)) for u in USERS for _ in range(PER_USER)]
    users = [u for u in USERS for _ in range(PER_USER)]
    try:
        for i in range(0, len(followers), 50):  # connect in waves, not one SYN flood
            for f in followers[i:i + 50]:
                f.start()
            await eventually(lambda i=i: _connected(followers[:i + 50], 1), timeout=30,
                             interval=0.05, what="clients connected")
        stop = asyncio.Event()
        producer = asyncio.create_task(_produce(r, stop))
        await eventually(lambda: _all_got(followers, 5), timeout=30, interval=0.1,
                         what="live notices before the restart")

        t0 = time.monotonic()
        code = api.proc.stop()  # SIGTERM: open streams are ended, the process exits
        stopped = time.monotonic() - t0
        assert code == 0, api.proc.output()[-2000:]
        # the streams are ended at once (not cut after uvicorn's 3 s graceful timeout)
        assert stopped < 2.5, stopped
        api = stack.api(url, port=api.port, VESTNIK_FEED_MAX="100000")
        back = time.monotonic() - t0
        await eventually(lambda: _connected(followers, 2), timeout=60, interval=0.1,
                         what="every client reconnected")
        await asyncio.sleep(1)  # a little more live traffic after everyone is back
        stop.set()
        sent = await producer

        tips = {u: int(await r.get(K.user_seq(u)) or 0) for u in USERS}
        assert all(t == sent for t in tips.values()), (sent, tips)
        await eventually(lambda: _caught_up(followers, users, tips), timeout=60, interval=0.1,
                         what="every client at its user's last seq")
        bad = [(u, f.seqs[:5], len(f.seqs)) for f, u in zip(followers, users, strict=True)
               if f.seqs != list(range(1, tips[u] + 1))]
        assert not bad, f"{len(bad)} clients with a gap or a duplicate: {bad[:3]}"
        record("api_restart_500_sse", {
            "clients": len(followers), "notices": sent,
            "events_per_client": sent, "stop_s": round(stopped, 2),
            "down_until_ready_s": round(back, 2),
            "reconnects": sum(f.connects - 1 for f in followers),
            "resets": sum(f.resets for f in followers),
        })
    finally:
        await asyncio.gather(*(f.stop() for f in followers))
        await r.aclose()


async def _connected(followers: list[Follower], n: int) -> bool:
    return all(f.connects >= n for f in followers)


async def _all_got(followers: list[Follower], n: int) -> bool:
    return all(len(f.seqs) >= n for f in followers)


async def _caught_up(followers: list[Follower], users: list[str], tips: dict[str, int]) -> bool:
    return all(f.seqs and f.seqs[-1] >= tips[u] for f, u in zip(followers, users, strict=True))
