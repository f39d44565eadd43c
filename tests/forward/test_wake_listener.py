"""The forwarder's poll loop ends when it is cancelled (a stop, or a restart after Redis was
lost) even if the Redis client its wake-up listener waits in drops the cancellation.

redis-py's `socket_timeout` sent under Python 3.11's asyncio.wait_for, which drops a
cancellation that arrives as the send completes; the listener, cancelled while it asked
the sentinels for a new primary, ran on, and the poll loop waited for it forever: after a
Sentinel failover the forwarder sent nothing until restarted (tests/faults/
test_forward_failover.py; streams.redis no longer sends that way)."""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError

from support import eventually
from vestnik.streams.config import Config
from vestnik.streams.forward import make_worker


class _DropsCancel:
    """A pub/sub whose SUBSCRIBE loses a cancellation: it ends its wait and fails as a
    lost connection, as the client did in the middle of a failover."""

    def __init__(self) -> None:
        self.subscribes = 0

    async def subscribe(self, *channels: str) -> None:
        self.subscribes += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("No master found for 'vestnik'") from None

    async def aclose(self) -> None:
        pass


async def test_the_poll_loop_ends_when_cancelled_though_redis_dropped_the_cancel(
        settings: Config):
    worker = make_worker(settings)
    fake = _DropsCancel()
    worker.pool.pubsub = lambda: fake  # type: ignore[method-assign]
    run = asyncio.create_task(worker.async_run())
    try:
        async def listening() -> bool:
            return worker.polling and fake.subscribes == 1

        await eventually(listening, timeout=10, what="polling, the listener subscribing")
        run.cancel()
        done, _ = await asyncio.wait({run}, timeout=5)
        assert done, "the poll loop still waits for its wake-up listener"
        assert run.cancelled() and not worker.polling
        assert fake.subscribes == 1  # the listener did not subscribe again
    finally:
        if not run.done():
            worker.main_task and worker.main_task.cancel()
            await asyncio.wait({run}, timeout=1)
        await worker.close()
        await worker.ctx["forwarder"].channels.aclose()
