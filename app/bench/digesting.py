"""B8 (digests): N users with 10 notices each in their email digest bucket, every digest due
→ users/s of ONE `vestnik forwarder` process, one digest email each, accepted by the
bench's SMTP sink (aiosmtpd, app.bench.receiver). The state is what the forward jobs leave
(`Digests.divert`): users with an address, their notices stored and unread, a bucket and
a pending digest each, all due now. Timed from the first email to the last (start-up
left out). Ceiling: B5's bare sender loop (aiosmtplib over 8 connections) to the same
sink, in the same run.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from vestnik.app.bench.core import Bench
from vestnik.app.bench.env import World, cpu_seconds
from vestnik.app.bench.forwarding import bare_smtp
from vestnik.app.bench.receiver import Receiver, rate
from vestnik.streams.forward import digest_member
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.schemas import ChannelMap, Notice, User, convert, json_encode

K = Keys("vn:")
PER_USER = 10
WINDOW_MS = 3_600_000
CHANNELS = convert({"email": {"digest": {"window": WINDOW_MS // 1000, "limit": 20}}},
                   ChannelMap)


async def fill(r: Redis, users: int) -> None:
    """Every user's digest due now, as `users` forward runs of PER_USER notices left it."""
    now = now_ms()
    for start in range(0, users, 500):
        async with r.pipeline(transaction=False) as pipe:
            for u in range(start, min(users, start + 500)):
                uid = f"u{u}"
                pipe.hset(K.state(USER_TOPIC), uid,
                          json_encode(User(id=uid, name=f"User {u}", email=f"{uid}@example.org")))
                bucket: dict[str, int] = {}
                for i in range(PER_USER):
                    nid = ulid()
                    pipe.set(K.notice(nid), json_encode(Notice(
                        id=nid, alert="disk", severity="warning",
                        title=f"Disk 95% on web-{i} (/dev/vda1)", body="x" * 200,
                        link=f"https://ops.example.org/disk/web-{i}", recipients=[uid],
                        channels=CHANNELS, created_at=now - WINDOW_MS + i)))
                    pipe.zadd(K.feed(uid), {nid: i + 1})  # in the feed, unread
                    bucket[nid] = now - WINDOW_MS + i
                pipe.zadd(K.digest(uid, "email"), bucket)
                pipe.hset(K.digests(uid), mapping={"email": now, "email:window": WINDOW_MS})
                pipe.zadd(K.digest_due, {digest_member(uid, "email"): now})
            await pipe.execute()


async def _b8_one(bench: Bench, users: int) -> tuple[float, float, float]:
    """(users/s, users per forwarder CPU-s, bare sender's messages/s)."""
    with World() as world:
        r = world.redis()
        receiver = Receiver(world.dir, world.env(), "smtp")
        try:
            await receiver.ready()
            await bare_smtp(receiver.port, 1000 if bench.quick else 4000)
            ceiling = rate(await receiver.stats())
            await receiver.reset()
            await fill(r, users)
            fwd = world.start("forwarder", VESTNIK_SMTP_URL=f"smtp://127.0.0.1:{receiver.port}",
                              VESTNIK_SMTP_FROM="vestnik@example.org")
            cpu0 = None
            deadline = time.monotonic() + 300
            st = await receiver.stats()
            while st.n < users and time.monotonic() < deadline:
                if fwd.proc.poll() is not None:
                    raise RuntimeError(f"forwarder exited: {fwd.log_path.read_text()[-1500:]}")
                if cpu0 is None and st.n:
                    cpu0 = cpu_seconds(fwd.pid)  # start-up (imports, connects) left out
                await asyncio.sleep(0.05)
                st = await receiver.stats()
            cpu = cpu_seconds(fwd.pid) - (cpu0 or 0.0)
            if st.n < users:
                raise RuntimeError(f"B8: {st.n} of {users} digests arrived in 300 s: "
                                   f"{fwd.log_path.read_text()[-1500:]}")
        finally:
            await receiver.close()
            await r.aclose()
    return rate(st), (st.n / cpu if cpu else 0.0), ceiling


async def b8_digest(bench: Bench) -> None:
    users = 2000 if bench.quick else 10_000
    task = bench.progress.add_task("B8 digests", total=bench.rounds())
    rates, per_cpu, ceilings = [], [], []
    for _ in bench.each_round(60):
        a, b, c = await _b8_one(bench, users)
        rates.append(a)
        per_cpu.append(b)
        ceilings.append(c)
        bench.progress.advance(task)
    bench.record("B8:digest_users_per_s", f"{users:,} users with {PER_USER} due notices each "
                 "→ one digest email each, one forwarder, SMTP sink (aiosmtpd); ceiling: a "
                 "bare sender loop to the same sink", rates, "users/s", ceiling=ceilings,
                 target=1000)
    bench.record("B8:digest_users_per_cpu_s", "digests per forwarder CPU-second "
                 "(utime+stime; robust to the box's load)", per_cpu, "users/CPU-s")
    bench.done(task)
