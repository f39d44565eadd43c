"""Gauges read from Redis in the background: consumer-group lag and pending, dead-letter
stream lengths, the forward backlog.

The process that owns the data samples it (the center its group, the forwarder its
queue) every SAMPLE_EVERY_S seconds in one pipelined round trip, so a scrape costs Redis
nothing and ten Prometheus servers scraping do not multiply the load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from vestnik.streams.ids import now_ms
from vestnik.streams.keys import ForwardKeys
from vestnik.streams.metrics import DEAD_LETTERS, FORWARD_BACKLOG, GROUP_LAG, GROUP_PENDING
from vestnik.streams.redis import RETRYABLE

log = logging.getLogger("vestnik.sampler")

SAMPLE_EVERY_S = 5.0


@dataclass(frozen=True)
class Probe:
    """Commands queued on the sampler's pipeline and what to make of their replies."""

    queue: Callable[[Any, int], None]  # (pipeline, now ms)
    replies: int
    read: Callable[[list[Any]], None]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def groups_probe(stream: str, dead_stream: str) -> Probe:
    """Lag and pending of every consumer group on `stream`; the length of its dead letters."""

    def queue(pipe: Any, now: int) -> None:
        pipe.xinfo_groups(stream)
        pipe.xlen(dead_stream)

    def read(replies: list[Any]) -> None:
        groups, dead = replies
        if not isinstance(groups, ResponseError):  # no stream yet: nothing to report
            for g in groups:
                name = _text(g["name"])
                GROUP_PENDING.labels(stream, name).set(int(g["pending"]))
                lag = g.get("lag")  # None when Redis cannot tell (after a deletion)
                if lag is not None:
                    GROUP_LAG.labels(stream, name).set(int(lag))
        if isinstance(dead, int):
            DEAD_LETTERS.labels(dead_stream).set(dead)

    return Probe(queue, 2, read)


def backlog_probe(parts: Sequence[ForwardKeys]) -> Probe:
    """Forward jobs due now and scheduled later, per forward partition (label `partition`):
    arq's queue and the not-yet-pumped ones."""

    def queue(pipe: Any, now: int) -> None:
        for fk in parts:
            for z in (fk.arq_queue, fk.forward_due):
                pipe.zcount(z, "-inf", now)
                pipe.zcount(z, f"({now}", "+inf")

    def read(replies: list[Any]) -> None:
        for i, fk in enumerate(parts):
            r = replies[4 * i:4 * i + 4]
            p = str(fk.partition)
            FORWARD_BACKLOG.labels("due", p).set(r[0] + r[2])
            FORWARD_BACKLOG.labels("scheduled", p).set(r[1] + r[3])

    return Probe(queue, 4 * len(parts), read)


async def sample_once(redis: Redis, probes: Sequence[Probe]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        now = now_ms()
        for p in probes:
            p.queue(pipe, now)
        replies = await pipe.execute(raise_on_error=False)
    at = 0
    for p in probes:
        p.read(replies[at:at + p.replies])
        at += p.replies


async def run_sampler(redis: Redis, probes: Sequence[Probe],
                      every: float = SAMPLE_EVERY_S) -> None:
    """Sample until cancelled; a Redis outage leaves the last values and is retried."""
    while True:
        try:
            await sample_once(redis, probes)
        except RETRYABLE as e:
            log.debug("metrics sample skipped: %s", e)
        await asyncio.sleep(every)
