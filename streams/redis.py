"""Redis connections: one factory with bounded, logged retries and the hiredis parser."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

log = logging.getLogger("vestnik.redis")

RETRYABLE = (ConnectionError, TimeoutError, BusyLoadingError, OSError)


POOL_SIZE = 16


def connect(url: str, *, max_connections: int = POOL_SIZE, name: str = "vestnik") -> Redis:
    """A pooled client; commands retry with exponential backoff across a Redis restart.

    The pool is bounded and callers wait for a free connection (BlockingConnectionPool),
    so a burst of requests never opens more than `max_connections` to Redis.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        client_name=name,
        health_check_interval=30,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
    )
    return Redis(connection_pool=pool)


def reader(url: str, *, name: str) -> Redis:
    """A single-connection client for a blocking loop (XREAD BLOCK, pub/sub).

    No retry inside redis-py: the loop that owns it handles reconnects itself, so a
    blocked read is never silently re-issued from a stale position.
    """
    return Redis.from_url(
        url,
        decode_responses=False,
        max_connections=1,
        client_name=name,
        socket_connect_timeout=5,
        socket_keepalive=True,
    )


async def wait_ready(redis: Redis, *, timeout: float = 30.0) -> None:
    """Wait until Redis answers PING (and has loaded its data), logging each retry."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    while True:
        try:
            await redis.ping()
            return
        except RETRYABLE as e:
            if loop.time() + delay > deadline:
                raise
            log.warning("redis not ready (%s); retrying in %.2fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class Backoff:
    """Exponential backoff for long-running loops: `await b.wait()` after a failure."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base, self.cap, self.delay = base, cap, base

    def reset(self) -> None:
        self.delay = self.base

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)
