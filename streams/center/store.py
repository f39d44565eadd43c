"""The notice center's store: a batch's planned notices into their recipients' feeds, live
pushes and forward jobs, in as few calls as Redis allows.

On a single Redis the whole batch is one script call (store_batch.lua): each notice body
once (SET NX), every recipient's feed entries (idempotent on notice id: a re-delivered
entry never makes a second feed entry; retention and the live PUBLISH in the same call),
and the forward jobs, which streams.forward adds to the call (`store_call_jobs`: every
forward partition's in the one call). A batch with more than STORE_CHUNK recipients (a
broadcast) goes on in one more call per chunk of them, so its first recipients get it
live before the last ones are stored. On a Redis Cluster: one call per user (store.lua,
each in its slot) and the forwards by `streams.forward.add_forward_jobs` (a call per job,
in its forward partition's slot). Dedup repeats are folded (fold.lua) in the same round
trip; then, only when repeats were folded, a `notice-update` to their recipients.
A silenced notice (`Notice.silenced`: an admin silence matched it) is stored like any
other but never published live and gets no forward jobs; a repeat folded into one, or
silenced itself, pushes no `notice-update`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.asyncio import Redis, RedisCluster

from vestnik.streams import lua
from vestnik.streams.center.plan import Plan
from vestnik.streams.channels import available as available_channels
from vestnik.streams.channels import user_addresses
from vestnik.streams.config import Config
from vestnik.streams.forward import (
    BatchJob,
    Claim,
    ForwardWorker,
    add_forward_jobs,
    forward_jobs_for,
    store_call_jobs,
)
from vestnik.streams.keys import REFS_BUCKET, Keys
from vestnik.streams.metrics import NOTICES_DELIVERED, NOTICES_FOLDED, NOTICES_STORED
from vestnik.streams.schemas import (
    LiveUpdate,
    Notice,
    decoder,
    encode_live,
    json_encode,
    notice_view,
    public_json,
)

_msgpack = msgspec.msgpack.Encoder().encode
_notice_decoder = decoder(Notice)

_STORE = lua.script("center/store.lua")  # one user (a cluster)
_STORE_BATCH = lua.script("center/store_batch.lua")  # a batch (a single Redis)
_FOLD = lua.script("center/fold.lua")  # a dedup repeat into the first notice

KEYS_CACHE = 50_000  # users whose five keys are kept built between batches
# recipients stored per call: Redis sends a call's PUBLISHes only when the call ends, so a
# broadcast's first recipients see it after one chunk, not after all of them (5,000 in one
# call: 86-91 ms of Redis on a Zen 3 box before the api got the first message)
STORE_CHUNK = 1000


def choose_trim(oldest_first: list[str], read: set[str], need: int) -> list[str]:
    """Which feed entries retention removes (the rule store_user.lua implements): the
    oldest read ones, then the oldest of the rest."""
    if need <= 0:
        return []
    victims = [nid for nid in oldest_first if nid in read][:need]
    chosen = set(victims)
    for nid in oldest_first:
        if len(victims) >= need:
            break
        if nid not in chosen:
            victims.append(nid)
    return victims


def publish_update(pipe: Any, keys: Keys, body: bytes, recipients: Iterable[str]) -> None:
    """Queue on `pipe` a `notice-update` of the stored `body` to each recipient's live
    channel (a repeat folded into it, its incident resolved)."""
    msg = encode_live(LiveUpdate(notice_view(body).decode()))
    for uid in recipients:
        pipe.publish(keys.live(uid), msg)


@dataclass(slots=True)
class Write:
    """One batch's store, built and not sent yet."""

    pipe: Any  # a redis-py pipeline: the per-user calls (a cluster) and the folds
    new: list[tuple[Plan, bytes, bytes]]  # (plan, stored JSON, the recipients' view)
    folds: list[Plan]
    argv: list[str | bytes] | None = None  # the batch call's (a single Redis)
    # recipients beyond the first call's STORE_CHUNK, stored by later calls, and the
    # index (from 1) of each new notice, by id
    rest: list[tuple[str, list[str]]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    calls: int = 0  # per-user calls in `pipe`, before the folds
    folds_at: int = 0  # the first fold's reply in `pipe`'s (after a cluster's forward jobs)
    claims: list[Claim | None] = field(default_factory=list)  # per forward job due now


class Store:
    """Builds a batch's store (`build`: Python only, while the previous batch is sent) and
    sends it (`send`)."""

    def __init__(self, redis: Redis, keys: Keys, settings: Config,
                 inline: ForwardWorker | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self._refs = [keys.refs_prefix, REFS_BUCKET, keys.notice(""),  # bodies' feed counts
                      keys.forward_notice_prefixes]
        # one Lua call per batch on a single Redis; per user (one slot each) on a cluster
        self.one_call = not isinstance(redis, RedisCluster)
        # the forward worker of this process: forwards due now run here at once, claimed
        # in the store call (no queue poll, no wake-up, no second read of the notice)
        self.inline = inline if self.one_call else None
        self._addresses = user_addresses(available_channels())
        self._keys_of: dict[str, list[str]] = {}

    async def write(self, plans: list[Plan]) -> None:
        write = await self.build(plans)
        if write is not None:
            await self.send(write)

    def _user_keys(self, uid: str) -> list[str]:
        """feed, read, seq, live, archived of a user (built once; five per user a batch)."""
        got = self._keys_of.get(uid)
        if got is None:
            if len(self._keys_of) >= KEYS_CACHE:
                self._keys_of.clear()
            k = self.keys
            got = self._keys_of[uid] = [k.feed(uid), k.read(uid), k.user_seq(uid),
                                        k.live(uid), k.archived(uid)]
        return got

    async def build(self, plans: list[Plan]) -> Write | None:
        """Everything the store needs, as one pipeline (Python work only: no round trip)."""
        per_user: dict[str, list[str]] = {}
        new: list[tuple[Plan, bytes, bytes]] = []  # (plan, stored JSON, view)
        folds: list[Plan] = []
        jobs: list[BatchJob] = []
        default_after = self.settings.forward_after
        for p in plans:
            if p.fold_into is not None:
                folds.append(p)
                continue
            if not p.users:
                continue  # every recipient muted it (or is unknown: dead-lettered)
            p.notice.recipients = [u.id for u in p.users]
            body = json_encode(p.notice)
            new.append((p, body, public_json(p.notice)))
            for u in p.users:
                per_user.setdefault(u.id, []).append(p.notice.id)
            mine = [] if p.notice.silenced else forward_jobs_for(
                p.notice, p.users, self._addresses, default_after)
            if mine:
                profiles = {u.id: u for u in p.users}
                jobs += [BatchJob(j, len(new), p.notice, profiles.get(j.uid),
                                  j.uid not in p.missing) for j in mine]
        if not new and not folds:
            return None
        k = self.keys
        write = Write(self.redis.pipeline(transaction=False), new, folds)
        pipe = write.pipe
        if self.one_call and new:
            index = write.index = {p.notice.id: j for j, (p, _, _) in enumerate(new, 1)}
            users = list(per_user.items())
            write.rest = users[STORE_CHUNK:]
            argv: list[str | bytes] = [b""]
            for p, _, view in new:
                argv += [p.notice.id, view]
            body_base = len(argv)
            argv += [body for _, body, _ in new]
            fwd = None
            if jobs:
                inline = self.inline
                claim_s = inline.in_progress_timeout_s if inline is not None else None
                fwd, write.claims = store_call_jobs(
                    k, jobs, argv, claim_s, inline.partitions if inline is not None else None)
            argv[0] = _msgpack([
                self.settings.feed_max, [k.notice(p.notice.id) for p, _, _ in new],
                [[*self._user_keys(uid), [index[nid] for nid in nids]]
                 for uid, nids in users[:STORE_CHUNK]], fwd, body_base, None,
                1 if write.rest else None, self._refs,
                sorted({index[nid] for _, nids in write.rest for nid in nids}) or None,
                [j for j, (p, _, _) in enumerate(new, 1) if p.notice.silenced] or None])
            write.argv = argv  # sent alone: a pipeline would check the script first
        elif new:  # a cluster: one call per user, each in its slot
            views = {p.notice.id: view for p, _, view in new}
            for p, body, _ in new:
                pipe.set(k.notice(p.notice.id), body, nx=True)
            silenced = {p.notice.id: "1" if p.notice.silenced else "0" for p, _, _ in new}
            for uid, nids in per_user.items():
                args: list[str | bytes | int] = [
                    self.settings.feed_max, "".join(silenced[nid] for nid in nids)]
                for nid in nids:
                    args += [nid, views[nid]]
                await _STORE(keys=self._user_keys(uid), args=args, client=pipe)
            write.calls = len(new) + len(per_user)
            add_forward_jobs(pipe, k, [b.job for b in jobs])
        window = int(self.settings.dedup_window)
        write.folds_at = len(pipe)
        for p in folds:
            assert p.fold_into is not None
            claim = [k.dedup(p.dedup_claim)] if self.one_call else []
            await _FOLD(keys=[k.notice(p.fold_into), k.folded(p.fold_into), *claim],
                        args=[p.notice.id, p.notice.created_at, window], client=pipe)
        if not self.one_call:  # a cluster: the claims are in other slots than the bodies;
            for p in folds:    # after every fold, so the replies the caller reads stay first
                pipe.expire(k.dedup(p.dedup_claim), window)
        return write

    async def send(self, write: Write) -> None:
        new, folds = write.new, write.folds
        stored: list[Any] = []
        claimed: list[Any] = []
        if write.argv is not None:  # [feed entries made per user, claimed jobs, new bodies]
            stored, claimed, fresh = await _STORE_BATCH(keys=[], args=write.argv,
                                                        client=self.redis)
            for i in range(0, len(write.rest), STORE_CHUNK):
                stored += await self._store_more(write, write.rest[i:i + STORE_CHUNK], fresh)
        async with write.pipe as pipe:
            res = await pipe.execute() if len(pipe) else []
        if write.calls:
            stored = res[len(new):write.calls]
        at = write.folds_at
        NOTICES_STORED.inc(len(new))
        NOTICES_DELIVERED.inc(sum(int(r) for r in stored))
        if claimed and self.inline is not None:
            self.inline.start_inline([c for i in claimed if (c := write.claims[int(i) - 1])])
        await self._after_folds(folds, res[at:at + len(folds)])

    async def _store_more(self, write: Write, users: list[tuple[str, list[str]]],
                          fresh: list[int]) -> list[Any]:
        """More of a batch's recipients, after its first call (which stored the bodies and
        scheduled the forwards): only the notices these users get, numbered anew, with
        whether each one's body was new then. Feed entries made per user."""
        at: dict[int, int] = {}  # the notice's index in the batch -> in this call
        argv: list[str | bytes] = [b""]
        rows = []
        for uid, nids in users:
            idxs = []
            for nid in nids:
                j = write.index[nid]
                k = at.get(j)
                if k is None:
                    k = at[j] = len(at) + 1
                    argv += [nid, write.new[j - 1][2]]
                idxs.append(k)
            rows.append([*self._user_keys(uid), idxs])
        argv[0] = _msgpack([self.settings.feed_max, [], rows, None, 0,
                            [int(fresh[j - 1]) for j in at], None, self._refs, None,
                            [k for j, k in at.items() if write.new[j - 1][0].notice.silenced]
                            or None])
        out, _, _ = await _STORE_BATCH(keys=[], args=argv, client=self.redis)
        return out

    async def _after_folds(self, folds: list[Plan], results: list[Any]) -> None:
        updates: list[bytes] = []
        orphans: list[Plan] = []
        folded = 0
        for p, r in zip(folds, results, strict=True):
            if isinstance(r, bytes):
                folded += 1
                if not p.notice.silenced:  # a silenced repeat: history, not pushed
                    updates.append(r)
            elif r == -1:  # the first notice is gone: this one starts over
                orphans.append(p)
        NOTICES_FOLDED.inc(folded)
        if updates:
            async with self.redis.pipeline(transaction=False) as pipe:
                for body in updates:
                    first = _notice_decoder.decode(body)
                    if not first.silenced:  # folded into a silenced notice: history only
                        publish_update(pipe, self.keys, body, first.recipients)
                if len(pipe):
                    await pipe.execute()
        if orphans:
            window = int(self.settings.dedup_window)
            async with self.redis.pipeline(transaction=False) as pipe:
                for p in orphans:
                    pipe.set(self.keys.dedup(p.dedup_claim), p.notice.id, ex=window)
                await pipe.execute()
            for p in orphans:
                p.fold_into = None
            await self.write(orphans)
