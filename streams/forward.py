"""Delayed forwarding: one arq job per (notice, user), run when due, sending only if unread.

Scheduling (the notice center's hot path)
    `add_forward_jobs(pipe, keys, jobs)` queues onto the caller's pipeline one EVALSHA per
    job of a small Lua script that writes arq's own job record: if neither
    `arq:job:<id>` nor `arq:result:<id>` exists, PSETEX the job (arq's dict
    `{t, f, a, k, et}`, msgpack via msgspec) and ZADD the queue `keys.arq_queue` at
    `due_ms`. The job id is `<prefix>fwd:<nid>:<uid>`, so re-ingesting a notice never
    schedules a second job while the first is queued, running, or its result is kept
    (`KEEP_RESULT_S`). `arq`'s `enqueue_job` does the same with WATCH/EXISTS/MULTI/EXEC
    round trips per job; the script makes a batch of jobs one pipeline round trip
    (plus one SCRIPT EXISTS per pipeline, which also reloads the script after a
    SCRIPT FLUSH or a restart: the NOSCRIPT case).

    The notice center writes its forwards in its own store call instead (see
    streams.center): a delayed one as one member of `keys.forward_due` that the worker's
    poll pumps into the same job record when due (`_PUMP`, `pump_due`); one due now as
    the job itself, claimed for the center's own worker (`Claim`, `start_inline`).

The job (`forward(ctx, nid, uid)`)
    Loads the notice (`keys.notice(nid)`) and the user (`HGET keys.state("user") uid`).
    The notice is unread by `uid` while it is in the user's feed and not in their read set
    (`keys.read`; a notice retention dropped counts as read). A read notice is recorded
    `skipped_read` and nothing is sent. Otherwise each external
    channel entry of `notice.channels` (not `ui` / `forward_after`) that lists the user
    in `users` or has no `users` list is sent to the user's address on it, unless the
    user's prefs switch it off (`prefs: {"email": false}` → `skipped_pref`) or the user
    has no address there. uid `*` is the notice's user-independent targets (telegram
    `chat_ids`, a webhook or Slack `url`), sent only if no recipient has read it.

Retries
    `retry` results (timeouts, refused connections, 5xx, 429) raise arq's `Retry` with
    exponential backoff (`send_backoff * 2**(attempt-1)`, at least what the other side
    asked for) until `send_attempts` attempts; `permanent` results (a 4xx such as a bad
    chat id) are not retried. Every attempt is one JSON record RPUSHed to
    `keys.deliveries(nid)` (`Delivery`) and counted in
    `vestnik_forward_attempts_total{channel,status}`.

Idempotency and the remaining duplicate window
    After a successful send, `SET keys.sent + "<nid>:<uid>:<channel>" NX EX` marks it, and
    every run skips channels already marked, so a retried, re-run (a worker that died or
    was stopped mid-job) or re-scheduled job never resends what went out. The window that
    remains:
    a process that dies (or loses Redis) after the other side accepted a message and
    before the marker is written resends that one message when the job runs again — at
    least once, never silently lost. Webhook receivers can dedupe on `webhook-id`, which
    is stable across retries (the notice id); emails carry a stable Message-ID.

The worker
    arq's Worker (`ForwardWorker`: the due jobs of a poll are read and claimed with one
    Lua call that also returns their records, instead of arq's WATCH/MULTI exchange and
    run_job's first MULTI per job; the jobs ending in one loop iteration share one
    finish call, atomic like arq's MULTI, that also writes their attempt records and sent
    markers), msgpack instead of pickle, polling every 50 ms and at once when jobs due now
    are published on `wake_channel`, at most `MAX_JOBS` jobs at once; `run_forwarder` runs it inside
    `vestnik center` or alone (`vestnik forwarder`). arq's keys are its own (`arq:job:`,
    `arq:in-progress:`, `arq:result:`, `arq:retry:`), not under the prefix, and span
    slots: the queue needs a non-cluster Redis (or one shard), as arq itself does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Literal

import msgspec
from arq.connections import ArqRedis
from arq.constants import (
    abort_jobs_ss,
    expires_extra_ms,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import ms_to_datetime
from arq.worker import JobExecutionFailed, Retry, Worker, func
from redis.commands.core import AsyncScript

from .channels import Channels, SendResult
from .config import ConfigError, Settings
from .ids import now_ms
from .keys import USER_TOPIC, Keys
from .metrics import FORWARD_ATTEMPTS
from .redis import RETRYABLE, Backoff
from .redis import pool as redis_pool
from .schemas import Notice, User, decode_user, json_encode
from .together import PerIteration

log = logging.getLogger("vestnik.forward")

FUNCTION = "forward"
BROADCAST = "*"  # the uid of a notice's user-independent targets
NOT_CHANNELS = frozenset({"ui", "forward_after"})
KEEP_RESULT_S = 3600  # arq result kept this long: re-scheduling within it is a no-op
MARKER_TTL_S = 86_400  # sent markers outlive every retry and re-run of a job
DELIVERIES_TTL_S = 7 * 86_400  # the attempt log of a notice
JOB_TIMEOUT_S = 120
SEND_TIMEOUT_S = 30.0
BACKOFF_CAP_S = 600.0
MAX_JOBS = 64  # concurrent jobs per forwarder (sends are I/O-bound; more forwarders scale out)
POLL_DELAY_S = 0.05

DeliveryStatus = Literal["sent", "failed", "retrying", "skipped_read", "skipped_pref"]


class ForwardJob(msgspec.Struct):
    """Forward notice `nid` to user `uid` (or `*`: its user-independent targets) at `due_ms`."""

    nid: str
    uid: str
    due_ms: int


class Claim(msgspec.Struct):
    """A job due now that the notice center's store call claimed for its own process (see
    `ForwardWorker.start_inline`), with the notice and user in hand: a fresh notice has no
    sent markers and nobody has read it yet, so the job reads nothing before it sends."""

    job_id: str
    score: int  # where it waits in the queue meanwhile: the fallback should we die
    payload: bytes  # arq's job record, as written
    notice: Notice
    user: User | None  # None for BROADCAST


class Delivery(msgspec.Struct, kw_only=True):
    """One attempt to send a notice on one channel; a JSON item of `keys.deliveries(nid)`."""

    uid: str
    channel: str
    attempt: int
    status: DeliveryStatus
    detail: str = ""
    at: int = 0


class DeliveryList(msgspec.Struct):
    items: list[Delivery]


# ----------------------------------------------------------------- serialization


def _enc_hook(obj: Any) -> Any:
    # arq stores exceptions and datetimes in job results; keep them readable, not pickled
    return repr(obj)


job_serializer = msgspec.msgpack.Encoder(enc_hook=_enc_hook).encode
job_deserializer = msgspec.msgpack.Decoder().decode
_msgpack = msgspec.msgpack.Encoder().encode
_notice_decoder = msgspec.json.Decoder(Notice)
_any_decoder = msgspec.json.Decoder()
_delivery_decoder = msgspec.json.Decoder(Delivery)


def decode_delivery(raw: bytes) -> Delivery:
    return _delivery_decoder.decode(raw)


# ------------------------------------------------------------------- scheduling

# KEYS: job key, result key, queue[, wake channel]. ARGV: job payload, expiry ms, score
# (due ms), job id. With a 4th key, PUBLISH to it (the batch's last job when one is due
# now), scheduled or not: a woken forwarder that finds nothing new just polls once.
_SCHEDULE = AsyncScript(None, b"""
if KEYS[4] then redis.call('PUBLISH', KEYS[4], '') end
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
""")


def job_id(keys: Keys, nid: str, uid: str) -> str:
    return f"{keys.prefix}fwd:{nid}:{uid}"


def job_record(nid: str, uid: str, now: int) -> bytes:
    """arq's job record of a forward (its dict `{t, f, a, k, et}`, msgpack not pickle)."""
    return job_serializer({"t": None, "f": FUNCTION, "a": [nid, uid], "k": {}, "et": now})


def wake_channel(keys: Keys) -> str:
    """The pub/sub channel a forwarder listens on to poll at once (jobs due now)."""
    return f"{keys.prefix}fwd:wake"


def add_forward_jobs(pipe: Any, keys: Keys, jobs: list[ForwardJob]) -> None:
    """Queue on `pipe` (a redis.asyncio pipeline) the commands that schedule `jobs`.

    One EVALSHA per job; each result is 1 (scheduled) or 0 (already scheduled or done).
    When a job is already due, the last call also PUBLISHes to `wake_channel` (the
    forwarders poll at once). The caller executes the pipeline; its results include
    these replies in order.
    """
    if not jobs:
        return
    now = now_ms()
    scripts = getattr(pipe, "scripts", None)
    if scripts is not None:
        scripts.add(_SCHEDULE)  # execute() runs SCRIPT EXISTS / LOAD first: no NOSCRIPT
    # due now (forward_after 0): the last job's call also wakes the forwarders instead of
    # leaving the jobs to the next poll; after every ZADD, so a woken forwarder finds them
    wake = wake_channel(keys) if min(job.due_ms for job in jobs) <= now else None
    last = len(jobs) - 1
    for i, job in enumerate(jobs):
        jid = job_id(keys, job.nid, job.uid)
        payload = job_record(job.nid, job.uid, now)
        expires = max(job.due_ms - now, 0) + expires_extra_ms
        qkeys: tuple[str, ...] = (job_key_prefix + jid, result_key_prefix + jid,
                                  keys.arq_queue)
        if wake is not None and i == last:
            qkeys += (wake,)
        args = (*qkeys, payload, expires, job.due_ms, jid)
        if scripts is not None:
            pipe.evalsha(_SCHEDULE.sha, len(qkeys), *args)
        else:  # a pipeline without script support (e.g. cluster): plain EVAL
            pipe.eval(_SCHEDULE.script, len(qkeys), *args)


def forward_delay(notice: Notice, default: float) -> float:
    """Seconds after `created_at` to forward: the notice's, else its setting's, else default."""
    if notice.forward_after is not None:
        return notice.forward_after
    value = notice.channels.get("forward_after")
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return default


def external_channels(notice: Notice) -> dict[str, dict[str, Any]]:
    return {name: target for name, target in notice.channels.items()
            if name not in NOT_CHANNELS and isinstance(target, dict)}


def forward_jobs_for(notice: Notice, default_after: float) -> list[ForwardJob]:
    """The jobs a stored notice needs (none when it has no external channel).

    One per user recipient named by an external channel entry (an entry without `users`
    names every recipient), plus `*` when an entry has `chat_ids` or a `url`.
    """
    ext = external_channels(notice)
    if not ext:
        return []
    base = notice.created_at or now_ms()
    due = base + int(forward_delay(notice, default_after) * 1000)
    uids: dict[str, None] = {}
    shared = False
    for target in ext.values():
        users = target.get("users")
        for uid in (users if isinstance(users, list) else notice.recipients):
            uids[str(uid)] = None
        if target.get("chat_ids") or target.get("url"):
            shared = True
    jobs = [ForwardJob(notice.id, uid, due) for uid in uids]
    if shared:
        jobs.append(ForwardJob(notice.id, BROADCAST, due))
    return jobs


# ----------------------------------------------------------------------- the job


class Pending(msgspec.Struct):
    """Attempt records and sent markers of one job run, not written yet."""

    nid: str
    records: list[Delivery]
    sent_markers: list[str]


# Set by ForwardWorker.run_claimed for its job: the run's records and markers are then
# written in the same MULTI as the job's finish (one round trip less per job) instead of
# by `_record` itself. Unset (stock arq, tests calling `Forwarder.run`): written at once.
_PENDING: ContextVar[list[Pending] | None] = ContextVar("forward_pending", default=None)


class Send(msgspec.Struct):
    channel: str
    marker: str  # marker key suffix: channel, or channel:key for one shared target
    target: dict[str, Any]


async def read_many(redis: Any, adds: list[Callable[[Any], None]]
                    ) -> list[list[Any] | BaseException]:
    """Every caller's commands (`add(pipe)` queues them) in one pipeline; each caller gets
    its replies, or the first error among them (a PerIteration flush)."""
    sizes: list[int] = []
    async with redis.pipeline(transaction=False) as pipe:
        for add in adds:
            before = len(pipe)
            add(pipe)
            sizes.append(len(pipe) - before)
        replies = await pipe.execute(raise_on_error=False)
    out: list[list[Any] | BaseException] = []
    at = 0
    for n in sizes:
        mine, at = replies[at:at + n], at + n
        out.append(next((r for r in mine if isinstance(r, Exception)), mine))
    return out


def read_state_commands(pipe: Any, keys: Keys, uid: str, nid: str) -> None:
    """Queue the two reads that tell whether `uid` has read `nid` (see `was_read`)."""
    pipe.zscore(keys.feed(uid), nid)
    pipe.zscore(keys.read(uid), nid)


def was_read(in_feed: object, in_read: object) -> bool:
    """The replies of `read_state_commands`: read, or dropped from the feed by retention."""
    return in_feed is None or in_read is not None


class Forwarder:
    """What the job needs, built once per worker: Redis, key names, settings, channels."""

    def __init__(self, redis: Any, keys: Keys, settings: Settings, channels: Channels) -> None:
        self.redis, self.keys, self.settings, self.channels = redis, keys, settings, channels
        # the state reads of jobs that start together: one pipeline (one round trip a poll)
        self._reads: PerIteration[Callable[[Any], None], list[Any]] = PerIteration(
            lambda adds: read_many(redis, adds))

    def backoff(self, attempt: int, asked: float | None) -> float:
        delay = self.settings.send_backoff * (2 ** (attempt - 1))
        return min(BACKOFF_CAP_S, max(delay, asked or 0.0))

    async def run(self, nid: str, uid: str, attempt: int, fresh: Claim | None = None) -> str:
        if fresh is not None:  # just stored: nothing sent, nobody has read it yet
            notice, user = fresh.notice, fresh.user
            sends, records = (self._shared_sends(notice), []) if user is None \
                else self._user_sends(notice, user, attempt)
            if not sends:
                await self._record(nid, records)
                return "nothing to send"
            return await self._deliver(notice, uid, user, attempt, sends, records)
        k = self.keys
        # one read for a user (in one round trip with the other jobs starting now): the
        # notice, the user, unread?, and the sent markers of every channel that could apply
        # (a user's marker is `<nid>:<uid>:<channel>`)
        names = list(self.channels.classes) if uid != BROADCAST else []

        def add(pipe: Any) -> None:
            pipe.get(k.notice(nid))
            if uid != BROADCAST:
                pipe.hget(k.state(USER_TOPIC), uid)
                read_state_commands(pipe, k, uid, nid)
                for name in names:
                    pipe.exists(f"{k.sent}{nid}:{uid}:{name}")

        replies = await self._reads.submit(add)
        if replies[0] is None:
            log.warning("forward %s to %s: notice not found (expired or deleted)", nid, uid)
            return "notice not found"
        notice = _notice_decoder.decode(replies[0])
        records: list[Delivery] = []
        if uid == BROADCAST:
            user = None
            sends = self._shared_sends(notice)
        else:
            if replies[1] is None:
                log.warning("forward %s: user %s not found in %s", nid, uid, k.state(USER_TOPIC))
                if attempt == 1:
                    await self._record(nid, [self._rec(uid, "", attempt, "failed",
                                                       f"user {uid} not found")])
                return "user not found"
            user = decode_user(uid, replies[1])
            if isinstance(user, str):
                log.warning("forward %s: %s", nid, user)
                if attempt == 1:
                    await self._record(nid, [self._rec(uid, "", attempt, "failed", user)])
                return user
            sends, records = self._user_sends(notice, user, attempt)
        if not sends:
            await self._record(nid, records)
            return "nothing to send"
        if uid == BROADCAST:
            sends, read = await self._broadcast_state(notice, sends)
        else:
            marked = {name for name, m in zip(names, replies[4:], strict=True) if m}
            sends = [s for s in sends if s.marker not in marked]
            read = was_read(replies[2], replies[3])
        if not sends:
            await self._record(nid, records)
            return "already sent"
        if read:
            records += [self._rec(uid, s.channel, attempt, "skipped_read") for s in sends]
            await self._record(nid, records)
            return "read"
        return await self._deliver(notice, uid, user, attempt, sends, records)

    async def _deliver(self, notice: Notice, uid: str, user: User | None, attempt: int,
                       sends: list[Send], records: list[Delivery]) -> str:
        """Send on every channel in `sends`; record each attempt; Retry what may succeed
        later."""
        nid, k = notice.id, self.keys
        final = attempt >= self.settings.send_attempts
        results = await asyncio.gather(*(self._send(notice, user, s) for s in sends),
                                       return_exceptions=True)
        sent: list[Send] = []
        retry_after: list[float] = []
        bug: BaseException | None = None
        for s, res in zip(sends, results, strict=True):
            if isinstance(res, BaseException):
                bug = bug or res
                records.append(self._rec(uid, s.channel, attempt, "failed",
                                         f"{s.marker}: {type(res).__name__}: {res}"))
                continue
            detail = res.detail if s.marker == s.channel else f"{s.marker}: {res.detail}"
            if res.ok:
                sent.append(s)
                records.append(self._rec(uid, s.channel, attempt, "sent", detail))
            elif res.status == "retry" and not final:
                retry_after.append(res.retry_after or 0.0)
                records.append(self._rec(uid, s.channel, attempt, "retrying", detail))
            else:
                records.append(self._rec(uid, s.channel, attempt, "failed", detail))
        await self._record(nid, records, sent_markers=[
            f"{k.sent}{nid}:{uid}:{s.marker}" for s in sent])
        if bug is not None:
            raise bug
        if retry_after:
            delay = self.backoff(attempt, max(retry_after))
            raise Retry(defer=delay)
        return f"sent {len(sent)}/{len(sends)}"

    def _user_sends(self, notice: Notice, user: User, attempt: int
                    ) -> tuple[list[Send], list[Delivery]]:
        sends: list[Send] = []
        records: list[Delivery] = []
        for name, target in external_channels(notice).items():
            users = target.get("users")
            if isinstance(users, list) and user.id not in {str(u) for u in users}:
                continue
            address = self.channels.user_address(name)
            if name in self.channels.classes and (address is None
                                                  or not getattr(user, address, None)):
                continue  # not a per-user channel, or the user has no address on it
            if user.prefs.get(name) is False:
                if attempt == 1:
                    records.append(self._rec(user.id, name, attempt, "skipped_pref",
                                             f"user {user.id} switched {name} off"))
                continue
            sends.append(Send(name, name, target))
        return sends, records

    def _shared_sends(self, notice: Notice) -> list[Send]:
        sends: list[Send] = []
        for name, target in external_channels(notice).items():
            channel = self.channels.get(name)
            if channel is None:
                if target.get("chat_ids") or target.get("url"):
                    sends.append(Send(name, name, target))  # recorded as not configured
                continue
            for key, one in channel.shared_targets(target):
                sends.append(Send(name, f"{name}:{key}" if key else name, one))
        return sends

    async def _broadcast_state(self, notice: Notice, sends: list[Send]
                               ) -> tuple[list[Send], bool]:
        """The shared sends not marked sent yet, and whether any recipient has read it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for s in sends:
                pipe.exists(f"{self.keys.sent}{notice.id}:{BROADCAST}:{s.marker}")
            for r in notice.recipients:
                read_state_commands(pipe, self.keys, r, notice.id)
            replies = await pipe.execute()
        marked, scores = replies[:len(sends)], replies[len(sends):]
        return ([s for s, m in zip(sends, marked, strict=True) if not m],
                any(was_read(f, r) for f, r in zip(scores[::2], scores[1::2], strict=True)))

    async def _send(self, notice: Notice, user: User | None, s: Send) -> SendResult:
        channel = self.channels.get(s.channel)
        if channel is None:
            why = "is not configured" if s.channel in self.channels.classes else "is unknown"
            return SendResult.permanent(f"channel {s.channel} {why}")
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                return await channel.send(notice, user, s.target)
        except TimeoutError:
            return SendResult.retry(f"no answer in {SEND_TIMEOUT_S:g}s")

    @staticmethod
    def _rec(uid: str, channel: str, attempt: int, status: DeliveryStatus,
             detail: str = "") -> Delivery:
        return Delivery(uid=uid, channel=channel, attempt=attempt, status=status,
                        detail=detail[:1000], at=now_ms())

    async def _record(self, nid: str, records: list[Delivery],
                      sent_markers: list[str] | None = None) -> None:
        if not records and not sent_markers:
            return
        pending = _PENDING.get()
        if pending is not None:  # ForwardWorker writes them with the job's finish
            pending.append(Pending(nid, records, sent_markers or []))
            return
        # no job to finish (a stock arq worker, a direct call): the records alone
        await self.finish(None, [[None, 0, 0, 0, 0, [self.record_args(
            Pending(nid, records, sent_markers or []))]]], [])
        self.count(records)

    def record_args(self, p: Pending) -> list[Any]:
        """`p` as `_FINISH` takes it: [deliveries key, [record JSON...], [marker key...]]."""
        return [self.keys.deliveries(p.nid), [json_encode(r).decode() for r in p.records],
                p.sent_markers]

    async def finish(self, queue: str | None, jobs: list[list[Any]],
                     results: list[bytes]) -> None:
        """Run `_FINISH`: the jobs' finishes (arq's) with their records and sent markers."""
        await _FINISH(keys=[], args=[_msgpack([
            [in_progress_key_prefix, result_key_prefix, retry_key_prefix, job_key_prefix,
             abort_jobs_ss, queue or "", MARKER_TTL_S, DELIVERIES_TTL_S], jobs]), *results],
            client=self.redis)

    @staticmethod
    def count(records: list[Delivery]) -> None:
        for r in records:
            FORWARD_ATTEMPTS.labels(r.channel or "-", r.status).inc()


async def forward(ctx: dict[str, Any], nid: str, uid: str) -> str:
    """The arq job: forward notice `nid` to user `uid` (see the module docstring)."""
    forwarder: Forwarder = ctx["forwarder"]
    attempt = ctx.get("job_try") or 1
    try:
        return await forwarder.run(nid, uid, attempt, ctx.get("fresh"))
    except RETRYABLE as e:
        # Redis flaked (restart, failover): run again later; sent markers skip what went out
        delay = forwarder.backoff(min(attempt, 6), None)
        log.warning("forward %s to %s: redis unavailable (%s); again in %.1fs", nid, uid, e,
                    delay)
        raise Retry(defer=delay) from e


# ---------------------------------------------------------------------- the worker


class _ArqRedis(ArqRedis):
    async def close(self, close_connection_pool: bool | None = None) -> None:
        # arq 0.28 still calls redis-py's deprecated close(); same effect, no warning
        await self.aclose(close_connection_pool=close_connection_pool)


def arq_pool(settings: Settings, keys: Keys, max_connections: int) -> ArqRedis:
    assert settings.redis_url
    shared = redis_pool(settings.redis_url, max_connections=max_connections,
                        name="vestnik-forwarder")
    return _ArqRedis(shared, job_serializer=job_serializer, job_deserializer=job_deserializer,
                     default_queue_name=keys.arq_queue)


# Delayed forwards wait in `keys.forward_due` (a sorted set: member `due_member(nid, uid)`,
# score the due time in ms), written by the notice center's store call: one ZADD member per
# (notice, user) instead of an arq job record, a key with an expiry and a queue entry each
# (the center's hot path; ZADD of the same member again is a no-op, so a re-delivered
# notice schedules nothing twice). When due, `_PUMP` turns them into arq jobs exactly as
# `add_forward_jobs` writes them (unless the job or its result exists) and drops them.
# KEYS: queue, due set. ARGV (from 5): job id prefix, function, job expiry ms, pump limit.
_PUMP = b"""
local function pump(queue, due_key, now, prefix, fn, expiry, limit)
  local items = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                           limit)
  if #items == 0 then return 0 end
  local pack = cmsgpack.pack
  -- arq's job record {t: nil, f: fn, a: [nid, uid], k: {}, et: now} in msgpack; the
  -- member is the msgpack array [nid, uid] already
  local head = '\\133' .. pack('t') .. '\\192' .. pack('f') .. pack(fn) .. pack('a')
  local tail = pack('k') .. '\\128' .. pack('et') .. pack(now)
  local members = {}
  for i = 1, #items, 2 do
    local m, score = items[i], items[i + 1]
    local a = cmsgpack.unpack(m)
    local jid = prefix .. a[1] .. ':' .. a[2]
    if redis.call('EXISTS', 'arq:job:' .. jid, 'arq:result:' .. jid) == 0 then
      redis.call('PSETEX', 'arq:job:' .. jid, expiry, head .. m .. tail)
      redis.call('ZADD', queue, score, jid)
    end
    members[#members + 1] = m
  end
  redis.call('ZREM', due_key, unpack(members))
  return #members
end
"""

# KEYS: queue, due set. ARGV: now ms, in-progress ttl ms, max jobs to claim, queue read
# limit, then _PUMP's. Pumps the due forwards into jobs, reads the due ids (arq's
# ZRANGEBYSCORE) and claims them as arq's start_jobs does (the in-progress key, SET NX).
# Returns the number of due ids read and of forwards pumped, then per claimed job: id,
# score, the job record (false when expired) and the try number — what arq's run_job
# reads first with its own MULTI (GET job, INCR + EXPIRE retry key).
_CLAIM = _PUMP + b"""
local n, limit, now = 0, tonumber(ARGV[3]), tonumber(ARGV[1])
local pumped = pump(KEYS[1], KEYS[2], now, ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]))
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[4]))
local out = {#ids / 2, pumped}
for i = 1, #ids, 2 do
  if n >= limit then break end
  local id, score = ids[i], ids[i + 1]
  if redis.call('SET', 'arq:in-progress:' .. id, '1', 'PX', ARGV[2], 'NX') then
    out[#out + 1] = id
    out[#out + 1] = score
    out[#out + 1] = redis.call('GET', 'arq:job:' .. id)
    out[#out + 1] = redis.call('INCR', 'arq:retry:' .. id)
    redis.call('EXPIRE', 'arq:retry:' .. id, 88400)
    n = n + 1
  end
end
return out
"""

# The pump alone (for an arq Worker of one's own): KEYS and ARGV as _CLAIM's, ARGV[1] now.
_PUMP_ONLY = AsyncScript(None, _PUMP + b"""
return pump(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]))
""")
PUMP_LIMIT = 1000  # forwards turned into jobs per call (bounded script time)


def due_member(nid: str, uid: str) -> bytes:
    """The member of `keys.forward_due` for a delayed forward of `nid` to `uid`."""
    return _msgpack([nid, uid])


def _pump_args(keys: Keys) -> list[str | int]:
    return [f"{keys.prefix}fwd:", FUNCTION, expires_extra_ms, PUMP_LIMIT]


async def pump_due(redis: Any, keys: Keys) -> int:
    """Turn the delayed forwards that are due into arq jobs (at most PUMP_LIMIT); returns
    how many were taken. ForwardWorker does this on every poll; a stock arq Worker needs it
    called beside it."""
    return int(await _PUMP_ONLY(keys=[keys.arq_queue, keys.forward_due],
                                args=[now_ms(), 0, 0, 0, *_pump_args(keys)], client=redis))


class ForwardWorker(Worker):
    """arq's Worker, claiming a poll's due jobs with one script call instead of a
    WATCH/EXISTS/ZSCORE/MULTI/EXEC exchange per job (same checks, same in-progress key).

    It polls every `poll_delay` as arq does, and also at once when (a) a message arrives
    on `wake_channel` (jobs due now were scheduled) or (b) a job ends while the last poll
    left due jobs unclaimed (every slot was busy) and a quarter of the slots are free
    again: arq's loop would wait for the next
    poll in both cases, which caps a worker at `max_jobs` per poll and delays an
    immediate forward by up to `poll_delay`.
    """

    _claim: AsyncScript | None = None
    _ending: PerIteration[tuple[Any, ...], None]  # finishes of jobs that end together
    wake_on: str | None = None  # the pub/sub channel; None: poll on the timer only
    _wake: asyncio.Event | None = None
    _backlog = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ending = PerIteration(self._finish_many)

    def start_inline(self, claims: list[Claim]) -> None:
        """Run jobs the notice center claimed in its store call, in this process, now (in
        the worker's slots, as if this worker had claimed them; `Claim`)."""
        for c in claims:
            task = self.loop.create_task(self._run_inline(c))
            self.tasks[c.job_id] = task

    async def _run_inline(self, c: Claim) -> None:
        await self.sem.acquire()
        self.job_counter += 1
        try:
            await self.run_claimed(c.job_id, c.score, c.payload, 1, c)
        finally:
            self._release_sem_dec_counter_on_complete()

    async def main(self) -> None:
        # arq's main without its poll timer: the same iteration, woken early (see above)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        wake = self._wake = asyncio.Event()
        listener = (asyncio.create_task(self._listen(wake), name="forwarder-wake")
                    if self.wake_on and not self.burst else None)
        try:
            while True:
                wake.clear()
                await self._poll_iteration()
                if self.burst:
                    if 0 <= self.max_burst_jobs <= self._jobs_started():
                        await asyncio.gather(*self.tasks.values())
                        return
                    if await self._queues_empty():
                        await asyncio.gather(*self.tasks.values())
                        return
                if not wake.is_set():
                    try:
                        async with asyncio.timeout(self.poll_delay_s):
                            await wake.wait()
                    except TimeoutError:
                        pass
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    async def _queues_empty(self) -> bool:
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zcard(self.queue_name)
            pipe.zcard(self.ctx["forwarder"].keys.forward_due)
            return not any(await pipe.execute())

    async def _listen(self, wake: asyncio.Event) -> None:
        """Set `wake` on every message of `wake_on`; resubscribe after a lost connection
        (meanwhile the timer polls)."""
        assert self.wake_on is not None
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            pubsub = self.pool.pubsub()
            try:
                await pubsub.subscribe(self.wake_on)
                backoff.reset()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30)
                    if msg is not None:
                        wake.set()
            except RETRYABLE as e:
                log.warning("forwarder wake-up channel lost (%s); polling meanwhile", e)
            finally:
                await pubsub.aclose()
            await backoff.wait()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        # a quarter of the slots free: one poll claims a batch, not one job per poll
        if self._backlog and self._wake is not None \
                and self.max_jobs - self.job_counter >= self.max_jobs // 4:
            self._wake.set()

    async def _poll_iteration(self) -> None:
        """arq's poll: claim due jobs (one script call that also reads the queue: no
        ZRANGEBYSCORE round trip with the ids sent back), reap done tasks, heartbeat."""
        free = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            free = min(free, self.max_burst_jobs - self._jobs_started())
        if free > 0:
            await self._claim_due(free)
        else:
            self._backlog = True  # full: the next job to end polls again
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                t.result()  # errors of a job task surface, as in arq
        await self.heart_beat()

    async def _claim_due(self, free: int) -> None:
        script = self._claim
        if script is None:
            script = self._claim = self.pool.register_script(_CLAIM)
        keys: Keys = self.ctx["forwarder"].keys
        due, pumped, *claimed = await script(
            keys=[self.queue_name, keys.forward_due],
            args=[now_ms(), int(self.in_progress_timeout_s * 1000), free,
                  self.queue_read_limit, *_pump_args(keys)])
        # every free slot taken and more were due: poll again as soon as slots free up
        self._backlog = len(claimed) // 4 >= free and due > free
        if pumped >= PUMP_LIMIT and self._wake is not None:
            self._wake.set()  # more forwards are due: pump again at once
        for i in range(0, len(claimed), 4):
            await self.sem.acquire()  # never waits: at most `free` jobs are claimed
            self.job_counter += 1
            job_id = claimed[i].decode()
            task = self.loop.create_task(self.run_claimed(
                job_id, int(float(claimed[i + 1])), claimed[i + 2], int(claimed[i + 3])))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def run_claimed(self, job_id: str, score: int, raw: bytes | None,
                          job_try: int, fresh: Claim | None = None) -> None:
        """arq's run_job for a job the claim script read: the same outcomes (result record,
        retry with defer, max tries, failure, cancellation re-runs it) and the same finish
        (`finish_job` / `finish_failed_job`), without run_job's first MULTI round trip and
        its per-job task. Only `forward` runs here (arq's abort and cron are off)."""
        start_ms = now_ms()
        fn, args, kwargs, enqueue_ms = "<unknown>", (), {}, 0
        failed: BaseException | None = None
        if raw is None:
            failed = JobExecutionFailed("job expired")
        else:
            try:
                fn, args, kwargs, _, enqueue_ms = deserialize_job_raw(
                    raw, deserializer=self.job_deserializer)
            except SerializationError as e:
                failed = e
        function = self.functions.get(fn)
        if failed is None and function is None:
            failed = JobExecutionFailed(f"function {fn!r} not found")
        if failed is None and function is not None:
            max_tries = self.max_tries if function.max_tries is None else function.max_tries
            if job_try > max_tries:
                failed = JobExecutionFailed(f"max {max_tries} retries exceeded")
        ref = f"{job_id}:{fn}"
        if failed is not None or function is None:
            log.warning("forward job %s failed before it ran: %s", ref, failed)
            self.jobs_failed += 1
            data = serialize_result(fn, args, kwargs, job_try, enqueue_ms, False, failed,
                                    start_ms, now_ms(), ref, self.queue_name, job_id=job_id,
                                    serializer=self.job_serializer)
            await asyncio.shield(self.finish_failed_job(job_id, data))
            return
        ctx = {**self.ctx, "job_id": job_id, "job_try": job_try, "score": score,
               "enqueue_time": ms_to_datetime(enqueue_ms), "fresh": fresh}
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        result: Any = None
        success = finish = False
        incr_score: int | None = None
        pending: list[Pending] = []
        _PENDING.set(pending)  # this task's context only
        try:
            async with asyncio.timeout(timeout_s):
                result = await function.coroutine(ctx, *args, **kwargs)
        except Retry as e:
            incr_score = e.defer_score + (now_ms() - score) if e.defer_score else None
            self.jobs_retried += 1
        except asyncio.CancelledError:
            # the worker stops: the job stays queued and runs again (arq's "cancelled, will
            # be run again"); its in-progress key is dropped below
            self.jobs_retried += 1
            await asyncio.shield(self._finish(job_id, pending, False, None, 0, None))
            raise
        except Exception as e:
            log.exception("forward job %s failed: %s: %s", ref, type(e).__name__, e)
            result, finish = e, True
            self.jobs_failed += 1
        else:
            success = finish = True
            self.jobs_complete += 1
        keep = self.keep_result_s if function.keep_result_s is None else function.keep_result_s
        data = None
        if finish and keep > 0:
            data = serialize_result(fn, args, kwargs, job_try, enqueue_ms, success, result,
                                    start_ms, now_ms(), ref, self.queue_name, job_id=job_id,
                                    serializer=self.job_serializer)
        await asyncio.shield(self._finish(job_id, pending, finish, data, keep, incr_score))

    async def _finish(self, job_id: str, pending: list[Pending], finish: bool,
                      result: bytes | None, keep_s: float, incr_score: int | None) -> None:
        """arq's finish_job with the run's attempt records and sent markers. The jobs that
        end in the same loop iteration share one MULTI (one round trip, one write)."""
        await self._ending.submit((job_id, pending, finish, result, keep_s, incr_score))

    async def _finish_many(self, batch: list[tuple[Any, ...]]) -> list[BaseException | None]:
        forwarder: Forwarder = self.ctx["forwarder"]
        jobs: list[list[Any]] = []
        results: list[bytes] = []
        for job_id, pending, finish, result, keep_s, incr_score in batch:
            if finish and result:
                results.append(result)
            jobs.append([job_id, int(finish), int(keep_s * 1000),
                         (len(results) + 1) if finish and result else 0, incr_score or 0,
                         [forwarder.record_args(p) for p in pending]])
        # an error reaches each job (RETRYABLE: its in-progress key expires)
        await forwarder.finish(self.queue_name, jobs, results)
        for _, pending, *_ in batch:
            for p in pending:
                forwarder.count(p.records)
        return [None] * len(batch)


# arq's finish_job for the jobs that ended in one loop iteration, with their attempt
# records and sent markers: one call, atomic as arq's MULTI. ARGV[1]: msgpack [[in-progress
# prefix, result prefix, retry prefix, job prefix, abort set, queue, marker ttl s,
# deliveries ttl s], [[job id, finished (0/1), keep result ms, ARGV index of its result or
# 0, score increment (a retry) or 0, [[deliveries key, [record JSON...], [marker key...]]
# ...]] per job]]; ARGV[2...]: the results (arq's msgpack records). A job id of nil: the
# records and markers alone (the one place both are written).
_FINISH = AsyncScript(None, b"""
local h = cmsgpack.unpack(ARGV[1])
local c, jobs = h[1], h[2]
local progress, result, retry, job, abort, queue = c[1], c[2], c[3], c[4], c[5], c[6]
for _, j in ipairs(jobs) do
  local jid = j[1]  -- nil: records alone
  for _, p in ipairs(j[6]) do
    for _, m in ipairs(p[3]) do redis.call('SET', m, '1', 'NX', 'EX', c[7]) end
    if #p[2] > 0 then
      redis.call('RPUSH', p[1], unpack(p[2]))
      redis.call('EXPIRE', p[1], c[8])
    end
  end
  if not jid then
    -- no job to finish
  elseif j[2] == 1 then
    if j[4] > 0 then redis.call('SET', result .. jid, ARGV[j[4]], 'PX', j[3]) end
    redis.call('DEL', progress .. jid, retry .. jid, job .. jid)
    redis.call('ZREM', abort, jid)
    redis.call('ZREM', queue, jid)
  else
    if j[5] ~= 0 then redis.call('ZINCRBY', queue, j[5], jid) end
    redis.call('DEL', progress .. jid)
  end
end
return #jobs
""")


def make_worker(settings: Settings, *, burst: bool = False,
                channels: Channels | None = None) -> ForwardWorker:
    """An arq Worker for forward jobs; `run_forwarder` runs it. Call inside a running loop."""
    if not settings.redis_url:
        raise ConfigError("VESTNIK_REDIS_URL: required to forward notices")
    keys = Keys(settings.prefix)
    redis = arq_pool(settings, keys, MAX_JOBS + 8)
    forwarder = Forwarder(redis, keys, settings,
                          channels or Channels.from_settings(settings))
    if logging.getLogger("arq.worker").level == logging.NOTSET:
        # arq logs every job start and end at INFO: too much at 1,000 jobs/s
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
    if logging.getLogger("httpx").level == logging.NOTSET:
        # httpx logs every request's URL at INFO: a Telegram bot token is in the path and
        # a Slack or webhook URL can be a secret itself (attempts are in /deliveries)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    worker = ForwardWorker(
        [func(forward, name=FUNCTION, timeout=JOB_TIMEOUT_S, keep_result=KEEP_RESULT_S,
              max_tries=settings.send_attempts + 3)],
        queue_name=keys.arq_queue,
        redis_pool=redis,
        burst=burst,
        handle_signals=False,
        poll_delay=POLL_DELAY_S,
        max_jobs=MAX_JOBS,
        queue_read_limit=2 * MAX_JOBS,
        ctx={"forwarder": forwarder},
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        health_check_interval=30,
    )
    worker.wake_on = wake_channel(keys)
    return worker


async def run_forwarder(settings: Settings, *, burst: bool = False,
                        worker: ForwardWorker | None = None) -> None:
    """Run forward jobs until cancelled (or, with `burst`, until the queue is empty).

    Embeddable: it installs no signal handlers; cancel the task to stop it. Jobs running
    at that moment are cancelled and run again later (their sent markers prevent a
    second send of what already went out).
    """
    worker = worker or make_worker(settings, burst=burst)
    forwarder: Forwarder = worker.ctx["forwarder"]
    loop = asyncio.get_running_loop()
    backoff = Backoff(base=0.1, cap=5.0)
    try:
        while True:
            # arq's poll loop ends on the first refused connection (redis-py does not retry
            # a refused connect): run it again once Redis is back, instead of stopping
            started = loop.time()
            try:
                await worker.async_run()
                return
            except RETRYABLE as e:
                if loop.time() - started > 30:
                    backoff.reset()
                log.warning("forwarder lost Redis (%s); polling again after a backoff", e)
                await backoff.wait()
    finally:
        try:
            await worker.close()
        except RETRYABLE as e:
            log.warning("forwarder closed without Redis (%s)", e)
        finally:
            await forwarder.channels.aclose()


__all__ = [
    "BROADCAST", "Delivery", "DeliveryList", "ForwardJob", "add_forward_jobs",
    "decode_delivery", "forward_jobs_for", "job_id", "run_forwarder",
]
