"""A user's snoozes (`POST/GET/DELETE /api/v1/me/snooze`): hold the user's external
forwards of one alert, or of all (`*`), until a time. Stored as `streams.snoozes` reads
them (one JSON string per user, expiring at its latest until); each write is a compare
and set (snooze.lua), so two tabs changing snoozes at once lose nothing.

Whoever forwards holds a snoozed notice's forward until the snooze ends
(`User.snooze`, filled in by `center.users`, and the forward job's own read).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from redis.asyncio import Redis

from vestnik.streams import lua, snoozes
from vestnik.streams.errors import BadInput, Conflict
from vestnik.streams.ids import now_ms
from vestnik.streams.keys import Keys
from vestnik.streams.schemas import SnoozeIn, SnoozeList

CAS_ATTEMPTS = 20
_WRITE = lua.script("center/snooze.lua")


class Snoozes:
    """The snoozes of any user, by id (the caller decides whose: the api, the token's)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def get(self, uid: str) -> SnoozeList:
        return SnoozeList(snoozes.decode_value(await self.redis.get(self.keys.snooze(uid))))

    async def add(self, uid: str, body: SnoozeIn) -> SnoozeList:
        """Snooze `body.alert` (absent: every alert, `*`) until `body.until`: replaces
        that alert's snooze, longer or shorter."""
        now = now_ms()
        if body.until <= now:
            raise BadInput("`until` must be in the future (ms since the epoch)", field="$.until")
        if body.until > now + snoozes.MAX_AHEAD_MS:
            raise BadInput(f"`until` may be at most {snoozes.MAX_AHEAD_MS // snoozes.DAY_MS} days "
                           "ahead", field="$.until")
        alert = body.alert or snoozes.ALL

        def change(items: dict[str, int]) -> dict[str, int]:
            if alert not in items and len(items) >= snoozes.MAX_ENTRIES:
                raise BadInput(f"at most {snoozes.MAX_ENTRIES} alerts can be snoozed at "
                               "once: end some first, or snooze every alert", field="$.alert")
            return {**items, alert: body.until}

        return await self._write(uid, change)

    async def end(self, uid: str, alert: str | None) -> SnoozeList:
        """End the snooze of `alert` (None: every snooze of the user)."""
        if alert is None:
            return await self._write(uid, lambda items: {})
        return await self._write(uid, lambda items: {a: t for a, t in items.items()
                                                     if a != alert})

    async def _write(self, uid: str, change: Callable[[dict[str, int]], dict[str, int]]
                     ) -> SnoozeList:
        """Read, change (dropping ended entries), compare and set; again when another
        write came between."""
        key = self.keys.snooze(uid)
        for _ in range(CAS_ATTEMPTS):
            raw = await self.redis.get(key)
            items = change(snoozes.decode_value(raw))
            value = snoozes.encode(items) if items else b""
            last = max(items.values(), default=0)
            was = hashlib.sha1(raw).hexdigest() if raw is not None else ""
            if await _WRITE(keys=[key], args=[was, value, last], client=self.redis):
                return SnoozeList(items)
        raise Conflict("the snoozes keep changing; try again")
