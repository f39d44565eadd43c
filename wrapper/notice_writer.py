"""The alert watcher: the alert's stdout → validated, enriched notices in `vn:notices` (or
the partition `Keys.ingest_partition` picks: VESTNIK_INGEST_PARTITIONS).

stdout is read in chunks and split by `LineSplitter`, so an oversized line is never
held whole. Each line is decoded once into a protocol Struct; a bad one is logged
with its line number, counted and dead-lettered, and reading goes on. Everything a
chunk produced goes to Redis in one pipeline (on a cluster one per partition's node):
XADDs to the ingest streams (a `resolve` is an
`op resolve` entry there too, so the center applies it after the notices before it) and the
dead-letter stream. Each notice gets its ULID here, so a pipeline retried after a dropped
connection cannot make a second copy in any feed.
This path waits only on Redis, never on the stdin side.

Speed (`vestnik bench --only B4`): the commands are packed into RESP here, a batch per
chunk, and written by a second task while the next chunk is parsed; redis-py's
per-argument packing of a ten-field XADD costs more than everything else together.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, ReadOnlyError

from vestnik.streams.coalesce import Replication
from vestnik.streams.errors import NotReplicated, from_validation
from vestnik.streams.ids import now_ms
from vestnik.streams.keys import Keys
from vestnik.streams.metrics import NOTICES_DEAD
from vestnik.streams.redis import RETRYABLE, Backoff
from vestnik.streams.redis import pool as redis_pool
from vestnik.streams.schemas import (
    NO_CHANNELS,
    AlertSetting,
    NoticeIn,
    ResolveIn,
    notice_fields,
    resolve_fields,
)
from vestnik.wrapper.config import AlertConfig
from vestnik.wrapper.feed import SettingsView
from vestnik.wrapper.lines import LineSplitter, Oversized
from vestnik.wrapper.metrics import ALERT_ERRORS, BAD_LINES, LINES_IN, NOTICES
from vestnik.wrapper.protocol import (
    AlertHello,
    Error,
    Heartbeat,
    NoticeMessage,
    Resolve,
    decode_line,
)

log = logging.getLogger("vestnik.wrapper")

CHUNK = 256 * 1024
DEAD_MAXLEN = 100_000
RAW_SAMPLE = 1024
PENDING_BATCHES = 2

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> 2 characters
_random = random.Random(os.urandom(16)).getrandbits
_time_part: tuple[int, str] = (-1, "")


def fast_ulid(ms: int) -> str:
    """A ULID like streams.ids.ulid (48 bits of ms, 80 random bits, Crockford base32) at a
    quarter of the cost: the time part is reused within a millisecond, the random part
    is encoded 10 bits at a time."""
    global _time_part
    if _time_part[0] != ms:
        _time_part = (ms, "".join(_PAIRS[(ms >> s) & 1023] for s in range(40, -1, -10)))
    r = _random(80)
    p = _PAIRS
    return (_time_part[1] + p[r >> 70] + p[(r >> 60) & 1023] + p[(r >> 50) & 1023]
            + p[(r >> 40) & 1023] + p[(r >> 30) & 1023] + p[(r >> 20) & 1023]
            + p[(r >> 10) & 1023] + p[r & 1023])


def _bulk(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(*args: str | bytes) -> bytes:
    """One Redis command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


class Batch:
    """What one chunk of stdout produced: the packed commands of each ingest partition
    (its stream's XADDs; partition 0's also the dead letters, in its slot)."""

    __slots__ = ("count", "notices", "parts")

    def __init__(self, partitions: int = 1) -> None:
        self.parts: list[list[bytes]] = [[] for _ in range(partitions)]
        self.count = 0
        self.notices = 0

    def add(self, command: bytes, notice: bool = False, partition: int = 0) -> None:
        self.parts[partition].append(command)
        self.count += 1
        self.notices += notice


class NoticeWriter:
    def __init__(self, cfg: AlertConfig, redis: Redis, keys: Keys, view: SettingsView) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.redis = redis
        self.keys = keys
        self.view = view
        self.splitter = LineSplitter(cfg.max_line)
        self.heartbeat: float | None = None
        self.last_output = time.monotonic()
        self.reading = False  # waiting on the alert (not on Redis): silence is the alert's
        self.notices = 0
        self.bad = 0
        self._partitions = keys.ingest_partitions
        self._batch = Batch(self._partitions)
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(PENDING_BATCHES)
        self._lines = LINES_IN.labels(self.name, "notice")
        self._notices = NOTICES.labels(self.name)
        # each partition's XADD without the `*N` count
        self._xadd_heads = [pack("XADD", stream, "*")[4:] for stream in keys.ingest_streams]
        self._dead_head = pack("XADD", keys.notices_dead, "MAXLEN", "~", str(DEAD_MAXLEN),
                               "*")[4:]
        # a batch is written once its WAIT says enough replicas have it (or it goes again)
        self._replication = Replication.of(cfg.redis_wait_replicas or 0,
                                           cfg.redis_timeout or 2.0)
        self._wait = (b"" if self._replication is None else
                      pack("WAIT", str(self._replication.replicas),
                           str(self._replication.timeout_ms)))

    def silent_for(self) -> float:
        return time.monotonic() - self.last_output if self.reading else 0.0

    async def run(self, stdout: asyncio.StreamReader) -> None:
        """Until EOF on the alert's stdout (and everything read is in Redis)."""
        writer = asyncio.create_task(self._writer(), name=f"{self.name}-notices")
        try:
            while True:
                self.reading = True
                chunk = await stdout.read(CHUNK)
                self.reading = False
                self.last_output = time.monotonic()
                lines = self.splitter.feed(chunk) if chunk else self.splitter.end()
                for lineno, line in lines:
                    await self._line(lineno, line)
                if self._batch.count:
                    batch, self._batch = self._batch, Batch(self._partitions)
                    await self._hand_over(batch, writer)
                if not chunk:
                    await self._hand_over(None, writer)
                    await writer
                    return
        finally:
            writer.cancel()

    async def _hand_over(self, batch: Batch | None, writer: asyncio.Task[None]) -> None:
        """Queue a batch for the writer; a failed writer fails us instead of hanging."""
        if not self._queue.full():
            self._queue.put_nowait(batch)
            return
        put = asyncio.ensure_future(self._queue.put(batch))
        await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            writer.result()
            raise RuntimeError("notice writer ended")

    # one line -------------------------------------------------------------------------
    async def _line(self, lineno: int, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            return self._bad(lineno, "too_long",
                             f"line of {line.size} bytes is over max_line {self.cfg.max_line}",
                             line.sample, line.size)
        if not line.strip():
            return None
        try:
            msg = decode_line(line)
        except msgspec.ValidationError as e:
            err = from_validation(e)  # names a missing field by its own path ($.title)
            return self._bad(lineno, "invalid", err.detail, line, field=err.field or "$")
        except msgspec.DecodeError as e:
            return self._bad(lineno, "not_json", str(e), line)
        match msg:
            case NoticeMessage():
                self._lines.inc()
                if not self.view.loaded.is_set():
                    await self.view.loaded.wait()
                self._notice(lineno, msg, line)
            case Heartbeat():
                LINES_IN.labels(self.name, "heartbeat").inc()
            case AlertHello(heartbeat=hb):
                LINES_IN.labels(self.name, "hello").inc()
                if lineno != 1:
                    log.warning("%s: line %d: hello after the first line", self.name, lineno)
                self.heartbeat = hb
                if hb:
                    log.info("%s: heartbeat every %.3gs announced", self.name, hb)
            case Resolve(dedup_key=key):
                LINES_IN.labels(self.name, "resolve").inc()
                # no setting_id: the center resolves the key in every setting's scope (and
                # in none), as each notice line went to every setting
                fields = resolve_fields(ResolveIn(alert=self.name, dedup_key=key,
                                                  at=now_ms()))
                p = self.keys.ingest_partition(self.name, key)  # its notices' partition
                self._batch.add(pack("XADD", self.keys.ingest_stream(p), "*",
                                     *(x for kv in fields.items() for x in kv)), partition=p)
            case Error(message=message):
                LINES_IN.labels(self.name, "error").inc()
                ALERT_ERRORS.labels(self.name).inc()
                log.error("%s: alert reports (line %d): %s", self.name, lineno, message[:2000])
        return None

    def _notice(self, lineno: int, n: NoticeMessage, raw: bytes) -> None:
        view = self.view
        if n.setting_id is not None:
            setting = view.by_id.get(n.setting_id)
            if setting is None:
                return self._bad(lineno, "unknown_setting",
                                 f"setting_id {n.setting_id!r} is not an enabled setting of "
                                 f"alert {self.name!r}", raw, field="$.setting_id")
            targets: list[AlertSetting | None] = [setting]
        elif view.enabled:
            targets = list(view.enabled)
        elif n.recipients:
            targets = [None]
        else:
            return self._bad(lineno, "no_setting",
                             f"no enabled setting named {self.name!r} and no recipients", raw,
                             field="$.recipients")
        created = now_ms()
        # the same partition for every setting's entry
        p = self.keys.ingest_partition(self.name, n.dedup_key) if self._partitions > 1 else 0
        head, add = self._xadd_heads[p], self._batch.add
        for s in targets:
            notice = NoticeIn(
                alert=self.name, title=n.title, severity=n.severity, body=n.body,
                id=fast_ulid(created), link=n.link, entity=n.entity, data=n.data,
                recipients=n.recipients, forward_after=n.forward_after, created_at=created,
                setting_id=s.id if s else None,
                metric=s.metric if s else {},
                channels=s.channel if s else NO_CHANNELS,
                dedup_key=n.dedup_key,  # scoped by the center (streams.keys.dedup_scope)
            )
            fields = notice_fields(notice)
            add(b"*%d\r\n" % (3 + 2 * len(fields)) + head
                + b"".join([_bulk(k) + _bulk(v) for k, v in fields.items()]), True, p)
        return None

    def _bad(self, lineno: int, reason: str, detail: str, raw: bytes, size: int | None = None,
             *, field: str | None = None) -> None:
        self.bad += 1
        BAD_LINES.labels(self.name, reason).inc()
        NOTICES_DEAD.labels(reason).inc()  # every dead letter of vn:notices:dead, by reason
        sample = raw[:RAW_SAMPLE]
        log.warning("%s: stdout line %d rejected (%s): %s; line starts %r", self.name, lineno,
                    reason, detail, sample[:120])
        fields = {
            "reason": f"{reason}: {detail}", "field": field or "$", "raw": sample,
            "source": f"wrapper:{self.name}",
            "line": str(lineno), "size": str(len(raw) if size is None else size),
            "at": str(now_ms()),
        }
        self._batch.add(b"*%d\r\n" % (6 + 2 * len(fields)) + self._dead_head
                        + b"".join([_bulk(k) + _bulk(v) for k, v in fields.items()]))

    # redis ------------------------------------------------------------------------------
    async def _writer(self) -> None:
        if not self.keys.cluster:
            pool = self.redis.connection_pool
            while (batch := await self._queue.get()) is not None:
                # one payload for every partition: one connection, one WAIT covers them
                commands = batch.parts[0] if self._partitions == 1 else \
                    [c for part in batch.parts for c in part]
                await self._send(pool, commands, batch.notices)
                self._done(batch)
            return None
        # a cluster: each partition's XADDs go to the master of its stream's slot (the
        # dead letters' stream shares partition 0's), each with its WAIT
        pools: dict[int, Any] = {}
        try:
            while (batch := await self._queue.get()) is not None:
                for p, commands in enumerate(batch.parts):
                    if not commands:
                        continue
                    pool = pools.get(p)
                    if pool is None:
                        pool = pools[p] = redis_pool(
                            self.cfg.redis_url or "", name=f"vestnik-wrap-{self.name}",
                            timeout=self.cfg.redis_timeout or 2.0,
                            slot_of=self.keys.ingest_stream(p))
                    await self._send(pool, commands, batch.notices)
                self._done(batch)
            return None
        finally:
            for pool in pools.values():
                await pool.disconnect()

    def _done(self, batch: Batch) -> None:
        self.notices += batch.notices
        self._notices.inc(batch.notices)

    async def _send(self, pool: Any, commands: list[bytes], notices: int) -> None:
        """`commands` on one connection of `pool` (and the WAIT), until they are written."""
        payload = b"".join(commands) + self._wait
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:  # connecting to a frozen Redis times out too: the same retry
                conn = await pool.get_connection("XADD")
            except RETRYABLE as e:
                log.warning("%s: cannot write %d notices to Redis (%s); retrying",
                            self.name, notices, e)
                await backoff.wait()
                continue
            try:
                await conn.send_packed_command(payload)
                for _ in range(len(commands)):
                    await conn.read_response()
                if self._replication is not None:
                    self._replication.check(await conn.read_response())
                return
            except (*RETRYABLE, OutOfMemoryError, ReadOnlyError, NotReplicated) as e:
                # at-least-once: the same notice ids go again, the center keeps one copy.
                # A full Redis (OOM) or a read-only replica is not the notices' fault:
                # keep them and retry too (read_response raised on the first error
                # reply; the rest of the batch's replies go with the connection)
                await conn.disconnect()
                log.warning("%s: cannot write %d notices to Redis (%s); retrying",
                            self.name, notices, e)
                await backoff.wait()
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
