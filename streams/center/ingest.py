"""Notices into the ingest stream (`vn:notices`), as the api's POST and `vestnik send` add
them: the id and time assigned here, an idempotency key honoured, and the XADDs of requests
that arrive together in one pipeline. Resolves of incidents go the same way (an `op
resolve` entry), so the center applies each after the notices sent before it."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from redis.asyncio import Redis

from vestnik.streams import lua
from vestnik.streams.coalesce import Appends
from vestnik.streams.errors import Conflict
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import Keys
from vestnik.streams.metrics import NOTICES_INGESTED
from vestnik.streams.schemas import (
    Notice,
    NoticeIn,
    ResolveIn,
    decoder,
    json_encode,
    notice_fields,
    resolve_fields,
    same_content,
)

IDEMPOTENCY_TTL_S = 86_400

_INGEST = lua.script("center/ingest.lua")  # one notice, idempotent

_notice_decoder = decoder(Notice)


def prepare(notice: NoticeIn) -> NoticeIn:
    """Assign the id (ULID) and created_at at ingest when the sender gave none."""
    at = now_ms()
    return msgspec.structs.replace(notice, id=notice.id or ulid(at),
                                   created_at=notice.created_at or at)


class Ingest:
    """One per process (the api's `Ctx`, `vestnik send`): its Redis and the shared
    `Appends`, whose `replication` (VESTNIK_REDIS_WAIT_REPLICAS) every ingest write awaits
    before it is answered."""

    def __init__(self, redis: Redis, keys: Keys, appends: Appends | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.appends = appends or Appends(redis)

    async def send(self, notice: NoticeIn, *, via: str,
                   idempotency_key: str | None = None) -> str:
        """Add one notice; returns its id. With `idempotency_key`, the same key returns the
        first id and adds nothing (for IDEMPOTENCY_TTL_S seconds; other content under it
        raises Conflict). A caller-chosen id whose
        notice is stored already: the same content adds nothing (a retry), other content
        raises Conflict (409)."""
        own_id = notice.id is not None
        sent, notice = notice, prepare(notice)
        assert notice.id is not None
        fields = notice_fields(notice)
        if idempotency_key is None and not own_id:
            await self.appends.xadd(self.keys.notices, fields, durable=True)
            NOTICES_INGESTED.labels(via).inc()
            return notice.id
        # the key keeps a digest of what was sent under it: the same key with other content
        # is a 409, not the first notice's id for a notice that is then never sent
        digest = "" if idempotency_key is None else \
            hashlib.blake2b(json_encode(sent), digest_size=8).hexdigest()
        argv: list[str | bytes | int] = [IDEMPOTENCY_TTL_S,
                                         f"{notice.id} {digest}" if digest else notice.id]
        for k, v in fields.items():
            argv += [k, v]
        idem = self.keys.idempotency(idempotency_key) if idempotency_key is not None else ""
        kind, got = await self._replicated(
            keys=[self.keys.notices, idem, self.keys.notice(notice.id) if own_id else ""],
            args=argv)
        if kind == 2:
            if not same_content(notice, _notice_decoder.decode(got)):
                raise Conflict(f"notice id {notice.id} already exists with other content",
                               field="$.id")
            return notice.id
        nid, _, used = (got.decode() if isinstance(got, bytes) else str(got)).partition(" ")
        if kind == 1 and used and used != digest:
            raise Conflict(f"Idempotency-Key was used for other content (notice {nid})",
                           field="Idempotency-Key")
        if kind == 0:
            NOTICES_INGESTED.labels(via).inc()
        return nid

    async def resolve(self, resolve: ResolveIn) -> str:
        """Add the resolve of an incident (`at` now when the sender gave none); returns its
        stream id. Coalesced with the notices sent in the same loop iteration."""
        if resolve.at is None:
            resolve = msgspec.structs.replace(resolve, at=now_ms())
        sid = await self.appends.xadd(self.keys.notices, resolve_fields(resolve), durable=True)
        return sid.decode() if isinstance(sid, bytes) else str(sid)

    async def _replicated(self, keys: list[str], args: list[str | bytes | int]) -> Any:
        """The ingest script's answer, after the replicas `appends.replication` asks for
        have its write (its WAIT in the same round trip). A retry under the same key or id
        waits again, so what it answers is replicated too."""
        wait = self.appends.replication
        if wait is None:
            return await _INGEST(keys=keys, args=args, client=self.redis)
        async with self.redis.pipeline(transaction=False) as pipe:
            await _INGEST(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
            answer, acked = await pipe.execute()
        wait.check(acked)
        return answer
