"""The forwarder: arq's Worker, claiming and finishing forward jobs in batched script calls.

arq's Worker (`ForwardWorker`: the due jobs of a poll are read and claimed with one
Lua call that also returns their records, instead of arq's WATCH/MULTI exchange and
run_job's first MULTI per job; the jobs ending in one loop iteration share one
finish call, atomic like arq's MULTI, that also writes their attempt records and sent
markers), msgpack instead of pickle, polling every 50 ms and at once when jobs due now
are published on a partition's `forward_wake`, at most `MAX_JOBS` jobs at once;
`run_forwarder` runs it inside `vestnik center` or alone (`vestnik forwarder`). arq's keys
are its own (`arq:job:`, `arq:in-progress:`, `arq:result:`, `arq:retry:`), not under the
prefix; they end with the job id, which carries its partition's tag (streams.keys).

Partitions (VESTNIK_FORWARD_PARTITIONS): one worker works every partition of
VESTNIK_FORWARD_WORK (empty: all), each a `Part`: its own queue, due set and wake channel,
polled (and pumped) by a claim call of its own, on a pool that talks to the master of its
slot on a cluster. MAX_JOBS bounds the jobs of the process over all of them; the polls
start at a rotating partition, so a busy one does not starve the rest. At start (and every
LAYOUT_CHECK_S) it looks for jobs queued under another partition count (`check_layouts`):
those would never run, so it logs an ERROR naming the setting and is not ready.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple

from arq.connections import ArqRedis
from arq.constants import expires_extra_ms
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import ms_to_datetime
from arq.worker import JobExecutionFailed, Retry, Worker, func

from vestnik.streams import lua
from vestnik.streams.channels import Channels
from vestnik.streams.coalesce import PerIteration
from vestnik.streams.config import Config, ConfigError
from vestnik.streams.forward.digest import Digests
from vestnik.streams.forward.job import PENDING, Forwarder, Pending, forward
from vestnik.streams.forward.schedule import (
    ARQ_LUA,
    FUNCTION,
    KEEP_RESULT_S,
    Claim,
    job_deserializer,
    job_serializer,
)
from vestnik.streams.ids import now_ms
from vestnik.streams.keys import ForwardKeys, Keys
from vestnik.streams.ops_http import flag_check, ops_listener, redis_check
from vestnik.streams.redis import RETRYABLE, Backoff, connect
from vestnik.streams.redis import pool as redis_pool
from vestnik.streams.sampler import backlog_probe, run_sampler

log = logging.getLogger("vestnik.forward")

JOB_TIMEOUT_S = 120
MAX_JOBS = 64  # concurrent jobs per forwarder (sends are I/O-bound; more forwarders scale out)
POLL_DELAY_S = 0.05
LAYOUT_CHECK_S = 60.0  # how often a forwarder looks for jobs of another partition count


class _ArqRedis(ArqRedis):
    async def close(self, close_connection_pool: bool | None = None) -> None:
        # arq 0.28 still calls redis-py's deprecated close(); same effect, no warning
        await self.aclose(close_connection_pool=close_connection_pool)


def arq_pool(settings: Config, fk: ForwardKeys, max_connections: int) -> ArqRedis:
    """An arq client of partition `fk`: on a cluster, of the master of its slot, where every
    key of the partition is (streams.keys)."""
    assert settings.redis_url
    shared = redis_pool(settings.redis_url, max_connections=max_connections,
                        name="vestnik-forwarder", timeout=settings.redis_timeout,
                        slot_of=fk.arq_queue)
    return _ArqRedis(shared, job_serializer=job_serializer, job_deserializer=job_deserializer,
                     default_queue_name=fk.arq_queue)


class Part(NamedTuple):
    """One forward partition a worker works: its keys and the client of its node."""

    keys: ForwardKeys
    pool: ArqRedis


# a poll's pump and claims (claim.lua), and the pump alone (pump_only.lua: for an arq
# Worker of one's own); delayed forwards wait in `keys.forward_due` until due (pump.lua)
_CLAIM = lua.script("forward/claim.lua", **ARQ_LUA)
_PUMP_ONLY = lua.script("forward/pump_only.lua", **ARQ_LUA)
PUMP_LIMIT = 1000  # forwards turned into jobs per call (bounded script time)


def _pump_args(fk: ForwardKeys) -> list[str | int]:
    return [fk.forward_job_prefix, FUNCTION, expires_extra_ms, PUMP_LIMIT]


async def pump_due(redis: Any, fk: ForwardKeys) -> int:
    """Turn the delayed forwards of partition `fk` that are due into arq jobs (at most
    PUMP_LIMIT); returns how many were taken. ForwardWorker does this on every poll; a
    stock arq Worker needs it called beside it."""
    return int(await _PUMP_ONLY(keys=[fk.arq_queue, fk.forward_due],
                                args=[now_ms(), 0, 0, 0, *_pump_args(fk)], client=redis))


def _end_if_cancelled(task: asyncio.Task[Any] | None) -> None:
    """Raise CancelledError if `task` was cancelled and runs on: something it awaited
    dropped the cancellation (`ForwardWorker._listen`)."""
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ForwardWorker(Worker):
    """arq's Worker, claiming a poll's due jobs with one script call instead of a
    WATCH/EXISTS/ZSCORE/MULTI/EXEC exchange per job (same checks, same in-progress key).

    It polls every `poll_delay` as arq does, and also at once when (a) a message arrives
    on a partition's `forward_wake` (jobs due now were scheduled) or (b) a job ends while
    the last poll left due jobs unclaimed (every slot was busy) and a quarter of the slots
    are free again: arq's loop would wait for the next poll in both cases, which caps a
    worker at `max_jobs` per poll and delays an immediate forward by up to `poll_delay`.
    """

    _ending: PerIteration[tuple[Any, ...], None]  # finishes of jobs that end together
    parts: list[Part]  # the partitions it works (make_worker; one each: queue, pool)
    wake: bool = False  # listen on the partitions' wake channels (False: the timer only)
    # keys of another partition count holding jobs (check_layouts); None: not checked yet
    stranded: dict[str, int] | None = None
    digests: Digests | None = None  # the due digests, run beside the jobs (digest.py)
    _digesting: asyncio.Task[int] | None = None
    _wake: asyncio.Event | None = None
    _backlog = False
    polling = False  # readiness (/readyz): the poll loop has run an iteration

    def __init__(self, *args: Any, parts: list[Part], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ending = PerIteration(self._finish_many)
        self.parts = parts
        self._by_number = {part.keys.partition: part for part in self.parts}
        self._turn = 0  # the partition the next poll starts at

    @property
    def partitions(self) -> frozenset[int]:
        """The numbers of the partitions it works (the center claims jobs only of these)."""
        return frozenset(self._by_number)

    @property
    def ready(self) -> bool:
        """/readyz: polling, and no jobs stranded under another partition count."""
        return self.polling and self.stranded == {}

    def start_inline(self, claims: list[Claim]) -> None:
        """Run jobs the notice center claimed in its store call, in this process, now (in
        the worker's slots, as if this worker had claimed them; `Claim`). They are of its
        partitions (`store_call_jobs` claims only those)."""
        keys: Keys = self.ctx["forwarder"].keys
        for c in claims:
            part = self._by_number[keys.forward_partition(c.notice.id)]
            task = self.loop.create_task(self._run_inline(part, c))
            self.tasks[c.job_id] = task

    async def _run_inline(self, part: Part, c: Claim) -> None:
        await self.sem.acquire()
        self.job_counter += 1
        try:
            await self.run_claimed(part, c.job_id, c.score, c.payload, 1, c)
        finally:
            self._release_sem_dec_counter_on_complete()

    async def main(self) -> None:
        # arq's main without its poll timer: the same iteration, woken early (see above)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        wake = self._wake = asyncio.Event()
        listener = (asyncio.create_task(self._listen(wake), name="forwarder-wake")
                    if self.wake and not self.burst else None)
        try:
            while True:
                wake.clear()
                await self._poll_iteration()
                self.polling = True
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
            self.polling = False
            stop = [t for t in (listener, self._digesting) if t is not None]
            for t in stop:
                t.cancel()
            await asyncio.gather(*stop, return_exceptions=True)

    async def _queues_empty(self) -> bool:
        for part in self.parts:
            async with part.pool.pipeline(transaction=False) as pipe:
                pipe.zcard(part.keys.arq_queue)
                pipe.zcard(part.keys.forward_due)
                if any(await pipe.execute()):
                    return False
        return True

    async def _listen(self, wake: asyncio.Event) -> None:
        """Set `wake` on every message of the partitions' wake channels; resubscribe after a
        lost connection (meanwhile the timer polls). One subscription on the first
        partition's node: a cluster passes every PUBLISH to every node.

        `main` waits for it to end once cancelled, so it ends even if a Redis client drops
        the cancellation (ends its wait with a result or a lost connection instead): it
        looks for one before every wait. Else the poll loop, stopping or restarting after
        a lost Redis, would wait for it forever and send nothing (Python 3.11's wait_for
        did that inside redis-py during a Sentinel failover: streams.redis)."""
        me = asyncio.current_task()
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            _end_if_cancelled(me)
            pubsub = self.pool.pubsub()
            try:
                await pubsub.subscribe(*(part.keys.forward_wake for part in self.parts))
                backoff.reset()
                while True:
                    _end_if_cancelled(me)
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30)
                    if msg is not None:
                        wake.set()
            except RETRYABLE as e:
                _end_if_cancelled(me)
                log.warning("forwarder wake-up channel lost (%s); polling meanwhile", e)
            finally:
                await pubsub.aclose()
            _end_if_cancelled(me)
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
        # the due digests: one batch at a time, beside the jobs (leased: a cancelled one
        # runs again after its lease)
        if self.digests is not None and (self._digesting is None or self._digesting.done()):
            self._digesting = self.loop.create_task(self.digests.poll(), name="digests")
        await self.heart_beat()

    async def _claim_due(self, free: int) -> None:
        """One claim call per partition, starting at the next one in turn, while slots are
        free (MAX_JOBS is the process's bound over all partitions)."""
        n = len(self.parts)
        start, self._turn = self._turn, (self._turn + 1) % n
        backlog = False
        for k in range(n):
            part = self.parts[(start + k) % n]
            if free <= 0:
                backlog = True  # partitions left unpolled: poll again once slots free up
                break
            free -= await self._claim_part(part, free)
            backlog = backlog or self._backlog
        self._backlog = backlog

    async def _claim_part(self, part: Part, free: int) -> int:
        """Claim (and pump) the due jobs of one partition; returns how many it started."""
        fk = part.keys
        due, pumped, *claimed = await _CLAIM(
            keys=[fk.arq_queue, fk.forward_due],
            args=[now_ms(), int(self.in_progress_timeout_s * 1000), free,
                  self.queue_read_limit, *_pump_args(fk)], client=part.pool)
        # every free slot taken and more were due: poll again as soon as slots free up
        self._backlog = len(claimed) // 4 >= free and due > free
        if pumped >= PUMP_LIMIT and self._wake is not None:
            self._wake.set()  # more forwards are due: pump again at once
        for i in range(0, len(claimed), 4):
            await self.sem.acquire()  # never waits: at most `free` jobs are claimed
            self.job_counter += 1
            job_id = claimed[i].decode()
            task = self.loop.create_task(self.run_claimed(
                part, job_id, int(float(claimed[i + 1])), claimed[i + 2],
                int(claimed[i + 3])))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
        return len(claimed) // 4

    async def run_claimed(self, part: Part, job_id: str, score: int, raw: bytes | None,
                          job_try: int, fresh: Claim | None = None) -> None:
        """arq's run_job for a job of `part` the claim script read: the same outcomes (result
        record, retry with defer, max tries, failure, cancellation re-runs it) and the same
        finish (`finish_job` / `finish_failed_job`, in the partition's finish call), without
        run_job's first MULTI round trip and its per-job task. Only `forward` runs here
        (arq's abort and cron are off)."""
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
                                    start_ms, now_ms(), ref, part.keys.arq_queue,
                                    job_id=job_id, serializer=self.job_serializer)
            # arq's finish_failed_job, in the partition's finish call
            await asyncio.shield(self._finish(part, job_id, [], True, data,
                                              self.keep_result_s, None))
            return
        ctx = {**self.ctx, "job_id": job_id, "job_try": job_try, "score": score,
               "enqueue_time": ms_to_datetime(enqueue_ms), "fresh": fresh}
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        result: Any = None
        success = finish = False
        incr_score: int | None = None
        pending: list[Pending] = []
        PENDING.set(pending)  # this task's context only
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
            await asyncio.shield(self._finish(part, job_id, pending, False, None, 0, None))
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
                                    start_ms, now_ms(), ref, part.keys.arq_queue,
                                    job_id=job_id, serializer=self.job_serializer)
        await asyncio.shield(self._finish(part, job_id, pending, finish, data, keep,
                                          incr_score))

    async def _finish(self, part: Part, job_id: str, pending: list[Pending], finish: bool,
                      result: bytes | None, keep_s: float, incr_score: int | None) -> None:
        """arq's finish_job with the run's attempt records and sent markers. The jobs that
        end in the same loop iteration share one script call per partition (one slot each
        on a cluster), atomic as arq's MULTI."""
        await self._ending.submit((part, job_id, pending, finish, result, keep_s, incr_score))

    async def _finish_many(self, batch: list[tuple[Any, ...]]) -> list[BaseException | None]:
        forwarder: Forwarder = self.ctx["forwarder"]
        calls: dict[int, tuple[ForwardKeys, list[list[Any]], list[bytes]]] = {}
        for part, job_id, pending, finish, result, keep_s, incr_score in batch:
            _, jobs, results = calls.setdefault(part.keys.partition, (part.keys, [], []))
            if finish and result:
                results.append(result)
            jobs.append([job_id, int(finish), int(keep_s * 1000),
                         (len(results) + 1) if finish and result else 0, incr_score or 0,
                         [forwarder.record_args(p) for p in pending]])
        # an error reaches each job of its call (RETRYABLE: its in-progress key expires)
        outcome = dict(zip(calls, await asyncio.gather(
            *(forwarder.finish(fk, jobs, results) for fk, jobs, results in calls.values()),
            return_exceptions=True), strict=True))
        out: list[BaseException | None] = []
        for part, _, pending, *_ in batch:
            err = outcome[part.keys.partition]
            if isinstance(err, BaseException):
                out.append(err)
                continue
            for p in pending:
                forwarder.count(p.records)
            out.append(None)
        return out

    async def close(self) -> None:
        await super().close()  # arq's: the first partition's pool
        for pool in {id(part.pool): part.pool for part in self.parts[1:]}.values():
            if pool is not self.pool:
                await pool.close(close_connection_pool=True)


def make_worker(settings: Config, *, burst: bool = False,
                channels: Channels | None = None) -> ForwardWorker:
    """An arq Worker for forward jobs; `run_forwarder` runs it. Call inside a running loop."""
    if not settings.redis_url:
        raise ConfigError("VESTNIK_REDIS_URL: required to forward notices")
    keys = Keys.of(settings)
    work = sorted(set(settings.forward_work)) or range(keys.forward_partitions)
    fks = [keys.forward(p) for p in work]
    # a pool per partition on a cluster (the master of its slot); one pool on one Redis
    first = arq_pool(settings, fks[0], MAX_JOBS + 8)
    parts = [Part(fk, first if i == 0 or not keys.cluster else arq_pool(settings, fk, 16))
             for i, fk in enumerate(fks)]
    # the jobs read notices and users from every slot: on a cluster, a cluster client
    data = connect(settings.redis_url, max_connections=MAX_JOBS + 8, name="vestnik-forwarder",
                   timeout=settings.redis_timeout) if keys.cluster else first
    forwarder = Forwarder(data, keys, settings,
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
        queue_name=fks[0].arq_queue,
        redis_pool=first,
        parts=parts,
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
    worker.wake = True
    worker.digests = Digests(forwarder)
    forwarder.divert = worker.digests.divert
    return worker


async def check_layouts(redis: Any, keys: Keys) -> dict[str, int]:
    """The queues and due sets of another partition count (`Keys.forward_other_layouts`)
    that hold jobs: key -> how many. Jobs there are stranded: no forwarder of this setting
    polls them."""
    names = [k for fk in keys.forward_other_layouts() for k in (fk.arq_queue, fk.forward_due)]
    async with redis.pipeline(transaction=False) as pipe:
        for k in names:
            pipe.zcard(k)
        counts = await pipe.execute()
    return {k: int(n) for k, n in zip(names, counts, strict=True) if n}


async def watch_layouts(worker: ForwardWorker, every: float = LAYOUT_CHECK_S) -> None:
    """`check_layouts` now and every `every` s: an ERROR naming the setting when jobs are
    stranded (and `worker.ready` is False until they are gone)."""
    forwarder: Forwarder = worker.ctx["forwarder"]
    keys = forwarder.keys
    while True:
        try:
            found = await check_layouts(forwarder.redis, keys)
        except RETRYABLE as e:
            log.debug("forward layout check skipped: %s", e)
        else:
            if found and found.keys() != (worker.stranded or {}).keys():
                log.error(
                    "forward jobs wait under another VESTNIK_FORWARD_PARTITIONS than this "
                    "forwarder's (%d) and no forwarder of this setting runs them: %s. Run "
                    "forwarders with the setting that wrote them until these are empty, or "
                    "set VESTNIK_FORWARD_PARTITIONS back", keys.forward_partitions,
                    ", ".join(f"{k} ({n})" for k, n in found.items()))
            elif worker.stranded and not found:
                log.info("no forward jobs wait under another VESTNIK_FORWARD_PARTITIONS now")
            worker.stranded = found
        await asyncio.sleep(every)


async def run_forwarder(settings: Config, *, burst: bool = False,
                        worker: ForwardWorker | None = None,
                        ops_port: int | None = None) -> None:
    """Run forward jobs until cancelled (or, with `burst`, until the queue is empty).

    Embeddable: it installs no signal handlers; cancel the task to stop it. Jobs running
    at that moment are cancelled and run again later (their sent markers prevent a
    second send of what already went out). It samples the forward backlog of its
    partitions for /metrics and looks for stranded jobs (`watch_layouts`); `ops_port`:
    serve /healthz, /readyz and /metrics there (`vestnik forwarder`).
    """
    worker = worker or make_worker(settings, burst=burst)
    forwarder: Forwarder = worker.ctx["forwarder"]
    checks = {"redis": redis_check(forwarder.redis),
              "worker": flag_check(lambda: worker.polling),
              "partitions": flag_check(lambda: worker.stranded == {},
                                       "jobs of another VESTNIK_FORWARD_PARTITIONS wait "
                                       "(see the log)")}
    sampler = asyncio.create_task(
        run_sampler(forwarder.redis, [backlog_probe([part.keys for part in worker.parts])]),
        name="forwarder-sampler")
    layouts = asyncio.create_task(watch_layouts(worker), name="forwarder-layouts")
    loop = asyncio.get_running_loop()
    backoff = Backoff(base=0.1, cap=5.0)
    try:
        async with ops_listener(settings.host, ops_port, checks):
            while True:
                # arq's poll loop ends on the first refused connection (redis-py does not
                # retry a refused connect): run it again once Redis is back, instead of
                # stopping
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
        sampler.cancel()
        layouts.cancel()
        await asyncio.gather(sampler, layouts, return_exceptions=True)
        try:
            await worker.close()
        except RETRYABLE as e:
            log.warning("forwarder closed without Redis (%s)", e)
        finally:
            await forwarder.channels.aclose()
            if forwarder.keys.cluster:  # its own cluster client (make_worker)
                await forwarder.redis.aclose()
