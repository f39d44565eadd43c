"""`vestnik center`: one member of the `center` consumer group, with the forward worker and
the `resolve_after` timer of incidents beside it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from vestnik.streams.center import inbox
from vestnik.streams.center.batch import Center
from vestnik.streams.config import Config
from vestnik.streams.consumer import Consumer, default_consumer_name
from vestnik.streams.forward import ForwardWorker, make_worker, run_forwarder
from vestnik.streams.gc_tuning import settle_gc
from vestnik.streams.keys import CENTER_GROUP, Keys
from vestnik.streams.ops_http import flag_check, group_check, ops_listener, redis_check
from vestnik.streams.redis import connect, reader, wait_ready
from vestnik.streams.sampler import groups_probe, run_sampler
from vestnik.streams.schemas import NoticeIn, ResolveIn, decode_center_entry

log = logging.getLogger("vestnik.center")

DEPTH = 3  # batches handled at once: one read and built in Python while Redis stores another


async def run_center(settings: Config, *, consumer: str | None = None, burst: bool = False,
                     forward: bool = True, handle_signals: bool = False,
                     ops_port: int | None = None) -> int:
    """Run one member of the `center` group (and the forward worker beside it).

    Returns the number of entries handled. Without `handle_signals` it is embeddable:
    cancel the task to stop it (a batch in flight stays pending and is handled again).
    With it, SIGTERM/SIGINT finish the batch in hand, ack it and return. `burst` returns
    once the stream is drained (queued forward jobs stay queued for the next run).
    It samples its group's lag and pending for /metrics; `ops_port`: serve /healthz,
    /readyz and /metrics there from the start, ready once the consumer loop runs.
    """
    assert settings.redis_url, "redis_url is required"
    redis = connect(settings.redis_url, name="vestnik-center", timeout=settings.redis_timeout)
    blocking = reader(settings.redis_url, name="vestnik-center-reader",
                      timeout=settings.redis_timeout, block=1.0)  # Consumer's BLOCK 1000 ms
    keys = Keys.of(settings)
    cons: Consumer[NoticeIn | ResolveIn] | None = None
    center: Center | None = None
    tasks: list[asyncio.Task[Any]] = []
    worker: ForwardWorker | None = None
    run: asyncio.Task[None] | None = None
    checks = {"redis": redis_check(redis),
              "group:center": group_check(redis, keys.notices, CENTER_GROUP),
              "consumer": flag_check(lambda: run is not None and not run.done())}
    if forward:
        checks["forwarder"] = flag_check(lambda: worker is not None and worker.ready)
    listener = contextlib.AsyncExitStack()
    try:
        await listener.enter_async_context(ops_listener(settings.host, ops_port, checks))
        await wait_ready(redis)
        await inbox.migrate(redis, keys)  # before anything is stored in the new layout
        worker = make_worker(settings) if forward else None
        center = Center(redis, keys, settings, inline=worker)
        cons = Consumer(
            redis, blocking, stream=keys.notices, group=CENTER_GROUP,
            consumer=consumer or default_consumer_name(), decode=decode_center_entry,
            handle=center.handle, dead_stream=keys.notices_dead,
            dead_maxlen=settings.dead_maxlen, batch=settings.center_batch,
            claim_idle_ms=settings.claim_idle_ms, burst=burst, depth=DEPTH)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, cons.stop)
        settle_gc()
        log.info("center %s consuming %s (batch %d, claim idle %d ms%s)", cons.name,
                 keys.notices, settings.center_batch, settings.claim_idle_ms,
                 ", burst" if burst else "")
        run = asyncio.create_task(cons.run(), name="center-consumer")
        tasks.append(run)
        tasks.append(asyncio.create_task(
            run_sampler(redis, [groups_probe(keys.notices, keys.notices_dead)]),
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
                cons.stop()
        await run
        if burst:  # the incidents due by now resolve before a burst returns
            await center.incidents.resolve_due()
        log.info("center %s stopped after %d entries", cons.name, cons.processed)
        return cons.processed
    finally:
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
        await blocking.aclose()
        await redis.aclose()
