"""C1 (`vestnik bench --redis-cluster N`): B1's load on a local N-master Redis Cluster.

200,000 one-recipient notices to 1,000 users (50,000 with --quick), preloaded, drained by
one `vestnik center`; the same load on one Redis in the same run is the ceiling, so the
ratio is what the cluster costs per notice. Each master's share of the Redis CPU the drain
took (`INFO cpu`, user + sys, before and after) says how evenly the slots spread the work:
per-user keys follow their users' `{u:<uid>}` tags, while the ingest stream, the topic and
settings keys (`{topics}`) and the forward keys (`{fwd}`) each live on one master.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from vestnik.app.bench.core import Bench
from vestnik.app.bench.env import World
from vestnik.app.bench.suite import drain_rate, notice_fields
from vestnik.streams.keys import CENTER_GROUP, Keys
from vestnik.streams.redis import connect
from vestnik.streams.redis_server import ClusterDeployment, _ask
from vestnik.streams.schemas import json_encode

USERS = 1000
CHUNK = 5000


class ClusterWorld(World):
    """A World whose Redis is a local ClusterDeployment of `masters` masters."""

    def __init__(self, masters: int) -> None:
        super().__init__()
        self.redis_server = ClusterDeployment(self.dir / "redis", masters=masters)  # type: ignore[assignment]

    def redis(self) -> Redis:
        return connect(self.url, max_connections=8, name="bench-cluster", timeout=10.0)

    def master_cpu(self) -> list[float]:
        """Seconds of CPU (user + sys) each master has used so far."""
        cluster: ClusterDeployment = self.redis_server  # type: ignore[assignment]
        out = []
        for port in cluster.master_ports():
            info = _ask(port, "INFO", "cpu") or {}
            out.append(float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0)))
        return out


async def _load(r: Any, keys: Keys, n: int) -> None:
    """Users and `n` notices, in pipelines (a cluster pipeline routes each by its key)."""
    async with r.pipeline(transaction=False) as pipe:
        for i in range(USERS):
            pipe.hset(keys.state("user"), f"u{i}", json_encode(
                {"id": f"u{i}", "name": f"User {i}", "email": f"u{i}@example.test"}))
        await pipe.execute()
    for start in range(0, n, CHUNK):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + CHUNK)):
                pipe.xadd(keys.notices, notice_fields(i, f"u{i % USERS}", forward=True))
            await pipe.execute()


async def _round(world: World, keys: Keys, n: int) -> tuple[float, list[float]]:
    r = world.redis()
    try:
        await _load(r, keys, n)
        await r.xgroup_create(keys.notices, CENTER_GROUP, id="0")
        before = world.master_cpu() if isinstance(world, ClusterWorld) else []
        center = world.start("center")
        rate = await drain_rate(r, keys.notices, CENTER_GROUP, n, center)
        after = world.master_cpu() if isinstance(world, ClusterWorld) else []
        used = [b - a for a, b in zip(before, after, strict=True)]
        total = sum(used) or 1.0
        return rate, [u / total for u in used]
    finally:
        await r.aclose()


async def c1_cluster(bench: Bench, masters: int) -> None:
    n = 50_000 if bench.quick else 200_000
    task = bench.progress.add_task(f"C1 cluster x{masters}", total=bench.rounds(2))
    rates: list[float] = []
    single: list[float] = []
    shares: list[list[float]] = []
    for _ in bench.each_round(120, full=2):  # alternating: one Redis, then the cluster
        with World() as world:
            single.append((await _round(world, Keys("vn:"), n))[0])
        with ClusterWorld(masters) as world:
            rate, share = await _round(world, Keys("vn:", cluster=True), n)
            rates.append(rate)
            shares.append(share)
        bench.progress.advance(task)
    bench.record(f"C1:cluster{masters}_per_s", f"{n:,} one-recipient notices through one "
                 f"center on a local {masters}-master Redis Cluster; ceiling: the same on one "
                 "Redis, same run", rates, "notices/s", ceiling=single)
    last = shares[-1]
    mean = 1 / len(last)
    bench.record(f"C1:cluster{masters}_busiest_master_share",
                 f"the busiest master's share of the Redis CPU the drain took (even: "
                 f"{mean:.2f}; ratio: the even share over it, 0.83 = 20 % over)",
                 [max(s) for s in shares], "share", ceiling=mean, better="lower")
    bench.record(f"C1:cluster{masters}_idlest_master_share",
                 "the least busy master's share (ratio: it over the even share, 0.80 = 20 % "
                 "under)",
                 [min(s) for s in shares], "share", ceiling=mean)
    bench.done(task)

