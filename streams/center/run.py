"""`vestnik center`: one member of the `center` consumer group on every ingest stream, with
the forward worker and the `resolve_after` timer of incidents beside it.

With VESTNIK_INGEST_PARTITIONS > 1 it runs one `Consumer` per partition (streams on a
cluster may live on different masters, and one XREADGROUP cannot span slots), each with
its own blocking reader, all handing batches to the one `Center`, whose locks keep the
loads and stores in order. Partitions above the count that hold entries would never be
read: `stranded_check` says so in the log and fails readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from vestnik.streams.center import inbox
from vestnik.streams.center.batch import Center
from vestnik.streams.config import Config
from vestnik.streams.consumer import Consumer, default_consumer_name
from vestnik.streams.forward import ForwardWorker, make_worker, run_forwarder
from vestnik.streams.gc_tuning import settle_gc
from vestnik.streams.keys import CENTER_GROUP, MAX_PARTITIONS, Keys
from vestnik.streams.ops_http import (
    Check,
    flag_check,
    group_check,
    ops_listener,
    redis_check,
)
from vestnik.streams.redis import RETRYABLE, connect, reader, wait_ready
from vestnik.streams.sampler import groups_probe, run_sampler
from vestnik.streams.schemas import NoticeIn, ResolveIn, decode_center_entry

log = logging.getLogger("vestnik.center")

DEPTH = 3  # batches handled at once: one read and built in Python while Redis stores another


async def stranded(redis: Redis, keys: Keys) -> list[str]:
    """Ingest streams above `keys.ingest_partitions` that exist: a writer configured with
    more partitions than this center added notices no center reads. One EXISTS each (on a
    cluster they live in different slots)."""
    names = [keys.ingest_stream(p)
             for p in range(keys.ingest_partitions, MAX_PARTITIONS)]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(name)
        found = await pipe.execute()
    return [name for name, n in zip(names, found, strict=True) if n]


def stranded_check(redis: Redis, keys: Keys) -> Check:
    """Readiness: no ingest stream beyond VESTNIK_INGEST_PARTITIONS holds anything. Logs an
    ERROR the first time (and again when the set changes)."""
    seen: list[str] = []

    async def check() -> str:
        try:
            found = await stranded(redis, keys)
        except RETRYABLE as e:
            return f"unreachable ({type(e).__name__})"
        if found and found != seen:
            log.error("ingest streams %s exist beyond VESTNIK_INGEST_PARTITIONS=%d: a writer "
                      "uses more partitions than this center reads, and their notices are "
                      "never delivered; give every api, wrapper, client and center the same "
                      "VESTNIK_INGEST_PARTITIONS", ", ".join(found), keys.ingest_partitions)
        seen[:] = found
        if found:
            return (f"notices stranded in {', '.join(found)}: raise "
                    f"VESTNIK_INGEST_PARTITIONS above {keys.ingest_partitions}")
        return "ok"

    return check


async def run_center(settings: Config, *, consumer: str | None = None, burst: bool = False,
                     forward: bool = True, handle_signals: bool = False,
                     ops_port: int | None = None) -> int:
    """Run one member of the `center` group on every ingest stream (and the forward worker
    beside it).

    Returns the number of entries handled. Without `handle_signals` it is embeddable:
    cancel the task to stop it (a batch in flight stays pending and is handled again).
    With it, SIGTERM/SIGINT finish the batch in hand, ack it and return. `burst` returns
    once the stream is drained (queued forward jobs stay queued for the next run).
    It samples its group's lag and pending for /metrics; `ops_port`: serve /healthz,
    /readyz and /metrics there from the start, ready once the consumer loop runs.
    """
    assert settings.redis_url, "redis_url is required"
    redis = connect(settings.redis_url, name="vestnik-center", timeout=settings.redis_timeout)
    keys = Keys.of(settings)
    streams = keys.ingest_streams
    # one blocking reader per stream: Consumer's BLOCK 1000 ms
    readers = [reader(settings.redis_url, name="vestnik-center-reader",
                      timeout=settings.redis_timeout, block=1.0) for _ in streams]
    conss: list[Consumer[NoticeIn | ResolveIn]] = []
    center: Center | None = None
    tasks: list[asyncio.Task[Any]] = []
    worker: ForwardWorker | None = None
    run: asyncio.Future[Any] | None = None
    partitions = stranded_check(redis, keys)
    checks = {"redis": redis_check(redis),
              "group:center": group_check(redis, streams, CENTER_GROUP),
              "partitions": partitions,
              "consumer": flag_check(lambda: run is not None and not run.done())}
    if forward:
        checks["forwarder"] = flag_check(lambda: worker is not None and worker.ready)
    listener = contextlib.AsyncExitStack()
    try:
        await listener.enter_async_context(ops_listener(settings.host, ops_port, checks))
        await wait_ready(redis)
        await inbox.migrate(redis, keys)  # before anything is stored in the new layout
        worker = make_worker(settings) if forward else None
        await partitions()  # logs an ERROR when notices are stranded
        center = Center(redis, keys, settings, inline=worker)
        name = consumer or default_consumer_name()
        conss = [Consumer(
            redis, blocking, stream=stream, group=CENTER_GROUP,
            consumer=name, decode=decode_center_entry,
            handle=center.handle, dead_stream=keys.ingest_dead(p),
            dead_maxlen=settings.dead_maxlen, batch=settings.center_batch,
            claim_idle_ms=settings.claim_idle_ms, burst=burst, depth=DEPTH)
            for p, (stream, blocking) in enumerate(zip(streams, readers, strict=True))]

        def stop() -> None:
            for c in conss:
                c.stop()

        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop)
        settle_gc()
        log.info("center %s consuming %s (batch %d, claim idle %d ms%s)", name,
                 ", ".join(streams), settings.center_batch, settings.claim_idle_ms,
                 ", burst" if burst else "")
        runs = [asyncio.create_task(c.run(), name=f"center-consumer-{p}")
                for p, c in enumerate(conss)]
        tasks.extend(runs)
        # one consumer failing stops the others (their batches in hand finish first)
        run = asyncio.ensure_future(_all_or_first_error(runs, stop))
        tasks.append(asyncio.create_task(
            run_sampler(redis, [groups_probe(keys.ingest_stream(p), keys.ingest_dead(p))
                                for p in range(len(streams))]),
            name="center-sampler"))
        if not burst:  # a burst resolves what is due once, at its end: a timer pass cut
            # short by the burst's end would leave the entries it took under their lease
            tasks.append(asyncio.create_task(center.incidents.run_timer(),
                                             name="center-timer"))
        if forward:
            fwd = asyncio.create_task(run_forwarder(settings, worker=worker),
                                      name="center-forwarder")
            tasks.append(fwd)
            done, _ = await asyncio.wait([run, fwd], return_when=asyncio.FIRST_COMPLETED)
            if fwd in done and not run.done():
                log.error("forward worker stopped (%r); stopping the center", fwd.exception()
                          if not fwd.cancelled() else "cancelled")
                stop()
        await run
        if burst:  # the incidents due by now resolve before a burst returns
            await center.incidents.resolve_due()
        processed = sum(c.processed for c in conss)
        log.info("center %s stopped after %d entries", name, processed)
        return processed
    finally:
        if run is not None and not run.done():
            run.cancel()
        for t in tasks:
            if not t.done():
                t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for t, r in zip(tasks, results, strict=True):
            if isinstance(r, Exception):
                log.error("%s failed: %r", t.get_name(), r)
        await listener.aclose()
        if center is not None:
            await center.aclose()
        for blocking in readers:
            await blocking.aclose()
        await redis.aclose()


async def _all_or_first_error(runs: list[asyncio.Task[None]], stop: Callable[[], None]) -> None:
    """Wait for every consumer; the first that fails stops the rest, then its error is
    raised once they are done."""
    pending = set(runs)
    first: BaseException | None = None
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if first is None and not t.cancelled() and t.exception() is not None:
                first = t.exception()
                stop()
    if first is not None:
        raise first
