"""vestnik_redis_errors_total and vestnik_redis_stalls_total count what an operator must
know: commands that failed after their retries, by kind, and a Redis that went silent."""

from __future__ import annotations

import os
import signal

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError, TimeoutError

from vestnik.streams.redis import connect
from vestnik.streams.redis_server import RedisServer, free_port


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_refused_commands_count_as_connection_errors():
    redis = connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    before = value("vestnik_redis_errors_total", kind="connection", outcome="failed")
    with pytest.raises(ConnectionError):
        await redis.ping()
    await redis.aclose()
    # one command, one failure (redis-py does not retry a refused connect)
    assert value("vestnik_redis_errors_total", kind="connection", outcome="failed") == before + 1


async def test_a_silent_redis_counts_as_a_stall_and_a_timeout(tmp_path):
    server = RedisServer(tmp_path / "paused", appendonly=False).start()
    redis = connect(server.url, timeout=0.5)
    try:
        await redis.ping()  # connected while it answers
        stalls = value("vestnik_redis_stalls_total")
        timeouts = value("vestnik_redis_errors_total", kind="timeout", outcome="failed")
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises((TimeoutError, ConnectionError)):
                await redis.ping()
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert value("vestnik_redis_stalls_total") > stalls
        assert value("vestnik_redis_errors_total", kind="timeout", outcome="failed") > timeouts
        assert await redis.ping()  # and it recovers
    finally:
        await redis.aclose()
        server.stop()
