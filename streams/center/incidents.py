"""Incidents: a notice with a `dedup_key` is `firing` until it is resolved, by a resolve entry
on `vn:notices` (`op resolve`: a product, `POST /notices/resolve`, a wrapper's `resolve`
line) or by its setting's `resolve_after` seconds without a repeat (`Keys.incidents_due`).

Resolving one:
1. its claim `vn:dedup:<scope>` names it (a resolve entry reads the claims of its scopes;
   the timer's member names the notice and its scope);
2. its body is read, set `status: resolved` and `resolved_at`, and written back by a
   compare-and-set that keeps the TTL (resolve_body.lua): a repeat folded in meanwhile makes
   it decide again from the new body, at most RESOLVE_TRIES times;
3. in one pipeline: the claim is deleted if it still names the notice (take_claim.lua: a
   repeat that came meanwhile may have opened a new incident under it), so the key's next
   notice opens a new incident; its `incidents_due` member is dropped; a `notice-update`
   goes to each recipient's live channel (the unread count does not change: no feed is
   touched) and, when its setting has `send_resolved`, the `resolved` forward jobs are
   scheduled.
The claim goes last, so a resolve handled again after a failure (the consumer retries the
entry) still finds the incident: resolved already, it only takes the claim then. An
unknown or already resolved incident is a no-op (counted, logged at debug). A silenced
notice is resolved quietly (no push, no message), as it fired.

The timer's members are msgpack `[notice id, scope]` scored by the ms they fall due; the
center's batch writes them (`due_members`, ZADD GT: a late repeat never moves one back) and
`resolve_due` takes the due ones with a lease (pop_due.lua), so several centers share the
work and a center that dies leaves them to the next pass. A member is checked against the
body before it resolves anything: a repeat folded after it was taken puts it back in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from vestnik.streams import lua
from vestnik.streams.center.plan import Plan
from vestnik.streams.center.store import publish_update
from vestnik.streams.forward import add_forward_jobs, resolved_jobs
from vestnik.streams.ids import now_ms
from vestnik.streams.keys import Keys, dedup_scope
from vestnik.streams.metrics import INCIDENTS_RESOLVED
from vestnik.streams.redis import RETRYABLE
from vestnik.streams.schemas import AlertSetting, Notice, ResolveIn, decoder, json_encode

log = logging.getLogger("vestnik.center.incidents")

RESOLVE_TRIES = 3  # compare-and-set rounds against repeats folded in concurrently
DUE_BATCH = 1000  # timer members taken per pass
DUE_LEASE_MS = 60_000  # a taken member comes back after this, should its center die
DUE_POLL_S = 1.0  # between passes of the timer while nothing more is due

_RESOLVE_BODY = lua.script("center/resolve_body.lua")
_TAKE_CLAIM = lua.script("center/take_claim.lua")
_POP_DUE = lua.script("center/pop_due.lua")

_pack = msgspec.msgpack.Encoder().encode
_unpack_member = msgspec.msgpack.Decoder(tuple[str, str]).decode
_notice_decoder = decoder(Notice)
_setting_decoder = decoder(AlertSetting)


def due_member(nid: str, scope: str) -> bytes:
    """The `incidents_due` member of notice `nid`, whose claim is `vn:dedup:<scope>`."""
    return _pack([nid, scope])


def resolve_after(settings: Iterable[AlertSetting]) -> float | None:
    """Seconds without a repeat after which an incident of these settings resolves by
    itself: the least `resolve_after` among them, None when none has one."""
    afters = [s.resolve_after for s in settings if s.resolve_after]
    return min(afters) if afters else None


def due_members(plans: Iterable[Plan]) -> dict[bytes, int]:
    """The timer members a stored batch sets (member -> due ms): each incident stored or
    folded into whose settings have `resolve_after`, due that long after this notice."""
    out: dict[bytes, int] = {}
    for p in plans:
        n = p.notice
        if n.status != "firing" or (p.fold_into is None and not p.users):
            continue  # not an incident, or stored nowhere (every recipient muted it)
        after = resolve_after(p.settings)
        if after is not None:
            member = due_member(p.fold_into or n.id, p.dedup_claim)
            out[member] = max(out.get(member, 0), n.created_at + int(after * 1000))
    return out


@dataclass(slots=True)
class _Target:
    """An incident to resolve: notice `nid` whose claim is `scope`, at `at` ms. `timer`:
    from `resolve_after` (due again checked against the body and the settings)."""

    nid: str
    scope: str
    at: int
    timer: bool
    raw: bytes | None = None  # its body as last read
    notice: Notice | None = None  # decoded from it (None: gone or unreadable)

    def read(self, raw: bytes | None) -> None:
        self.raw, self.notice = raw, None
        if raw is not None:
            try:
                self.notice = _notice_decoder.decode(raw)
            except msgspec.DecodeError as e:
                log.error("unreadable body of notice %s (%s): not resolved", self.nid, e,
                          extra={"notice_id": self.nid})


@dataclass(slots=True)
class _Done:
    target: _Target
    notice: Notice  # as resolved
    body: bytes


class Incidents:
    """Resolves incidents for the center (`resolve`) and its timer (`resolve_due`)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def add_due(self, due: dict[bytes, int]) -> None:
        """Set (or move later) the timer of incidents stored or folded into."""
        if due:
            await self.redis.zadd(self.keys.incidents_due, due, gt=True)

    # resolve entries -------------------------------------------------------------------
    async def resolve(self, entries: Sequence[ResolveIn]) -> int:
        """Apply resolve entries (in stream order, after every notice before them is
        stored); returns how many incidents they resolved."""
        now = now_ms()
        unscoped = sorted({r.alert for r in entries if r.setting_id is None})
        ids_of: dict[str, list[str]] = {}
        if unscoped:
            async with self.redis.pipeline(transaction=False) as pipe:
                for alert in unscoped:
                    pipe.zrange(self.keys.settings_by_name(alert), 0, -1)
                res = await pipe.execute()
            ids_of = {a: [i.decode() for i in ids] for a, ids in zip(unscoped, res, strict=True)}
        scopes: dict[str, int] = {}  # scope -> resolved_at, in order
        per_entry: list[list[str]] = []
        for r in entries:
            named = [r.setting_id] if r.setting_id is not None else [None, *ids_of[r.alert]]
            mine = [dedup_scope(r.alert, sid, r.dedup_key) for sid in named]
            for scope in mine:
                scopes.setdefault(scope, r.at or now)
            per_entry.append(mine)
        async with self.redis.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.get(self.keys.dedup(scope))
            claims = await pipe.execute()
        targets = [_Target(nid.decode(), scope, at, False)
                   for (scope, at), nid in zip(scopes.items(), claims, strict=True)
                   if nid is not None]
        found = {t.scope for t in targets}
        if unknown := sum(1 for mine in per_entry if found.isdisjoint(mine)):
            INCIDENTS_RESOLVED.labels("entry", "noop").inc(unknown)
            log.debug("%d resolves of keys without a firing incident", unknown)
        return await self._apply(targets, "entry", now) if targets else 0

    # resolve_after ---------------------------------------------------------------------
    async def resolve_due(self, now: int | None = None) -> tuple[int, int]:
        """One pass of the timer: take up to DUE_BATCH due members and resolve what is
        still due. Returns (incidents resolved, members taken)."""
        now = now or now_ms()
        raw = await _POP_DUE(keys=[self.keys.incidents_due],
                             args=[now, DUE_BATCH, DUE_LEASE_MS], client=self.redis)
        targets: list[_Target] = []
        bad: list[bytes] = []
        for member, score in zip(raw[::2], raw[1::2], strict=True):
            try:
                nid, scope = _unpack_member(member)
            except msgspec.DecodeError:
                bad.append(member)  # not ours to read: dropped, not retried forever
                continue
            targets.append(_Target(nid, scope, int(float(score)), True))
        if bad:
            log.error("dropped %d unreadable members of %s", len(bad),
                      self.keys.incidents_due)
            await self.redis.zrem(self.keys.incidents_due, *bad)
        done = await self._apply(targets, "timer", now) if targets else 0
        return done, len(raw) // 2

    async def run_timer(self) -> None:
        """The center's `resolve_after` loop: a pass a second (at once again after a full
        one), until cancelled. Redis trouble or a bug is logged once until a pass succeeds
        again (not once a second), and the loop goes on."""
        failing = False
        while True:
            taken = 0
            try:
                _, taken = await self.resolve_due()
                if failing:
                    log.info("resolve_after timer: passes succeed again")
                failing = False
            except (*RETRYABLE, ResponseError) as e:
                if not failing:
                    log.warning("resolve_after timer: Redis unavailable (%s); retrying", e)
                failing = True
            except Exception:
                if not failing:
                    log.exception("resolve_after timer pass failed; retrying")
                failing = True
            if taken < DUE_BATCH:
                await asyncio.sleep(DUE_POLL_S)

    # the resolve itself ------------------------------------------------------------------
    async def _apply(self, targets: list[_Target], via: str, now: int) -> int:
        todo = list({t.nid: t for t in targets}.values())  # a notice once
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in todo:
                pipe.get(self.keys.notice(t.nid))
            for t, raw in zip(todo, await pipe.execute(), strict=True):
                t.read(raw)
        settings = await self._settings_of([t.notice for t in todo if t.notice is not None])
        done: list[_Done] = []
        noop: list[_Target] = []
        release: list[_Target] = []  # no-ops whose claim goes too: resolved already, gone
        later: dict[bytes, int] = {}  # timer members not due after all (a repeat came)
        for _ in range(RESOLVE_TRIES):
            writes: list[tuple[_Target, Notice, bytes]] = []
            for t in todo:
                notice = t.notice
                if notice is None or notice.status == "resolved" or not notice.dedup_key:
                    noop.append(t)
                    if t.raw is None or notice is not None:  # not an unreadable one
                        release.append(t)
                    continue
                at = max(t.at, notice.created_at)
                if t.timer:
                    after = resolve_after(settings.get(notice.id, ()))
                    if after is None:  # the setting no longer says resolve_after
                        noop.append(t)
                        continue
                    at = max(notice.created_at, notice.last_seen) + int(after * 1000)
                    if at > now:
                        later[due_member(t.nid, t.scope)] = at
                        continue
                resolved = msgspec.structs.replace(notice, status="resolved", resolved_at=at)
                writes.append((t, resolved, json_encode(resolved)))
            if not writes:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for t, _, body in writes:
                    assert t.raw is not None
                    await _RESOLVE_BODY(keys=[self.keys.notice(t.nid)],
                                        args=[hashlib.sha1(t.raw).hexdigest(), body],
                                        client=pipe)
                res = await pipe.execute()
            todo = []
            for (t, notice, body), r in zip(writes, res, strict=True):
                if r == 1:
                    done.append(_Done(t, notice, body))
                elif isinstance(r, bytes):  # changed meanwhile: decide again
                    t.read(r)
                    todo.append(t)
                else:  # gone
                    t.read(None)
                    noop.append(t)
                    release.append(t)
            if not todo:
                break
        else:
            log.warning("%d incidents changed %d times while being resolved; left firing",
                        len(todo), RESOLVE_TRIES)
        await self._after(done, noop, release, later, settings)
        INCIDENTS_RESOLVED.labels(via, "resolved").inc(len(done))
        if noop:
            INCIDENTS_RESOLVED.labels(via, "noop").inc(len(noop))
            log.debug("resolve (%s) of %d unknown or resolved incidents: %s", via, len(noop),
                      ", ".join(t.nid for t in noop[:10]))
        return len(done)

    async def _after(self, done: list[_Done], noop: list[_Target], release: list[_Target],
                     later: dict[bytes, int], settings: dict[str, list[AlertSetting]]
                     ) -> None:
        """One pipeline: timers dropped or moved, claims taken, the live updates and the
        `resolved` forward jobs."""
        if not (done or noop or later):
            return
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            gone = [due_member(t.nid, t.scope) for t in (*(d.target for d in done), *noop)]
            if gone:
                pipe.zrem(k.incidents_due, *gone)
            if later:
                pipe.zadd(k.incidents_due, later)
            for t in (*(d.target for d in done), *release):
                await _TAKE_CLAIM(keys=[k.dedup(t.scope)], args=[t.nid], client=pipe)
            for d in done:
                if d.notice.silenced:  # stored quietly: it ends quietly
                    continue
                publish_update(pipe, k, d.body, d.notice.recipients)
                if any(s.send_resolved for s in settings.get(d.notice.id, ())):
                    add_forward_jobs(pipe, k, resolved_jobs(d.notice))
            await pipe.execute()

    async def _settings_of(self, notices: list[Notice]) -> dict[str, list[AlertSetting]]:
        """Each notice's settings (by notice id): the one it names, else the enabled
        settings of its alert. Two round trips at most."""
        if not notices:
            return {}
        named = sorted({n.setting_id for n in notices if n.setting_id})
        alerts = sorted({n.alert for n in notices if not n.setting_id})
        async with self.redis.pipeline(transaction=False) as pipe:
            if named:
                pipe.hmget(self.keys.settings, named)
            for alert in alerts:
                pipe.zrange(self.keys.settings_by_name(alert), 0, -1)
            res: list[Any] = await pipe.execute()
        found: dict[str, AlertSetting] = {}
        if named:
            self._decode_settings(named, res.pop(0), found)
        by_alert = {a: [i.decode() for i in ids] for a, ids in zip(alerts, res, strict=True)}
        more = sorted({i for ids in by_alert.values() for i in ids} - found.keys())
        if more:
            self._decode_settings(more, await self.redis.hmget(self.keys.settings, more),
                                  found)
        out: dict[str, list[AlertSetting]] = {}
        for n in notices:
            if n.setting_id:
                s = found.get(n.setting_id)
                out[n.id] = [s] if s is not None else []
            else:
                out[n.id] = [s for i in by_alert[n.alert]
                             if (s := found.get(i)) is not None and s.enabled]
        return out

    @staticmethod
    def _decode_settings(ids: list[str], raws: list[bytes | None],
                         found: dict[str, AlertSetting]) -> None:
        for sid, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            try:
                found[sid] = _setting_decoder.decode(raw)
            except msgspec.DecodeError as e:  # not the record: it holds secrets
                log.error("unreadable alert setting %s (%s) skipped", sid, e)
