"""The soak's fault scheduler: a reproducible random mix of faults every 10-30 s.

The plan is drawn from `random.Random(seed)` alone (never from the clock or the load), so a
seed names one sequence of faults and planned times: a failing run is run again with its
seed. At each planned time a mix of one to three faults on distinct targets is injected
together, each undone within its own duration (a part restarted, a sink back up, a pause
over), so one mix is over before the next one starts:

- kill:        SIGKILL of a part (center, forwarder, api, bridge, wrapper), down 0.2-5 s
- redis-kill:  SIGKILL of redis-server, restarted from its AOF (`appendfsync always`)
- redis-pause: CLIENT PAUSE for 1-5 s
- sink:        the SMTP sink or the webhook receiver down or slow for 2-SINK_DOWN_S s
- bad-burst:   5-50 entries the center must dead-letter (the load remembers them)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx
import msgspec
from redis.exceptions import RedisError

from vestnik.app.soak.stack import Stack, StackError

if TYPE_CHECKING:
    from vestnik.app.soak.load import Load

GAP_S = (10.0, 30.0)
KILLABLE = ("center-1", "center-2", "forwarder", "api", "bridge", "wrap")
KIND_WEIGHTS = {"kill": 40, "redis-kill": 10, "redis-pause": 15, "sink": 25, "bad-burst": 10}
KILL_DOWN_S = (0.2, 5.0)
PAUSE_MS = (1000, 5000)
SINK_DOWN_S = 12.0  # well inside the senders' retries (stack: 10 attempts from 0.5 s)
BURST = (5, 50)


class Fault(msgspec.Struct, frozen=True):
    at_s: float  # planned, seconds after the scheduler's start
    kind: str  # kill | redis-kill | redis-pause | sink | bad-burst
    target: str  # a part's name, "redis", "smtp" / "webhook", "notices"
    detail: str  # e.g. "down 1.3 s", "2500 ms", "slow 8.0 s", "17 entries"
    # when it was injected (time.time()), 0 in a plan: the ledger places duplicates by it
    wall: float = 0.0


def _mix(rng: random.Random, at_s: float) -> list[Fault]:
    """One to three faults on distinct targets, at most one touching Redis."""
    size = 1 + (rng.random() < 0.4) + (rng.random() < 0.15)
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    out: list[Fault] = []
    for _ in range(size):
        kind = rng.choices(kinds, weights)[0]
        if kind == "kill":
            target = rng.choice(KILLABLE)
            fault = Fault(at_s, kind, target, f"down {rng.uniform(*KILL_DOWN_S):.1f} s")
        elif kind == "redis-kill":
            fault = Fault(at_s, kind, "redis", "restart from AOF")
        elif kind == "redis-pause":
            fault = Fault(at_s, kind, "redis", f"{rng.randint(*PAUSE_MS)} ms")
        elif kind == "sink":
            target, mode = rng.choice(("smtp", "webhook")), rng.choice(("down", "slow"))
            fault = Fault(at_s, kind, target, f"{mode} {rng.uniform(2.0, SINK_DOWN_S):.1f} s")
        else:
            fault = Fault(at_s, kind, "notices", f"{rng.randint(*BURST)} entries")
        redis_taken = any(f.target == "redis" for f in out)
        if any(f.target == fault.target for f in out) or (redis_taken
                                                          and fault.target == "redis"):
            continue  # one fault per target in a mix
        out.append(fault)
    return out


def faults(rng: random.Random) -> Iterator[Fault]:
    """The endless plan drawn from `rng`: a mix every GAP_S, the first after one gap."""
    at = 0.0
    while True:
        at = round(at + rng.uniform(*GAP_S), 3)
        yield from _mix(rng, at)


def plan(rng: random.Random, seconds: float) -> list[Fault]:
    """The faults planned before `seconds` (pure: what `Scheduler.run` injects)."""
    out: list[Fault] = []
    for f in faults(rng):
        if f.at_s >= seconds:
            return out
        out.append(f)
    raise AssertionError("unreachable: faults() is endless")


def _seconds(detail: str) -> float:
    return float(detail.split()[-2])


class Scheduler:
    """Injects the plan drawn from `rng` into `stack`, the bad bursts through `load`."""

    def __init__(self, stack: Stack, load: Load, rng: random.Random) -> None:
        self.stack, self.load, self.rng = stack, load, rng
        self.injected: list[Fault] = []
        self.errors: list[str] = []  # faults that could not be injected or undone

    async def run(self, until: float) -> list[Fault]:
        """Inject mixes until `until` (time.monotonic()); the mix in hand is finished
        (parts restarted, sinks up) before returning the faults injected."""
        t0 = time.monotonic()
        mix: list[Fault] = []
        for f in faults(self.rng):
            if t0 + f.at_s >= until:
                break
            if mix and f.at_s != mix[0].at_s:
                await self._inject(mix, t0)
                mix = []
            mix.append(f)
        if mix and t0 + mix[0].at_s < until:
            await self._inject(mix, t0)
        return self.injected

    async def _inject(self, mix: list[Fault], t0: float) -> None:
        delay = t0 + mix[0].at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.inject(mix)

    async def inject(self, mix: list[Fault]) -> None:
        """Inject `mix` now, all at once; return when each is undone."""
        now = time.time()
        done = [msgspec.structs.replace(f, wall=now) for f in mix]
        self.injected += done
        await asyncio.gather(*(self._one(f) for f in done))

    async def _one(self, f: Fault) -> None:
        """Inject one fault and undo it; a part that does not come back, a sink or Redis
        that does not answer is recorded in `errors` (the soak fails on it) and the run
        goes on: `heal` tries again at the end."""
        try:
            await self._inject_one(f)
        except (StackError, httpx.HTTPError, RedisError, OSError) as e:
            self.errors.append(f"{f.kind} {f.target} at {f.at_s:g} s: {type(e).__name__}: "
                               f"{str(e)[:300]}")

    async def _inject_one(self, f: Fault) -> None:
        s = self.stack
        if f.kind == "kill":
            await s.kill(f.target)
            await asyncio.sleep(_seconds(f.detail))
            await s.restart(f.target)
        elif f.kind == "redis-kill":
            await s.redis_kill_and_restart()
        elif f.kind == "redis-pause":
            ms = int(f.detail.split()[0])
            await s.redis_pause(ms)
            await asyncio.sleep(ms / 1000)
        elif f.kind == "sink":
            which = cast(Literal["smtp", "webhook"], f.target)
            mode = cast(Literal["down", "slow"], f.detail.split()[0])
            await s.sink_mode(which, mode)
            try:
                await asyncio.sleep(_seconds(f.detail))
            finally:
                await s.sink_mode(which, "up")
        elif f.kind == "bad-burst":
            await self.load.bad_burst(int(f.detail.split()[0]))
        else:
            raise ValueError(f"fault kind: unknown {f.kind!r}")

    async def heal(self) -> list[str]:
        """After the faults: Redis and every part down started again, sinks up. Returns
        what had to be restarted (a part whose restart had failed, or that died by itself:
        `stack.died` has the latter)."""
        s = self.stack
        healed = await s.revive()
        for name in s.down():
            if name in s.parts:
                await s.restart(name)
                healed.append(name)
        for which in ("smtp", "webhook"):
            await s.sink_mode(cast(Any, which), "up")
        return healed
