"""Notices per second through ONE `vestnik center` process.

Starts a private redis-server and one `vestnik center`, XADDs N one-recipient notices
in pipelines (spread over U users), and times from the first XADD until every notice
is in its user's feed and every entry is acked (group lag 0, nothing pending).

    .venv/bin/python scripts/bench_center.py [-n 50000] [--users 1000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.keys import CENTER_GROUP, USER_TOPIC, Keys  # noqa: E402
from streams.redis_server import RedisServer  # noqa: E402

K = Keys("vn:")


async def stored_total(redis: Redis, users: list[str]) -> int:
    """Feed entries ever made (the users' seq counters: retention does not lower them)."""
    return sum(int(x or 0) for x in await redis.mget([K.user_seq(u) for u in users]))


async def drained(redis: Redis) -> bool:
    for g in await redis.xinfo_groups(K.notices):
        if g["name"] in (CENTER_GROUP, CENTER_GROUP.encode()):
            return int(g.get("pending") or 0) == 0 and int(g.get("lag") or 0) == 0
    return False


def start_center(url: str, batch: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    env.update({"VESTNIK_REDIS_URL": url, "VESTNIK_CENTER_BATCH": str(batch),
                "VESTNIK_LOG_LEVEL": "warning"})
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "center", "--consumer",
                                 "bench"], cwd=ROOT, env=env, stdout=out, stderr=out)


async def bench(url: str, n: int, users: list[str], center: subprocess.Popen[bytes],
                log: Path) -> float:
    redis = Redis.from_url(url)
    await redis.hset(K.state(USER_TOPIC), mapping={
        u: msgspec.json.encode({"id": u, "name": f"user {u}"}) for u in users})
    try:
        for _ in range(300):  # the group exists once the center is up
            try:
                if await redis.xinfo_groups(K.notices):
                    break
            except Exception:  # no stream yet
                pass
            await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + 1000, n)):
                    pipe.xadd(K.notices, {"alert": "bench", "title": f"notice {i}",
                                          "severity": "info", "recipients": users[i % len(users)]})
                await pipe.execute()
        t_added = time.perf_counter() - t0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if await drained(redis) and await stored_total(redis, users) >= n:
                break
            await asyncio.sleep(0.02)
        else:
            raise SystemExit("timed out; see " + str(log))
        elapsed = time.perf_counter() - t0
        print(f"XADD of {n} took {t_added:.2f}s; all stored and acked after {elapsed:.2f}s")
        return elapsed
    finally:
        await redis.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", type=int, default=50_000)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500)
    args = p.parse_args()
    users = [str(u) for u in range(1, args.users + 1)]
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(Path(d) / "redis").start()
        log = Path(d) / "center.log"
        center = start_center(server.url, args.batch, log)
        try:
            elapsed = asyncio.run(bench(server.url, args.n, users, center, log))
        finally:
            center.terminate()
            center.wait(15)
            server.stop()
    print(f"{args.n / elapsed:,.0f} notices/s through one center "
          f"({args.users} users, batch {args.batch})")


if __name__ == "__main__":
    main()
