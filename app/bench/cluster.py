"""C1 (`vestnik bench --redis-cluster N`): B1's drain and B2's latency on a local N-master
Redis Cluster, each beside the same on one Redis in the same run (the ratio is what the
cluster costs), with the share of the Redis CPU each master took (the balance).

B1 here: 200,000 one-recipient notices to 1,000 users (50,000 with --quick), preloaded
and drained by `centers` `vestnik center` processes, so that Redis rather than one center
is what runs out. Every process the bench starts gets VESTNIK_INGEST_PARTITIONS and
VESTNIK_FORWARD_PARTITIONS = `partitions`, and the preload spreads the notices over the
ingest streams. CPU is counted, not timed: each master's `INFO cpu` (user + sys) and each
center's /proc stat, from the moment every center waits on the group until the drain
ends, give the Redis and center CPU per notice the growth on paper is built from
(docs/design.md "On a Redis Cluster"). Per-user keys follow their users' `{u:<uid>}` tags;
a single-slot key (an ingest stream, `{topics}`, `{fwd}`) puts all its work on one master.
B2 is in `cluster_latency`; `app.bench.run` runs both.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from vestnik.app.bench.core import Bench
from vestnik.app.bench.env import BenchProc, World, cpu_seconds
from vestnik.app.bench.suite import group_state, notice_fields
from vestnik.streams.keys import CENTER_GROUP, Keys
from vestnik.streams.redis import connect
from vestnik.streams.redis_server import ClusterDeployment, _ask
from vestnik.streams.schemas import json_encode

USERS = 1000
CHUNK = 5000
HOLD_GROUP = "bench-hold"  # a group left at 0: the centers' XTRIM never drops the preload
BALANCE = 0.20  # issue 23: every master within ±20 % of the mean share


@dataclass(frozen=True, slots=True)
class Layout:
    """What the bench deploys: masters (0: one Redis), centers, partitions of each kind."""

    masters: int
    centers: int
    partitions: int

    def env(self) -> dict[str, str]:
        return {"VESTNIK_INGEST_PARTITIONS": str(self.partitions),
                "VESTNIK_FORWARD_PARTITIONS": str(self.partitions)}

    def keys(self, url: str) -> Keys:
        return Keys.for_url("vn:", url, forward_partitions=self.partitions,
                            ingest_partitions=self.partitions)

    def describe(self) -> str:
        return (f"{self.centers} center{'s' if self.centers > 1 else ''}, "
                f"{self.partitions} ingest/forward partition{'s' if self.partitions > 1 else ''}")


def ingest_streams(keys: Keys) -> list[str]:
    """Every ingest stream the centers read (partition 0 is `vn:notices`). Before the
    ingest partitions (VESTNIK_INGEST_PARTITIONS) exist in streams/keys.py there is one."""
    stream = getattr(keys, "ingest_stream", None)
    if stream is None:
        if keys.ingest_partitions > 1:
            raise ValueError(f"--partitions {keys.ingest_partitions}: this Vestnik has no "
                             "ingest partitions yet (VESTNIK_INGEST_PARTITIONS); use 1")
        return [keys.notices]
    return [stream(p) for p in range(keys.ingest_partitions)]


def default_partitions(masters: int) -> int:
    """One partition of each kind per master where ingest partitions exist, else 1."""
    return masters if hasattr(Keys, "ingest_stream") else 1


class OneRedis(World):
    """The bench's one-Redis World, whose processes get the layout's partition counts."""

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.layout = layout

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**self.layout.env(), **extra})

    @property
    def keys(self) -> Keys:
        return self.layout.keys(self.url)

    def redis(self) -> Redis:
        """A client whose every command is bounded (the World's has no timeout)."""
        return connect(self.url, max_connections=8, name="bench-c1", timeout=10.0)

    def ports(self) -> list[int]:
        return [self.redis_server.port]

    def master_cpu(self) -> list[float]:
        """Seconds of CPU (user + sys) each master has used so far."""
        out = []
        for port in self.ports():
            info = _ask(port, "INFO", "cpu") or {}
            out.append(float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0)))
        return out

    def bytes_in(self) -> int:
        """Bytes the masters have read from their clients so far (not the cluster bus)."""
        return sum(int((_ask(port, "INFO", "stats") or {}).get("total_net_input_bytes", 0))
                   for port in self.ports())

    def holder_of(self, key: str) -> int:
        """The index (in `ports`) of the master that serves `key`."""
        return 0


class ClusterWorld(OneRedis):
    """A World whose Redis is a local ClusterDeployment of `layout.masters` masters."""

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.redis_server = ClusterDeployment(  # type: ignore[assignment]
            self.dir / "redis", masters=layout.masters)

    def ports(self) -> list[int]:
        cluster: ClusterDeployment = self.redis_server  # type: ignore[assignment]
        return cluster.master_ports()

    def holder_of(self, key: str) -> int:
        cluster: ClusterDeployment = self.redis_server  # type: ignore[assignment]
        return self.ports().index(cluster.primary_of(key).port)


def world_for(layout: Layout) -> OneRedis:
    return ClusterWorld(layout) if layout.masters else OneRedis(layout)


def shares(used: list[float]) -> list[float]:
    total = sum(used) or 1.0
    return [u / total for u in used]


def worst_deviation(share: list[float]) -> float:
    """The largest distance of a master's share from the mean share, as a fraction of it."""
    mean = 1 / len(share)
    return max(abs(s - mean) / mean for s in share)


@dataclass(slots=True)
class Drain:
    """One drain: notices/s; per notice, the CPU (µs) of Redis (all masters) and of the
    centers, and the bytes Redis read; each master's CPU seconds."""

    rate: float
    redis_us: float
    center_us: float
    bytes_in: float
    master_used: list[float]
    missing: int  # notices drained that no feed holds (each was for one user)


async def _load(r: Any, keys: Keys, streams: list[str], n: int) -> None:
    """Users and `n` notices spread round robin over `streams`, in pipelines (a cluster
    pipeline routes each command by its key)."""
    async with r.pipeline(transaction=False) as pipe:
        for i in range(USERS):
            pipe.hset(keys.state("user"), f"u{i}", json_encode(
                {"id": f"u{i}", "name": f"User {i}", "email": f"u{i}@example.test"}))
        await pipe.execute()
    for start in range(0, n, CHUNK):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + CHUNK)):
                pipe.xadd(streams[i % len(streams)],
                          notice_fields(i, f"u{i % USERS}", forward=True))
            await pipe.execute()


async def _group_total(r: Redis, streams: list[str]) -> tuple[int, int]:
    """(entries read, pending) of group `center` over all `streams`."""
    read = pending = 0
    for s in streams:
        st = await group_state(r, s, CENTER_GROUP)
        if st is not None:
            read, pending = read + st[0], pending + st[1]
    return read, pending


async def _consumers(r: Redis, streams: list[str]) -> int:
    """The fewest `center` consumers any stream has seen (each shows once it has read)."""
    counts = []
    for s in streams:
        try:
            counts.append(len(await r.xinfo_consumers(s, CENTER_GROUP)))
        except ResponseError as e:  # NOGROUP: not there yet (the bench makes it first)
            if "NOGROUP" not in str(e):
                raise
            counts.append(0)
    return min(counts)


async def _until_waiting(r: Redis, streams: list[str], centers: list[BenchProc],
                         seconds: float = 60) -> None:
    """Until every center has read every stream once (so it is up: its start-up CPU is
    not counted); at once with its log if one exited."""
    for _ in range(int(seconds / 0.05)):
        for c in centers:
            if c.proc.poll() is not None:
                raise RuntimeError(f"center exited: {c.log_path.read_text()[-1500:]}")
        if await _consumers(r, streams) >= len(centers):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{len(centers)} centers did not join every stream in {seconds:g} s")


async def _in_feeds(r: Any, keys: Keys) -> int:
    """Feed entries of every user the load wrote to (fewer than `feed_max` each)."""
    async with r.pipeline(transaction=False) as pipe:
        for i in range(USERS):
            pipe.zcard(keys.feed(f"u{i}"))
        return sum(await pipe.execute())


async def drain(world: OneRedis, n: int, timeout: float = 300) -> Drain:
    """Preload `n` notices, start the layout's centers on a group at the end of each stream,
    then move the group back to 0 and time the drain from the first read to the last ack."""
    keys = world.keys
    streams = ingest_streams(keys)
    r = world.redis()
    try:
        await _load(r, keys, streams, n)
        for s in streams:
            await r.xgroup_create(s, HOLD_GROUP, id="0")
            await r.xgroup_create(s, CENTER_GROUP, id="$")
        centers = [world.start("center") for _ in range(world.layout.centers)]
        await _until_waiting(r, streams, centers)
        cpu0, in0 = world.master_cpu(), world.bytes_in()
        ccpu0 = sum(cpu_seconds(c.pid) for c in centers)
        for s in streams:
            await r.xgroup_setid(s, CENTER_GROUP, id="0", entries_read=0)
            # one more notice wakes the centers blocked on the stream (SETID does not)
            await r.xadd(s, notice_fields(n, "u0", forward=True))
        total = n + len(streams)
        deadline = time.monotonic() + timeout
        t0 = r0 = None
        while time.monotonic() < deadline:
            read, pending = await _group_total(r, streams)
            now = time.perf_counter()
            if t0 is None and read > 0:
                t0, r0 = now, read
            if read >= total and pending == 0:
                break
            await asyncio.sleep(0.005)
        else:
            raise TimeoutError(f"the centers did not drain {total} entries in {timeout:g}s")
        assert t0 is not None and r0 is not None
        rate = (total - r0) / max(now - t0, 1e-6)
        used = [b - a for a, b in zip(cpu0, world.master_cpu(), strict=True)]
        center_s = sum(cpu_seconds(c.pid) for c in centers) - ccpu0
        return Drain(rate, sum(used) / total * 1e6, center_s / total * 1e6,
                     (world.bytes_in() - in0) / total, used, total - await _in_feeds(r, keys))
    finally:
        await r.aclose()


def forward_queues(keys: Keys) -> list[str]:
    """The forward queue of each forward partition (one before VESTNIK_FORWARD_PARTITIONS
    exists in streams/keys.py: `Keys.forward(p)`)."""
    part = getattr(keys, "forward", None)
    if callable(part):
        return [part(p).arq_queue for p in range(keys.forward_partitions)]
    return [keys.arq_queue]


def holders(world: OneRedis) -> dict[int, list[str]]:
    """Which master holds each single-slot key of the layout: the ingest streams,
    `{topics}`, the forward queues."""
    keys = world.keys
    named = [*ingest_streams(keys), keys.topics, *forward_queues(keys)]
    out: dict[int, list[str]] = {}
    for key in named:
        out.setdefault(world.holder_of(key), []).append(key)
    return out


async def c1_throughput(bench: Bench, layout: Layout) -> None:
    n = 50_000 if bench.quick else 200_000
    m = layout.masters
    task = bench.progress.add_task(f"C1 cluster x{m} B1", total=bench.rounds(2))
    one = Layout(0, layout.centers, layout.partitions)
    single: list[Drain] = []
    runs: list[Drain] = []
    held: dict[int, list[str]] = {}
    for _ in bench.each_round(120, full=2):  # alternating: one Redis, then the cluster
        with world_for(one) as world:
            single.append(await drain(world, n))
        with world_for(layout) as world:
            runs.append(await drain(world, n))
            held = holders(world)
        bench.progress.advance(task)
    p = f"C1:cluster{m}"
    how = layout.describe()
    bench.record(f"{p}_per_s", f"{n:,} one-recipient notices drained by {how} on a local "
                 f"{m}-master Redis Cluster; ceiling: the same on one Redis, same run",
                 [d.rate for d in runs], "notices/s", ceiling=[d.rate for d in single])
    bench.record(f"{p}_redis_us_per_notice", "Redis CPU (every master, INFO cpu) per notice "
                 "drained; ceiling: one Redis's", [d.redis_us for d in runs], "µs",
                 ceiling=[d.redis_us for d in single], better="lower")
    bench.record(f"{p}_center_us_per_notice", "center CPU (all centers) per notice drained; "
                 "ceiling: on one Redis", [d.center_us for d in runs], "µs",
                 ceiling=[d.center_us for d in single], better="lower")
    bench.record(f"{p}_redis_bytes_in_per_notice", "bytes the masters read from their clients "
                 "per notice drained (INFO stats; not the cluster bus); ceiling: one Redis's",
                 [d.bytes_in for d in runs], "bytes", ceiling=[d.bytes_in for d in single],
                 better="lower")
    bench.record(f"{p}_missing", "notices drained (read and acked) that no feed holds on the "
                 f"cluster (one Redis: {max(d.missing for d in single)})",
                 [d.missing for d in runs], "notices", better="lower", target=0)
    each = [shares(d.master_used) for d in runs]
    mean = 1 / m
    for i in range(m):
        on = ", ".join(held.get(i, [])) or "per-user keys only"
        bench.record(f"{p}_master{i}_share", f"master {i}'s share of the Redis CPU the drain "
                     f"took (even: {mean:.3f}; holds {on})", [s[i] for s in each], "share",
                     ceiling=mean)
    bench.record(f"{p}_busiest_master_share", f"the busiest master's share (even: {mean:.3f}; "
                 "ratio: the even share over it, 0.83 = 20 % over)",
                 [max(s) for s in each], "share", ceiling=mean, better="lower")
    bench.record(f"{p}_idlest_master_share", "the least busy master's share (ratio: it over "
                 "the even share, 0.80 = 20 % under)", [min(s) for s in each], "share",
                 ceiling=mean)
    bench.record(f"{p}_balance_worst_pct", "the largest distance of a master's share from "
                 "the even share, % of it (met = balance_ok: every master within ±20 %)",
                 [worst_deviation(s) * 100 for s in each], "%", better="lower",
                 target=BALANCE * 100)
    bench.done(task)


def layout_for(masters: int, centers: int = 2, partitions: int | None = None) -> Layout:
    """The layout `vestnik bench --redis-cluster N --centers K --partitions P` asks for;
    bad input is refused naming the option."""
    if masters < 3:
        raise ValueError(f"--redis-cluster: a cluster needs at least 3 masters, not {masters}")
    if centers < 1:
        raise ValueError(f"--centers: at least 1, not {centers}")
    parts = default_partitions(masters) if partitions is None else partitions
    if parts < 1:
        raise ValueError(f"--partitions: at least 1, not {parts}")
    layout = Layout(masters, centers, parts)
    ingest_streams(layout.keys("redis://127.0.0.1"))  # refuses partitions this Vestnik lacks
    return layout
