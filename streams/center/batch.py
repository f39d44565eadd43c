"""The notice center's batch handler: validate, resolve recipients, dedup, store, push live,
schedule forwards — a few pipelined round trips per batch, never one per notice.

Round trips of one batch:
1. settings named by `setting_id` (HGET) or by alert name (ZRANGE of the name index);
2. settings found by name (HMGET), when any;
3. the users (HMGET of the `user` topic state) and the dedup claims (SET NX GET EX);
4. the store: each notice body once (SET NX), one STORE script call per user with
   all of that user's notices (idempotent on notice id: a re-delivered entry never
   makes a second feed entry; the script also trims and PUBLISHes), folds of dedup
   repeats, and the forward jobs (on a single Redis the delayed ones inside the batch's
   store call, the rest by `streams.forward.add_forward_jobs`); on a single Redis, the
   whole batch is one call, and a batch with more than STORE_CHUNK recipients (a
   broadcast) goes on in one more call per chunk of them, so its first recipients get it
   live before the last ones are stored;
5. only when repeats were folded: PUBLISH of `notice-update` to their recipients.

An entry without `id` gets one derived from its stream id (a ULID with the entry's
time and a hash of the id), so a re-delivery derives the same id: exactly one copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from arq.constants import (
    expires_extra_ms,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from redis.asyncio import Redis, RedisCluster

from vestnik.streams.center import inbox
from vestnik.streams.center.plan import Plan, merge_channels, to_notice
from vestnik.streams.center.user_hub import update_message
from vestnik.streams.channels import available as available_channels
from vestnik.streams.channels import user_addresses
from vestnik.streams.config import Config
from vestnik.streams.consumer import DeadLetter, Entry
from vestnik.streams.errors import BadInput, VestnikError
from vestnik.streams.forward import (
    Claim,
    ForwardJob,
    ForwardWorker,
    add_forward_jobs,
    due_member,
    forward_jobs_for,
    job_id,
    job_record,
    wake_channel,
)
from vestnik.streams.ids import now_ms, parse_stream_id
from vestnik.streams.keys import REFS_BUCKET, USER_TOPIC, Keys
from vestnik.streams.metrics import (
    CENTER_BATCH,
    NOTICES_DELIVERED,
    NOTICES_FOLDED,
    NOTICES_STORED,
)
from vestnik.streams.notifier.hydrate import Hydrator
from vestnik.streams.notifier.topics import StateWriter
from vestnik.streams.schemas import (
    AlertSetting,
    Notice,
    NoticeIn,
    TopicEvent,
    User,
    check_recipients,
    decode_topic_entry,
    decode_user,
    decoder,
    json_encode,
    notice_view,
    public_json,
    same_content,
)

log = logging.getLogger("vestnik.center")

_setting_decoder = decoder(AlertSetting)
_any_decoder = msgspec.json.Decoder()
_msgpack = msgspec.msgpack.Encoder().encode
_notice_decoder = decoder(Notice)

# The per-user store, shared by both entry points below. For each notice not already in
# the feed (idempotent on notice id): INCR seq, ZADD feed (a new entry is unread: it is
# not in the read set); then retention to feed_max (the oldest READ ones first, then the
# oldest); then, if `publish`, PUBLISH each new entry as {"e":"notice","seq":N,"data":
# <notice + seq, read, archived>}. Notice j is ARGV[base + 2j - 1] (id) and
# ARGV[base + 2j] (its JSON object without the closing brace, `open_object`: no copy of it
# is made here, and every string Lua makes is hashed byte by byte); `idxs` lists the j's.
# `pend` (a single Redis; nil on a cluster, where the bodies are in other slots): feed
# holders gained per notice id of this call, net of the ones its own retention dropped;
# any other body retention drops is released at once (inbox.RELEASE_LUA).
# Returns the number of feed entries made.
_STORE_USER = inbox.RELEASE_LUA + """
local function store_user(feed, read, seqkey, live, archived, feed_max, base, idxs, fresh,
                          publish, pend)
  local msgs = {}
  local top, made = 0, 0
  for _, j in ipairs(idxs) do
    local nid = ARGV[base + 2 * j - 1]
    -- a notice whose body this call created cannot be in a feed yet
    if fresh[j] or not redis.call('ZSCORE', feed, nid) then
      top = redis.call('INCR', seqkey)
      local seq = tostring(top)  -- once: each number to string conversion is a sprintf
      redis.call('ZADD', feed, seq, nid)
      made = made + 1
      if pend then pend[nid] = pend[nid] + 1 end
      if publish then
        msgs[made] = '{"e":"notice","seq":' .. seq .. ',"data":' .. ARGV[base + 2 * j]
          .. ',"seq":' .. seq .. ',"read":false,"archived":false}}'
      end
    end
  end
  -- the feed can only exceed feed_max after an insert whose seq (inserts ever) does:
  -- skip the ZCARD otherwise (one call less per recipient of a broadcast)
  local card, need = 0, 0
  if top > feed_max then
    card = redis.call('ZCARD', feed)
    need = card - feed_max
  end
  if need > 0 then
    local victims = redis.call('ZRANGE', read, 0, need - 1)
    local chosen = {}
    for _, id in ipairs(victims) do chosen[id] = true end
    if #victims < need then
      local page = redis.call('ZRANGE', feed, 0, need + #victims - 1)
      for _, id in ipairs(page) do
        if #victims >= need then break end
        if not chosen[id] then victims[#victims + 1] = id end
      end
    end
    for i = 1, #victims, 500 do
      local chunk = {unpack(victims, i, math.min(i + 499, #victims))}
      redis.call('ZREM', feed, unpack(chunk))
      redis.call('ZREM', read, unpack(chunk))
      redis.call('SREM', archived, unpack(chunk))
    end
    if pend then
      for _, id in ipairs(victims) do
        if pend[id] then pend[id] = pend[id] - 1 else adjust(id, -1, false, false) end
      end
    end
  end
  for _, m in ipairs(msgs) do redis.call('PUBLISH', live, m) end
  return made
end
"""

# One user (Redis Cluster: every key in the user's slot). KEYS: feed, read, seq, live,
# archived. ARGV: feed_max, then (nid, the recipients' view of the notice, open) pairs.
# It always publishes: on a cluster PUBSUB NUMSUB counts one node's subscribers only.
STORE_LUA = _STORE_USER + """
local idxs = {}
for j = 1, (#ARGV - 1) / 2 do idxs[j] = j end
return store_user(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[1]), 1, idxs, {},
                  true, nil)
"""

# A whole batch in one call (a single Redis; the keys span slots, so never on a
# cluster). ARGV[1]: msgpack [feed_max, [body key of notice j...], [[feed, read, seq,
# live, archived, [j...]] per user], forward jobs or nil, ARGV index before the first
# body]; then (nid, the recipients' view of the notice, open) pairs, then the stored JSON
# of each notice, then the jobs' arq payloads, then the delayed forwards' due-set members.
# Bodies are SET NX once. (Each string a script gets is hashed whole to intern it, so the
# big ones come as arguments of their own, not inside ARGV[1], which would hash them
# twice: in ARGV[1] and once unpacked.) Forwards: [job key prefix, result key prefix,
# queue, ARGV index before the first payload, [[job id, expiry ms, due ms, mode, notice j]
# per job due now], in-progress key prefix, retry key prefix, claim ms, wake channel, due
# set, ARGV index before the first member, [due ms per delayed forward]] (or nil); then,
# in a later call for more of the batch's recipients (STORE_CHUNK), [1 or 0 per notice:
# its body was new] as the first call found it (no bodies then, no forwards), and in a
# first call that later ones follow, 1: report those flags; then [refs prefix, bucket
# length, notice key prefix] (streams.keys) to count each body's feeds, and in a first
# call that later ones follow, [j...]: the notices they store for more users; delayed
# forwards are ZADDed to the due set (streams.forward.due_member). Job modes:
# -1: PUBLISH to the wake channel; 1: claimed for the caller (arq's in-progress key and try
# counter, as the worker's claim sets them) when notice j's body is new, so it runs in the
# caller's process at once, queued at due + claim ms as the fallback should the caller die
# (a re-delivered notice's job is left to the forwarders instead, woken). Returns
# {feed entries made per user, indexes of the claimed jobs, 1 or 0 per body: it was new
# (asked for only)}.
# (The keys are built by streams.keys in Python and passed in the msgpack header, so one
# module still owns every key name; packing them as one argument is what makes a batch
# cheap to send.)
STORE_BATCH_LUA = _STORE_USER + """
local h = cmsgpack.unpack(ARGV[1])
local feed_max, bodies, users, bbase = h[1], h[2], h[3], h[5]
refs.prefix, refs.split, refs.notice = h[8][1], h[8][2], h[8][3]
local fresh, created, pend = {}, {}, {}
for i, key in ipairs(bodies) do
  fresh[i] = redis.call('SET', key, ARGV[bbase + i], 'NX')
  if fresh[i] then created[ARGV[2 * i]] = true end
end
if h[6] then for j, f in ipairs(h[6]) do fresh[j] = f == 1 end end
for j = 1, math.max(#bodies, h[6] and #h[6] or 0) do pend[ARGV[2 * j]] = 0 end
local new = {}
if h[7] then for i = 1, #bodies do new[i] = fresh[i] and 1 or 0 end end
-- live messages only where someone listens: a SUBSCRIBE to the user's channel (an open
-- SSE stream), or any pattern subscription at all (it might match). A PUBLISH to nobody
-- is a no-op, building its message is not, and most recipients are not online.
local listening = nil
if redis.call('PUBSUB', 'NUMPAT') == 0 then
  listening = {}
  for i = 1, #users, 1000 do
    local chans = {}
    for k = i, math.min(i + 999, #users) do chans[#chans + 1] = users[k][4] end
    local counts = redis.call('PUBSUB', 'NUMSUB', unpack(chans))
    for k = 2, #counts, 2 do listening[counts[k - 1]] = counts[k] > 0 end
  end
end
local out = {}
for i, u in ipairs(users) do
  out[i] = store_user(u[1], u[2], u[3], u[4], u[5], feed_max, 1, u[6], fresh,
                      listening == nil or listening[u[4]], pend)
end
-- each body's feed count, once per notice: a body with one feed costs nothing
local later = {}
if h[9] then for _, j in ipairs(h[9]) do later[ARGV[2 * j]] = true end end
for nid, delta in pairs(pend) do
  if delta ~= 0 or created[nid] then adjust(nid, delta, created[nid], later[nid]) end
end
local claimed = {}
local fwd = h[4]
if fwd then
  -- forward jobs, as streams.forward's schedule script writes them: unless the job or
  -- its result exists, PSETEX arq's job record and ZADD the queue at the due time
  local job_prefix, result_prefix, queue, base, jobs = fwd[1], fwd[2], fwd[3], fwd[4], fwd[5]
  local progress_prefix, retry_prefix, claim_ms = fwd[6], fwd[7], fwd[8]
  local due, wake = {}, false
  for i, j in ipairs(jobs) do
    local jid, mode, at = j[1], j[4], j[5]
    -- a new notice's jobs cannot exist yet: the check is for re-delivered ones
    if fresh[at] or redis.call('EXISTS', job_prefix .. jid, result_prefix .. jid) == 0 then
      redis.call('PSETEX', job_prefix .. jid, j[2], ARGV[base + i])
      if mode > 0 and fresh[at] then
        redis.call('SET', progress_prefix .. jid, '1', 'PX', claim_ms)
        redis.call('INCR', retry_prefix .. jid)
        redis.call('EXPIRE', retry_prefix .. jid, 88400)
        claimed[#claimed + 1] = i
        due[#due + 1] = j[3] + claim_ms
      else
        wake = true
        due[#due + 1] = j[3]
      end
      due[#due + 1] = jid
    end
  end
  for i = 1, #due, 1000 do
    redis.call('ZADD', queue, unpack(due, i, math.min(i + 999, #due)))
  end
  if wake then redis.call('PUBLISH', fwd[9], '') end
  -- delayed forwards: one member each in the due set (streams.forward pumps them)
  local later, dbase = fwd[12], fwd[11]
  local zargs = {}
  for i, score in ipairs(later) do
    zargs[#zargs + 1] = score
    zargs[#zargs + 1] = ARGV[dbase + i]
  end
  for i = 1, #zargs, 1000 do
    redis.call('ZADD', fwd[10], unpack(zargs, i, math.min(i + 999, #zargs)))
  end
end
return {out, claimed, new}
"""

# Fold a dedup repeat into the first notice. KEYS: notice body, folded set.
# ARGV: repeat id, last_seen, window seconds. Returns the new body, 0 when the repeat
# was already folded (re-delivery), or -1 when the first notice is gone.
# The body ends with `created_at` (always set) and optionally `repeat`, `last_seen`:
# msgspec writes Notice fields in declaration order, so they are the tail of the object.
# Move `Keys.users_seen` forward to ARGV[1] (a stream id), never back: a slow center must
# not make a later one purge a user again who has been created anew since.
ADVANCE_LUA = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local cm, cs = parse(cur)
  local nm, ns = parse(ARGV[1])
  if nm < cm or (nm == cm and ns <= cs) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

FOLD_LUA = """
local body = redis.call('GET', KEYS[1])
if not body then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[3])
local head, rep = string.match(body, '^(.-),"repeat":(%d+),"last_seen":%d+}$')
if not head then head, rep = string.match(body, '^(.-),"repeat":(%d+)}$') end
if not head then head = string.match(body, '^(.-),"last_seen":%d+}$') end
if not head then head = string.sub(body, 1, -2) end
local n = (tonumber(rep) or 0) + 1
body = head .. ',"repeat":' .. n .. ',"last_seen":' .. ARGV[2] .. '}'
redis.call('SET', KEYS[1], body, 'KEEPTTL')
return body
"""

USER_CACHE = 50_000  # decoded user records kept between batches
USER_PAGE = 1000  # user topic events read (and applied) per call
USER_PAGES = 1000  # at most this many pages a batch: bounded, the rest next batch
DELETES_KEPT = 100_000  # user deletes remembered (notices before them skip the user)
# recipients stored per call: Redis sends a call's PUBLISHes only when the call ends, so a
# broadcast's first recipients see it after one chunk, not after all of them (5,000 in one
# call: 86-91 ms of Redis on a Zen 3 box before the api got the first message)
STORE_CHUNK = 1000


def open_object(obj_json: bytes) -> bytes:
    """A JSON object without its closing brace, as the store script takes a notice's view."""
    return obj_json[:-1]


def choose_trim(oldest_first: list[str], read: set[str], need: int) -> list[str]:
    """Which feed entries retention removes (the rule STORE_LUA implements): the oldest read
    ones, then the oldest of the rest."""
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


@dataclass(slots=True)
class Write:
    """One batch's store, built and not sent yet."""

    pipe: Any  # a redis-py pipeline: the per-user calls (a cluster) and the folds
    new: list[tuple[Plan, bytes, bytes]]  # (plan, stored JSON, open_object(view))
    folds: list[Plan]
    argv: list[str | bytes] | None = None  # the batch call's (a single Redis)
    # recipients beyond the first call's STORE_CHUNK, stored by later calls, and the
    # index (from 1) of each new notice, by id
    rest: list[tuple[str, list[str]]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    calls: int = 0  # per-user calls in `pipe`, before the folds
    claims: list[Claim | None] = field(default_factory=list)  # per forward job


class Center:
    """`handle` is the consumer's handler for the `center` group of `vn:notices`."""

    def __init__(self, redis: Redis, keys: Keys, settings: Config,
                 inline: ForwardWorker | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self._store = redis.register_script(STORE_LUA)
        self._store_batch = redis.register_script(STORE_BATCH_LUA)
        self._refs = [keys.refs_prefix, REFS_BUCKET, keys.notice("")]  # bodies' feed counts
        # one Lua call per batch on a single Redis; per user (one slot each) on a cluster
        self.one_call = not isinstance(redis, RedisCluster)
        # the forward worker of this process: forwards due now run here at once, claimed
        # in the store call (no queue poll, no wake-up, no second read of the notice)
        self.inline = inline if self.one_call else None
        self._addresses = user_addresses(available_channels())
        self._fold = redis.register_script(FOLD_LUA)
        # uid -> (record bytes, decoded): the records are read every batch, decoded only
        # when they changed (users are read-only here)
        self._users: dict[str, tuple[bytes, User | str]] = {}
        self._keys_of: dict[str, list[str]] = {}
        # the `user` topic: the center applies its events itself (the hub's StateWriter:
        # entries at or before the state's position are skipped, so any number of
        # materializers stay exact), up to `_user_pos`, before it reads recipients
        self._state = StateWriter(redis, keys, maxlen=settings.topic_maxlen)
        self._advance = redis.register_script(ADVANCE_LUA)
        self._hydrator = Hydrator(redis, settings.hydrate, settings.hydrate_hosts)
        self._user_pos: str | None = None
        # users whose last seen event deletes them: the delete's stream id. A notice XADDed
        # before it is not stored for them (it may be read after the purge: same batch, a
        # later one, or one storing while this one loads); bounded by DELETES_KEPT
        self._deleted: dict[str, tuple[int, int]] = {}
        # own ids of batches loaded but not stored yet (the next batch loads while one
        # stores): a body not in Redis yet is still "other content" for a later entry
        self._unstored: dict[str, NoticeIn] = {}
        # batches may be handled concurrently (Consumer depth > 1): their reads, and their
        # stores, stay in arrival order (a dedup repeat folds into a notice stored before
        # it), while one batch is built in Python as the previous one is stored by Redis
        self._loading = asyncio.Lock()
        self._storing = asyncio.Lock()

    async def aclose(self) -> None:
        """The hydrator's HTTP client (thin `user` events from an HTTP source)."""
        await self._hydrator.aclose()

    async def handle(self, entries: list[Entry[NoticeIn]]) -> list[DeadLetter]:
        with CENTER_BATCH.time():
            return await self._handle(entries)

    async def _handle(self, entries: list[Entry[NoticeIn]]) -> list[DeadLetter]:
        dead: list[DeadLetter] = []
        plans = every = [Plan(e, to_notice(e)) for e in self._admit(entries, dead)]
        try:
            async with self._loading:
                await self._load_settings(plans)
                plans = self._resolve(plans, dead)
                plans = await self._load_users_and_dedup(plans, dead)
            # let the next batch send its reads now, so they are answered while this one is
            # built, rather than queued behind this one's store in Redis
            await asyncio.sleep(0)
            write = await self._build(plans)
            if write is not None:
                async with self._storing:
                    await self._send(write)
        finally:
            for p in every:  # the own ids this batch registered (`_conflicts`): stored now
                if self._unstored.get(p.notice.id) is p.entry.value:
                    del self._unstored[p.notice.id]
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

    def _user_keys(self, uid: str) -> list[str]:
        """feed, read, seq, live, archived of a user (built once; five per user a batch)."""
        got = self._keys_of.get(uid)
        if got is None:
            if len(self._keys_of) >= USER_CACHE:
                self._keys_of.clear()
            k = self.keys
            got = self._keys_of[uid] = [k.feed(uid), k.read(uid), k.user_seq(uid),
                                        k.live(uid), k.archived(uid)]
        return got

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
        own = [p for p in plans if p.entry.value.id is not None]  # may exist already
        if not uids:
            return plans
        if self._user_pos is None:  # once per process: where the centers' purges are (the
            # first center of a Redis: where the state is)
            start = (await self.redis.get(self.keys.users_seen)
                     or await self.redis.get(self.keys.state_pos(USER_TOPIC)))
            self._user_pos = start.decode() if start else "0-0"
        async with self.redis.pipeline(transaction=False) as pipe:
            # first: every user event XADDed before this batch's notices were read
            pipe.xrange(self.keys.topic(USER_TOPIC), min=f"({self._user_pos}", count=USER_PAGE)
            # the state's position, then the records: events at or before it (an api's hub
            # applied them) are in the records already
            pipe.get(self.keys.state_pos(USER_TOPIC))
            pipe.hmget(self.keys.state(USER_TOPIC), uids)
            if own and self.one_call:
                pipe.mget([self.keys.notice(p.notice.id) for p in own])
            for p in own if not self.one_call else ():
                pipe.get(self.keys.notice(p.notice.id))
            for p in dedup:
                pipe.set(self.keys.dedup(p.dedup_claim), p.notice.id, nx=True, ex=window,
                         get=True)
            res = await pipe.execute()
        events, pos, records = res[0], res[1], res[2]
        if events:
            records = await self._follow_users(events, pos, uids, records)
        at = 3
        if own:
            bodies = res[3] if self.one_call else res[3:3 + len(own)]
            at += 1 if self.one_call else len(own)
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
        self._recipients(plans, self._user_records(uids, records), dead)
        if self._deleted:
            self._skip_deleted(plans)
        return plans

    def _skip_deleted(self, plans: list[Plan]) -> None:
        """No feed entry (or forward) for a recipient deleted after the notice in Redis
        order: the purge already ran, so the entry would make a deleted user's keys again,
        kept for ever. (Both stream ids come from the one Redis clock.)"""
        gone = self._deleted
        for p in plans:
            at = parse_stream_id(p.entry.sid)
            if any(u.id in gone for u in p.users):
                p.users = [u for u in p.users if gone.get(u.id, (0, 0)) <= at]

    def _user_records(self, uids: list[str], records: list[bytes | None]
                      ) -> dict[str, User | str | None]:
        """Each recipient's profile (decoded only when it changed), why it is unreadable, or
        None when it has none."""
        users: dict[str, User | str | None] = {}
        for uid, raw in zip(uids, records, strict=True):
            if raw is None:
                users[uid] = None
                continue
            hit = self._users.get(uid)
            if hit is not None and hit[0] == raw:  # the same record as last time: decoded
                users[uid] = hit[1]
                continue
            users[uid] = decode_user(uid, raw)
            if len(self._users) >= USER_CACHE:
                self._users.clear()
            self._users[uid] = (raw, users[uid])
        return users

    @staticmethod
    def _recipients(plans: list[Plan], users: Mapping[str, User | str | None],
                    dead: list[DeadLetter]) -> None:
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
                    p.users.append(User(id=uid))
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

    async def _follow_users(self, entries: list[Any], pos: bytes | None, uids: list[str],
                            records: list[bytes | None]) -> list[bytes | None]:
        """The `user` events since the last batch: purge the users they delete, and apply
        the ones the state lacks (after `pos`, its position when the records were read),
        with the hub's StateWriter, in bounded pages; then read again the recipients they
        touched. With an api's hub ahead of us (the common case), nothing more is sent but
        the purge. Returns the recipients' records."""
        decoded = await self._decode_users(entries)
        await self._purge(decoded)
        ahead = parse_stream_id(pos.decode()) if pos else (0, 0)
        if len(entries) < USER_PAGE and parse_stream_id(entries[-1][0].decode()) <= ahead:
            self._user_pos = entries[-1][0].decode()
        else:
            records = await self._apply_users(entries, decoded, uids, records)
        # a center started later goes on from here (deletes an api's hub applied while no
        # center ran are still purged)
        await self._advance(keys=[self.keys.users_seen], args=[self._user_pos])
        return records

    async def _purge(self, decoded: list[tuple[str, TopicEvent]]) -> None:
        """Every user a seen event deletes, whoever applied it (each center process sees
        each event once; purging is idempotent): before this batch stores anything."""
        last: dict[str, tuple[str, str]] = {}
        for sid, ev in decoded:
            last[ev.id] = (ev.op, sid)
        # a user deleted and created again since is not purged: the feed is theirs
        deleted = sorted(uid for uid, (op, _) in last.items() if op == "delete")
        if len(self._deleted) > DELETES_KEPT:
            self._deleted.clear()
        for uid, (op, sid) in last.items():
            if op == "delete":
                self._deleted[uid] = parse_stream_id(sid)
            else:
                self._deleted.pop(uid, None)
        if deleted:
            await inbox.purge_users(self.redis, self.keys, deleted)

    async def _apply_users(self, entries: list[Any], decoded: list[tuple[str, TopicEvent]],
                           uids: list[str], records: list[bytes | None]
                           ) -> list[bytes | None]:
        """Apply the `user` events after `_user_pos` with the hub's StateWriter (bounded
        pages; the script skips those at or before the state's position, so any number of
        materializers stay exact), and read again the recipients the events touched."""
        topic = self.keys.topic(USER_TOPIC)
        touched: set[str] = set()
        for _ in range(USER_PAGES):
            await self._state.apply(USER_TOPIC, decoded)
            touched.update(ev.id for _, ev in decoded)
            self._user_pos = entries[-1][0].decode()
            if len(entries) < USER_PAGE:
                break
            entries = await self.redis.xrange(topic, min=f"({self._user_pos}",
                                              count=USER_PAGE)
            if not entries:
                break
            decoded = await self._decode_users(entries)
            await self._purge(decoded)
        again = [uid for uid in uids if uid in touched]
        if not again:
            return records
        fresh = dict(zip(again, await self.redis.hmget(self.keys.state(USER_TOPIC), again),
                         strict=True))
        return [fresh[uid] if uid in fresh else r for uid, r in zip(uids, records, strict=True)]

    async def _decode_users(self, entries: list[Any]) -> list[tuple[str, TopicEvent]]:
        """Topic entries as the hub decodes them: bad ones skipped, thin ones hydrated."""
        decoded: list[tuple[str, TopicEvent]] = []
        for raw_sid, fields in entries:
            try:
                decoded.append((raw_sid.decode(), decode_topic_entry(fields)))
            except BadInput as e:
                log.warning("topic %s entry %s skipped: %s", USER_TOPIC, raw_sid, e.detail)
        if any(self._hydrator.needs(USER_TOPIC, ev) for _, ev in decoded):
            evs = await asyncio.gather(*(self._hydrator.hydrate(USER_TOPIC, sid, ev)
                                         for sid, ev in decoded))
            decoded = [(sid, ev) for (sid, _), ev in zip(decoded, evs, strict=True)]
        return decoded

    # 4 + 5: store -----------------------------------------------------------------------
    async def _write(self, plans: list[Plan]) -> None:
        write = await self._build(plans)
        if write is not None:
            await self._send(write)

    async def _build(self, plans: list[Plan]) -> Write | None:
        """Everything the store needs, as one pipeline (Python work only: no round trip)."""
        per_user: dict[str, list[str]] = {}
        new: list[tuple[Plan, bytes, bytes]] = []  # (plan, stored JSON, open view)
        folds: list[Plan] = []
        jobs: list[tuple[ForwardJob, Plan, int]] = []  # (job, its plan, notice index)
        default_after = self.settings.forward_after
        for p in plans:
            if p.fold_into is not None:
                folds.append(p)
                continue
            if not p.users:
                continue  # every recipient muted it (or is unknown: dead-lettered)
            p.notice.recipients = [u.id for u in p.users]
            body = json_encode(p.notice)
            new.append((p, body,
                        open_object(public_json(p.notice))))
            for u in p.users:
                per_user.setdefault(u.id, []).append(p.notice.id)
            jobs += [(j, p, len(new)) for j in forward_jobs_for(p.notice, p.users,
                                                                self._addresses, default_after)]
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
            fwd = self._forward_header(jobs, argv, write) if jobs else None
            argv[0] = _msgpack([
                self.settings.feed_max, [k.notice(p.notice.id) for p, _, _ in new],
                [[*self._user_keys(uid), [index[nid] for nid in nids]]
                 for uid, nids in users[:STORE_CHUNK]], fwd, body_base, None,
                1 if write.rest else None, self._refs,
                sorted({index[nid] for _, nids in write.rest for nid in nids}) or None])
            write.argv = argv  # sent alone: a pipeline would check the script first
        elif new:  # a cluster: one call per user, each in its slot
            views = {p.notice.id: view for p, _, view in new}
            for p, body, _ in new:
                pipe.set(k.notice(p.notice.id), body, nx=True)
            for uid, nids in per_user.items():
                args: list[str | bytes | int] = [self.settings.feed_max]
                for nid in nids:
                    args += [nid, views[nid]]
                await self._store(keys=self._user_keys(uid), args=args, client=pipe)
            write.calls = len(new) + len(per_user)
            add_forward_jobs(pipe, k, [j for j, _, _ in jobs])
        for p in folds:
            assert p.fold_into is not None
            await self._fold(keys=[k.notice(p.fold_into), k.folded(p.fold_into)],
                             args=[p.notice.id, p.notice.created_at,
                                   int(self.settings.dedup_window)], client=pipe)
        return write

    def _forward_header(self, jobs: list[tuple[ForwardJob, Plan, int]], argv: list[str | bytes],
                        write: Write) -> list[Any]:
        """The store call's forward part (see STORE_BATCH_LUA): the arq payloads of the jobs
        due now, then the due-set members of the delayed ones, are appended to `argv`. With
        an inline worker, jobs due now are claimed for it."""
        k = self.keys
        now = now_ms()
        claim_ms = int(self.inline.in_progress_timeout_s * 1000) if self.inline else 0
        rows: list[list[Any]] = []
        later: list[ForwardJob] = []
        base = len(argv)
        for j, p, at in jobs:
            if j.due_ms > now:
                later.append(j)
                continue
            payload = job_record(j.nid, j.uid, now)
            argv.append(payload)
            jid = job_id(k, j.nid, j.uid)
            claim = None
            if claim_ms and j.uid not in p.missing:  # no profile: the job reads it then
                # claimed by this process when its notice is new (queued at due + claim_ms:
                # should the process die, arq runs it once the claim has expired)
                user = next((u for u in p.users if u.id == j.uid), None)
                claim = Claim(jid, j.due_ms + claim_ms, payload, p.notice, user)
            rows.append([jid, expires_extra_ms + claim_ms, j.due_ms, 1 if claim else -1, at])
            write.claims.append(claim)
        due_base = len(argv)
        argv += [due_member(j.nid, j.uid) for j in later]
        return [job_key_prefix, result_key_prefix, k.arq_queue, base, rows,
                in_progress_key_prefix, retry_key_prefix, claim_ms, wake_channel(k),
                k.forward_due, due_base, [j.due_ms for j in later]]

    async def _send(self, write: Write) -> None:
        new, folds = write.new, write.folds
        stored: list[Any] = []
        claimed: list[Any] = []
        if write.argv is not None:  # [feed entries made per user, claimed jobs, new bodies]
            stored, claimed, fresh = await self._store_batch(keys=[], args=write.argv)
            for i in range(0, len(write.rest), STORE_CHUNK):
                stored += await self._store_more(write, write.rest[i:i + STORE_CHUNK], fresh)
        async with write.pipe as pipe:
            res = await pipe.execute() if len(pipe) else []
        if write.calls:
            stored, at = res[len(new):write.calls], write.calls
        else:
            at = 0
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
                            [int(fresh[j - 1]) for j in at], None, self._refs])
        out, _, _ = await self._store_batch(keys=[], args=argv)
        return out

    async def _after_folds(self, folds: list[Plan], results: list[Any]) -> None:
        updates: list[bytes] = []
        orphans: list[Plan] = []
        for p, r in zip(folds, results, strict=True):
            if isinstance(r, bytes):
                updates.append(r)
            elif r == -1:  # the first notice is gone: this one starts over
                orphans.append(p)
        NOTICES_FOLDED.inc(len(updates))
        if updates:
            async with self.redis.pipeline(transaction=False) as pipe:
                for body in updates:
                    msg = update_message(notice_view(body))
                    for uid in _notice_decoder.decode(body).recipients:
                        pipe.publish(self.keys.live(uid), msg)
                await pipe.execute()
        if orphans:
            window = int(self.settings.dedup_window)
            async with self.redis.pipeline(transaction=False) as pipe:
                for p in orphans:
                    pipe.set(self.keys.dedup(p.dedup_claim), p.notice.id, ex=window)
                await pipe.execute()
            for p in orphans:
                p.fold_into = None
            await self._write(orphans)
