"""Redis frozen (SIGSTOP of the test's own redis-server: connections stay open, nothing
answers, as with a black-holed network): HTTP answers 503 with Retry-After within about
VESTNIK_REDIS_TIMEOUT instead of hanging, `vestnik send` says so and exits, and when Redis
answers again (SIGCONT) every process recovers by itself, no restart: the api answers 202,
the notices an alert printed during the freeze are stored, the center, the forwarder, the
bridge and the live push work again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from fault_support import Follower, K, Stack, add_users, record, stack, token
from redis.asyncio import Redis

from support import SmtpSink, eventually, vestnik_argv

__all__ = ["stack"]

TIMEOUT = 2.0  # VESTNIK_REDIS_TIMEOUT's default: the test runs what operators run
FROZEN_S = 5.0  # longer than a reader's BLOCK (1 s) + TIMEOUT: every part sees a timeout

# one notice every 0.2 s, numbered; each number is written to ticks.txt once printed
ALERT = """
import json, sys, time
n = 0
with open("ticks.txt", "a") as log:
    while True:
        n += 1
        print(json.dumps({"type": "notice", "title": f"tick {n}", "recipients": ["1"]}),
              flush=True)
        log.write(f"{n} {time.time()}\\n")
        log.flush()
        time.sleep(0.2)
"""


async def _titles(r: Redis, uid: str) -> set[str]:
    ids = await r.zrange(K.feed(uid), 0, -1)
    bodies = await r.mget([K.notice(i.decode()) for i in ids]) if ids else []
    return {json.loads(b)["title"] for b in bodies if b}


def _ticks(path: Path, until: float | None = None) -> list[int]:
    """Tick numbers the alert printed (before wall time `until`, if given)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and (until is None or float(parts[1]) < until):
            out.append(int(parts[0]))
    return out


async def _timed(coro) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    result = await coro
    return time.monotonic() - t0, result


@pytest.mark.timeout(180)
async def test_frozen_redis_gets_503_in_time_and_every_part_recovers(stack: Stack,
                                                                     tmp_path: Path):
    server = stack.redis(appendonly=False)
    url = server.url
    r = Redis.from_url(url)
    await add_users(r, "1")
    smtp = SmtpSink().start()
    env = {"VESTNIK_SMTP_URL": smtp.url, "VESTNIK_SMTP_FROM": "vestnik@example.org",
           "VESTNIK_SEND_BACKOFF": "0.2", "VESTNIK_KEYSPACE_PATTERNS": "panel:vm:*=vm"}
    api = stack.api(url, **env)
    center = stack.proc(url, "center", "--consumer", "c1", "--no-forward", **env)
    forwarder = stack.proc(url, "forwarder", **env)
    bridge = stack.proc(url, "bridge", **env)
    (tmp_path / "alert.py").write_text(ALERT)
    (tmp_path / "alert.toml").write_text(
        f'name = "ticker"\ncommand = ["{sys.executable}", "alert.py"]\ncwd = "{tmp_path}"\n')
    wrap = stack.proc(url, "wrap", str(tmp_path / "alert.toml"))
    procs = {"api": api.proc, "center": center, "forwarder": forwarder, "bridge": bridge,
             "wrap": wrap}
    pids = {name: p.pid for name, p in procs.items()}
    follower = Follower(api.base, token(url, "1")).start()
    http = httpx.AsyncClient(base_url=api.base, timeout=30,
                             headers={"Authorization": f"Bearer {api.service_token}"})
    me = {"Authorization": f"Bearer {token(url, '1')}"}
    mail = {"alert": "mail", "recipients": ["1"], "channels": {"email": {"users": ["1"]}},
            "forward_after": 0}
    ticks = tmp_path / "ticks.txt"
    try:
        assert (await http.post("/api/v1/notices",
                                json={**mail, "title": "before"})).status_code == 202
        await eventually(lambda: _has_mail(smtp, "before"), timeout=30, what="first email")
        await eventually(lambda: _tick_stored(r, ticks), timeout=30, what="wrapper up")
        await eventually(lambda: _logged(bridge, "bridge: following"), timeout=30,
                         what="bridge up")

        os.kill(server.pid, signal.SIGSTOP)
        frozen_at, frozen_wall = time.monotonic(), time.time()
        try:
            send = await asyncio.create_subprocess_exec(
                *vestnik_argv("send", "--alert", "cli", "--title", "frozen cli",
                              "--recipients", "1"),
                env=api.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            publish = await asyncio.create_subprocess_exec(
                *vestnik_argv("publish", "vm", "--id", "9", "--data", '{"id": "9"}'),
                env=api.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            (post_s, post), (read_s, read), (cli_s, (out, err)), (_, (_, perr)) = \
                await asyncio.gather(
                    _timed(http.post("/api/v1/notices", json={**mail, "title": "frozen http"})),
                    _timed(http.get("/api/v1/me/unread-count", headers=me)),
                    _timed(send.communicate()), _timed(publish.communicate()))
            # the rest of the freeze itself (not a wait for a condition)
            await asyncio.sleep(max(0.0, FROZEN_S - (time.monotonic() - frozen_at)))
        finally:
            os.kill(server.pid, signal.SIGCONT)
        thawed_wall = time.time()

        for resp in (post, read):
            assert isinstance(resp, httpx.Response)
            assert resp.status_code == 503, resp.text
            assert resp.headers["retry-after"] == "1" and resp.json()["error"] == "unavailable"
        # within about the timeout (the bound is loose: five helpers share two cores)
        assert post_s < 3 * TIMEOUT and read_s < 3 * TIMEOUT, (post_s, read_s)
        assert send.returncode == 3, (out, err)
        assert b"did not answer" in err and b"Traceback" not in err, err
        assert publish.returncode == 3 and b"vestnik publish: Redis at" in perr, perr

        # no restart: the same processes, and they work again
        async def accepted() -> bool:
            resp = await http.post("/api/v1/notices", json={**mail, "title": "after"})
            return resp.status_code == 202

        await eventually(accepted, timeout=20, interval=0.2, what="api answers 202 again")
        await eventually(lambda: _has_mail(smtp, "after"), timeout=30,
                         what="center stores, forwarder sends again")
        during = [n for n in _ticks(ticks, thawed_wall) if n > 0]
        printed_frozen = [n for n in during
                          if n in set(_ticks(ticks)) - set(_ticks(ticks, frozen_wall))]
        assert printed_frozen, "the alert printed nothing while Redis was frozen"
        want = {f"tick {n}" for n in during}
        await eventually(lambda: _stored_all(r, want), timeout=30,
                         what="every tick printed during the freeze is stored")
        await r.set("panel:vm:7", '{"id": "7", "state": "running"}')
        await eventually(lambda: _topic_has(r, "vm", b"7"), timeout=20,
                         what="bridge publishes again")
        tip = int(await r.get(K.user_seq("1")))
        await eventually(lambda: _live_at(follower, tip), timeout=30,
                         what=f"live push up to seq {tip}")
        for name, p in procs.items():
            assert p.proc is not None and p.proc.poll() is None, f"{name} exited"
            assert p.pid == pids[name]
        record("redis_freeze", {"redis_timeout_s": TIMEOUT, "frozen_s": FROZEN_S,
                                "post_503_s": round(post_s, 3), "get_503_s": round(read_s, 3),
                                "cli_send_exit_s": round(cli_s, 3),
                                "ticks_during_freeze": len(printed_frozen)})
    finally:
        await follower.stop()
        await http.aclose()
        await r.aclose()
        smtp.stop()


async def _has_mail(smtp: SmtpSink, subject: str) -> bool:
    return any(subject in s for s in smtp.subjects())


async def _tick_stored(r: Redis, ticks: Path) -> bool:
    return bool(_ticks(ticks)) and "tick 1" in await _titles(r, "1")


async def _stored_all(r: Redis, want: set[str]) -> set[str] | bool:
    return want <= await _titles(r, "1")


async def _topic_has(r: Redis, topic: str, eid: bytes) -> bool:
    return any(f.get(b"id") == eid for _, f in await r.xrange(K.topic(topic)))


async def _live_at(follower: Follower, tip: int) -> bool:
    return bool(follower.seqs) and follower.seqs[-1] >= tip


async def _logged(proc, text: str) -> bool:  # type: ignore[no-untyped-def]
    return text in proc.output()
