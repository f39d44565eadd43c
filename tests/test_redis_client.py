"""The Redis client factory: commands packed by hiredis reach a real Redis byte for byte, and
what Redis cannot take is refused with the type named, before anything is sent."""

from __future__ import annotations

import pytest
from redis.exceptions import DataError

from streams.redis import connect, reader


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
