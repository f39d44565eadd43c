"""The notice center's batch handler: admit, load the settings, resolve recipients and
channels, load the users and the dedup claims, and hand the plans to the store — a few
pipelined round trips per batch, never one per notice.

Round trips of one batch:
1. settings named by `setting_id` (HGET) or by alert name (ZRANGE of the name index);
2. settings found by name (HMGET), when any;
3. the users (the `user` topic since the last batch, the records and their snoozes:
   `users.Users`), the bodies under the senders' own ids, the dedup claims (SET NX GET EX)
   and the silences' version (`silences.SilenceMatcher`: the silences themselves are read
   again only when it changed);
4. the store (`store.Store`): on a single Redis the whole batch in one call, with its
   forward jobs; more calls for a broadcast's later recipients, and a `notice-update`
   when dedup repeats were folded.

An entry without `id` gets one derived from its stream id (a ULID with the entry's
time and a hash of the id), so a re-delivery derives the same id: exactly one copy.

A notice with a `dedup_key` is an incident (`status: firing`); after the store, a batch
whose incidents have a `resolve_after` sets their timers (one pipeline more, only then).
Resolve entries (`op resolve`, rare) split a batch: its runs of notices and of resolves
apply in stream order, the resolves after every earlier notice is stored (this batch's and
the batches stored concurrently), and no later batch loads in between
(`streams.center.incidents`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import nullcontext
from itertools import groupby

import msgspec
from redis.asyncio import Redis

from vestnik.streams.center.incidents import Incidents, due_members
from vestnik.streams.center.plan import (
    Plan,
    merge_channels,
    to_notice,
)
from vestnik.streams.center.silences import SilenceMatcher
from vestnik.streams.center.store import Store
from vestnik.streams.center.users import Users
from vestnik.streams.config import Config
from vestnik.streams.consumer import DeadLetter, Entry
from vestnik.streams.errors import VestnikError
from vestnik.streams.forward import ForwardWorker
from vestnik.streams.keys import Keys
from vestnik.streams.metrics import CENTER_BATCH
from vestnik.streams.schemas import (
    AlertSetting,
    Notice,
    NoticeIn,
    ResolveIn,
    User,
    check_recipients,
    decoder,
    same_content,
)

log = logging.getLogger("vestnik.center")

_setting_decoder = decoder(AlertSetting)
_notice_decoder = decoder(Notice)


class Center:
    """`handle` is the consumer's handler for the `center` group of `vn:notices`."""

    def __init__(self, redis: Redis, keys: Keys, settings: Config,
                 inline: ForwardWorker | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.store = Store(redis, keys, settings, inline)
        self.users = Users(redis, keys, settings)
        self.silences = SilenceMatcher(redis, keys)
        # own ids of batches loaded but not stored yet (the next batch loads while one
        # stores): a body not in Redis yet is still "other content" for a later entry
        self._unstored: dict[str, NoticeIn] = {}
        # batches may be handled concurrently (Consumer depth > 1): their reads, and their
        # stores, stay in arrival order (a dedup repeat folds into a notice stored before
        # it), while one batch is built in Python as the previous one is stored by Redis
        self._loading = asyncio.Lock()
        self._storing = asyncio.Lock()
        self.incidents = Incidents(redis, keys)
        # batches loaded and not stored yet (each one's future, set when it is done): a
        # resolve waits for them, so it never overtakes a notice sent before it
        self._unfinished: set[asyncio.Future[None]] = set()

    async def aclose(self) -> None:
        """The hydrator's HTTP client (thin `user` events from an HTTP source)."""
        await self.users.aclose()

    async def handle(self, entries: list[Entry[NoticeIn | ResolveIn]]) -> list[DeadLetter]:
        with CENTER_BATCH.time():
            for e in entries:
                if type(e.value) is ResolveIn:
                    return await self._handle_in_order(entries)
            return await self._handle(entries)  # notices only: the path as fast as before

    async def _handle(self, entries: list[Entry[NoticeIn]], *, locked: bool = False
                      ) -> list[DeadLetter]:
        """A run of notices (`locked`: the caller holds the load lock)."""
        dead: list[DeadLetter] = []
        plans = every = [Plan(e, to_notice(e, self.keys.notices))
                         for e in self._admit(entries, dead)]
        done = asyncio.get_running_loop().create_future()
        try:
            async with nullcontext() if locked else self._loading:
                self._unfinished.add(done)  # under the lock: a resolve waits for it
                await self._load_settings(plans)
                plans = self._resolve(plans, dead)
                plans = await self._load_users_and_dedup(plans, dead)
                self.silences.mark(p.notice for p in plans)
            # let the next batch send its reads now, so they are answered while this one is
            # built, rather than queued behind this one's store in Redis
            await asyncio.sleep(0)
            write = await self.store.build(plans)
            if write is not None:
                async with self._storing:
                    await self.store.send(write)
                await self.incidents.add_due(due_members(plans))  # resolve_after timers
        finally:
            for p in every:  # the own ids this batch registered (`_conflicts`): stored now
                if self._unstored.get(p.notice.id) is p.entry.value:
                    del self._unstored[p.notice.id]
            self._unfinished.discard(done)
            done.set_result(None)
        return dead

    async def _handle_in_order(self, entries: list[Entry[NoticeIn | ResolveIn]]
                               ) -> list[DeadLetter]:
        """A batch with resolve entries: its runs of notices and of resolves one after the
        other, holding the load lock throughout (no later batch reads a claim between them),
        each run of resolves once every batch before it is stored."""
        dead: list[DeadLetter] = []
        async with self._loading:
            for resolves, run in groupby(entries, key=lambda e: type(e.value) is ResolveIn):
                if not resolves:
                    dead += await self._handle(list(run), locked=True)
                    continue
                if self._unfinished:
                    await asyncio.wait(list(self._unfinished))
                await self.incidents.resolve([e.value for e in run])
        return dead

    def _admit(self, entries: list[Entry[NoticeIn]], dead: list[DeadLetter]
               ) -> list[Entry[NoticeIn]]:
        """The entries within the limits that need the settings (one dead letter each for
        the others, not one per recipient)."""
        ok: list[Entry[NoticeIn]] = []
        for e in entries:
            try:
                check_recipients(e.value, self.settings.max_recipients)
            except VestnikError as err:
                dead.append(DeadLetter(e.sid, err.detail, err.field, e.raw))
                continue
            ok.append(e)
        return ok

    # 1 + 2: settings ------------------------------------------------------------------
    async def _load_settings(self, plans: list[Plan]) -> None:
        # a setting named by id is read even when the notice brings its own recipients and
        # channels: a disabled one is refused (a notice sent just before the switch)
        need = [p for p in plans
                if p.notice.setting_id or not (p.notice.recipients and p.notice.channels)]
        if not need:
            return
        by_name = sorted({p.notice.alert for p in need if not p.notice.setting_id})
        by_id = sorted({p.notice.setting_id for p in need if p.notice.setting_id})
        async with self.redis.pipeline(transaction=False) as pipe:
            if by_id:
                pipe.hmget(self.keys.settings, by_id)
            for name in by_name:
                pipe.zrange(self.keys.settings_by_name(name), 0, -1)
            res = await pipe.execute()
        found: dict[str, AlertSetting] = {}
        if by_id:
            for sid, raw in zip(by_id, res.pop(0), strict=True):
                if raw is not None and (s := self._setting(raw)) is not None:
                    found[sid] = s
        name_ids = {name: [i.decode() for i in ids] for name, ids in
                    zip(by_name, res, strict=True)}
        more = sorted({i for ids in name_ids.values() for i in ids} - found.keys())
        if more:
            for sid, raw in zip(more, await self.redis.hmget(self.keys.settings, more),
                                strict=True):
                if raw is not None and (s := self._setting(raw)) is not None:
                    found[sid] = s
        for p in need:
            if p.notice.setting_id:
                s = found.get(p.notice.setting_id)
                p.settings = [s] if s is not None else []
            else:
                p.settings = [found[i] for i in name_ids.get(p.notice.alert, ())
                              if i in found and found[i].enabled]

    @staticmethod
    def _setting(raw: bytes) -> AlertSetting | None:
        try:
            return _setting_decoder.decode(raw)
        except msgspec.DecodeError as e:  # a corrupt record must not stop every notice
            # not the record: its channel map holds webhook URLs and secrets
            log.error("unreadable alert setting record (%s; %d bytes) skipped", e, len(raw))
            return None

    # recipients and channels --------------------------------------------------------------
    def _resolve(self, plans: list[Plan], dead: list[DeadLetter]) -> list[Plan]:
        ok: list[Plan] = []
        for p in plans:
            n = p.notice
            if n.setting_id and p.settings and not p.settings[0].enabled:
                dead.append(DeadLetter(p.entry.sid, f"setting {n.setting_id} is disabled",
                                       "$.setting_id", p.entry.raw))
                continue
            if not n.channels and p.settings:
                n.channels = merge_channels(p.settings)
            if not n.metric and len(p.settings) == 1:
                n.metric = p.settings[0].metric
            if not n.setting_id and len(p.settings) == 1:
                n.setting_id = p.settings[0].id
            if not n.recipients:
                n.recipients = n.channels.users()
            if not n.recipients:
                dead.append(DeadLetter(
                    p.entry.sid,
                    f"no recipients: the notice has none and no enabled setting of alert "
                    f"`{n.alert}` names a user", "$.recipients", p.entry.raw, kind="recipient"))
                continue
            ok.append(p)
        return ok

    # 3: users and dedup claims ------------------------------------------------------------
    async def _load_users_and_dedup(self, plans: list[Plan], dead: list[DeadLetter]
                                    ) -> list[Plan]:
        """One round trip: the `user` events since the last batch, the recipients' records,
        the stored bodies under the senders' own ids, the dedup claims. (More only when
        user events came in since the last batch, or on a conflict.) Returns the plans
        that go on."""
        uids = sorted({u for p in plans for u in p.notice.recipients})
        window = int(self.settings.dedup_window)
        dedup = [p for p in plans if p.notice.dedup_key and window > 0]
        for p in dedup:  # an incident: firing until resolved
            p.notice.status = "firing"
        own = [p for p in plans if p.entry.value.id is not None]  # may exist already
        if not uids:
            return plans
        await self.users.start()
        async with self.redis.pipeline(transaction=False) as pipe:
            at = self.users.read(pipe, uids)
            one_call = self.store.one_call  # a single Redis: MGET spans slots
            if own and one_call:
                pipe.mget([self.keys.notice(p.notice.id) for p in own])
            for p in own if not one_call else ():
                pipe.get(self.keys.notice(p.notice.id))
            for p in dedup:
                pipe.set(self.keys.dedup(p.dedup_claim), p.notice.id, nx=True, ex=window,
                         get=True)
            self.silences.read(pipe)
            res = await pipe.execute()
        await self.silences.refresh(res.pop())
        users = await self.users.load(res[:at], uids)
        if own:
            bodies = res[at] if one_call else res[at:at + len(own)]
            at += 1 if one_call else len(own)
            bad = self._conflicts(own, bodies, dead)
        else:
            bad = set()
        unclaim: list[str] = []
        for p, first in zip(dedup, res[at:], strict=True):
            if id(p) in bad:
                if first is None:  # its claim names a notice of other content: undone
                    unclaim.append(self.keys.dedup(p.dedup_claim))
            elif first is not None and first.decode() != p.notice.id:
                p.fold_into = first.decode()
        if unclaim:
            await self.redis.delete(*unclaim)
        plans = [p for p in plans if id(p) not in bad]
        self._recipients(plans, users, self.users.snoozes, dead)
        self.users.skip_deleted(plans)
        return plans

    @staticmethod
    def _recipients(plans: list[Plan], users: Mapping[str, User | str | None],
                    snoozed: Mapping[str, dict[str, int]], dead: list[DeadLetter]) -> None:
        """Who gets each notice in-app: every recipient that has not muted its alert. A
        recipient without a (readable) profile is served too (the JWT `sub` is the
        identity); unreadable profiles make one dead letter per entry, not per recipient."""
        for p in plans:
            bad: list[tuple[int, str]] = []
            for i, uid in enumerate(p.notice.recipients):
                u = users[uid]
                if not isinstance(u, User):
                    if u is not None:
                        bad.append((i, u))
                    p.missing.add(uid)
                    p.users.append(User(id=uid, snooze=snoozed.get(uid, {})))
                elif not u.mutes(p.notice.alert):
                    p.users.append(u)
            if bad:
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                dead.append(DeadLetter(p.entry.sid, f"{bad[0][1]}{more}; served in-app only",
                                       f"$.recipients[{bad[0][0]}]", p.entry.raw,
                                       kind="recipient"))

    def _conflicts(self, own: list[Plan], bodies: list[bytes | None],
                   dead: list[DeadLetter]) -> set[int]:
        """Entries whose own id names a notice with other content (stored, earlier in
        this batch, or in a batch still storing): a dead letter each. A retry with the same
        content goes on (the store is idempotent). Returns the id() of their plans."""
        first = self._unstored
        bad: set[int] = set()
        for p, raw in zip(own, bodies, strict=True):
            sent = p.entry.value
            other: NoticeIn | Notice = first.setdefault(p.notice.id, sent)
            if raw is not None:
                try:
                    other = _notice_decoder.decode(raw)
                except msgspec.DecodeError:
                    continue  # not ours to judge: the store keeps the body (SET NX)
            if not same_content(sent, other):
                bad.add(id(p))
                dead.append(DeadLetter(
                    p.entry.sid, f"notice id {p.notice.id} already exists with other content",
                    "$.id", p.entry.raw))
        return bad
