"""The user hub's one pub/sub connection: users whose first SSE connection arrives while the
hub is still opening that connection are subscribed too (found by the api-restart test: a
user's stream stalled on every reconnect and got no live events)."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from vestnik.streams.center import UserHub
from vestnik.streams.keys import Keys
from vestnik.streams.schemas import LiveNotice, encode_live


async def test_users_arriving_while_the_hub_connects_are_subscribed(redis_url: str):
    keys = Keys("vn:")
    hub = UserHub(redis_url, keys, confirm_timeout=3.0)
    await hub.start()
    r = Redis.from_url(redis_url)
    try:
        t0 = time.monotonic()
        # the first subscriber wakes the reader; the rest arrive while it connects
        first = asyncio.create_task(hub.subscribe("0"))
        for _ in range(100_000):  # bounded spin: until the reader is inside _open()
            if hub._ps is not None and not hub._connected.is_set():
                break
            await asyncio.sleep(0)
        assert hub._ps is not None and not hub._connected.is_set(), "missed the window"
        late = await asyncio.gather(*(hub.subscribe(str(u)) for u in range(1, 50)))
        subs = [await first, *late]
        assert time.monotonic() - t0 < 2.5, "a subscription was never confirmed"
        for u in range(50):
            assert await r.publish(keys.live(str(u)),
                                   encode_live(LiveNotice(1, '{"id":"n1"}'))) == 1
        for sub in subs:
            item = await asyncio.wait_for(sub.get(), 5)
            while item is not None and item.event != "notice":  # RESYNC after connecting
                item = await asyncio.wait_for(sub.get(), 5)
            assert item is not None and item.seq == 1, sub.uid
    finally:
        await hub.stop()
        await r.aclose()
