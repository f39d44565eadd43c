"""The consumer-group loop: the one place that reads a stream as a member of a group.

Shaped after centrifugo's redisqueue consumer: bounded blocking reads (never
`BLOCK 0`), idle pending entries of dead members reclaimed with XAUTOCLAIM,
XACK only after the handler has stored the batch, BUSYGROUP/NOGROUP tolerated
(the group is recreated after a Redis flush), and an orderly stop: the batch
in hand is finished and acked, then the loop returns.

While a full batch is being handled, the next one is already read (a non-blocking
XREADGROUP on the reader connection), so Redis serves the read while the handler
decodes and the two processes overlap. Still ack-after-store: the prefetched entries
are pending until their own batch is stored; after a failure they are dropped and
read again from the pending list ("0") with the batch that failed.

With `depth` > 1, up to `depth` full batches (a backlog) are handled at once: a handler
that splits its work into a Python part and a Redis part (the center: decode and build,
then one store call) builds batch k+1 while Redis runs batch k's store, so the process
and Redis work in parallel instead of taking turns. The handler keeps its own writes in
order; acks may come out of order. Before the pending list is read again, a claim, a
batch that is not full, or a stop, every batch in flight is finished first.

A batch that is not full (no backlog: often one entry) is acked together with the next
read, in one pipeline on the reader connection (XADD of its dead letters, XACK, then
XREADGROUP), instead of in a round trip of its own; Redis runs them in that order, so
a read of the pending list never sees them. Acks still follow the store: a process that
dies before the next read leaves them pending, to be handled again (idempotently).

Errors are sorted where they are caught:
- bad input: the decoder raises BadInput → the entry is dead-lettered (reason,
  JSON path, raw fields) and acked with the batch; the handler may dead-letter
  more (e.g. an unknown recipient) by returning DeadLetters;
- retryable (Redis down): back off, keep the batch pending and read it again;
- a bug in the handler: logged with its traceback; the batch's entries are handled one by
  one, the ones that succeed alone are acked, the others stay pending and are retried
  after a backoff; an entry that keeps failing is dead-lettered after `max_deliveries`
  attempts instead of blocking the group forever.

A handler is a plain coroutine `async def handle(entries: list[Entry[T]]) ->
list[DeadLetter]` that stores the decoded batch idempotently (entries can come
twice: at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError

from vestnik.streams.errors import BadInput
from vestnik.streams.ids import now_ms, parse_stream_id
from vestnik.streams.metrics import CONSUMER_ERRORS, NOTICES_DEAD
from vestnik.streams.redis import RETRYABLE, Backoff
from vestnik.streams.schemas import json_encode

log = logging.getLogger("vestnik.consumer")

T = TypeVar("T")
Fields = dict[bytes, bytes]


@dataclass(slots=True)
class Entry(Generic[T]):
    """One decoded stream entry: its id, the decoded value, the raw fields and the stream it
    was read from (entry ids repeat across streams)."""

    sid: str
    value: T
    raw: Fields
    stream: str = ""


@dataclass(slots=True)
class DeadLetter:
    """Why an entry (or part of it) could not be served; written to the dead-letter stream."""

    sid: str
    reason: str
    field: str | None
    raw: Fields
    kind: str = "invalid"  # metric label: invalid | recipient | failed


Handler = Callable[[list[Entry[T]]], Awaitable[list[DeadLetter]]]
Decoder = Callable[[Fields], T]

# Redis answers that mean "not now" rather than "wrong": retry like a lost connection
TRANSIENT = ("OOM", "BUSY ", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")


def transient(e: ResponseError) -> bool:
    """redis-py maps `OOM ...` and `READONLY ...` to their own classes and strips the code
    from the message, so the prefixes alone miss them. NOSCRIPT: Redis restarted between
    a pipeline's script check and its retry (the script cache is empty); the next try
    loads the scripts again."""
    return (isinstance(e, OutOfMemoryError | ReadOnlyError | NoScriptError)
            or str(e).startswith(TRANSIENT))


def _not_ours(e: Exception) -> Exception:
    """A handler's exception, unless Redis is the trouble: then it is raised for the loop
    (lost or refusing for now: the batch stays pending and is read again; NOGROUP: the
    group is recreated), not counted against the entries."""
    if isinstance(e, RETRYABLE):
        raise e
    if isinstance(e, ResponseError):
        if "NOGROUP" in str(e):
            raise e
        if transient(e):
            raise RedisConnectionError(str(e)) from e
    return e


def _text(v: object) -> str:
    if isinstance(v, bytes):
        return v.decode()
    return "" if v is None else str(v)


async def group_drained(redis: Redis, stream: str, group: str) -> bool:
    """Nothing pending in `group` and the group has been handed `stream`'s newest entry
    (XINFO's `lag` is nil after a restart or a trim, so it cannot tell). False, not an
    error, while Redis is away or the group does not exist yet: callers poll it."""
    try:
        pending = await redis.xpending(stream, group)
        groups = await redis.xinfo_groups(stream)
        newest = await redis.xrevrange(stream, count=1)
    except (*RETRYABLE, ResponseError):
        return False
    mine = next((g for g in groups if _text(g["name"]) == group), None)
    if mine is None or int(pending["pending"]):
        return False
    last = _text(mine["last-delivered-id"])
    return not newest or parse_stream_id(last) >= parse_stream_id(_text(newest[0][0]))


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def raw_json(fields: Fields) -> bytes:
    """The original fields as a JSON object (text fields; bytes that are not UTF-8 replaced)."""
    return json_encode({k.decode(errors="replace"): v.decode(errors="replace")
                        for k, v in fields.items()})


DEAD_RAW_MAX = 4096  # bytes of an entry's fields kept in its dead letter
DEAD_REASON_MAX = 1000


def dead_fields(d: DeadLetter, source: str) -> dict[str, str | bytes]:
    """A dead letter's fields, bounded: a 1 MiB entry must not become a 1 MiB dead letter
    (the stream keeps `dead_maxlen` of them). A cut `raw` (not valid JSON then) comes with
    `truncated: 1` and the whole size."""
    raw = raw_json(d.raw)
    out: dict[str, str | bytes] = {
        "reason": d.reason[:DEAD_REASON_MAX], "field": (d.field or "$")[:DEAD_REASON_MAX],
        "raw": raw, "at": str(now_ms()), "source": source, "entry": d.sid,
    }
    if len(raw) > DEAD_RAW_MAX:  # cut on a character boundary
        out["raw"] = raw[:DEAD_RAW_MAX].decode(errors="ignore").encode()
        out["truncated"] = "1"
        out["size"] = str(len(raw))
    return out


class Consumer(Generic[T]):
    """A member of consumer group `group` on `stream`.

    `redis` is a pooled client for acks and writes; `blocking` is a dedicated
    single-connection client for the blocking XREADGROUP (see streams.redis.reader).
    """

    def __init__(
        self,
        redis: Redis,
        blocking: Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        decode: Decoder[T],
        handle: Handler[T],
        dead_stream: str,
        dead_maxlen: int = 100_000,
        batch: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        claim_every: float | None = None,
        max_deliveries: int = 10,
        trim_every: float = 5.0,
        burst: bool = False,
        depth: int = 1,
    ) -> None:
        self.redis = redis
        self.blocking = blocking
        self.stream = stream
        self.group = group
        self.name = consumer
        self.decode = decode
        self.handle = handle
        self.dead_stream = dead_stream
        self.dead_maxlen = dead_maxlen
        self.batch = batch
        self.block_ms = max(1, min(block_ms, 10_000))  # bounded: stop is noticed in time
        self.claim_idle_ms = claim_idle_ms
        self.claim_every = (claim_idle_ms / 2000) if claim_every is None else claim_every
        self.max_deliveries = max_deliveries
        self.trim_every = trim_every
        self.burst = burst
        self.processed = 0
        self._stopping = False
        self._own_pending = True  # start by re-reading our own pending history ("0")
        self._claim_cursor = "0-0"
        self._last_claim = -1e9
        self._last_trim: float | None = None
        self._failures: dict[str, int] = {}
        self._logged: set[tuple[str, str]] = set()  # failures whose traceback was printed
        self._prefetch: asyncio.Task[list[tuple[bytes, Fields | None]]] | None = None
        self.depth = max(1, depth)
        self._inflight: deque[asyncio.Task[int]] = deque()  # batches handled now, oldest first
        # a batch handled in line is acked (and its dead letters written) with the next read,
        # in one round trip: at one entry per batch that is one round trip in six less
        self._later: tuple[list[str], list[DeadLetter]] = ([], [])

    # lifecycle ----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, ack it and return (within ~block_ms)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s", self.group, self.stream)
        except ResponseError as e:
            if "BUSYGROUP" in str(e):
                return
            # XGROUP CREATE is refused when Redis is full (OOM), even for a group that
            # exists; reading and acking need no memory, so go on if it is there
            if isinstance(e, OutOfMemoryError) and await self._group_exists():
                return
            raise

    async def _group_exists(self) -> bool:
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError:  # no such stream
            return False
        return any(_text(g.get("name")) == self.group for g in groups)

    async def run(self) -> None:
        """Consume until stop() (or, in burst mode, until nothing is left to do)."""
        try:
            await self._run()
            await self._settle()
            await self._finish_prefetch()
            await self._write_acks(*self._take_later())
        finally:
            if self._prefetch is not None:  # cancelled: those entries stay pending
                self._prefetch.cancel()
                self._prefetch = None
            inflight, self._inflight = list(self._inflight), deque()
            for task in inflight:  # cancelled: their entries stay pending
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _run(self) -> None:
        backoff = Backoff(base=0.05, cap=2.0)
        loop = asyncio.get_running_loop()
        group_ok = False
        while not self._stopping:
            try:
                if not group_ok:
                    await self.ensure_group()
                    group_ok = True
                did = 0
                if loop.time() - self._last_claim >= self.claim_every:
                    self._last_claim = loop.time()
                    did += await self._settle()
                    did += await self._claim()
                if self._last_trim is None:
                    self._last_trim = loop.time()
                elif self.trim_every and loop.time() - self._last_trim >= self.trim_every:
                    self._last_trim = loop.time()
                    await self._trim()
                if self._own_pending:
                    did += await self._settle()
                    await self._drop_prefetch()
                    entries = await self._read("0")
                    if not entries:
                        self._own_pending = False
                else:
                    entries = await self._next()
                    if len(entries) >= self.batch:  # a backlog: read on while handling
                        self._prefetch = asyncio.create_task(self._read(">", block=False))
                if entries:
                    did += await self._dispatch(entries)
                backoff.reset()
                if self.burst and not did and not self._own_pending and await self._drained():
                    return
            except RETRYABLE as e:
                await self._settle(quiet=True)
                CONSUMER_ERRORS.labels(self.group, "redis").inc()
                log.warning("consumer %s: Redis unavailable (%s); batch stays pending, retrying",
                            self.name, e)
                self._own_pending = True
                await backoff.wait()
            except ResponseError as e:
                await self._settle(quiet=True)
                if transient(e):
                    CONSUMER_ERRORS.labels(self.group, "redis").inc()
                    log.warning("consumer %s: Redis refused (%s); retrying", self.name, e)
                    self._own_pending = True
                    await backoff.wait()
                    continue
                if "NOGROUP" in str(e) or "UNBLOCKED" in str(e):
                    log.warning("consumer group %s is gone (Redis flushed or restarted without "
                                "data?); recreating it", self.group)
                    group_ok = False
                    self._own_pending = True
                    continue
                raise

    # reading ------------------------------------------------------------------------
    async def _read(self, start: str, *, block: bool = True
                    ) -> list[tuple[bytes, Fields | None]]:
        ms = None if start == "0" or not block else (100 if self.burst else self.block_ms)
        ids, dead = self._take_later()
        if ids or dead:  # acks first: a read of our pending list ("0") must not see them
            try:
                async with self.blocking.pipeline(transaction=False) as pipe:
                    self._ack_commands(pipe, ids, dead)
                    pipe.xreadgroup(self.group, self.name, {self.stream: start},
                                    count=self.batch, block=ms)
                    resp = (await pipe.execute())[-1]
            except BaseException:
                later_ids, later_dead = self._later  # kept for the next read
                self._later = (ids + later_ids, dead + later_dead)
                raise
        else:
            resp = await self.blocking.xreadgroup(self.group, self.name, {self.stream: start},
                                                  count=self.batch, block=ms)
        if not resp:
            return []
        # RESP2: [[stream, entries]]; RESP3: {stream: [entries]}
        if isinstance(resp, dict):
            return next(iter(resp.values()))[0] if resp else []
        return resp[0][1]

    async def _next(self) -> list[tuple[bytes, Fields | None]]:
        """The prefetched batch if there is one with entries, else a blocking read."""
        task, self._prefetch = self._prefetch, None
        if task is not None:
            entries = await task
            if entries:
                return entries
        return await self._read(">")

    async def _drop_prefetch(self) -> None:
        """Before reading the pending list: a prefetched batch is in it, so it is dropped
        (awaited, so the reader connection is free; a failed read is of no interest)."""
        task, self._prefetch = self._prefetch, None
        if task is not None:
            try:
                await task
            except (*RETRYABLE, ResponseError):
                pass

    async def _finish_prefetch(self) -> None:
        """On stop: a batch read ahead is handled and acked too, not left pending to wait
        for a claim by another member."""
        task, self._prefetch = self._prefetch, None
        if task is None:
            return
        try:
            entries = await task
            if entries and not self._own_pending:
                await self._process(entries)
        except (*RETRYABLE, ResponseError) as e:
            log.warning("consumer %s: batch read ahead stays pending (%s)", self.name, e)

    async def _claim(self) -> int:
        """Take over entries other members left pending longer than claim_idle_ms."""
        done = 0
        for _ in range(100):  # bounded: at most 100 pages per claim round
            nxt, entries, deleted = await self.redis.xautoclaim(
                self.stream, self.group, self.name, self.claim_idle_ms,
                start_id=self._claim_cursor, count=self.batch)
            self._claim_cursor = nxt.decode() if isinstance(nxt, bytes) else str(nxt)
            if deleted:  # trimmed while pending: nothing left to serve
                await self.redis.xack(self.stream, self.group, *deleted)
            if entries:
                log.info("consumer %s claimed %d idle entries", self.name, len(entries))
                done += await self._process(entries)
            if self._claim_cursor in ("0-0", "0"):
                break
        return done

    async def _trim(self) -> None:
        """Drop entries every group of the stream has acked: XTRIM MINID ~ the oldest entry
        still pending (or not yet delivered) in any group. Nothing unacked is removed."""
        floor: tuple[int, int] | None = None
        for g in await self.redis.xinfo_groups(self.stream):
            last = _text(g.get("last-delivered-id"))
            cand = last
            if int(g.get("pending") or 0):
                info = await self.redis.xpending(self.stream, _text(g.get("name")))
                cand = _text(info.get("min")) or last
            if not cand:
                return
            key = parse_stream_id(cand)
            floor = key if floor is None else min(floor, key)
        if floor is not None and floor > (0, 0):
            await self.redis.xtrim(self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=True)

    async def _drained(self) -> bool:
        """Burst mode: nothing new for the group and nothing pending anywhere in it."""
        info = await self.redis.xpending(self.stream, self.group)
        pending = info.get("pending", 0) if isinstance(info, dict) else info[0]
        if pending:
            return False
        groups = await self.redis.xinfo_groups(self.stream)
        for g in groups:
            name = g.get("name") or g.get(b"name")
            if isinstance(name, bytes):
                name = name.decode()
            if name == self.group:
                lag = g.get("lag")
                return lag is None or int(lag) == 0
        return True

    # handling -----------------------------------------------------------------------
    async def _dispatch(self, entries: list) -> int:
        """Handle a batch: a full one (a backlog) as a task beside at most depth - 1 others
        (waiting for the oldest first); otherwise, or with depth 1, in line once the batches
        in flight are done (so a later entry is never stored before an earlier one: a task
        created just before has not even started), and while it is handled the next
        entries gather into one read instead of one read per entry (at 1,600 single
        entries a second, concurrency cost 130 us of CPU per entry), acked with the next
        read. Returns the entries of the batches finished."""
        if len(entries) < self.batch:  # no backlog: after the batches in flight, in line
            done = await self._settle()
            return done + await self._process(entries, ack_later=True)
        if self.depth == 1:
            return await self._process(entries)
        done = 0
        while len(self._inflight) >= self.depth:
            done += await self._inflight.popleft()  # its error surfaces here
        self._inflight.append(asyncio.create_task(self._process(entries)))
        return done

    async def _settle(self, *, quiet: bool = False) -> int:
        """Finish every batch in flight; the first error is raised after all are done
        (`quiet`: dropped, when the loop is handling an error already)."""
        done, first = 0, None
        while self._inflight:
            try:
                done += await self._inflight.popleft()
            except Exception as e:
                first = first or e
        if first is not None and not quiet:
            raise first
        return done

    async def _process(self, raw_entries: list, *, ack_later: bool = False) -> int:
        """Decode, handle, then dead-letter and ack in one round trip (`ack_later`: with the
        next read). Returns entries done."""
        entries: list[Entry[T]] = []
        dead: list[DeadLetter] = []
        ids: list[str] = []
        for raw_sid, fields in raw_entries:
            if raw_sid is None:
                continue
            sid = raw_sid.decode() if isinstance(raw_sid, bytes) else raw_sid
            ids.append(sid)
            if not fields:  # deleted from the stream while pending
                continue
            try:
                entries.append(Entry(sid, self.decode(fields), fields, self.stream))
            except BadInput as e:
                dead.append(DeadLetter(sid, e.detail, e.field, fields))
        if entries:
            try:
                dead += await self.handle(entries)
            except Exception as e:
                return await self._failed(entries, _not_ours(e), dead, ids)
        if ack_later:  # done as far as anyone can tell: Redis gets the acks with the next read
            self._later[0].extend(ids)
            self._later[1].extend(dead)
            self._acked(ids, dead)
        else:
            await self._ack(ids, dead)
        return len(ids)

    async def _failed(self, entries: list[Entry[T]], err: Exception, dead: list[DeadLetter],
                      ids: list[str]) -> int:
        """A bug or an unexpected failure: keep the batch pending unless an entry is poison."""
        CONSUMER_ERRORS.labels(self.group, "handler").inc()
        # A Redis error's text holds the whole command (a batch script carries every notice
        # of the batch): cap it, and print each kind of failure's traceback once, or a
        # failure retried every half second fills a disk (it did: 6.7 GB in 10 minutes).
        text = str(err)
        if len(text) > 500:
            text = f"{text[:500]}... ({len(text)} characters)"
        kind = (type(err).__name__, text[:80])
        first = kind not in self._logged
        if first and len(self._logged) < 1000:
            self._logged.add(kind)
        log.error("consumer %s: handler failed on %d entries (handling them one by one): %s: %s",
                  self.name, len(entries), type(err).__name__, text,
                  exc_info=err if first else None)
        if len(self._failures) > 100_000:
            self._failures.clear()
        failing = await self._one_by_one(entries, dead) if len(entries) > 1 else entries
        poison: list[Entry[T]] = []
        for e in failing:
            n = self._failures[e.sid] = self._failures.get(e.sid, 0) + 1
            if n >= self.max_deliveries:
                poison.append(e)
        for e in poison:
            dead.append(DeadLetter(e.sid, f"failed {self.max_deliveries} times: {err!r}", None,
                                   e.raw, kind="failed"))
        stay = {e.sid for e in failing} - {e.sid for e in poison}
        if len(stay) < len(ids):
            await self._ack([i for i in ids if i not in stay], dead)
        if stay:
            self._own_pending = True  # retry soon from our own pending list
            await asyncio.sleep(0.5)
        return len(ids) - len(stay)

    async def _one_by_one(self, entries: list[Entry[T]], dead: list[DeadLetter]
                          ) -> list[Entry[T]]:
        """After a batch failed: handle its entries alone, so that one bad entry does not
        keep (or dead-letter) the others with it. Returns the entries that still fail."""
        failing: list[Entry[T]] = []
        for e in entries:
            try:
                dead += await self.handle([e])
            except Exception as err:
                _not_ours(err)
                failing.append(e)
        return failing

    def _take_later(self) -> tuple[list[str], list[DeadLetter]]:
        later, self._later = self._later, ([], [])
        return later

    async def _ack(self, ids: list[str], dead: list[DeadLetter]) -> None:
        await self._write_acks(ids, dead)
        self._acked(ids, dead)

    async def _write_acks(self, ids: list[str], dead: list[DeadLetter]) -> None:
        if ids or dead:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._ack_commands(pipe, ids, dead)
                await pipe.execute()

    def _ack_commands(self, pipe: Any, ids: list[str], dead: list[DeadLetter]) -> None:
        for d in dead:
            pipe.xadd(self.dead_stream, dead_fields(d, self.group), maxlen=self.dead_maxlen,
                      approximate=True)
        if ids:
            pipe.xack(self.stream, self.group, *ids)

    def _acked(self, ids: list[str], dead: list[DeadLetter]) -> None:
        for d in dead:
            NOTICES_DEAD.labels(d.kind).inc()
            where = d.field or "$"  # a BadInput's reason names its field already
            log.warning("dead-lettered entry %s: %s", d.sid,
                        d.reason if f"(at {where})" in d.reason else f"{d.reason} (at {where})")
        for sid in ids:
            self._failures.pop(sid, None)
        self.processed += len(ids)
