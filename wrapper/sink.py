"""The alert watcher: the alert's stdout → validated, enriched notices in `vn:notices`.

stdout is read in chunks and split by `LineSplitter`, so an oversized line is never
held whole. Each line is decoded once into a protocol Struct; a bad one is logged
with its line number, counted and dead-lettered, and reading goes on. Everything a
chunk produced goes to Redis in one pipeline: XADDs to the ingest stream and the
dead-letter stream, DELs for `resolve`. Each notice gets its ULID here, so a
pipeline retried after a dropped connection cannot make a second copy in any feed.
This path waits only on Redis, never on the stdin side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from redis.asyncio import Redis

from streams.ids import now_ms, ulid
from streams.keys import Keys
from streams.redis import RETRYABLE, Backoff
from streams.schemas import AlertSetting, NoticeIn, notice_fields

from .config import AlertConfig
from .feed import SettingsView
from .lines import LineSplitter, Oversized
from .metrics import ALERT_ERRORS, BAD_LINES, LINES_IN, NOTICES
from .protocol import AlertHello, Error, Heartbeat, Notice, Resolve, decode_line

log = logging.getLogger("vestnik.wrapper")

CHUNK = 256 * 1024
DEAD_MAXLEN = 100_000
RAW_SAMPLE = 1024


def scoped_dedup(alert: str, setting_id: str | None, key: str) -> str:
    """The dedup key as sent: scoped by alert and setting, so two settings (or two
    alerts) using the same key never swallow each other's notices."""
    return f"{alert}:{setting_id}:{key}" if setting_id else f"{alert}:{key}"


class Sink:
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
        self._ops: list[tuple[str, Any]] = []
        self._lines = LINES_IN.labels(self.name, "notice")
        self._notices = NOTICES.labels(self.name)

    def silent_for(self) -> float:
        return time.monotonic() - self.last_output if self.reading else 0.0

    async def run(self, stdout: asyncio.StreamReader) -> None:
        """Until EOF on the alert's stdout."""
        while True:
            self.reading = True
            chunk = await stdout.read(CHUNK)
            self.reading = False
            self.last_output = time.monotonic()
            lines = self.splitter.feed(chunk) if chunk else self.splitter.end()
            for lineno, line in lines:
                await self._line(lineno, line)
            if self._ops:
                await self._flush()
            if not chunk:
                return

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
            return self._bad(lineno, "invalid", str(e), line)
        except msgspec.DecodeError as e:
            return self._bad(lineno, "not_json", str(e), line)
        match msg:
            case Notice():
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
                keys = [scoped_dedup(self.name, s.id, key) for s in self.view.enabled]
                keys.append(scoped_dedup(self.name, None, key))
                for k in keys:
                    self._ops.append(("del", self.keys.dedup(k)))
            case Error(message=message):
                LINES_IN.labels(self.name, "error").inc()
                ALERT_ERRORS.labels(self.name).inc()
                log.error("%s: alert reports (line %d): %s", self.name, lineno, message[:2000])
        return None

    def _notice(self, lineno: int, n: Notice, raw: bytes) -> None:
        view = self.view
        if n.setting_id is not None:
            setting = view.by_id.get(n.setting_id)
            if setting is None:
                return self._bad(lineno, "unknown_setting",
                                 f"setting_id {n.setting_id!r} is not an enabled setting of "
                                 f"alert {self.name!r}", raw)
            targets: list[AlertSetting | None] = [setting]
        elif view.enabled:
            targets = list(view.enabled)
        elif n.recipients:
            targets = [None]
        else:
            return self._bad(lineno, "no_setting",
                             f"no enabled setting named {self.name!r} and no recipients", raw)
        created = now_ms()
        for s in targets:
            notice = NoticeIn(
                alert=self.name, title=n.title, severity=n.severity, body=n.body,
                id=ulid(created), link=n.link, entity=n.entity, data=n.data,
                recipients=n.recipients, forward_after=n.forward_after, created_at=created,
                setting_id=s.id if s else None,
                metric=s.metric if s else {},
                channels=s.channel if s else {},
                dedup_key=(scoped_dedup(self.name, s.id if s else None, n.dedup_key)
                           if n.dedup_key else None),
            )
            self._ops.append(("xadd", notice_fields(notice)))
        return None

    def _bad(self, lineno: int, reason: str, detail: str, raw: bytes, size: int | None = None
             ) -> None:
        self.bad += 1
        BAD_LINES.labels(self.name, reason).inc()
        sample = raw[:RAW_SAMPLE]
        log.warning("%s: stdout line %d rejected (%s): %s; line starts %r", self.name, lineno,
                    reason, detail, sample[:120])
        self._ops.append(("dead", {
            "reason": f"{reason}: {detail}", "raw": sample, "source": f"wrapper:{self.name}",
            "line": str(lineno), "size": str(len(raw) if size is None else size),
            "at": str(now_ms()),
        }))

    # redis ------------------------------------------------------------------------------
    async def _flush(self) -> None:
        ops, self._ops = self._ops, []
        notices_key, dead_key = self.keys.notices, self.keys.notices_dead
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for kind, arg in ops:
                        if kind == "xadd":
                            pipe.xadd(notices_key, arg)
                        elif kind == "dead":
                            pipe.xadd(dead_key, arg, maxlen=DEAD_MAXLEN, approximate=True)
                        else:
                            pipe.delete(arg)
                    await pipe.execute()
                break
            except RETRYABLE as e:
                # at-least-once: the same ids go again, the center keeps one copy
                log.warning("%s: cannot write %d notices to Redis (%s); retrying",
                            self.name, len(ops), e)
                await backoff.wait()
        sent = sum(1 for kind, _ in ops if kind == "xadd")
        self.notices += sent
        self._notices.inc(sent)
