"""Jobs that start together read their state in one pipeline: each still gets exactly its
own replies, and a command that fails fails only the job that sent it."""

from __future__ import annotations

import asyncio

from redis.exceptions import ResponseError

from vestnik.streams.coalesce import PerIteration
from vestnik.streams.forward.job import read_many


async def test_reads_started_together_get_their_own_replies(redis):
    await redis.set("t:a", "1")
    await redis.set("t:b", "2")
    await redis.lpush("t:list", "x")  # GET of a list: WRONGTYPE, for that caller only
    reads = PerIteration(lambda adds: read_many(redis, adds))  # as the forwarder's
    sent: list[int] = []

    def reader(*keys: str):
        def add(pipe) -> None:
            sent.append(len(keys))
            for k in keys:
                pipe.get(k)
        return add

    a, bad, b = await asyncio.gather(
        reads.submit(reader("t:a", "t:none")), reads.submit(reader("t:list")),
        reads.submit(reader("t:b")), return_exceptions=True)
    assert a == [b"1", None] and b == [b"2"]
    assert isinstance(bad, ResponseError) and "WRONGTYPE" in str(bad)
    assert sent == [2, 1, 1]  # all three queued before the one pipeline went out
    # later reads go in a pipeline of their own
    assert await reads.submit(reader("t:b")) == [b"2"]

