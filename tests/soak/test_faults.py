"""The fault scheduler: a seed names one plan (pure), and every kind of fault, injected into
a real stack, leaves it whole: nothing down, notices flowing, bad entries dead-lettered."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from itertools import pairwise

import httpx
import pytest
import pytest_asyncio

from support import eventually
from vestnik.app.soak.faults import GAP_S, KIND_WEIGHTS, Fault, Scheduler, plan
from vestnik.app.soak.stack import Stack
from vestnik.streams.ids import ulid

pytestmark = pytest.mark.timeout(300)


def test_the_same_seed_plans_the_same_faults_at_the_same_times() -> None:
    a = plan(random.Random(1), 3600)
    assert a == plan(random.Random(1), 3600)
    assert a != plan(random.Random(2), 3600)
    assert plan(random.Random(1), 600) == [f for f in a if f.at_s < 600]


def test_a_plan_is_a_mix_every_10_to_30_s_on_distinct_targets_of_every_kind() -> None:
    faults = plan(random.Random(3), 3600)
    times = sorted({f.at_s for f in faults})
    assert GAP_S[0] <= times[0] <= GAP_S[1]
    assert all(GAP_S[0] <= b - a <= GAP_S[1] for a, b in pairwise(times))
    assert len(times) >= 3600 / GAP_S[1]
    for t in times:
        mix = [f for f in faults if f.at_s == t]
        assert 1 <= len(mix) <= 3
        assert len({f.target for f in mix}) == len(mix)
    assert {f.kind for f in faults} == set(KIND_WEIGHTS)


class FakeLoad:
    """The Load's bad_burst alone: n entries without a title, which the center must
    dead-letter."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.expected = stack, 0

    async def bad_burst(self, n: int) -> None:
        r = self.stack.admin()
        for i in range(n):
            await r.xadd(self.stack.keys.notices, {"alert": "soak-bad", "bad": str(i),
                                                   "recipients": "u1"})
        self.expected += n


@pytest_asyncio.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    async with Stack(users=2) as s:
        yield s


async def _notice_arrives(stack: Stack) -> None:
    title = f"after {ulid()}"

    async def sent() -> bool:
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                resp = await http.post(
                    f"{stack.api_url}/api/v1/notices",
                    headers={"Authorization": f"Bearer {stack.service_token}",
                             "Idempotency-Key": title},
                    json={"alert": stack.mail_alert, "title": title, "recipients": ["u1"]})
            return resp.status_code == 202
        except httpx.HTTPError:
            return False

    await eventually(sent, timeout=30, what="the api accepting a notice")

    async def stored() -> bool:
        r = stack.admin()
        for nid in await r.zrange(stack.keys.feed("u1"), 0, -1):
            body = await r.get(stack.keys.notice(nid.decode()))
            if body and json.loads(body)["title"] == title:
                return True
        return False

    await eventually(stored, timeout=30, what="the notice in the feed")


@pytest.mark.parametrize("mix", [
    [Fault(0, "kill", "center-1", "down 0.5 s"), Fault(0, "kill", "forwarder", "down 0.3 s"),
     Fault(0, "redis-pause", "redis", "1000 ms")],
    [Fault(0, "kill", "api", "down 0.5 s"), Fault(0, "kill", "wrap", "down 0.2 s"),
     Fault(0, "redis-kill", "redis", "restart from AOF")],
    [Fault(0, "kill", "bridge", "down 0.2 s"), Fault(0, "kill", "center-2", "down 0.2 s"),
     Fault(0, "sink", "smtp", "down 1.0 s")],
    [Fault(0, "sink", "webhook", "slow 1.0 s"), Fault(0, "sink", "smtp", "slow 0.5 s"),
     Fault(0, "bad-burst", "notices", "7 entries")],
], ids=["kills+pause", "api+wrap+redis-kill", "bridge+center+smtp-down", "slow+burst"])
async def test_each_kind_of_fault_leaves_the_stack_whole(stack: Stack, mix: list[Fault]) -> None:
    load = FakeLoad(stack)
    dead_before = await stack.admin().xlen(stack.keys.notices_dead)
    scheduler = Scheduler(stack, load, random.Random(0))  # type: ignore[arg-type]
    await scheduler.inject(mix)
    assert [f.kind for f in scheduler.injected] == [f.kind for f in mix]
    assert all(f.wall > 0 for f in scheduler.injected)
    assert stack.down() == []
    await _notice_arrives(stack)

    async def dead_lettered() -> bool:
        return await stack.admin().xlen(stack.keys.notices_dead) - dead_before >= load.expected

    await eventually(dead_lettered, timeout=30, what="the bad entries dead-lettered")


async def test_run_injects_the_seeds_plan_until_the_deadline(stack: Stack) -> None:
    seed = next(s for s in range(100) if plan(random.Random(s), 14)
                and all(f.kind in ("redis-pause", "bad-burst", "kill")
                        for f in plan(random.Random(s), 30)))
    load = FakeLoad(stack)
    scheduler = Scheduler(stack, load, random.Random(seed))  # type: ignore[arg-type]
    got = await scheduler.run(time.monotonic() + 14)
    planned = plan(random.Random(seed), 14)
    assert [(f.at_s, f.kind, f.target, f.detail) for f in got] == [
        (f.at_s, f.kind, f.target, f.detail) for f in planned]
    assert stack.down() == []
    assert await scheduler.heal() == []
