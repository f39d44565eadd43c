"""Where B2's and B7's time goes: CPU per notice of each part under the load `vestnik bench`
drives, with Redis's time per command and per script.

`--load b7` (default): B7's closed loop of `--clients` clients (B7: 1, B7x8: 8; POST
/api/v1/notices, forward_after 0, a webhook channel → B7's local receiver) for SECONDS.
`--load b2 --rate R`: B2's paced XADDs to vn:notices at R/s, each received by an SSE
client of its recipient, printing p50/p99/max too. Starts a private redis-server and the
parts, warms them, then prints delivered/s; CPU per notice (/proc/<pid>/stat
utime+stime) of each part and of this process (the load and the client); Redis's
commands per notice with their µs per call (INFO commandstats) and each script's µs per
call (SLOWLOG, every command logged).
`--py-spy api center` also records those parts (raw collapsed stacks, /tmp/parts-<part>.txt).

    .venv/bin/python scripts/bench_parts.py [--load b7|b2] [--clients 1] [--rate 2000]
        [--seconds 6] [--py-spy api center]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vestnik.app.bench import forwarding as b7  # noqa: E402
from vestnik.app.bench import suite  # noqa: E402
from vestnik.app.bench.core import percentile  # noqa: E402
from vestnik.app.bench.env import BenchProc, World, cpu_seconds, fresh_aof, run_stoppable  # noqa: E402

Load = Callable[[], Awaitable[int]]  # runs the load, returns the notices delivered


async def measure(world: World, parts: dict[str, BenchProc], load: Load, seconds: float,
                  spy: list[str]) -> None:
    """Run `load` once, printing each part's CPU per delivered notice and Redis's costs."""
    r = world.redis()
    pids = {name: p.pid for name, p in parts.items()} | {"client": os.getpid()}
    if (pid := world.redis_server.pid) is not None:
        pids["redis"] = pid
    spies = [await asyncio.create_subprocess_exec(
        str(ROOT / ".venv/bin/py-spy"), "record", "-p", str(pids[name]), "-d",
        str(int(seconds)), "-r", "250", "-f", "raw", "-o", f"/tmp/parts-{name}.txt",
        "--nonblocking", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in spy]
    await r.config_resetstat()
    await r.config_set("slowlog-log-slower-than", 0)
    await r.config_set("slowlog-max-len", 200_000)
    await r.slowlog_reset()
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    n = await load()
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    for p in spies:
        await p.wait()
    print(f"delivered {n} notices in {seconds:g} s")
    for name in pids:
        used = cpu1[name] - cpu0[name]
        print(f"  {name:9s} {1e6 * used / n:7.0f} µs CPU/notice {100 * used / seconds:5.1f} % "
              "of a core")
    print(f"  {'total':9s} {1e6 * sum(cpu1[k] - cpu0[k] for k in pids) / n:7.0f}")
    scripts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in await r.slowlog_get(200_000):
        words = str(e["command"], "utf-8", "replace").split(" ") \
            if isinstance(e["command"], bytes) else str(e["command"]).split(" ")
        if words[0].upper() == "EVALSHA":
            scripts[words[1]][0] += 1
            scripts[words[1]][1] += e["duration"]
    for sha, (calls, us) in sorted(scripts.items(), key=lambda kv: -kv[1][1]):
        print(f"  script {sha[:12]} {calls / n:5.2f}/notice {us / calls:7.1f} µs/call")
    stats = await r.info("commandstats")
    for cmd, v in sorted(stats.items(), key=lambda kv: -kv[1]["calls"])[:16]:
        if v["calls"] >= n / 10:
            print(f"  {cmd[8:]:16s} {v['calls'] / n:5.2f}/notice "
                  f"{v['usec_per_call']:7.1f} µs/call")
    await r.aclose()


async def b7_parts(seconds: float, spy: list[str], clients: int) -> None:
    with World() as world:
        async with b7.vestnik_b7(world) as v:

            async def load() -> int:
                rate = await b7.closed_loop(v.target, v.receiver, clients, seconds)
                print(f"{clients} client(s): {rate:,.0f} delivered/s")
                return (await v.receiver.stats()).n

            await b7.open_loop(v.target, v.receiver, 100, 1.0)  # warm: connections, scripts
            await measure(world, {"api": v.api, "center": v.center, "receiver": v.receiver.proc},
                          load, seconds, spy)


async def b2_parts(rate: int, seconds: float, spy: list[str]) -> None:
    with World() as world:
        r = world.redis()
        await suite.seed_users(r, 10)
        api, base = world.start_api()
        center = world.start("center")
        port = int(base.rsplit(":", 1)[1])
        me = f"/api/v1/me/stream?token={world.token('u1')}"
        await suite.latency_run(r, port, me, 50, 1.0, suite.stamped_notices)  # warm
        await fresh_aof(r)

        async def load() -> int:
            values, sent = await suite.latency_run(r, port, me, rate, seconds,
                                                    suite.stamped_notices)
            print(f"{rate}/s: p50 {percentile(values, 50):.1f} ms, p99 "
                  f"{percentile(values, 99):.1f} ms, max {max(values):.1f} ms, lost "
                  f"{sent - len(values)}")
            return sent

        try:
            await measure(world, {"api": api, "center": center}, load, seconds, spy)
        finally:
            await r.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load", choices=["b7", "b2"], default="b7")
    ap.add_argument("--rate", type=int, default=2000, help="b2: notices per second")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--clients", type=int, default=1, help="b7: closed-loop clients")
    ap.add_argument("--py-spy", nargs="*", default=[], choices=["api", "center", "receiver"])
    args = ap.parse_args()
    run_stoppable(b2_parts(args.rate, args.seconds, args.py_spy) if args.load == "b2"
                  else b7_parts(args.seconds, args.py_spy, args.clients))
