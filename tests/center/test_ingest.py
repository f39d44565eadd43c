"""Notices sent together (concurrent POSTs) go to the ingest stream in one pipeline: each
sender still gets its own notice's id, every notice lands once, and when Redis refuses
the batch each sender gets Redis's error, without the other notices' contents in it."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import OutOfMemoryError

from support import fill_redis
from vestnik.streams.center import Ingest
from vestnik.streams.schemas import NoticeIn, decode_notice_entry


def _notice(i: int) -> NoticeIn:
    return NoticeIn(alert="disk", title=f"secret title {i}", recipients=[str(i)])


async def test_notices_sent_together_each_land_once_with_their_own_id(redis, keys):
    ingest = Ingest(redis, keys)
    ids = await asyncio.gather(*(ingest.send(_notice(i), via="http") for i in range(40)))
    assert len(set(ids)) == 40
    entries = await redis.xrange(keys.notices)
    assert len(entries) == 40
    stored = {(n := decode_notice_entry(fields)).id: n for _, fields in entries}
    assert {nid: stored[nid].title for nid in ids} == {
        nid: f"secret title {i}" for i, nid in enumerate(ids)}
    # alone, later: its own round trip
    alone = await ingest.send(_notice(99), via="cli")
    assert (await redis.xrevrange(keys.notices, count=1))[0][1][b"id"] == alone.encode()


@pytest.mark.single_redis("maxmemory and the fill are per node: a cluster fills one master")
@pytest.mark.timeout(60)
async def test_a_full_redis_refuses_each_sender_of_a_batch_alone(redis, keys):
    ingest = Ingest(redis, keys)
    filled = await fill_redis(redis)
    try:
        got = await asyncio.gather(*(ingest.send(_notice(i), via="http") for i in range(5)),
                                   return_exceptions=True)
        assert all(isinstance(e, OutOfMemoryError) for e in got), got
        # Redis's own words: not annotated with the batch's commands (notice fields)
        assert not any("secret" in str(e) for e in got), got
        assert await redis.xlen(keys.notices) == 0
    finally:
        await redis.delete(*[f"filler:{n}" for n in range(filled)])
    await redis.config_set("maxmemory", "0")
    assert len(await asyncio.gather(*(ingest.send(_notice(i), via="http")
                                      for i in range(5)))) == 5
    assert await redis.xlen(keys.notices) == 5
