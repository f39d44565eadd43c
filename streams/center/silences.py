"""Admin silences, as Alertmanager has them: while a silence is active (`starts_at` <= now <
`ends_at`) a notice whose alert, entity topic, entity id and severity equal every matcher
it gives is stored (marked `silenced`, it is history) but neither pushed live nor
forwarded.

- `SilenceStore`: create, list, get and expire (`/api/v1/silences`). Every write is one
  compare and set on `Keys.silences_version` (silences.lua) that also bumps it and deletes
  the silences that ended more than `KEEP_ENDED_MS` ago: the hash stays bounded
  (`MAX_SILENCES`) without a sweeper.
- `SilenceMatcher`: the center's decoded copy, read again only when the version changed
  (its GET rides in a round trip the batch makes anyway), and the marking of a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from redis.asyncio import Redis

from vestnik.streams import lua
from vestnik.streams.errors import BadInput, Conflict, NotFound
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import Keys
from vestnik.streams.metrics import NOTICES_SILENCED
from vestnik.streams.schemas import (
    Notice,
    Silence,
    SilenceIn,
    SilenceList,
    SilenceMatchers,
    SilenceState,
    decoder,
    json_encode,
)

log = logging.getLogger("vestnik.silences")

DAY_MS = 86_400 * 1000
MAX_SILENCES = 1000  # stored at once, expired ones included (a create past it: 422)
KEEP_ENDED_MS = 7 * DAY_MS  # an ended silence is listed this long, then pruned
MAX_AHEAD_MS = 365 * DAY_MS  # a silence ends (and starts) at most a year from now
CAS_ATTEMPTS = 20
MAX_ID = 64  # a longer id names no silence (ULIDs are 26)

_decode = decoder(Silence).decode
_WRITE = lua.script("center/silences.lua")


def state_of(s: Silence, now: int) -> SilenceState:
    if now >= s.ends_at:
        return "expired"
    return "pending" if now < s.starts_at else "active"


def matches(m: SilenceMatchers, n: Notice) -> bool:
    """Every matcher given equals the notice's field (a silence with none matches nothing:
    the API refuses one, and a hand-written one must not silence everything)."""
    if m.alert is None and m.entity_topic is None and m.entity_id is None \
            and m.severity is None:
        return False
    if m.alert is not None and m.alert != n.alert:
        return False
    if m.severity is not None and m.severity != n.severity:
        return False
    if m.entity_topic is not None and (n.entity is None or n.entity.topic != m.entity_topic):
        return False
    return m.entity_id is None or (n.entity is not None and n.entity.id == m.entity_id)


def _decoded(raw: dict[bytes, bytes]) -> dict[str, Silence]:
    out: dict[str, Silence] = {}
    for sid, value in raw.items():
        try:
            out[sid.decode()] = _decode(value)
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            log.error("unreadable silence %r skipped (%s)", sid[:MAX_ID], e)
    return out


class SilenceStore:
    """The silences' CRUD (the api's `/api/v1/silences`)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def create(self, body: SilenceIn) -> Silence:
        now = now_ms()
        starts = now if body.starts_at is None else body.starts_at
        if starts < 0 or starts > now + MAX_AHEAD_MS:
            raise BadInput("`starts_at` must be ms since the epoch, at most a year ahead",
                           field="$.starts_at")
        if body.ends_at <= starts:
            raise BadInput("`ends_at` must be after `starts_at`", field="$.ends_at")
        if body.ends_at <= now:
            raise BadInput("`ends_at` must be in the future", field="$.ends_at")
        if body.ends_at > now + MAX_AHEAD_MS:
            raise BadInput("`ends_at` may be at most a year ahead", field="$.ends_at")
        if not any(msgspec.structs.astuple(body.matchers)):
            raise BadInput("give at least one matcher (alert, entity_topic, entity_id, "
                           "severity)", field="$.matchers")
        silence = Silence(id=ulid(now), matchers=body.matchers, starts_at=starts,
                          ends_at=body.ends_at, comment=body.comment,
                          created_by=body.created_by, created_at=now)

        def check(kept: int) -> None:
            if kept >= MAX_SILENCES:
                raise BadInput(f"at most {MAX_SILENCES} silences are kept (expired ones for "
                               f"{KEEP_ENDED_MS // DAY_MS} days): expire fewer, or wait",
                               field="$")

        await self._write(silence, check)
        return _with_state(silence, now)

    async def list(self) -> SilenceList:
        now = now_ms()
        items = [_with_state(s, now) for s in
                 _decoded(await self.redis.hgetall(self.keys.silences)).values()]
        order = {"active": 0, "pending": 1, "expired": 2}
        items.sort(key=lambda s: (order[s.state or "expired"],
                                  s.ends_at if s.state == "active" else
                                  s.starts_at if s.state == "pending" else -s.ends_at, s.id))
        return SilenceList(items)

    async def get(self, sid: str) -> Silence:
        raw = await self.redis.hget(self.keys.silences, sid) if len(sid) <= MAX_ID else None
        if raw is None:
            raise NotFound(f"no silence `{sid[:MAX_ID]}`")
        return _with_state(_decode(raw), now_ms())

    async def expire(self, sid: str) -> Silence:
        """End silence `sid` now (a pending one never starts); one that ended already is
        returned as it is."""
        for _ in range(CAS_ATTEMPTS):
            s = await self.get(sid)
            now = now_ms()
            if s.ends_at <= now:
                return s
            ended = msgspec.structs.replace(s, ends_at=now, starts_at=min(s.starts_at, now),
                                            state=None)
            if await self._write_once(ended, None, now):
                return _with_state(ended, now)
        raise Conflict("the silences keep changing; try again")

    async def _write(self, silence: Silence, check: Callable[[int], None]) -> None:
        for _ in range(CAS_ATTEMPTS):
            if await self._write_once(silence, check, now_ms()):
                return
        raise Conflict("the silences keep changing; try again")

    async def _write_once(self, silence: Silence, check: Callable[[int], None] | None,
                          now: int) -> bool:
        """Read the silences and the version in one transaction, prune what ended long ago,
        and write `silence` if the version is still the one read. `check(kept)` may refuse
        a new one (how many stay once pruned)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.silences_version)
            pipe.hgetall(self.keys.silences)
            version, raw = await pipe.execute()
        stored = _decoded(raw)
        old = [sid for sid, s in stored.items()
               if s.ends_at < now - KEEP_ENDED_MS and sid != silence.id]
        if check is not None:
            check(len(raw) - len(old))
        value = json_encode(msgspec.structs.replace(silence, state=None))
        return bool(await _WRITE(keys=[self.keys.silences, self.keys.silences_version],
                                 args=[version or b"", now, silence.id, value, *old],
                                 client=self.redis))


def _with_state(s: Silence, now: int) -> Silence:
    return msgspec.structs.replace(s, state=state_of(s, now))


class SilenceMatcher:
    """The center's copy of the silences, decoded once per change of the version."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._version: bytes | None = None
        self._silences: list[Silence] = []

    def read(self, pipe: Any) -> int:
        """Queue the read of the version on a batch's pipeline; returns its replies (1)."""
        pipe.get(self.keys.silences_version)
        return 1

    async def refresh(self, version: bytes | None) -> None:
        """Read the silences again when the version read (`read`) is not the one held (no
        version: none were ever written, or Redis was emptied)."""
        if version == self._version:
            return
        raw = await self.redis.hgetall(self.keys.silences) if version is not None else {}
        self._silences = list(_decoded(raw).values())
        self._version = version

    def mark(self, notices: Iterable[Notice], now: int | None = None) -> int:
        """Set `silenced` on each notice an active silence matches; returns how many."""
        if not self._silences:
            return 0
        at = now_ms() if now is None else now
        active = [s.matchers for s in self._silences if s.starts_at <= at < s.ends_at]
        if not active:
            return 0
        n = 0
        for notice in notices:
            if any(matches(m, notice) for m in active):
                notice.silenced = True
                n += 1
        NOTICES_SILENCED.inc(n)
        return n
