"""The soak's steady load, and the record of everything it was told was accepted.

Every notice carries the load's sequence number (`data.seq`, and `#<seq>` in its title), so the
ledger can find it in any feed, SSE event or mail whatever id it was given. Four ways in:
- `XADD vn:notices` (`xadd`): with an id of our own, so a retry after a lost answer is the same
  notice; acknowledged when an XADD returned (and, under --sentinel, its WAIT counted the
  stack's replicas: what a product does to survive a failover);
- `POST /api/v1/notices` (`http`): with an Idempotency-Key, retried with the SAME key on 429,
  503 and connection errors: acknowledged when an id was answered (exactly: a lost answer is
  retried, never counted twice);
- entity events on the wrapped alert's topic (`wrap`): the alert prints a notice for each
  (its dedup key is the entity's: a replayed snapshot folds); acknowledged when the publish
  answered 201;
- a Redis key the bridge turns into an event of the alert's other topic (`bridge`, `SET
  soak:key:b<seq>`): acknowledged when the SET returned (the bridge resyncs after a restart).

Users: `soak-u1..N`, published on topic `user` by the load. Every fifth one is of the
"forward" class: the load never reads for them, so every notice naming them on `email`
falls due and must be mailed; reads and read-alls touch only the "read" class, so whether a
read notice was forwarded depends on timing and is not accounted.

Around it, unaccounted but exercising the same processes: topic events on `soak-churn`,
settings created/patched/deleted, inbox reads, unread counts and read-alls. And 200 SSE
clients (app.soak.follow), which the ledger accounts. Rates are bounded (`Rates`): the
machine running the soak also runs the stack. The stack's Redis is private: its keys
(the bridge's `soak:key:*` too) go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import httpx
import msgspec
from redis.exceptions import RedisError

from vestnik.app.soak.follow import SSERecord, follow
from vestnik.streams.ids import ulid
from vestnik.streams.keys import USER_TOPIC

if TYPE_CHECKING:
    from vestnik.app.soak.stack import Stack

log = logging.getLogger("vestnik.soak.load")

ALERT = "soak-load"
CHURN_TOPIC = "soak-churn"
CHURN_SETTING = "soak-churn"
DEFAULT_WRAP_TOPIC = "soak-alert"
DEFAULT_KEYSPACE_PATTERN = "soak:key:*"
FORWARD_EVERY = 5  # every fifth user is of the forward class
HTTP_TIMEOUT_S = 5.0
REDIS_TIMEOUT_S = 5.0
WAIT_MS = 2000  # a write's WAIT for the replicas (Stack.wait_replicas; under --sentinel)
SEND_TRIES = 40  # a send retried this many times (~1 s apart: an api or Redis restart)
RETRY_PAUSE_S = 1.0
MAX_IN_FLIGHT = 32  # sends waiting for an answer (or retrying) at once
MEMORY_EVERY_S = 5.0
STOP_GRACE_S = 60.0
USERS_UP_S = 30.0
PRUNE_EVERY_S = 10.0
PRUNE_AFTER_S = 10.0  # how long `run` waits for sends still retrying after stop

Path = Literal["xadd", "http", "wrap", "bridge"]
RETRY_STATUS = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Rates:
    """Operations per second of each kind (each drawn as a Poisson process from the seed)."""

    xadd: float = 4.0
    http: float = 4.0
    wrap: float = 1.0
    bridge: float = 0.5
    topic: float = 2.0
    settings: float = 0.2
    reads: float = 2.0
    read_all: float = 0.2


@dataclass(frozen=True, slots=True)
class Sent:
    """One acknowledged notice: what the ledger must find."""

    seq: int
    path: Path
    nid: str | None  # None for `wrap`: the wrapper gives the id
    recipients: tuple[str, ...]
    forward: tuple[str, ...]  # the recipients it must be mailed to (forward class, email)
    at: float  # time.time() of the acknowledgement


class MemorySample(msgspec.Struct, frozen=True):
    """INFO memory's used_memory at `at`, with Redis's run id (a restart changes it) and the
    notices acknowledged by then."""

    at: float
    used_memory: int
    run_id: str
    acknowledged: int


def user_ids(n: int) -> list[str]:
    return [f"soak-u{i}" for i in range(1, n + 1)]


def is_forward_class(uid: str) -> bool:
    return int(uid.rsplit("u", 1)[1]) % FORWARD_EVERY == 0


class Load:
    """The steady load of `vestnik soak`: `run` until stopped, `bad_burst` from the fault
    scheduler, `stats` for progress lines; the ledger reads `sent`, `sse`, `bad`, `memory`."""

    def __init__(self, stack: Stack, rng: random.Random, *, users: int = 50,
                 sse_clients: int = 200, rates: Rates | None = None) -> None:
        if users < FORWARD_EVERY:
            raise ValueError(f"users must be at least {FORWARD_EVERY} (one of each class)")
        self.stack = stack
        self.rng = rng
        self.rates = rates or Rates()
        self.users = user_ids(users)
        self.readers = [u for u in self.users if not is_forward_class(u)]
        self.forwarded = [u for u in self.users if is_forward_class(u)]
        # the first topic the wrapped alert follows (Stack.alert_topics)
        self.wrap_topic: str = (getattr(stack, "alert_topics", None) or (DEFAULT_WRAP_TOPIC,))[0]
        # the bridge's keys: `soak:key:*` -> the key's name after the prefix
        self.key_prefix = getattr(stack, "keyspace_pattern", DEFAULT_KEYSPACE_PATTERN).rstrip("*")
        self.sse = [SSERecord(self.users[i % len(self.users)]) for i in range(sse_clients)]
        self.sent: list[Sent] = []
        self.bad: list[str] = []  # markers of bad entries XADDed (expected dead letters)
        self.memory: list[MemorySample] = []
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.counts: dict[str, int] = dict.fromkeys(
            ("sent", "acknowledged", "retries", "failed", "rejected", "ops", "op_errors"), 0)
        self._seq = 0
        self._bad_seq = 0
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sse_tasks: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._redis: Any = None
        self._setting_id: str | None = None
        self._seen: set[int] = set()  # load seqs some SSE client received
        self._prunable: list[Sent] = []  # wrap/bridge entities not deleted yet

    # -- public ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Publish the users, start the SSE clients, then the load until `stop` is set; wait
        (at most STOP_GRACE_S) for sends still retrying. The SSE clients keep following
        until `close` (the ledger closes them once they have caught up)."""
        await self._open()
        await self._publish_users()
        self._sse_tasks = [asyncio.create_task(follow(
            self.stack.api_url, partial(self.stack.user_token, rec.uid), rec, self._closing,
            self.rng, self._on_notice), name=f"sse-{i}") for i, rec in enumerate(self.sse)]
        self.started_at = time.time()
        kinds: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (self.rates.xadd, self._xadd_notice), (self.rates.http, self._http_notice),
            (self.rates.wrap, self._wrap_event), (self.rates.bridge, self._bridge_key),
            (self.rates.topic, self._topic_event),
            (self.rates.settings, self._settings_change), (self.rates.reads, self._read_one),
            (self.rates.read_all, self._read_all),
        ]
        loops = [asyncio.create_task(self._every(rate, op, stop)) for rate, op in kinds
                 if rate > 0]
        loops.append(asyncio.create_task(self._sample_memory(stop)))
        loops.append(asyncio.create_task(self._prune(stop)))
        try:
            await asyncio.gather(*loops)
        finally:
            for t in loops:
                t.cancel()
            self.stopped_at = time.time()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=STOP_GRACE_S)
            for t in list(self._tasks):
                t.cancel()

    async def bad_burst(self, n: int) -> None:
        """XADD `n` entries the center must dead-letter (a severity that does not exist); the
        ones whose XADD returned are remembered by their title."""
        await self._open()
        for _ in range(n):
            self._bad_seq += 1
            marker = f"soak-bad-{self._bad_seq}"
            fields = {"alert": ALERT, "title": marker, "severity": "bogus",
                      "recipients": self.readers[0]}
            if await self._xadd(fields):
                self.bad.append(marker)

    def stats(self) -> dict[str, int]:
        return {**self.counts, "sse_connects": sum(r.connects for r in self.sse)}

    def _on_notice(self, item: dict[str, Any]) -> None:
        """An SSE client got a notice: its load seq is known to be stored (see `_prune`)."""
        if isinstance(d := item.get("data"), dict) and isinstance(d.get("seq"), int):
            self._seen.add(d["seq"])

    async def close(self) -> None:
        """Stop the SSE clients and close the clients (idempotent)."""
        self._closing.set()
        for t in [*self._sse_tasks, *self._tasks]:
            t.cancel()
        for t in [*self._sse_tasks, *self._tasks]:
            with contextlib.suppress(BaseException):
                await t
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # -- the parts -----------------------------------------------------------------------
    async def _open(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.stack.api_url, timeout=HTTP_TIMEOUT_S,
                limits=httpx.Limits(max_connections=MAX_IN_FLIGHT + 8))
        if self._redis is None:
            self._redis = self.stack.redis()

    async def _every(self, rate: float, op: Callable[[], Awaitable[None]],
                     stop: asyncio.Event) -> None:
        """`op` at `rate` per second (exponential gaps) until `stop`; each one a task of its
        own, at most MAX_IN_FLIGHT at once (the load slows rather than piling up)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rng.expovariate(rate)):
                    await stop.wait()
            if stop.is_set():
                return
            if not await self._slot(stop):
                return
            task = asyncio.create_task(op())
            self._tasks.add(task)
            task.add_done_callback(self._done)

    async def _slot(self, stop: asyncio.Event) -> bool:
        """Take an in-flight slot, or False once `stop` is set while waiting for one."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._in_flight.acquire()
                    return True
        return False

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._in_flight.release()
        if not task.cancelled() and (e := task.exception()) is not None:
            self.counts["op_errors"] += 1
            log.warning("soak load operation failed: %r", e)

    def _next_seq(self) -> int:
        self._seq += 1
        self.counts["sent"] += 1
        return self._seq

    def _recipients(self, forward: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(recipients, the forward-class ones to mail): a read notice goes to 1-3 readers; a
        forward notice to 1-2 forward users and maybe one reader (who gets no mail)."""
        if not forward:
            return tuple(self.rng.sample(self.readers, self.rng.randint(1, 3))), ()
        fwd = tuple(self.rng.sample(self.forwarded, min(len(self.forwarded),
                                                         self.rng.randint(1, 2))))
        extra = (self.rng.choice(self.readers),) if self.rng.random() < 0.5 else ()
        return fwd + extra, fwd

    def _notice(self, seq: int, recipients: tuple[str, ...], fwd: tuple[str, ...],
                path: Path) -> dict[str, Any]:
        channels: dict[str, Any] = {"ui": {}}
        if fwd:
            channels["email"] = {"users": list(fwd)}
        return {"alert": ALERT, "title": f"soak #{seq} {path}", "severity": "info",
                "body": f"sequence {seq}", "recipients": list(recipients),
                "channels": channels, "data": {"seq": seq}}

    def _ack(self, seq: int, path: Path, nid: str | None, recipients: tuple[str, ...],
             fwd: tuple[str, ...]) -> None:
        sent = Sent(seq, path, nid, recipients, fwd, time.time())
        self.sent.append(sent)
        self.counts["acknowledged"] += 1
        if path in ("wrap", "bridge"):
            self._prunable.append(sent)

    async def _xadd_notice(self) -> None:
        seq = self._next_seq()
        recipients, fwd = self._recipients(self.rng.random() < 0.3)
        nid = ulid()
        n = self._notice(seq, recipients, fwd, "xadd")
        fields = {k: v if isinstance(v, str) else msgspec.json.encode(v).decode()
                  for k, v in n.items()}
        fields["id"] = nid
        if await self._xadd(fields):
            self._ack(seq, "xadd", nid, recipients, fwd)

    async def _xadd(self, fields: dict[str, str]) -> bool:
        """XADD to the ingest stream (the entry carries its own id or is a dead letter to be:
        a second copy after a lost answer is harmless). True once one was acknowledged."""
        notices = self.stack.keys.notices
        return await self._write("XADD", lambda pipe: pipe.xadd(notices, fields))

    async def _write(self, what: str, add: Callable[[Any], object]) -> bool:
        """One write as a product would make it durable: with WAIT for the stack's replicas
        (under Sentinel a failover loses what no replica had), retried on a lost connection
        or too few replicas. True once acknowledged."""
        replicas = int(getattr(self.stack, "wait_replicas", 0))
        why = ""
        for attempt in range(SEND_TRIES):
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        add(pipe)
                        if replicas:
                            pipe.execute_command("WAIT", replicas, WAIT_MS)
                        res = await pipe.execute()
                if not replicas or int(res[-1]) >= replicas:
                    return True
                why = f"WAIT: {res[-1]} of {replicas} replicas"
            except (RedisError, OSError, TimeoutError) as e:
                why = repr(e)
            if attempt + 1 == SEND_TRIES or self._closing.is_set():
                self.counts["failed"] += 1
                log.warning("soak %s given up: %s", what, why)
                return False
            self.counts["retries"] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
        return False

    async def _http_notice(self) -> None:
        seq = self._next_seq()
        recipients, fwd = self._recipients(self.rng.random() < 0.3)
        key = f"soak-{seq}-{ulid()}"
        answer = await self._service("POST", "/api/v1/notices",
                                     self._notice(seq, recipients, fwd, "http"),
                                     headers={"Idempotency-Key": key})
        if answer is not None:
            self._ack(seq, "http", answer["id"], recipients, fwd)

    async def _wrap_event(self) -> None:
        seq = self._next_seq()
        recipients, _ = self._recipients(False)
        body = {"op": "create", "id": f"w{seq}",
                "data": {"seq": seq, "recipients": list(recipients),
                         "title": f"soak #{seq} wrap"}}
        if await self._service("POST", f"/api/v1/topics/{self.wrap_topic}/events",
                               body) is not None:
            self._ack(seq, "wrap", None, recipients, ())

    async def _bridge_key(self) -> None:
        seq = self._next_seq()
        recipients, _ = self._recipients(False)
        value = msgspec.json.encode({"seq": seq, "recipients": list(recipients),
                                     "title": f"soak #{seq} bridge"})
        key = f"{self.key_prefix}b{seq}"
        if await self._write("SET", lambda pipe: pipe.set(key, value)):
            self._ack(seq, "bridge", None, recipients, ())

    async def _service(self, method: str, path: str, body: Any, *,
                       headers: dict[str, str] | None = None) -> dict[str, Any] | None:
        """A service-token request, retried (same body, same headers: the same
        Idempotency-Key) on 429/50x and connection errors. The answer's JSON (an empty dict
        for no body), or None when it was refused or never answered."""
        assert self._http is not None
        hdrs = {"Authorization": f"Bearer {self.stack.service_token}", **(headers or {})}
        content = msgspec.json.encode(body) if body is not None else None
        if content is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in range(SEND_TRIES):
            try:
                r = await self._http.request(method, path, content=content, headers=hdrs)
            except httpx.HTTPError as e:
                why = repr(e)
            else:
                if r.status_code < 300:
                    return msgspec.json.decode(r.content) if r.content else {}
                if r.status_code not in RETRY_STATUS:
                    self.counts["rejected"] += 1
                    log.warning("soak %s %s refused: %d %s", method, path, r.status_code,
                                r.text[:300])
                    return None
                why = f"HTTP {r.status_code}"
            if attempt + 1 == SEND_TRIES or self._closing.is_set():
                self.counts["failed"] += 1
                log.warning("soak %s %s given up: %s", method, path, why)
                return None
            self.counts["retries"] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
        return None

    async def _publish_users(self) -> None:
        for uid in self.users:
            body = {"op": "create", "id": uid,
                    "data": {"id": uid, "email": f"{uid}@soak.test"}}
            if await self._service("POST", f"/api/v1/topics/{USER_TOPIC}/events", body) is None:
                raise RuntimeError(f"could not publish soak user {uid}")
        state = self.stack.keys.state(USER_TOPIC)
        for _ in range(int(USERS_UP_S / 0.1)):  # the centers and forwarder read them there
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                if await self._redis.hexists(state, self.users[-1]):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the soak users did not reach the user state in {USERS_UP_S:g} s")

    # -- unaccounted traffic ---------------------------------------------------------------
    async def _topic_event(self) -> None:
        self.counts["ops"] += 1
        eid = f"e{self.rng.randint(1, 200)}"
        op = self.rng.choice(("create", "update", "update", "delete"))
        body: dict[str, Any] = {"op": op, "id": eid}
        if op != "delete":
            body["data"] = {"id": eid, "n": self.rng.randint(0, 1_000_000)}
        await self._service("POST", f"/api/v1/topics/{CHURN_TOPIC}/events", body)

    async def _settings_change(self) -> None:
        """Create, patch or delete the churn setting (ui only: it forwards nothing)."""
        self.counts["ops"] += 1
        if self._setting_id is None:
            s = await self._service("POST", "/api/v1/settings",
                                    {"name": CHURN_SETTING, "metric": {"n": self._seq}})
            self._setting_id = None if s is None else s["id"]
        elif self.rng.random() < 0.7:
            await self._service("PATCH", f"/api/v1/settings/{self._setting_id}",
                                {"metric": {"n": self._seq}})
        else:
            sid, self._setting_id = self._setting_id, None
            await self._service("DELETE", f"/api/v1/settings/{sid}", None)

    async def _user(self, method: str, path: str, uid: str) -> Any:
        """A user-token request, not retried (a failed read is only traffic)."""
        assert self._http is not None
        try:
            r = await self._http.request(
                method, path, headers={"Authorization": f"Bearer {self.stack.user_token(uid)}"})
        except httpx.HTTPError:
            self.counts["op_errors"] += 1
            return None
        if r.status_code >= 300:
            self.counts["op_errors"] += 1
            return None
        return msgspec.json.decode(r.content) if r.content else {}

    async def _read_one(self) -> None:
        """A reader looks at their newest unread and marks one read."""
        self.counts["ops"] += 1
        uid = self.rng.choice(self.readers)
        await self._user("GET", "/api/v1/me/unread-count", uid)
        page = await self._user("GET", "/api/v1/me/notices?unread=true&limit=20", uid)
        items = (page or {}).get("items") or []
        if items:
            nid = self.rng.choice(items)["id"]
            await self._user("POST", f"/api/v1/me/notices/{nid}/read", uid)

    async def _read_all(self) -> None:
        self.counts["ops"] += 1
        await self._user("POST", "/api/v1/me/notices/read-all", self.rng.choice(self.readers))

    async def _prune(self, stop: asyncio.Event) -> None:
        """Delete the wrapped alert's entities (topic event, bridge key) whose notice some
        SSE client has received, PRUNE_AFTER_S after it was acknowledged: a restarted wrapper
        replays every entity left (folded by its dedup key, but each one costs the alert, the
        ingest stream and the center a round)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PRUNE_EVERY_S):
                    await stop.wait()
            old = time.time() - PRUNE_AFTER_S
            done = [s for s in self._prunable if s.seq in self._seen and s.at < old]
            if not done:
                continue
            gone = {s.seq for s in done}
            self._prunable = [s for s in self._prunable if s.seq not in gone]
            for s in done:
                if stop.is_set():
                    return
                if s.path == "wrap":
                    await self._service("POST", f"/api/v1/topics/{self.wrap_topic}/events",
                                        {"op": "delete", "id": f"w{s.seq}"})
                else:
                    with contextlib.suppress(RedisError, OSError, TimeoutError):
                        async with asyncio.timeout(REDIS_TIMEOUT_S):
                            await self._redis.delete(f"{self.key_prefix}b{s.seq}")

    # -- memory ------------------------------------------------------------------------------
    async def _sample_memory(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    mem = await self._redis.info("memory")
                    server = await self._redis.info("server")
                self.memory.append(MemorySample(time.time(), int(mem["used_memory"]),
                                                str(server["run_id"]),
                                                self.counts["acknowledged"]))
            except (RedisError, OSError, TimeoutError):
                pass  # Redis down or paused: no sample this time
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MEMORY_EVERY_S):
                    await stop.wait()
