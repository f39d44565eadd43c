"""Notices into the ingest stream (`vn:notices`), as the api's POST and `vestnik send` add
them: the id and time assigned here, an idempotency key honoured, and the XADDs of requests
that arrive together in one pipeline."""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .ids import now_ms, ulid
from .keys import Keys
from .metrics import NOTICES_INGESTED
from .schemas import NoticeIn, notice_fields
from .together import Appends

IDEMPOTENCY_TTL_S = 86_400

# KEYS: idempotency key, notices stream. ARGV: ttl, notice id, then field/value pairs.
# The key and the entry are written together, so a failure never leaves a key that
# points to a notice that was not added.
_INGEST = AsyncScript(None, b"""
local prev = redis.call('GET', KEYS[1])
if prev then return prev end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
return ARGV[2]
""")


def prepare(notice: NoticeIn) -> NoticeIn:
    """Assign the id (ULID) and created_at at ingest when the sender gave none."""
    at = now_ms()
    return msgspec.structs.replace(notice, id=notice.id or ulid(at),
                                   created_at=notice.created_at or at)


class Ingest:
    """One per process (the api's `Ctx`, `vestnik send`): its Redis and the shared
    `Appends`."""

    def __init__(self, redis: Redis, keys: Keys, appends: Appends | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.appends = appends or Appends(redis)

    async def send(self, notice: NoticeIn, *, via: str,
                   idempotency_key: str | None = None) -> str:
        """Add one notice; returns its id. With `idempotency_key`, the same key returns the
        first id and adds nothing (for IDEMPOTENCY_TTL_S seconds)."""
        notice = prepare(notice)
        assert notice.id is not None
        fields = notice_fields(notice)
        if idempotency_key is None:
            await self.appends.xadd(self.keys.notices, fields)
            NOTICES_INGESTED.labels(via).inc()
            return notice.id
        argv: list[str | bytes | int] = [IDEMPOTENCY_TTL_S, notice.id]
        for k, v in fields.items():
            argv += [k, v]
        got = await _INGEST(keys=[self.keys.idempotency(idempotency_key), self.keys.notices],
                            args=argv, client=self.redis)
        nid = got.decode() if isinstance(got, bytes) else str(got)
        if nid == notice.id:
            NOTICES_INGESTED.labels(via).inc()
        return nid
