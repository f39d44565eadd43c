"""`vestnik forwarder` as its own process: picks up scheduled jobs, sends, exits cleanly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fwd_support import SmtpSink, deliveries, store_notice, store_user
from redis.asyncio import Redis

from streams.forward import ForwardJob, add_forward_jobs
from streams.ids import now_ms, ulid
from streams.keys import Keys
from streams.schemas import Notice, User
from support import eventually


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


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
