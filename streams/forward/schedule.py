"""What a forward is, which channels it uses, and how one is scheduled: arq's own job
records, one script call each.

`user_routes(notice, user, addresses)` is the one place that decides which external
channels a forward to a user goes on (mute, per-channel prefs, `users` lists, addresses):
the center asks it whether to schedule a job (`forward_jobs_for`), the job what to send.

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
streams.center.batch): a delayed one as one member of `keys.forward_due` that the worker's
poll pumps into the same job record when due (`_PUMP`, `pump_due`); one due now as
the job itself, claimed for the center's own worker (`Claim`, `start_inline`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec
from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from redis.commands.core import AsyncScript

from vestnik.streams.ids import now_ms
from vestnik.streams.keys import Keys
from vestnik.streams.schemas import ChannelTarget, Notice, User

FUNCTION = "forward"  # the arq function every forward job runs
BROADCAST = "*"  # the uid of a notice's user-independent targets
KEEP_RESULT_S = 3600  # arq result kept this long: re-scheduling within it is a no-op


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


def _enc_hook(obj: Any) -> Any:
    # arq stores exceptions and datetimes in job results; keep them readable, not pickled
    return repr(obj)


job_serializer = msgspec.msgpack.Encoder(enc_hook=_enc_hook).encode
job_deserializer = msgspec.msgpack.Decoder().decode
msgpack_encode = msgspec.msgpack.Encoder().encode


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


def forward_jobs_for(notice: Notice, users: Iterable[User],
                     addresses: Mapping[str, str | None], default_after: float
                     ) -> list[ForwardJob]:
    """The jobs a stored notice needs (none when it has no external channel): one per user
    of `users` (its recipients) that `user_routes` leave something for, plus `*` when an
    entry has user-independent targets (`chat_ids`, `url`)."""
    if not notice.channels.external():
        return []
    base = notice.created_at or now_ms()
    due = base + int(forward_delay(notice, default_after) * 1000)
    jobs = [ForwardJob(notice.id, u.id, due) for u in users
            if wants_job(user_routes(notice, u, addresses))]
    if notice.channels.shared:
        jobs.append(ForwardJob(notice.id, BROADCAST, due))
    return jobs


def due_member(nid: str, uid: str) -> bytes:
    """The member of `keys.forward_due` for a delayed forward of `nid` to `uid` (the
    msgpack array [nid, uid]: the worker's pump script builds arq's record around it)."""
    return msgpack_encode([nid, uid])
