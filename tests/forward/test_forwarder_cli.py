"""`vestnik forwarder` as its own process: picks up scheduled jobs, sends, exits cleanly."""

from __future__ import annotations

import subprocess

import pytest
from fwd_support import SmtpSink, deliveries, store_notice, store_user
from redis.asyncio import Redis

from support import ROOT, base_env, eventually, vestnik_argv
from vestnik.streams.forward import ForwardJob, add_forward_jobs
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import Keys
from vestnik.streams.redis import connect
from vestnik.streams.schemas import Notice, User


async def test_forwarder_process_sends_and_stops_on_sigterm(redis: Redis, keys: Keys,
                                                            start_proc, smtp: SmtpSink):
    proc = start_proc("forwarder", VESTNIK_SMTP_URL=smtp.url,
                      VESTNIK_SMTP_FROM="vestnik@example.org")
    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    nids = [ulid() for _ in range(20)]
    async with redis.pipeline(transaction=False) as pipe:
        for nid in nids:
            n = Notice(id=nid, alert="a", title=f"t {nid}", recipients=["7"],
                       channels={"email": {}}, created_at=now_ms())
            await store_notice(redis, keys, n)
        add_forward_jobs(pipe, keys, [ForwardJob(nid, "7", now_ms()) for nid in nids])
        assert await pipe.execute() == [1] * 20

    async def all_sent() -> bool:
        return len(smtp.mails) >= 20

    await eventually(all_sent, timeout=20, what="20 emails")
    assert sorted(m.msg["Subject"] for m in smtp.mails) == sorted(f"t {n}" for n in nids)
    assert [d.status for d in await deliveries(redis, keys, nids[0])] == ["sent"]
    assert proc.stop() == 0, proc.output()
    assert "Traceback" not in proc.output()


@pytest.mark.single_redis("restarts the one redis-server")
async def test_forwarder_survives_a_redis_restart(redis_url, keys: Keys, redis_server,
                                                  start_proc, smtp: SmtpSink):
    redis = connect(redis_url)  # retries across the restart, like Vestnik's own clients
    proc = start_proc("forwarder", VESTNIK_SMTP_URL=smtp.url,
                      VESTNIK_SMTP_FROM="vestnik@example.org")
    await store_user(redis, keys, User(id="7", email="u7@example.org"))

    async def send_one(title: str) -> None:
        n = Notice(id=ulid(), alert="a", title=title, recipients=["7"],
                   channels={"email": {}}, created_at=now_ms())
        await store_notice(redis, keys, n)
        async with redis.pipeline(transaction=False) as pipe:
            add_forward_jobs(pipe, keys, [ForwardJob(n.id, "7", now_ms())])
            await pipe.execute()

    await send_one("before")
    await eventually(lambda: _count(smtp, 1), timeout=20, what="the first email")
    redis_server.restart()  # graceful: the AOF keeps the queue and the state
    await send_one("after")
    await eventually(lambda: _count(smtp, 2), timeout=30, what="an email after the restart")
    assert [m.msg["Subject"] for m in smtp.mails] == ["before", "after"]
    assert proc.proc is not None and proc.proc.poll() is None, proc.output()
    await redis.aclose()


async def _count(smtp: SmtpSink, n: int) -> bool:
    return len(smtp.mails) >= n


@pytest.mark.parametrize("env,says", [
    ({"VESTNIK_SMTP_URL": "smtp://127.0.0.1:25"}, "VESTNIK_SMTP_FROM"),
    ({"VESTNIK_SMTP_URL": "smtp://127.0.0.1:25", "VESTNIK_SMTP_FROM": "Jörg <jörg@example.org>"},
     "VESTNIK_SMTP_FROM: not an ASCII email address: 'jörg@example.org'"),
    ({"VESTNIK_WEBHOOK_SECRET": "whsec_not base64!"}, "VESTNIK_WEBHOOK_SECRET"),
])
def test_forwarder_refuses_bad_channel_config(redis_url, env: dict[str, str], says: str):
    out = subprocess.run(vestnik_argv("forwarder"), env=base_env(redis_url, **env), cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert says in out.stderr and "configuration error" in out.stderr


async def test_two_forwarders_share_the_queue_each_job_runs_once(redis: Redis, keys: Keys,
                                                                start_proc, smtp: SmtpSink):
    env = {"VESTNIK_SMTP_URL": smtp.url, "VESTNIK_SMTP_FROM": "vestnik@example.org"}
    procs = [start_proc("forwarder", **env), start_proc("forwarder", **env)]
    await store_user(redis, keys, User(id="7", email="u7@example.org"))
    nids = [ulid() for _ in range(200)]
    for nid in nids:
        await store_notice(redis, keys, Notice(id=nid, alert="a", title=nid, recipients=["7"],
                                               channels={"email": {}}, created_at=now_ms()))
    async with redis.pipeline(transaction=False) as pipe:
        add_forward_jobs(pipe, keys, [ForwardJob(nid, "7", now_ms()) for nid in nids])
        await pipe.execute()

    async def drained() -> bool:
        return await redis.zcard(keys.forward(0).arq_queue) == 0 and len(smtp.mails) >= 200

    await eventually(drained, timeout=60, what="200 jobs done")
    assert sorted(m.msg["Subject"] for m in smtp.mails) == sorted(nids)  # each exactly once
    for p in procs:
        assert p.stop() == 0, p.output()
