"""The forward job: send a stored notice to one user (or its shared targets), once.

The job (`forward(ctx, nid, uid)`)
    Loads the notice (`keys.notice(nid)`) and the user (`HGET keys.state("user") uid`).
    The notice is unread by `uid` while it is in the user's feed and not in their read set
    (`keys.read`; a notice retention dropped counts as read). A read notice is recorded
    `skipped_read` and nothing is sent. Otherwise it sends on the channels that
    `schedule.user_routes` decides (as the center did when it scheduled the job): each
    external entry of `notice.channels` that names the user, or names nobody, to the
    user's address on it, unless the user muted the alert or switched the channel off
    (`prefs: {"email": false}` → `skipped_pref`) or has no address there. uid `*` is
    the notice's user-independent targets (telegram `chat_ids`, a webhook or Slack
    `url`), sent only if no recipient has read it.

Stages (`schedule.Stage`, the job's third argument)
    A channel group (`a<ms>`: entries with an `after` of their own) sends only its group's
    channels; the plain job the others. A job that finds the user held when it runs (a
    snooze set after scheduling, quiet hours: `policy.hold`) records `held` per channel
    ("until <time>") and schedules itself again at the hold's end (`h<ms>`, a new job id).
    A forward of a notice resolved meanwhile (`status: resolved`) sends nothing and
    records `skipped_resolved`. The `resolved` job sends `Channel.send_resolved` on each
    channel that got the firing message (a field `<uid>:<marker>` of `keys.threads(nid)`,
    written with the firing send's sent marker: the `SendResult.ref` to reply to, or ""),
    once (sent markers `resolved:<marker>`), read or not; while a firing forward of the
    same pair runs (arq's in-progress key of the plain or a group job), it waits for it
    (arq's Retry), so a firing message that lands meanwhile is not missed.

Retries
    `retry` results (timeouts, refused connections, 5xx, 429) raise arq's `Retry` with
    exponential backoff (`send_backoff * 2**(attempt-1)`, at least what the other side
    asked for) until `send_attempts` attempts; `permanent` results (a 4xx such as a bad
    chat id) are not retried. Every attempt is one JSON record RPUSHed to
    `keys.deliveries(nid)` (`Delivery`) and counted in
    `vestnik_forward_attempts_total{channel,status}`.

Idempotency and the remaining duplicate window
    After a successful send, `SET keys.sent_marker(nid, uid, channel) NX EX` marks it, and
    every run skips channels already marked, so a retried, re-run (a worker that died or
    was stopped mid-job) or re-scheduled job never resends what went out. The window that
    remains:
    a process that dies (or loses Redis) after the other side accepted a message and
    before the marker is written resends that one message when the job runs again — at
    least once, never silently lost. Webhook receivers can dedupe on `webhook-id`, which
    is stable across retries (the notice id); emails carry a stable Message-ID.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import msgspec
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.worker import Retry

from vestnik.streams import logs, lua, snoozes
from vestnik.streams.channels import Channels, SendResult
from vestnik.streams.coalesce import PerIteration
from vestnik.streams.config import Config
from vestnik.streams.forward.policy import hold
from vestnik.streams.forward.schedule import (
    BROADCAST,
    PLAIN,
    Claim,
    ForwardJob,
    Stage,
    add_forward_jobs,
    delay_ms,
    group_of,
    msgpack_encode,
    stage_filter,
    user_routes,
)
from vestnik.streams.ids import now_ms
from vestnik.streams.keys import USER_TOPIC, ForwardKeys, Keys
from vestnik.streams.metrics import FORWARD_ATTEMPTS, SEND_SECONDS
from vestnik.streams.redis import RETRYABLE
from vestnik.streams.schemas import ChannelTarget, Notice, User, decode_user, decoder, json_encode

log = logging.getLogger("vestnik.forward")

MARKER_TTL_S = 86_400  # sent markers outlive every retry and re-run of a job
DELIVERIES_TTL_S = 7 * 86_400  # the attempt log of a notice
SEND_TIMEOUT_S = 30.0
BACKOFF_CAP_S = 600.0

DeliveryStatus = Literal["sent", "failed", "retrying", "skipped_read", "skipped_pref",
                         "skipped_no_address", "skipped_gone", "skipped_resolved", "held",
                         "digested"]
RESOLVED_MARK = "resolved:"  # a resolved message's sent marker: after the firing one's
REF_MAX = 1000  # characters of a SendResult.ref kept (the other side's word: bounded)


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


_notice_decoder = decoder(Notice)
_delivery_decoder = msgspec.json.Decoder(Delivery)


def decode_delivery(raw: bytes) -> Delivery:
    return _delivery_decoder.decode(raw)


class Pending(msgspec.Struct):
    """Attempt records, sent markers and threads (`keys.threads(nid)` fields and values,
    flat) of one job run, not written yet."""

    nid: str
    records: list[Delivery]
    sent_markers: list[str]
    threads: list[str] = []


# Set by ForwardWorker.run_claimed for its job: the run's records and markers are then
# written in the same MULTI as the job's finish (one round trip less per job) instead of
# by `_record` itself. Unset (stock arq, tests calling `Forwarder.run`): written at once.
PENDING: ContextVar[list[Pending] | None] = ContextVar("forward_pending", default=None)


class Send(msgspec.Struct):
    channel: str
    marker: str  # marker key suffix: channel, or channel:key for one shared target
    target: ChannelTarget
    reply_to: str | None = None  # a resolved message: the firing one's ref


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


def iso(ms: int) -> str:
    """ms as UTC ISO 8601, to the second (delivery details); a time no calendar has, as
    the number."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return str(ms)


class Diverter(Protocol):
    """Takes some of a job's sends elsewhere (streams.forward.digest.Digests.divert)."""

    async def __call__(self, notice: Notice, user: User, sends: list[Send],
                       records: list[Delivery], attempt: int) -> list[Send]: ...


class Forwarder:
    """What the job needs, built once per worker: Redis, key names, settings, channels."""

    # set by make_worker: the sends to a user that go into a digest instead (digest.py)
    divert: Diverter | None = None

    def __init__(self, redis: Any, keys: Keys, settings: Config, channels: Channels) -> None:
        self.redis, self.keys, self.settings, self.channels = redis, keys, settings, channels
        # the state reads of jobs that start together: one pipeline (one round trip a poll)
        self._reads: PerIteration[Callable[[Any], None], list[Any]] = PerIteration(
            lambda adds: read_many(redis, adds))

    def backoff(self, attempt: int, asked: float | None) -> float:
        delay = self.settings.send_backoff * (2 ** (attempt - 1))
        return min(BACKOFF_CAP_S, max(delay, asked or 0.0))

    async def run(self, nid: str, uid: str, attempt: int, fresh: Claim | None = None,
                  stage: Stage = PLAIN) -> str:
        if fresh is not None:  # just stored: nothing sent, nobody has read it yet
            notice, user = fresh.notice, fresh.user
            sends, records = (self._shared_sends(notice, stage), []) if user is None \
                else self._user_sends(notice, user, attempt, stage)
            if not sends:
                await self._record(nid, records)
                return "nothing to send"
            return await self._deliver(notice, uid, user, attempt, sends, records, stage)
        k = self.keys
        # one read for a user (in one round trip with the other jobs starting now): the
        # notice, the user, unread?, the sent markers of every channel that could apply
        # (a user's marker is `<nid>:<uid>:<channel>`), the snoozes, and for a `resolved`
        # job the firing messages' threads
        names = list(self.channels.classes) if uid != BROADCAST else []
        resolved = stage.resolved
        mark = RESOLVED_MARK if resolved else ""

        def add(pipe: Any) -> None:
            pipe.get(k.notice(nid))
            if uid != BROADCAST:
                pipe.hget(k.state(USER_TOPIC), uid)
                read_state_commands(pipe, k, uid, nid)
                # one command (a reply each costs more than the reading): the markers,
                # then the snoozes (the forwarder's Redis is one node: arq's queue is)
                pipe.mget([*(k.sent_marker(nid, uid, mark + name) for name in names),
                           k.snooze(uid)])
                if resolved and names:
                    pipe.hmget(k.threads(nid), [f"{uid}:{name}" for name in names])

        replies = await self._reads.submit(add)
        if replies[0] is None:
            # its body went with the last feed that held it (retention, a user's delete):
            # recorded, so /deliveries says why nothing went (the record expires on its own)
            log.warning("forward %s to %s: notice not found (left every feed)", nid, uid)
            if attempt == 1 and not resolved:
                await self._record(nid, [self._rec(
                    uid, "", attempt, "skipped_gone",
                    "the notice left every feed before the forward was due")])
            return "notice not found"
        notice = _notice_decoder.decode(replies[0])
        if resolved:
            if notice.status != "resolved":
                return "not resolved"  # nothing to say (a stray job)
            if await self._firing_in_flight(notice, uid):
                # its send may land after the threads are read: ask again once it is done
                raise Retry(defer=self.backoff(attempt, 1.0))
        records: list[Delivery] = []
        if uid == BROADCAST:
            user = None
            sends = self._shared_sends(notice, stage)
        else:
            # no profile (never published, or deleted): no address anywhere, recorded below
            user = User(id=uid) if replies[1] is None else decode_user(uid, replies[1])
            if isinstance(user, str):
                log.warning("forward %s: %s", nid, user)
                if attempt == 1:
                    await self._record(nid, [self._rec(uid, "", attempt, "failed", user)])
                return user
            sends, records = self._user_sends(notice, user, attempt, stage)
        if not sends:
            await self._record(nid, records)
            return "nothing to send"
        if uid == BROADCAST:
            if resolved:
                sends = await self._shared_threads(notice, sends)
                read = False
            else:
                sends, read = await self._broadcast_state(notice, sends)
        else:
            *markers, snoozed = replies[4]
            marked = {name for name, m in zip(names, markers, strict=True) if m}
            sends = [s for s in sends if s.marker not in marked]
            read = was_read(replies[2], replies[3]) and not resolved
            if user is not None:  # (always, for a user's job)
                user.snooze = snoozes.decode_value(snoozed)
            if resolved:
                refs = dict(zip(names, replies[5], strict=True)) if names else {}
                sends = _threaded(sends, refs)
        if not sends:
            await self._record(nid, records)
            return "already sent"
        if notice.status == "resolved" and not resolved:
            records += [self._rec(uid, s.channel, attempt, "skipped_resolved",
                                  f"incident resolved at {iso(notice.resolved_at)}"
                                  if notice.resolved_at else "incident resolved")
                        for s in sends]
            await self._record(nid, records)
            return "resolved"
        if read:
            records += [self._rec(uid, s.channel, attempt, "skipped_read") for s in sends]
            await self._record(nid, records)
            return "read"
        if user is not None:
            now = now_ms()
            held = hold(user, notice, now)
            if held is not None:
                return await self._hold(notice, uid, attempt, sends, records, stage,
                                        held.until, held.why)
        return await self._deliver(notice, uid, user, attempt, sends, records, stage)

    async def _hold(self, notice: Notice, uid: str, attempt: int, sends: list[Send],
                    records: list[Delivery], stage: Stage, until: int, why: str) -> str:
        """Record `held` per channel and schedule this job again at `until` (a new id: a
        held stage), before the records are written (a re-run finds it scheduled)."""
        records += [self._rec(uid, s.channel, attempt, "held", f"until {iso(until)} ({why})")
                    for s in sends]
        again = ForwardJob(notice.id, uid, until, stage.held(until).encode())
        async with self.redis.pipeline(transaction=False) as pipe:
            add_forward_jobs(pipe, self.keys, [again])
            await pipe.execute()
        await self._record(notice.id, records)
        return f"held until {iso(until)}"

    async def _deliver(self, notice: Notice, uid: str, user: User | None, attempt: int,
                       sends: list[Send], records: list[Delivery], stage: Stage = PLAIN
                       ) -> str:
        """Send on every channel in `sends`; record each attempt; Retry what may succeed
        later. A firing message's ref goes to `keys.threads` (incidents only: a notice with
        a dedup_key); a `resolved` job's sends are resolved messages."""
        nid, k = notice.id, self.keys
        # digests (streams.forward.digest): a channel with a digest policy for the user does
        # not send now; the notice waits in the user's bucket (recorded `digested`)
        if user is not None and self.divert is not None:
            sends = await self.divert(notice, user, sends, records, attempt)
            if not sends:
                await self._record(nid, records)
                return "digested"
        final = attempt >= self.settings.send_attempts
        resolved = stage.resolved
        results = await asyncio.gather(*(self._send(notice, user, s, resolved) for s in sends),
                                       return_exceptions=True)
        sent: list[Send] = []
        threads: list[str] = []
        keep_threads = notice.dedup_key is not None and not resolved
        retry_after: list[float] = []
        bug: BaseException | None = None
        what = "resolved: " if resolved else ""
        for s, res in zip(sends, results, strict=True):
            if isinstance(res, BaseException):
                bug = bug or res
                records.append(self._rec(uid, s.channel, attempt, "failed",
                                         f"{what}{s.marker}: {type(res).__name__}: {res}"))
                continue
            detail = what + (res.detail if s.marker == s.channel
                             else f"{s.marker}: {res.detail}")
            if res.ok:
                sent.append(s)
                if keep_threads:
                    threads += [f"{uid}:{s.marker}", (res.ref or "")[:REF_MAX]]
                records.append(self._rec(uid, s.channel, attempt, "sent", detail))
            elif res.status == "retry" and not final:
                retry_after.append(res.retry_after or 0.0)
                records.append(self._rec(uid, s.channel, attempt, "retrying", detail))
            else:
                records.append(self._rec(uid, s.channel, attempt, "failed", detail))
        mark = RESOLVED_MARK if resolved else ""
        await self._record(nid, records,
                           sent_markers=[k.sent_marker(nid, uid, mark + s.marker)
                                         for s in sent], threads=threads)
        if bug is not None:
            raise bug
        if retry_after:
            delay = self.backoff(attempt, max(retry_after))
            raise Retry(defer=delay)
        return f"sent {len(sent)}/{len(sends)}"

    def _user_sends(self, notice: Notice, user: User, attempt: int, stage: Stage = PLAIN
                    ) -> tuple[list[Send], list[Delivery]]:
        """What `user_routes` decides (as the center did) for this job's channel group: the
        sends, and a record of each channel skipped (on the first attempt only: a retry
        skips it again; never for a resolved message: the firing one said it)."""
        routes = user_routes(notice, user, self.channels.addresses)
        mine = stage_filter(notice, self.settings.forward_after, stage)
        if mine is not None:
            routes = [r for r in routes if mine(r.target)]
        sends = [Send(r.channel, r.channel, r.target) for r in routes if r.skip is None]
        records = [self._rec(user.id, r.channel, attempt, r.skip, r.detail)
                   for r in routes if r.skip is not None] \
            if attempt == 1 and not stage.resolved else []
        return sends, records

    def _shared_sends(self, notice: Notice, stage: Stage = PLAIN) -> list[Send]:
        sends: list[Send] = []
        mine = stage_filter(notice, self.settings.forward_after, stage)
        for name, target in notice.channels.external():
            if mine is not None and not mine(target):
                continue
            channel = self.channels.get(name)
            if channel is None:
                if target.shared:
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
                pipe.exists(self.keys.sent_marker(notice.id, BROADCAST, s.marker))
            for r in notice.recipients:
                read_state_commands(pipe, self.keys, r, notice.id)
            replies = await pipe.execute()
        marked, scores = replies[:len(sends)], replies[len(sends):]
        return ([s for s, m in zip(sends, marked, strict=True) if not m],
                any(was_read(f, r) for f, r in zip(scores[::2], scores[1::2], strict=True)))

    async def _firing_in_flight(self, notice: Notice, uid: str) -> bool:
        """Whether a firing forward of `notice` to `uid` (the plain job or a channel
        group's) runs right now: arq's in-progress key of its job."""
        base = delay_ms(notice, self.settings.forward_after)
        stages = dict.fromkeys([None, *(Stage(after_ms=g).encode()
                                        for _, t in notice.channels.external()
                                        if (g := group_of(t, base)) is not None)])
        return await self.redis.exists(*(
            in_progress_key_prefix + self.keys.forward_job(notice.id, uid, st)
            for st in stages)) > 0

    async def _shared_threads(self, notice: Notice, sends: list[Send]) -> list[Send]:
        """A `resolved` job's shared sends: those that got the firing message and no
        resolved one yet."""
        nid, k = notice.id, self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for s in sends:
                pipe.exists(k.sent_marker(nid, BROADCAST, RESOLVED_MARK + s.marker))
            pipe.hmget(k.threads(nid), [f"{BROADCAST}:{s.marker}" for s in sends])
            *marked, refs = await pipe.execute()
        left = [s for s, m in zip(sends, marked, strict=True) if not m]
        return _threaded(left, {s.marker: r for s, r in zip(sends, refs, strict=True)})

    async def _send(self, notice: Notice, user: User | None, s: Send,
                    resolved: bool = False) -> SendResult:
        channel = self.channels.get(s.channel)
        if channel is None:
            why = "is not configured" if s.channel in self.channels.classes else "is unknown"
            return SendResult.permanent(f"channel {s.channel} {why}")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                if resolved:
                    return await channel.send_resolved(notice, user, s.target, s.reply_to)
                return await channel.send(notice, user, s.target)
        except TimeoutError:
            return SendResult.retry(f"no answer in {SEND_TIMEOUT_S:g}s")
        finally:
            SEND_SECONDS.labels(s.channel).observe(time.perf_counter() - started)

    @staticmethod
    def _rec(uid: str, channel: str, attempt: int, status: DeliveryStatus,
             detail: str = "") -> Delivery:
        return Delivery(uid=uid, channel=channel, attempt=attempt, status=status,
                        detail=detail[:1000], at=now_ms())

    async def _record(self, nid: str, records: list[Delivery],
                      sent_markers: list[str] | None = None,
                      threads: list[str] | None = None) -> None:
        if not records and not sent_markers:
            return
        p = Pending(nid, records, sent_markers or [], threads or [])
        pending = PENDING.get()
        if pending is not None:  # ForwardWorker writes them with the job's finish
            pending.append(p)
            return
        # no job to finish (a stock arq worker, a direct call): the records alone
        await self.finish(self.keys.forward_of(nid),
                          [[None, 0, 0, 0, 0, [self.record_args(p)]]], [])
        self.count(records)

    def record_args(self, p: Pending) -> list[Any]:
        """`p` as `_FINISH` takes it: [deliveries key, [record JSON...], [marker key...]]
        and, when the run sent firing messages of an incident, [threads key, [field,
        value...]]."""
        args = [self.keys.deliveries(p.nid), [json_encode(r).decode() for r in p.records],
                p.sent_markers]
        if p.threads:
            args += [self.keys.threads(p.nid), p.threads]
        return args

    async def finish(self, fk: ForwardKeys, jobs: list[list[Any]],
                     results: list[bytes]) -> None:
        """Run `_FINISH`: the finishes (arq's) of jobs of partition `fk`, with their records
        and sent markers (all of notices in that partition)."""
        # the queue is the script's KEY: it names the slot (a Redis Cluster routes by KEYS,
        # and every key the script writes shares the partition's tag there)
        await _FINISH(keys=[fk.arq_queue], args=[msgpack_encode([
            [in_progress_key_prefix, result_key_prefix, retry_key_prefix, job_key_prefix,
             fk.forward_own(abort_jobs_ss), fk.arq_queue, MARKER_TTL_S,
             DELIVERIES_TTL_S], jobs]), *results],
                      client=self.redis)

    @staticmethod
    def count(records: list[Delivery]) -> None:
        by: dict[tuple[str, str], int] = {}
        for r in records:  # a digest's are ten of one kind: one `labels` lookup
            key = (r.channel or "-", r.status)
            by[key] = by.get(key, 0) + 1
        for (channel, status), n in by.items():
            FORWARD_ATTEMPTS.labels(channel, status).inc(n)


def _threaded(sends: list[Send], refs: dict[str, bytes | str | None]) -> list[Send]:
    """The sends whose marker got the firing message (a `keys.threads` field), each with
    the ref to reply to (None when the channel gave none)."""
    out: list[Send] = []
    for s in sends:
        ref = refs.get(s.marker)
        if ref is not None:
            text = ref.decode(errors="replace") if isinstance(ref, bytes) else ref
            out.append(msgspec.structs.replace(s, reply_to=text or None))
    return out


async def forward(ctx: dict[str, Any], nid: str, uid: str, stage: str | None = None) -> str:
    """The arq job: forward notice `nid` to user `uid`, at `stage` (`Stage`; None: the
    plain forward). See the module docstring."""
    forwarder: Forwarder = ctx["forwarder"]
    attempt = ctx.get("job_try") or 1
    with logs.context(notice_id=nid, user=uid):  # every line of this job names both
        try:
            st = Stage.decode(stage) if stage else PLAIN
        except ValueError as e:
            log.warning("forward %s to %s: %s: dropped", nid, uid, e)
            return "bad stage"
        try:
            return await forwarder.run(nid, uid, attempt, ctx.get("fresh"), st)
        except RETRYABLE as e:
            # Redis flaked (restart, failover): run again later; sent markers skip what went
            # out
            delay = forwarder.backoff(min(attempt, 6), None)
            log.warning("forward %s to %s: redis unavailable (%s); again in %.1fs", nid, uid,
                        e, delay)
            raise Retry(defer=delay) from e


# arq's finish_job for the jobs that ended in one loop iteration, with their attempt
# records and sent markers (one call, atomic as arq's MULTI)
_FINISH = lua.script("forward/finish.lua")
