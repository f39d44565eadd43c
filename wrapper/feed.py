"""The notify watcher: settings and topic events → the alert's stdin.

Snapshot first, consistently, then tail live from where the snapshot stands:

- settings: the tip id of topic `settings` is read first, then the `vn:settings`
  hash, then the stream is tailed from that tip. A change made in between is both in
  the hash and in the tail; the settings message is the whole list, so a repeat is
  harmless.
- entities: `vn:state:<t>` and `vn:state:<t>:pos` are read in one MULTI and the topic
  is tailed from that position. When no materializer has written the state yet (no
  api running), the topic stream is read from the start to build it.

One XREAD BLOCK (bounded) over every stream on one dedicated connection.

When the alert reads slowly the mailbox fills and this watcher waits; if meanwhile a
topic stream was trimmed past its position (`MAXLEN ~`), the events in between are
gone from the stream, so the topic is re-sent from its materialized state instead
(every current entity, coalesced like any update).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from vestnik.streams.errors import BadInput
from vestnik.streams.ids import parse_stream_id
from vestnik.streams.keys import SETTINGS_TOPIC, Keys
from vestnik.streams.redis import RETRYABLE, Backoff, reader
from vestnik.streams.schemas import (
    AlertSetting,
    TopicEvent,
    convert,
    decode_topic_entry,
    decoder,
)
from vestnik.wrapper.config import AlertConfig
from vestnik.wrapper.metrics import COALESCED, PENDING
from vestnik.wrapper.protocol import PROTOCOL, Entity, Hello, Ready, SettingsMessage
from vestnik.wrapper.stdin_queue import StdinQueue

log = logging.getLogger("vestnik.wrapper")

_entity_decode = msgspec.json.Decoder(dict[str, Any]).decode
_setting_decode = decoder(AlertSetting).decode
_encode = msgspec.json.Encoder().encode

PAGE = 1000


class SettingsView:
    """The settings with this alert's name, kept current by the notify watcher and read by
    the alert watcher to enrich notices."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.all: dict[str, AlertSetting] = {}
        self.enabled: list[AlertSetting] = []
        self.by_id: dict[str, AlertSetting] = {}
        self.loaded = asyncio.Event()
        self._sent: bytes | None = None

    def replace(self, settings: list[AlertSetting]) -> None:
        self.all = {s.id: s for s in settings if s.name == self.name}
        self._refresh()

    def apply(self, sid: str, setting: AlertSetting | None) -> None:
        if setting is None or setting.name != self.name:
            self.all.pop(sid, None)
        else:
            self.all[sid] = setting
        self._refresh()

    def _refresh(self) -> None:
        self.enabled = sorted((s for s in self.all.values() if s.enabled), key=lambda s: s.id)
        self.by_id = {s.id: s for s in self.enabled}

    def changed(self) -> bool:
        """True (once) when the enabled list differs from the one last sent to the alert."""
        current = _encode(self.enabled)
        if current == self._sent:
            return False
        self._sent = current
        return True


class Feed:
    def __init__(self, cfg: AlertConfig, redis: Redis, keys: Keys, view: SettingsView,
                 mailbox: StdinQueue, version: str, *, block_ms: int = 1000) -> None:
        self.cfg = cfg
        self.redis = redis
        self.keys = keys
        self.view = view
        self.mailbox = mailbox
        self.version = version
        self.block_ms = block_ms
        self.settings_key = keys.topic(SETTINGS_TOPIC)
        self.positions: dict[str, str] = {}
        self.topic_of: dict[str, str] = {}
        self._coalesced_seen = 0
        self._waits_seen = 0

    async def run(self) -> None:
        await self.snapshot()
        await self.tail()

    # snapshot ---------------------------------------------------------------------
    async def snapshot(self) -> None:
        name = self.cfg.name
        tip = await self._tip(self.settings_key)
        raw = await self.redis.hgetall(self.keys.settings)
        settings = []
        for sid, value in raw.items():
            try:
                settings.append(_setting_decode(value))
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                log.warning("%s: setting %s in %s skipped: %s", name, sid.decode(errors="replace"),
                            self.keys.settings, e)
        self.view.replace(settings)
        self.view.changed()
        self.view.loaded.set()
        self.positions[self.settings_key] = tip
        mb = self.mailbox
        await mb.put(Hello(protocol=PROTOCOL, alert=name, version=self.version))
        await mb.put(SettingsMessage(items=self.view.enabled), ("s",))
        for topic in self.cfg.topics:
            key = self.keys.topic(topic)
            self.topic_of[key] = topic
            entities, pos = await self._entities(topic)
            self.positions[key] = pos
            for eid in sorted(entities):
                await mb.put(Entity(topic=topic, op="update", id=eid, data=entities[eid]),
                             ("e", topic, eid))
            log.info("%s: snapshot of topic %s: %d entities at %s", name, topic,
                     len(entities), pos)
        await mb.put(Ready())
        log.info("%s: snapshot sent (%d enabled settings); following live", name,
                 len(self.view.enabled))

    async def _tip(self, key: str) -> str:
        last = await self.redis.xrevrange(key, count=1)
        return last[0][0].decode() if last else "0-0"

    async def _entities(self, topic: str) -> tuple[dict[str, dict[str, Any]], str]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.state(topic))
            pipe.get(self.keys.state_pos(topic))
            state, pos = await pipe.execute()
        if pos is not None:
            items = {}
            for eid, value in state.items():
                try:
                    items[eid.decode()] = _entity_decode(value)
                except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                    log.warning("%s: entity %r of %s is not a JSON object; skipped",
                                self.cfg.name, eid, topic)
            return items, pos.decode()
        # no materialized state yet: build it from the stream itself
        items, after = {}, "-"
        key = self.keys.topic(topic)
        last = "0-0"
        while True:
            entries = await self.redis.xrange(key, min=after, count=PAGE)
            for sid, fields in entries:
                ev = self._decode(topic, sid, fields)
                if ev is None:
                    continue
                if ev.op == "delete":
                    items.pop(ev.id, None)
                elif ev.data is not None:
                    items[ev.id] = ev.data
            if len(entries) < PAGE:
                if entries:
                    last = entries[-1][0].decode()
                return items, last
            last = entries[-1][0].decode()
            after = f"({last}"

    def _decode(self, topic: str, sid: bytes, fields: dict[bytes, bytes]) -> TopicEvent | None:
        try:
            return decode_topic_entry(fields)
        except BadInput as e:
            log.warning("%s: topic %s entry %s skipped: %s", self.cfg.name, topic,
                        sid.decode(), e.detail)
            return None

    # live ---------------------------------------------------------------------------
    async def tail(self) -> None:
        backoff = Backoff()
        conn: Redis | None = None
        try:
            while True:
                # held up by a slow alert since the last read: was a stream trimmed past
                # the last entry we handled? (a resend may hold us up again: loop)
                while self.mailbox.waits != self._waits_seen:
                    self._waits_seen = self.mailbox.waits
                    await self._check_gaps()
                try:
                    if conn is None:
                        conn = reader(self.cfg.redis_url or "",
                                      name=f"vestnik-wrap-{self.cfg.name}",
                                      timeout=self.cfg.redis_timeout or 2.0,
                                      block=self.block_ms / 1000)
                    resp = await conn.xread(self.positions, count=PAGE, block=self.block_ms)
                    backoff.reset()
                except RETRYABLE as e:
                    log.warning("%s: lost Redis while following (%s); reconnecting",
                                self.cfg.name, e)
                    if conn is not None:
                        await _close(conn)
                    conn = None
                    await backoff.wait()
                    continue
                except ResponseError as e:
                    if "UNBLOCKED" in str(e):
                        continue
                    raise
                for raw_key, entries in resp or ():
                    key = raw_key.decode()
                    if key == self.settings_key:
                        await self._settings_events(entries)
                    else:
                        await self._entity_events(self.topic_of[key], entries)
                    self.positions[key] = entries[-1][0].decode()
                self._report()
        finally:
            if conn is not None:
                await _close(conn)

    async def _entity_events(self, topic: str, entries: list) -> None:
        put = self.mailbox.put
        for sid, fields in entries:
            ev = self._decode(topic, sid, fields)
            if ev is not None:
                await put(Entity(topic=topic, op=ev.op, id=ev.id, data=ev.data),
                          ("e", topic, ev.id))

    async def _settings_events(self, entries: list) -> None:
        for sid, fields in entries:
            ev = self._decode(SETTINGS_TOPIC, sid, fields)
            if ev is None:
                continue
            setting: AlertSetting | None = None
            if ev.op != "delete":
                data = ev.data
                if data is None:  # a thin event: the hash has the setting
                    raw = await self.redis.hget(self.keys.settings, ev.id)
                    data = _entity_decode(raw) if raw else None
                if data is not None:
                    try:
                        setting = convert(data, AlertSetting)
                    except BadInput as e:
                        log.warning("%s: setting %s skipped: %s", self.cfg.name, ev.id, e.detail)
                        continue
            self.view.apply(ev.id, setting)
        if self.view.changed():
            log.info("%s: settings changed: %d enabled", self.cfg.name, len(self.view.enabled))
            await self.mailbox.put(SettingsMessage(items=self.view.enabled), ("s",))

    async def _check_gaps(self) -> None:
        """After a wait: was a topic trimmed past our position? (Its first entry is newer
        than the last one we read. Redis 7.0 does not record trims in XINFO's
        max-deleted-entry-id, so the first entry is the evidence; when the trim stopped
        exactly at our position, the resend below is merely redundant.)"""
        for key, topic in self.topic_of.items():
            first = await self.redis.xrange(key, count=1)
            if not first:
                continue
            if parse_stream_id(first[0][0].decode()) <= parse_stream_id(self.positions[key]):
                continue
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.keys.state(topic))
                pipe.get(self.keys.state_pos(topic))
                state, pos = await pipe.execute()
            if pos is None:
                log.error("%s: topic %s was trimmed past %s while the alert was slow and "
                          "there is no materialized state to resend: events may be lost",
                          self.cfg.name, topic, self.positions[key])
                continue
            log.warning("%s: topic %s was trimmed past %s while the alert was slow; "
                        "resending its %d entities from the state at %s", self.cfg.name, topic,
                        self.positions[key], len(state), pos.decode())
            for eid, value in sorted(state.items()):
                try:
                    data = _entity_decode(value)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                await self.mailbox.put(Entity(topic=topic, op="update", id=eid.decode(),
                                              data=data), ("e", topic, eid.decode()))
            if parse_stream_id(pos.decode()) > parse_stream_id(self.positions[key]):
                self.positions[key] = pos.decode()

    def _report(self) -> None:
        mb = self.mailbox
        if mb.coalesced != self._coalesced_seen:
            COALESCED.labels(self.cfg.name).inc(mb.coalesced - self._coalesced_seen)
            self._coalesced_seen = mb.coalesced
        PENDING.labels(self.cfg.name).set(len(mb))


async def _close(conn: Redis) -> None:
    try:
        await conn.aclose()
    except RETRYABLE:
        pass
