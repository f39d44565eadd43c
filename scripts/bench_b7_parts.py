"""Where B7's time goes: CPU per delivered notice of each part, under `vestnik bench` B7's
one-client closed loop (POST /api/v1/notices, forward_after 0, a webhook channel → a local
receiver), with Redis's time per command and per script.

Starts a private redis-server, `vestnik api`, `vestnik center` and B7's webhook receiver,
warms them, then drives one client for SECONDS and prints: delivered/s; CPU per notice
(/proc/<pid>/stat utime+stime) of the api, the center, Redis, the receiver and this
process (the client); Redis's commands per notice with their µs per call (INFO
commandstats) and the scripts' µs per call (SLOWLOG, every command logged).
`--py-spy api center` also records those parts (raw collapsed stacks, /tmp/b7-<part>.txt).

    .venv/bin/python scripts/bench_b7_parts.py [--seconds 6] [--py-spy api center]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.bench import forwarding as b7  # noqa: E402
from app.bench.env import World  # noqa: E402
from app.bench.forwarding import cpu_seconds  # noqa: E402
from streams.keys import USER_TOPIC, Keys  # noqa: E402
from streams.schemas import User, json_encode  # noqa: E402

K = Keys("vn:")


def redis_pid(world: World) -> int | None:
    port = world.url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(["pgrep", "-f", f"redis-server .*:{port}"], capture_output=True,
                         text=True).stdout.split()
    return int(out[0]) if out else None


async def main(seconds: float, spy: list[str]) -> None:
    with World() as world:
        r = world.redis()
        async with r.pipeline(transaction=False) as pipe:
            for i in range(b7.USERS):
                pipe.hset(K.state(USER_TOPIC), f"u{i}", json_encode(User(id=f"u{i}")))
            await pipe.execute()
        sink = b7.Sink(world.dir, world.env(), "http")
        await sink.ready()
        api, base = world.start_api()
        center = world.start("center", VESTNIK_WEBHOOK_SECRET=b7.SECRET)
        target = b7.Target("vestnik", f"{base}/api/v1/notices",
                           {"authorization": f"Bearer {world.service_token}",
                            "content-type": "application/json"},
                           f"http://127.0.0.1:{sink.port}/hook")
        try:
            await b7._open_loop(target, sink, 100, 1.0)  # warm: connections, scripts
            parts = {"api": api.pid, "center": center.pid, "receiver": sink.proc.pid,
                     "client": os.getpid()}
            if (pid := redis_pid(world)) is not None:
                parts["redis"] = pid
            spies = [await asyncio.create_subprocess_exec(
                str(ROOT / ".venv/bin/py-spy"), "record", "-p", str(parts[name]), "-d",
                str(int(seconds)), "-r", "250", "-f", "raw", "-o", f"/tmp/b7-{name}.txt",
                "--nonblocking", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for name in spy]
            await r.config_resetstat()
            await r.config_set("slowlog-log-slower-than", 0)
            await r.config_set("slowlog-max-len", 200_000)
            await r.slowlog_reset()
            cpu0 = {name: cpu_seconds(pid) for name, pid in parts.items()}
            rate = await b7._closed_loop(target, sink, 1, seconds)
            n = (await sink.stats()).n
            cpu1 = {name: cpu_seconds(pid) for name, pid in parts.items()}
            for p in spies:
                await p.wait()
            print(f"delivered {n} notices, {rate:,.0f}/s")
            for name in parts:
                print(f"  {name:9s} {1e6 * (cpu1[name] - cpu0[name]) / n:7.0f} µs CPU/notice")
            print(f"  {'total':9s} {1e6 * sum(cpu1[k] - cpu0[k] for k in parts) / n:7.0f}")
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
        finally:
            await target.pool.aclose()
            await sink.close()
            await r.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--py-spy", nargs="*", default=[], choices=["api", "center", "receiver"])
    args = ap.parse_args()
    import uvloop

    uvloop.run(main(args.seconds, args.py_spy))
