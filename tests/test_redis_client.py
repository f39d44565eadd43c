"""The Redis client factory: commands packed by hiredis reach a real Redis byte for byte,
what Redis cannot take is refused with the type named, before anything is sent, and a
pooled connection Redis closed is replaced, not handed out to fail."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vestnik.streams.redis import connect, reader
from vestnik.streams.redis_server import RedisServer


async def test_values_of_every_kind_round_trip(redis_url):
    r = connect(redis_url)
    try:
        values = {"s": "plain", "u": "Диск заполнен ✓", "b": b"\x00\xff raw", "i": 12345678901234,
                  "f": 0.1, "m": memoryview(b"view")}
        for k, v in values.items():
            await r.set(f"t:{k}", v)
        got = await r.mget([f"t:{k}" for k in values])
        assert got == [b"plain", "Диск заполнен ✓".encode(), b"\x00\xff raw", b"12345678901234",
                       b"0.1", b"view"]
        # a command named with a space, and a script with its arguments
        assert await r.execute_command("CLIENT SETNAME", "packed") is True
        assert await r.client_getname() in ("packed", b"packed")
        assert await r.eval("return ARGV[1] .. #ARGV", 0, "n=", 2, 3) == b"n=3"
        async with r.pipeline(transaction=False) as pipe:
            pipe.rpush("t:list", *range(500))
            pipe.lrange("t:list", 498, -1)
            assert (await pipe.execute())[1] == [b"498", b"499"]
    finally:
        await r.aclose()


async def test_a_value_redis_cannot_take_is_refused_with_its_type(redis_url):
    for client in (connect(redis_url), reader(redis_url, name="t")):
        try:
            with pytest.raises(DataError, match="bool"):
                await client.set("t:flag", True)
            with pytest.raises(DataError, match="NoneType"):
                await client.set("t:none", None)
            assert await client.exists("t:flag", "t:none") == 0
        finally:
            await client.aclose()


async def test_a_connection_redis_closed_is_replaced_whether_seen_closed_or_not(redis_url):
    r, admin = connect(redis_url, name="t-pooled"), connect(redis_url)
    one = reader(redis_url, name="t-reader")
    try:
        await r.set("t:k", "v")
        # paused: the loop has seen the close before the checkout; not paused: the command
        # is sent on the closed socket, fails, and is retried on a new connection
        for pause in (0.2, 0.0):
            old = await r.client_id()
            assert await admin.client_kill_filter(_id=old) == 1
            await asyncio.sleep(pause)
            assert await r.get("t:k") == b"v"
            assert await r.client_id() != old
        old = await one.client_id()  # the reader has no retries: only the seen close
        assert await admin.client_kill_filter(_id=old) == 1
        await asyncio.sleep(0.2)
        assert await one.get("t:k") == b"v"
        assert await one.client_id() != old
    finally:
        for c in (r, admin, one):
            await c.aclose()


async def test_callers_beyond_the_pool_size_wait_for_a_connection(redis_url):
    r, admin = connect(redis_url, max_connections=2, name="t-small"), connect(redis_url)
    try:
        await r.mset({f"t:n{i}": i for i in range(40)})
        got = await asyncio.gather(*(r.get(f"t:n{i}") for i in range(40)))
        assert got == [str(i).encode() for i in range(40)]
        clients = await admin.client_list()
        assert sum(1 for c in clients if c["name"] == "t-small") == 2
    finally:
        await r.aclose()
        await admin.aclose()


async def test_a_free_clean_connection_is_handed_out_without_redis_pys_checkout(redis_url,
                                                                               monkeypatch):
    """The fast path is taken (redis-py's checkout costs a loop pass per command): should
    redis-py's internals change under the pin, this fails instead of the speed going."""
    from redis.asyncio import BlockingConnectionPool

    slow = 0
    original = BlockingConnectionPool.get_connection

    async def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal slow
        slow += 1
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(BlockingConnectionPool, "get_connection", counted)
    r = connect(redis_url)
    try:
        for i in range(200):
            await r.set("t:fast", i)
        assert await r.get("t:fast") == b"199"
        assert slow == 1  # the first command: no connection yet
    finally:
        await r.aclose()


@pytest.fixture
def frozen_server(tmp_path):
    """A private redis-server the test may SIGSTOP (never the session one); always
    continued and stopped at teardown."""
    server = RedisServer(tmp_path / "frozen", appendonly=False).start()
    yield server
    if server.pid is not None:
        os.kill(server.pid, signal.SIGCONT)
    server.stop()


async def _elapsed(coro) -> tuple[float, BaseException | None]:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    try:
        await coro
    except Exception as e:  # the error itself is what the caller checks
        return time.monotonic() - t0, e
    return time.monotonic() - t0, None


async def test_a_frozen_redis_fails_each_call_within_about_its_timeout(frozen_server):
    """A frozen Redis (connections open, no answer): a pooled command, a new connection, a
    blocked XREAD each fail after about the timeout (a read: BLOCK + timeout), not 8 retries
    of it nor never; the same clients work again once Redis answers."""
    url, timeout = frozen_server.url, 0.5
    pooled = connect(url, timeout=timeout, max_connections=2)
    fresh = connect(url, timeout=timeout)
    blocking = reader(url, name="t-frozen", timeout=timeout, block=0.3)
    try:
        await pooled.set("t:k", "v")
        await blocking.ping()
        os.kill(frozen_server.pid, signal.SIGSTOP)
        try:
            waits = await asyncio.gather(
                _elapsed(pooled.get("t:k")), _elapsed(fresh.get("t:k")),
                _elapsed(blocking.xread({"t:s": "$"}, block=300)),
                # both pooled connections are taken: a third caller waits at most timeout
                _elapsed(pooled.get("t:k")), _elapsed(pooled.get("t:k")))
        finally:
            os.kill(frozen_server.pid, signal.SIGCONT)
        for seconds, err in waits:
            assert isinstance(err, (RedisTimeoutError, RedisConnectionError)), err
            # loose: a busy box may be late, but 8 tries would be 4.5 s and a hang forever
            assert seconds < 0.3 + timeout * 4, waits
        assert await pooled.get("t:k") == b"v"
        assert await fresh.get("t:k") == b"v"
        assert await blocking.xread({"t:s": "0"}, block=10) == []
    finally:
        for c in (pooled, fresh, blocking):
            await c.aclose()


async def test_retries_across_a_restart_stop_at_the_time_budget(frozen_server):
    """Redis gone (connections refused at once): a command retries with backoff only while
    its budget lasts, not 8 times (~9 s with no answer; redis-py also nests a connect's
    retries inside the command's, which multiplied counts)."""
    r = connect(frozen_server.url, timeout=1.0)
    try:
        await r.set("t:k", "v")  # a pooled connection, now to be found dead
        frozen_server.stop()
        seconds, err = await _elapsed(r.get("t:k"))
        assert isinstance(err, RedisConnectionError), err
        assert 0.5 < seconds < 3.0, seconds  # it did retry, and stopped near the budget
    finally:
        await r.aclose()


def test_redis_timeout_setting_is_named_when_wrong():
    from vestnik.streams.config import ConfigError, load

    assert load({}).redis_timeout == 2.0
    assert load({"VESTNIK_REDIS_TIMEOUT": "0.25"}).redis_timeout == 0.25
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="VESTNIK_REDIS_TIMEOUT"):
            load({"VESTNIK_REDIS_TIMEOUT": bad})
