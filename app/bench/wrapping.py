"""B4: the alert wrapper's two pipes, each against a bare pipe in the same run."""

from __future__ import annotations

import asyncio
import json
import sys

from redis.asyncio import Redis

from vestnik.app.bench.core import Bench
from vestnik.app.bench.env import World

# The alert of the "in" direction: counts entity lines, reports first→last time on stdout.
COUNTER = r"""
import json, sys, time
print(json.dumps({"type": "notice", "title": "started"}), flush=True)
n, first, last = 0, None, None
for line in sys.stdin:
    if line.startswith('{"type":"entity"'):
        n += 1
        now = time.monotonic()
        first = first or now
        last = now
        if '"id":"end"' in line:
            break
print(json.dumps({"type": "notice", "title": "done",
                  "data": {"lines": n, "seconds": (last or 0) - (first or 0)}}), flush=True)
"""


def _span_rate(first: bytes, last: bytes, n: int) -> float:
    ms = int(last.split(b"-")[0]) - int(first.split(b"-")[0])
    return (n - 1) / max(ms / 1000, 0.001)


async def _run(argv: list[str], world: World, name: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=world.env(), stdout=asyncio.subprocess.PIPE,
        stderr=open(world.dir / f"{name}.log", "wb"))  # noqa: ASYNC230
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited {proc.returncode}: "
                           f"{(world.dir / f'{name}.log').read_text()[-1500:]}")
    return out.decode()


async def _setting(r: Redis, name: str) -> None:
    await r.hset("vn:settings", "s1", json.dumps({
        "id": "s1", "name": name, "metric": {"limit": 10}, "channel": {"ui": {"users": ["1"]}},
        "enabled": True}))


async def _out(world: World, n: int) -> tuple[float, float]:
    lines = world.dir / "notices.jsonl"
    with lines.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"type": "notice", "title": f"Balance low on acc-{i}",
                                "severity": "warning",
                                "entity": {"topic": "account", "id": f"acc-{i}"},
                                "data": {"balance": i}}) + "\n")
    r = world.redis()
    await _setting(r, "bench-out")
    toml = world.dir / "out.toml"
    toml.write_text(f'name = "bench-out"\ncommand = ["cat", "{lines}"]\n'
                    '[restart]\npolicy = "never"\n')
    rates = []
    for argv in ([sys.executable, "-m", "vestnik.app.cli", "wrap", str(toml)],
                 [sys.executable, "-m", "vestnik.app.bench.wrap_ceiling", "out", world.url,
                  str(lines)]):
        await r.delete("vn:notices")
        await _run(argv, world, "wrap-out")
        assert await r.xlen("vn:notices") == n
        first = (await r.xrange("vn:notices", count=1))[0][0]
        last = (await r.xrevrange("vn:notices", count=1))[0][0]
        rates.append(_span_rate(first, last, n))
    await r.aclose()
    return rates[0], rates[1]


async def _in(world: World, n: int) -> tuple[float, float]:
    r = world.redis()
    await r.flushall()
    await _setting(r, "bench-in")
    for start in range(0, n, 1000):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 1000)):
                eid = "end" if i == n - 1 else str(i)
                pipe.xadd("vn:topic:vm", {"op": "update", "id": eid, "data": json.dumps(
                    {"id": eid, "name": f"vm-{i}", "status": "running", "cpu": i % 100})})
            await pipe.execute()
    await r.set("vn:state:vm:pos", "0-1")  # an empty materialized state from before them
    counter = world.dir / "counter.py"
    counter.write_text(COUNTER)
    toml = world.dir / "in.toml"
    toml.write_text(f'name = "bench-in"\ncommand = ["{sys.executable}", "{counter}"]\n'
                    'topics = ["vm"]\nqueue_size = 100000\n[restart]\npolicy = "never"\n')
    await _run([sys.executable, "-m", "vestnik.app.cli", "wrap", str(toml)], world, "wrap-in")
    done = next(f for _, f in await r.xrange("vn:notices") if f[b"title"] == b"done")
    data = json.loads(done[b"data"])
    out = await _run([sys.executable, "-m", "vestnik.app.bench.wrap_ceiling", "in", world.url,
                      str(counter)], world, "ceiling-in")
    ceil = json.loads(out.strip().splitlines()[-1])["data"]
    await r.aclose()
    return data["lines"] / data["seconds"], ceil["lines"] / ceil["seconds"]


async def b4_wrapper(bench: Bench) -> None:
    n = 50_000 if bench.quick else 200_000
    task = bench.progress.add_task("B4 wrapper", total=2 * bench.rounds())
    outs, out_ceils, ins, in_ceils = [], [], [], []
    for _ in bench.each_round(70):
        with World() as world:
            o, oc = await _out(world, n)
            outs.append(o)
            out_ceils.append(oc)
            bench.progress.advance(task)
            i, ic = await _in(world, n)
            ins.append(i)
            in_ceils.append(ic)
            bench.progress.advance(task)
    bench.record("B4:out_per_s", f"{n:,} notice lines from an alert's stdout into vn:notices "
                 "(validated, enriched)", outs, "notices/s", ceiling=out_ceils, target=20_000)
    bench.record("B4:in_per_s", f"{n:,} entity events from vn:topic:vm into an alert's stdin",
                 ins, "events/s", ceiling=in_ceils, target=20_000)
    bench.done(task)
