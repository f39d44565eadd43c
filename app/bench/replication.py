"""R1: what `VESTNIK_REDIS_WAIT_REPLICAS` costs. The api's own ingest path (`Ingest` over
`Appends`: the XADDs of concurrent requests in one pipeline) against the primary of a
Sentinel deployment (two replicas, three sentinels on loopback), WAIT 0 and WAIT 1
alternating in one run; the ratio is WAIT 1's rate over WAIT 0's."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from vestnik.app.bench.core import Bench
from vestnik.streams.center import Ingest
from vestnik.streams.coalesce import Appends, Replication
from vestnik.streams.keys import Keys
from vestnik.streams.redis import connect
from vestnik.streams.redis_server import SentinelDeployment
from vestnik.streams.schemas import NoticeIn

K = Keys("vn:")
CONCURRENCY = 200  # requests in flight, as in B7's api load


async def _rate(url: str, wait: int, n: int) -> float:
    """Notices per second acknowledged by `Ingest.send` with `wait` replicas."""
    redis = connect(url, timeout=5.0)
    ingest = Ingest(redis, K, Appends(redis, Replication.of(wait, 5.0)))
    per = n // CONCURRENCY

    async def sender(i: int) -> None:
        for j in range(per):
            await ingest.send(NoticeIn(alert="bench", title=f"n{i}.{j}", recipients=["1"]),
                              via="bench")

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(sender(i) for i in range(CONCURRENCY)))
        return per * CONCURRENCY / (time.perf_counter() - t0)
    finally:
        await redis.delete(K.notices)
        await redis.aclose()


async def r1_replication(bench: Bench) -> None:
    n = 20_000 if bench.quick else 100_000
    task = bench.progress.add_task("R1 WAIT cost", total=bench.rounds())
    base = Path(tempfile.mkdtemp(prefix="vestnik-bench-sentinel-"))
    waited: list[float] = []
    plain: list[float] = []
    try:
        with SentinelDeployment(base) as deployment:
            url = deployment.url
            for _ in bench.each_round(60):
                plain.append(await _rate(url, 0, n))
                waited.append(await _rate(url, 1, n))
                bench.progress.advance(task)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    bench.record("R1:wait1_per_s", f"{n:,} notices through Ingest (200 in flight) on a "
                 "Sentinel primary with 2 replicas, VESTNIK_REDIS_WAIT_REPLICAS=1; ceiling: "
                 "the same with 0", waited, "notices/s", ceiling=plain)
    bench.done(task)
