"""The soak's ledger can fail: notices stored by a real center, then a missing notice, a feed
duplicate, SSE gaps (an event never received, one with another notice's id) and an SSE
duplicate, a missing and a duplicated forward, a missing dead letter, planted in what it
reads, are each found and counted; the same world without them accounts clean."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from support import Proc, eventually
from vestnik.app.soak import ledger
from vestnik.app.soak.follow import SSERecord
from vestnik.app.soak.load import MemorySample, Sent
from vestnik.streams.ids import ulid
from vestnik.streams.keys import Keys

pytestmark = pytest.mark.single_redis

UIDS = ["soak-u1", "soak-u2", "soak-u5"]


@dataclass
class FakeStack:
    """What the ledger uses of app.soak.stack.Stack."""

    keys: Keys
    redis_url: str
    planted_mails: list[bytes] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    forward_after_s: float = 0.0

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url, socket_timeout=5)

    async def mails(self) -> list[bytes]:
        return list(self.planted_mails)


@dataclass
class FakeLoad:
    users: list[str]
    sent: list[Sent] = field(default_factory=list)
    sse: list[SSERecord] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    started_at: float = 0.0
    stopped_at: float = 0.0
    closed: bool = False

    async def close(self) -> None:
        self.closed = True


async def _xadd(redis: Redis, keys: Keys, seq: int, recipients: list[str],
                fwd: list[str] = ()) -> str:  # type: ignore[assignment]
    nid = ulid()
    channels: dict[str, Any] = {"ui": {}}
    if fwd:
        channels["email"] = {"users": list(fwd)}
    await redis.xadd(keys.notices, {
        "id": nid, "alert": "soak-load", "title": f"soak #{seq}",
        "recipients": ",".join(recipients), "channels": msgspec.json.encode(channels),
        "data": msgspec.json.encode({"seq": seq})})
    return nid


def _mail(nid: str, uid: str, at: float) -> bytes:
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(at))
    return (f"From: v@example.org\r\nTo: {uid}@soak.test\r\nSubject: soak\r\nDate: {date}\r\n"
            f"X-Vestnik-Notice: {nid}\r\n\r\nbody\r\n").encode()


async def _feed(redis: Redis, keys: Keys, uid: str) -> list[tuple[int, str]]:
    """(seq, notice id) of each entry of `uid`'s feed, oldest first: what SSE delivers."""
    return [(int(s), n.decode()) for n, s in
            await redis.zrange(keys.feed(uid), 0, -1, withscores=True)]


@pytest.fixture
async def world(redis: Redis, redis_url: str, keys: Keys,
                start_proc: Callable[..., Proc]) -> tuple[FakeStack, FakeLoad]:
    """A center that stored three notices (one forwarded to soak-u5), a bad entry it
    dead-lettered, and a load record that matches them exactly."""
    start_proc("center", "--no-forward")
    load = FakeLoad(UIDS)
    stack = FakeStack(keys, redis_url)
    now = time.time()
    for seq, rcpt, fwd in ((1, ["soak-u1", "soak-u2"], []), (2, ["soak-u1"], []),
                           (3, ["soak-u5", "soak-u2"], ["soak-u5"])):
        nid = await _xadd(redis, keys, seq, rcpt, fwd)
        load.sent.append(Sent(seq, "xadd", nid, tuple(rcpt), tuple(fwd), now))
        if fwd:
            stack.planted_mails.append(_mail(nid, "soak-u5", now))
    await redis.xadd(keys.notices, {"alert": "soak-bad", "title": "soak-bad-1",
                                    "severity": "bogus", "recipients": "soak-u1"})
    load.bad.append("soak-bad-1")

    async def stored() -> bool:
        return (len(await _feed(redis, keys, "soak-u2")) == 2
                and await redis.xlen(keys.notices_dead) == 1)
    await eventually(stored, timeout=20, what="the center stored the notices")
    for uid in UIDS:  # every client connected before the first notice and got all of them
        rec = SSERecord(uid, start=0)
        rec.events = await _feed(redis, keys, uid)
        load.sse.append(rec)
    return stack, load


async def test_clean_world_accounts_zero(world: tuple[FakeStack, FakeLoad]) -> None:
    stack, load = world
    out = await ledger.account(stack, load, drain_s=10, forward_wait_s=5)  # type: ignore[arg-type]
    assert load.closed
    assert (out["acknowledged"], out["missing"], out["duplicated_in_feeds"]) == (3, 0, 0)
    assert (out["sse_gaps"], out["sse_duplicates"]) == (0, 0)
    assert (out["forwards_due"], out["forwards_missing"], out["forwards_duplicated"]) == (1, 0, 0)
    assert (out["dead_letters_expected"], out["dead_letters_found"]) == (1, 1)


async def test_planted_faults_are_each_found(world: tuple[FakeStack, FakeLoad], redis: Redis,
                                             keys: Keys) -> None:
    stack, load = world
    # acknowledged but never sent: missing from soak-u1's feed
    load.sent.append(Sent(99, "http", ulid(), ("soak-u1",), (), time.time()))
    # seq 2 a second time under a new id: a duplicate in soak-u1's feed
    await _xadd(redis, keys, 2, ["soak-u1"])

    async def stored() -> bool:
        return len(await _feed(redis, keys, "soak-u1")) == 3
    await eventually(stored, timeout=20, what="the duplicate stored")
    # soak-u1's client: seq 3 (the duplicate) was never seen, seq 1 seen twice
    u1 = load.sse[0]
    u1.events = [u1.events[0], u1.events[0], u1.events[1]]
    # soak-u2's client got seq 1 with the id of another notice (seq 2's)
    u2 = load.sse[1]
    u2.events = [(1, u2.events[1][1]), u2.events[1]]
    # a forward due for soak-u5 that never reached the sink, and one mailed twice: once
    # with a forwarder kill just before (inside the window), once with no fault near it
    missing_fwd = ulid()
    load.sent.append(Sent(100, "xadd", missing_fwd, ("soak-u5",), ("soak-u5",), time.time()))
    twice = load.sent[2]
    now = time.time()
    stack.planted_mails += [_mail(twice.nid or "", "soak-u5", now),
                            _mail(twice.nid or "", "soak-u5", now + 2 * ledger.WINDOW_S)]
    stack.events.append((now - 5, "kill", "forwarder"))
    load.bad.append("soak-bad-2")  # XADDed (so it says) but never dead-lettered

    out = await ledger.account(stack, load, drain_s=4, forward_wait_s=2)  # type: ignore[arg-type]

    # seq 99, and seq 100 (the forward that never reached the sink was never stored either)
    assert sorted(out["missing_examples"]) == [("soak-u1", 99), ("soak-u5", 100)]
    assert out["missing"] == 2
    assert out["duplicated_in_feeds"] == 1
    assert out["sse_gaps"] == 2 and out["sse_duplicates"] == 1
    assert out["forwards_missing"] == 1
    assert out["forwards_duplicated"] == 2
    assert sorted(d["inside_window"] for d in out["forward_duplicates"]) == [False, True]
    assert (out["dead_letters_expected"], out["dead_letters_found"]) == (2, 1)


def test_steady_memory_uses_the_longest_stretch_without_a_restart() -> None:
    s = [MemorySample(t, mem, run, ack) for t, mem, run, ack in (
        (0, 1_000, "a", 0),         # warm-up: skipped
        (30, 10_000, "a", 100), (60, 20_000, "a", 200), (90, 30_000, "a", 300),
        (95, 5_000, "b", 310), (100, 9_000, "b", 320))]  # after a Redis restart: shorter
    assert ledger.steady_bytes_per_notice(s, 0, 100) == 100
    assert ledger.steady_bytes_per_notice(s[:2], 0, 100) is None


def test_the_window_follows_the_forwarders_own_timeouts() -> None:
    """The documented duplicate window restates the forwarder's figures: they must agree."""
    from vestnik.streams.forward.job import SEND_TIMEOUT_S
    from vestnik.streams.forward.worker import JOB_TIMEOUT_S

    assert ledger.FORWARD_LEASE_S == JOB_TIMEOUT_S + 10
    assert ledger.SEND_TIMEOUT_S == SEND_TIMEOUT_S
    assert ledger.WINDOW_S == 170
