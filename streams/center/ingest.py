"""Notices into the ingest stream (`vn:notices`, or the partition `Keys.ingest_partition`
picks), as the api's POST and `vestnik send` add them: the id and time assigned here, an
idempotency key honoured, and the XADDs of requests that arrive together in one pipeline.
Resolves of incidents go the same way (an `op resolve` entry, in the partition of its
dedup key, as the notices it resolves), so the center applies each after the notices sent
before it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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

# one notice, idempotent; the sync client (vestnik.client) runs the same file
INGEST_SCRIPT_PATH = "center/ingest.lua"
INGEST_SCRIPT = lua.script(INGEST_SCRIPT_PATH)

_notice_decoder = decoder(Notice)


def prepare(notice: NoticeIn) -> NoticeIn:
    """Assign the id (ULID) and created_at at ingest when the sender gave none."""
    at = now_ms()
    return msgspec.structs.replace(notice, id=notice.id or ulid(at),
                                   created_at=notice.created_at or at)


def resolve_stream(resolve: ResolveIn, keys: Keys) -> str:
    """The ingest stream of a resolve: its incident's (`Keys.ingest_partition`)."""
    return keys.ingest_stream(keys.ingest_partition(resolve.alert, resolve.dedup_key))


def resolve_entry(resolve: ResolveIn) -> dict[str, str]:
    """The `vn:notices` fields of a resolve, `at` now when the sender gave none."""
    if resolve.at is None:
        resolve = msgspec.structs.replace(resolve, at=now_ms())
    return resolve_fields(resolve)


@dataclass(frozen=True)
class IngestCall:
    """What adding one notice takes, without the I/O: the api's `Ingest` and the sync
    client (vestnik.client, redis-py's blocking client) run it, so both honour an
    idempotency key and a caller's own id alike. `script_keys` None: a plain XADD of
    `fields`; else ingest.lua with `script_keys` and `script_args`, its answer read by
    `outcome`."""

    nid: str
    stream: str  # the ingest partition it goes to (Keys.ingest_partition)
    fields: dict[str, str | bytes]
    notice: NoticeIn  # with its id and time (compared with a stored notice of its id)
    digest: str
    script_keys: list[str] | None
    script_args: list[str | bytes | int]

    @classmethod
    def of(cls, notice: NoticeIn, keys: Keys, idempotency_key: str | None) -> IngestCall:
        own_id = notice.id is not None
        sent, notice = notice, prepare(notice)
        assert notice.id is not None
        fields = notice_fields(notice)
        part = keys.ingest_partition(notice.alert, notice.dedup_key, idempotency_key)
        stream = keys.ingest_stream(part)
        if idempotency_key is None and not own_id:
            return cls(notice.id, stream, fields, notice, "", None, [])
        # the key keeps a digest of what was sent under it: the same key with other content
        # is a 409, not the first notice's id for a notice that is then never sent
        digest = "" if idempotency_key is None else \
            hashlib.blake2b(json_encode(sent), digest_size=8).hexdigest()
        argv: list[str | bytes | int] = [IDEMPOTENCY_TTL_S,
                                         f"{notice.id} {digest}" if digest else notice.id]
        for k, v in fields.items():
            argv += [k, v]
        # on a cluster an unused KEY is the stream's name (every KEY in its slot) and the
        # body of an own id, in another slot, is looked up before (`Ingest.send`)
        unused = stream if keys.cluster else ""
        idem = keys.idempotency(idempotency_key, part) if idempotency_key is not None \
            else unused
        body = keys.notice(notice.id) if own_id and not keys.cluster else unused
        script_keys = [stream, idem, body]
        return cls(notice.id, stream, fields, notice, digest, script_keys, argv)

    def outcome(self, kind: int, got: bytes | str) -> str:
        """The notice's id from ingest.lua's answer; Conflict when the id or the key was
        used for other content."""
        if kind == 2:
            if not same_content(self.notice, _notice_decoder.decode(got)):
                raise Conflict(f"notice id {self.nid} already exists with other content",
                               field="$.id")
            return self.nid
        nid, _, used = (got.decode() if isinstance(got, bytes) else str(got)).partition(" ")
        if kind == 1 and used and used != self.digest:
            raise Conflict(f"Idempotency-Key was used for other content (notice {nid})",
                           field="Idempotency-Key")
        return nid


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
        call = IngestCall.of(notice, self.keys, idempotency_key)
        if call.script_keys is None:
            await self.appends.xadd(call.stream, call.fields, durable=True)
            NOTICES_INGESTED.labels(via).inc()
            return call.nid
        if self.keys.cluster and notice.id is not None:  # the script cannot read the body
            stored = await self.redis.get(self.keys.notice(call.nid))
            if stored is not None:
                return call.outcome(2, stored)
        kind, got = await self._replicated(keys=call.script_keys, args=call.script_args)
        if kind == 0:
            NOTICES_INGESTED.labels(via).inc()
        return call.outcome(kind, got)

    async def resolve(self, resolve: ResolveIn) -> str:
        """Add the resolve of an incident (`at` now when the sender gave none); returns its
        stream id. Coalesced with the notices sent in the same loop iteration."""
        sid = await self.appends.xadd(resolve_stream(resolve, self.keys), resolve_entry(resolve),
                                      durable=True)
        return sid.decode() if isinstance(sid, bytes) else str(sid)

    async def _replicated(self, keys: list[str], args: list[str | bytes | int]) -> Any:
        """The ingest script's answer, after the replicas `appends.replication` asks for
        have its write (its WAIT in the same round trip). A retry under the same key or id
        waits again, so what it answers is replicated too."""
        wait = self.appends.replication
        if wait is None:
            return await INGEST_SCRIPT(keys=keys, args=args, client=self.redis)
        async with self.redis.pipeline(transaction=False) as pipe:
            await INGEST_SCRIPT(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
            answer, acked = await pipe.execute()
        wait.check(acked)
        return answer
