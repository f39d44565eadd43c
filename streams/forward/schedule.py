"""What a forward is, which channels it uses, and how one is scheduled: arq's own job
records, one script call each.

`user_routes(notice, user, addresses)` is the one place that decides which external
channels a forward to a user goes on (mute, per-channel prefs, `users` lists, addresses):
the center asks it whether to schedule a job (`forward_jobs_for`), the job what to send.

`add_forward_jobs(pipe, keys, jobs)` queues onto the caller's pipeline one EVALSHA per
job of a small Lua script that writes arq's own job record: if neither
`arq:job:<id>` nor `arq:result:<id>` exists, PSETEX the job (arq's dict
`{t, f, a, k, et}`, msgpack via msgspec) and ZADD the partition's queue (`arq_queue`) at
`due_ms`. The job id is `keys.forward_job(nid, uid)`, so re-ingesting a notice never
schedules a second job while the first is queued, running, or its result is kept
(`KEEP_RESULT_S`). `arq`'s `enqueue_job` does the same with WATCH/EXISTS/MULTI/EXEC
round trips per job; the script makes a batch of jobs one pipeline round trip
(plus one SCRIPT EXISTS per pipeline, which also reloads the script after a
SCRIPT FLUSH or a restart: the NOSCRIPT case).

The notice center writes its forwards in its own store call instead: it calls
`store_call_jobs`, which appends the jobs to the call's arguments, and its script includes
`store_jobs.lua`, which writes them, per partition: a delayed one as one member of the
partition's `forward_due` that the worker's poll pumps into the same job record when due
(`pump.lua`, `pump_due`); one due now as the job itself, claimed for the center's own
worker (`Claim`, `start_inline`).

Stages (`Stage`): a job may carry a third argument besides [nid, uid], which also ends its
id and its due-set member: a channel group with its own delay (`after` on the entry:
escalation), a forward held by the job itself until a time, the `resolved` message. The
plain forward has none, so its record, id and due member are what they always were.
`forward_jobs_for` also applies the user's holds (`policy.hold_until`: quiet hours,
snoozes): a job that would fall due while the user is held is due at the hold's end.

This package is the only code that knows arq's record format, its key prefixes and its
constants: everything else asks it (`arq_keys`, `ARQ_LUA` for the scripts).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import msgspec
from arq.constants import (
    expires_extra_ms,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

from vestnik.streams import lua
from vestnik.streams.forward.policy import hold_until
from vestnik.streams.ids import now_ms
from vestnik.streams.keys import Keys
from vestnik.streams.schemas import ChannelTarget, Notice, User

FUNCTION = "forward"  # the arq function every forward job runs
BROADCAST = "*"  # the uid of a notice's user-independent targets
RESOLVED = "resolved"  # the stage of the job that says an incident is over
KEEP_RESULT_S = 3600  # arq result kept this long: re-scheduling within it is a no-op
RETRY_TTL_S = 88_400  # arq's run_job expires a job's try counter after this (arq.worker)
# arq's keys and constants as the scripts' placeholders (streams.lua)
ARQ_LUA: dict[str, int | str] = {
    "JOB": job_key_prefix, "RESULT": result_key_prefix, "IN_PROGRESS": in_progress_key_prefix,
    "RETRY": retry_key_prefix, "RETRY_TTL_S": RETRY_TTL_S}

class ForwardJob(msgspec.Struct):
    """Forward notice `nid` to user `uid` (or `*`: its user-independent targets) at `due_ms`.
    `stage` (None: the plain forward) names another kind of job on the same pair (a
    channel group with its own `after`, a held forward, the `resolved` message...): its
    encoding is this package's (`Stage`)."""

    nid: str
    uid: str
    due_ms: int
    stage: str | None = None


class Stage(msgspec.Struct, frozen=True):
    """What a job with a stage does beyond the plain forward (`Stage()`, encoded None: the
    arq args [nid, uid], unchanged). The stage is the job's third arq argument, the tail of
    its id (`Keys.forward_job(nid, uid, stage)`) and of its due-set member; encoded as
    dot-joined tokens, at most one of each:
    - `a<ms>`: a channel group: only the entries whose own `after` is `ms` and differs
      from the notice's delay (`group_of`; the others are the plain job's);
    - `h<ms>`: a forward held (quiet hours, a snooze) by the job itself, released at `ms`
      (a new id: the first run's arq result refuses a re-schedule under its id);
    - `resolved` (`RESOLVED`): the "resolved" message of an incident, on the channels
      that got the firing one.
    E.g. `a900000`, `a900000.h1796457600000`, `resolved.h1796457600000`."""

    after_ms: int | None = None
    held_until: int | None = None
    resolved: bool = False

    def encode(self) -> str | None:
        parts: list[str] = []
        if self.resolved:
            parts.append(RESOLVED)
        if self.after_ms is not None:
            parts.append(f"a{self.after_ms}")
        if self.held_until is not None:
            parts.append(f"h{self.held_until}")
        return ".".join(parts) or None

    @classmethod
    def decode(cls, raw: str | None) -> Stage:
        """The stage of a job's third argument; ValueError when it is none of ours."""
        if not raw:
            return PLAIN
        after = held = None
        resolved = False
        for tok in raw.split("."):
            if tok == RESOLVED and not resolved:
                resolved = True
            elif tok[:1] == "a" and after is None and _MS.fullmatch(tok[1:]):
                after = int(tok[1:])
            elif tok[:1] == "h" and held is None and _MS.fullmatch(tok[1:]):
                held = int(tok[1:])
            else:
                raise ValueError(f"bad forward stage {raw[:100]!r}")
        return cls(after, held, resolved)

    def held(self, until: int) -> Stage:
        """This job held until `until`: the same sends, another job."""
        return msgspec.structs.replace(self, held_until=until)


_MS = re.compile(r"[0-9]{1,15}")
PLAIN = Stage()


class Claim(msgspec.Struct):
    """A job due now that the notice center's store call claimed for its own process (see
    `ForwardWorker.start_inline`), with the notice and user in hand: a fresh notice has no
    sent markers and nobody has read it yet, so the job reads nothing before it sends."""

    job_id: str
    score: int  # where it waits in the queue meanwhile: the fallback should we die
    payload: bytes  # arq's job record, as written
    notice: Notice
    user: User | None  # None for BROADCAST


def _enc_hook(obj: Any) -> Any:
    # arq stores exceptions and datetimes in job results; keep them readable, not pickled
    return repr(obj)


job_serializer = msgspec.msgpack.Encoder(enc_hook=_enc_hook).encode
job_deserializer = msgspec.msgpack.Decoder().decode
msgpack_encode = msgspec.msgpack.Encoder().encode


_SCHEDULE = lua.script("forward/schedule.lua")  # one job, as arq's enqueue_job writes it


class ArqKeys(NamedTuple):
    """arq's own keys of one job (outside Vestnik's prefix)."""

    job: str
    in_progress: str
    result: str
    retry: str


def arq_keys(jid: str) -> ArqKeys:
    """Where arq keeps job `jid`: for tools and tests, which must not spell arq's prefixes."""
    return ArqKeys(job_key_prefix + jid, in_progress_key_prefix + jid,
                   result_key_prefix + jid, retry_key_prefix + jid)


def job_record(nid: str, uid: str, now: int, stage: str | None = None) -> bytes:
    """arq's job record of a forward (its dict `{t, f, a, k, et}`, msgpack not pickle):
    args [nid, uid], or [nid, uid, stage] (`Stage`)."""
    args = [nid, uid, stage] if stage else [nid, uid]
    return job_serializer({"t": None, "f": FUNCTION, "a": args, "k": {}, "et": now})


def add_forward_jobs(pipe: Any, keys: Keys, jobs: list[ForwardJob]) -> None:
    """Queue on `pipe` (a redis.asyncio pipeline) the commands that schedule `jobs`.

    One EVALSHA per job, on the keys of its notice's partition (`Keys.forward_of`: one
    slot per call on a cluster); each result is 1 (scheduled) or 0 (already scheduled or
    done). When a partition gets a job already due, its last call also PUBLISHes to the
    partition's wake channel (its forwarders poll at once). The caller executes the
    pipeline; its results include these replies in order.
    """
    if not jobs:
        return
    now = now_ms()
    scripts = getattr(pipe, "scripts", None)
    if scripts is not None:
        scripts.add(_SCHEDULE)  # execute() runs SCRIPT EXISTS / LOAD first: no NOSCRIPT
    # due now (forward_after 0): a partition's last job's call also wakes its forwarders
    # instead of leaving the jobs to the next poll; after every ZADD, so a woken forwarder
    # finds them
    parts = [keys.forward_of(job.nid) for job in jobs]
    last: dict[int, int] = {}  # partition -> index of its last job
    due: set[int] = set()  # partitions with a job due now
    for i, (job, fk) in enumerate(zip(jobs, parts, strict=True)):
        last[fk.partition] = i
        if job.due_ms <= now:
            due.add(fk.partition)
    wake_at = {last[p] for p in due}
    for i, (job, fk) in enumerate(zip(jobs, parts, strict=True)):
        jid = fk.forward_job(job.nid, job.uid, job.stage)
        payload = job_record(job.nid, job.uid, now, job.stage)
        expires = max(job.due_ms - now, 0) + expires_extra_ms
        qkeys: tuple[str, ...] = (job_key_prefix + jid, result_key_prefix + jid,
                                  fk.arq_queue)
        if i in wake_at:
            qkeys += (fk.forward_wake,)
        args = (*qkeys, payload, expires, job.due_ms, jid)
        if scripts is not None:
            pipe.evalsha(_SCHEDULE.sha, len(qkeys), *args)
        else:  # a pipeline without script support (e.g. cluster): plain EVAL
            pipe.eval(_SCHEDULE.script, len(qkeys), *args)


def forward_delay(notice: Notice, default: float) -> float:
    """Seconds after `created_at` to forward: the notice's, else its setting's, else default."""
    if notice.forward_after is not None:
        return notice.forward_after
    if notice.channels.forward_after is not None:
        return notice.channels.forward_after
    return default


Skip = Literal["skipped_pref", "skipped_no_address"]


class Route(msgspec.Struct, frozen=True):
    """One external channel of a forward to one user: sent on, or `skip` says why not."""

    channel: str
    target: ChannelTarget
    skip: Skip | None = None
    detail: str = ""


def user_routes(notice: Notice, user: User, addresses: Mapping[str, str | None]
                ) -> list[Route]:
    """The one place that decides which external channels a forward of `notice` to `user`
    uses: the center (whether to schedule a job) and the job (what to send) both ask it.

    An entry reaches the user when it names them (or names nobody: every recipient). It is
    `skipped_pref` when the user muted the alert or switched the channel off (`prefs:
    {"email": false}`), `skipped_no_address` when the user has no address on it.
    `addresses`: each installed channel's User field (`Channel.user_address`; None for a
    channel with shared targets only, such as a webhook URL, which the `*` job serves). A
    channel not in it (a plugin installed elsewhere) is sent to: the job records it unknown.
    """
    routes: list[Route] = []
    muted: bool | None = None  # asked once an entry reaches the user
    for name, target in notice.channels.external():
        if not target.names(user.id):
            continue
        address = addresses.get(name)
        if address is None and name in addresses:
            continue  # shared targets only: the `*` job
        if muted is None:
            muted = user.mutes(notice.alert)
        if muted:
            routes.append(Route(name, target, "skipped_pref",
                                f"user {user.id} muted alert {notice.alert}"))
        elif user.prefs.get(name) is False:
            routes.append(Route(name, target, "skipped_pref",
                                f"user {user.id} switched {name} off"))
        elif address is not None and not getattr(user, address, None):
            routes.append(Route(name, target, "skipped_no_address",
                                f"user {user.id} has no {address}"))
        else:
            routes.append(Route(name, target))
    return routes


def wants_job(routes: list[Route]) -> bool:
    """Whether `user_routes` leave something for a job: a send, or a missing address (the
    job reads the profile when it runs: an address published meanwhile is used)."""
    for r in routes:
        if r.skip != "skipped_pref":
            return True
    return False


MAX_AFTER_S = 365 * 86_400  # a channel's own delay is cut at this (a hostile `after`)


def group_of(target: ChannelTarget, base_ms: int) -> int | None:
    """The channel group of an entry: None (the plain job's) when it has no `after` of its
    own or the notice's delay `base_ms`; else its delay in ms (its job's `Stage.after_ms`)."""
    if target.after is None:
        return None
    ms = int(min(target.after, MAX_AFTER_S) * 1000)
    return None if ms == base_ms else ms


def delay_ms(notice: Notice, default_after: float) -> int:
    """`forward_delay` in ms: the plain job's delay, which channel groups differ from."""
    return int(min(forward_delay(notice, default_after), MAX_AFTER_S) * 1000)


def stage_filter(notice: Notice, default_after: float, stage: Stage
                 ) -> Callable[[ChannelTarget], bool] | None:
    """Which entries a job of `stage` sends on (its channel group), or None for all of
    them (no entry has a delay of its own; the `resolved` message)."""
    if stage.resolved:
        return None
    if stage.after_ms is None and not notice.channels.grouped:
        return None  # the plain job of a notice without groups: the hot path
    base, mine = delay_ms(notice, default_after), stage.after_ms
    return lambda target: group_of(target, base) == mine


def forward_jobs_for(notice: Notice, users: Iterable[User],
                     addresses: Mapping[str, str | None], default_after: float,
                     now: int | None = None) -> list[ForwardJob]:
    """The jobs a stored notice needs (none when it has no external channel): one per user
    of `users` (its recipients) that `user_routes` leave something for, plus `*` when an
    entry has user-independent targets (`chat_ids`, `url`).

    Each channel group (entries with an `after` of their own, `group_of`) is a job of its
    own (`Stage.after_ms`), due `after` seconds after creation; the rest is the plain job,
    due after `forward_delay`. A user's job that would fall due while the user is held
    (quiet hours, a snooze: `policy.hold_until`, at `now` for one due already) is due at
    the hold's end instead: never claimed inline, it waits in the due set."""
    external = notice.channels.external()
    if not external:
        return []
    now = now_ms() if now is None else now
    created = notice.created_at or now
    base = delay_ms(notice, default_after)
    due = created + base
    groups = notice.channels.grouped and any(group_of(t, base) is not None
                                              for _, t in external)
    jobs: list[ForwardJob] = []
    for u in users:
        routes = user_routes(notice, u, addresses)
        if not groups:
            if wants_job(routes):
                jobs.append(_user_job(notice, u, due, None, now))
            continue
        by_group: dict[int | None, list[Route]] = {}
        for r in routes:
            by_group.setdefault(group_of(r.target, base), []).append(r)
        for g, rs in by_group.items():
            if wants_job(rs):
                jobs.append(_user_job(notice, u, due if g is None else created + g, g, now))
    if notice.channels.shared:
        shared = dict.fromkeys(group_of(t, base) for _, t in external if t.shared) \
            if groups else (None,)
        jobs += [ForwardJob(notice.id, BROADCAST, due) if g is None else
                 ForwardJob(notice.id, BROADCAST, created + g, Stage(after_ms=g).encode())
                 for g in shared]
    return jobs


def _user_job(notice: Notice, user: User, due: int, group: int | None, now: int
              ) -> ForwardJob:
    held = hold_until(user, notice, max(due, now))
    return ForwardJob(notice.id, user.id, due if held is None else held,
                      None if group is None else Stage(after_ms=group).encode())


def resolved_jobs(notice: Notice) -> list[ForwardJob]:
    """The jobs that tell whoever got the firing message of incident `notice` that it is
    resolved (scheduled when its setting has `send_resolved`): one per recipient, plus `*`
    for the shared targets. Each sends only on the channels that got the firing message."""
    now = now_ms()
    jobs = [ForwardJob(notice.id, uid, now, RESOLVED) for uid in notice.recipients]
    if notice.channels.shared:
        jobs.append(ForwardJob(notice.id, BROADCAST, now, RESOLVED))
    return jobs


def due_member(nid: str, uid: str, stage: str | None = None) -> bytes:
    """The member of `keys.forward_due` for a delayed forward of `nid` to `uid` (the
    msgpack array [nid, uid], or [nid, uid, stage]: the job's arq args, around which the
    worker's pump script builds arq's record)."""
    return msgpack_encode([nid, uid, stage] if stage else [nid, uid])


class BatchJob(NamedTuple):
    """A forward of a notice that the center's store call stores (`store_call_jobs`)."""

    job: ForwardJob
    at: int  # the notice's index in the store call (from 1)
    notice: Notice
    user: User | None  # the recipient's profile in hand (None: BROADCAST, or none readable)
    claimable: bool  # False: no readable profile, the job reads it when it runs


def store_call_jobs(keys: Keys, jobs: list[BatchJob], argv: list[str | bytes],
                    claim_s: float | None, claim_partitions: Container[int] | None = None
                    ) -> tuple[list[Any], list[Claim | None]]:
    """Forward's part of the notice center's store call (`store_jobs.lua`, which the
    center's script includes): per forward partition with jobs (`Keys.forward_of`), the arq
    records of its jobs due now, then the due-set members of its delayed ones, are appended
    to `argv`; returns the headers `store_jobs` takes (one per partition, all in the one
    call: a single Redis) and, per job due now (in the headers' order), its Claim: with
    `claim_s` (the in-progress timeout of the caller's own worker), a job due now of a new
    notice in a partition of `claim_partitions` (None: any; the ones that worker works) is
    claimed for that worker (queued at due + claim_s: should the process die, arq runs it
    once the claim has expired). Start the claimed ones with `ForwardWorker.start_inline`."""
    now = now_ms()
    claim_ms = int(claim_s * 1000) if claim_s is not None else 0
    by_part: dict[int, list[BatchJob]] = {0: jobs}
    if keys.forward_partitions > 1:
        by_part = {}
        for b in jobs:
            by_part.setdefault(keys.forward_partition(b.job.nid), []).append(b)
    headers: list[Any] = []
    claims: list[Claim | None] = []
    for p, mine in by_part.items():
        fk = keys.forward(p)
        claim_here = claim_ms if claim_partitions is None or p in claim_partitions else 0
        rows: list[list[Any]] = []
        later: list[ForwardJob] = []
        base = len(argv)
        for j, at, notice, user, claimable in mine:
            if j.due_ms > now:
                later.append(j)
                continue
            payload = job_record(j.nid, j.uid, now, j.stage)
            argv.append(payload)
            jid = fk.forward_job(j.nid, j.uid, j.stage)
            claim = Claim(jid, j.due_ms + claim_here, payload, notice, user) \
                if claim_here and claimable else None
            rows.append([jid, expires_extra_ms + claim_here, j.due_ms, 1 if claim else -1, at])
            claims.append(claim)
        due_base = len(argv)
        argv += [due_member(j.nid, j.uid, j.stage) for j in later]
        headers.append([job_key_prefix, result_key_prefix, fk.arq_queue, base, rows,
                        in_progress_key_prefix, retry_key_prefix, claim_here,
                        fk.forward_wake, fk.forward_due, due_base,
                        [j.due_ms for j in later], RETRY_TTL_S, len(claims) - len(rows)])
    return headers, claims
