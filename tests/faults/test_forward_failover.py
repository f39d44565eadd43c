"""A standalone forwarder through a Sentinel failover, with jobs in flight at the kill.

`vestnik soak --sentinel` found a forwarder that, after the primary it worked on was
SIGKILLed mid-send, never sent again (its delayed forwards stayed in the due set, /readyz
said "worker starting") until it was restarted. Here: many delayed forwards, due before,
during and after the kill of the primary, a slow SMTP server (jobs wait in the forwarder
when the primary dies), a `vestnik forwarder` that is never restarted: every forward must
be mailed after the failover, none lost (a mail in flight at the kill may go twice).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from fault_support import K, Stack, add_users, drained, stack

from support import SmtpSink, eventually
from vestnik.streams.ids import ulid
from vestnik.streams.redis import connect
from vestnik.streams.redis_server import SentinelDeployment, free_port

__all__ = ["stack"]

N = 300
FIRST_DUE_S = 2.0  # the first forward is due this long after it is sent
SPREAD_S = 0.03  # and each next one this much later: due before, during and after the kill
DOWN_AFTER_MS = 6000


async def _mailed_at_least(smtp: SmtpSink, n: int) -> bool:
    return len(smtp.mails) >= n


async def _readyz(port: int) -> str:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(f"http://127.0.0.1:{port}/readyz")).text
    except httpx.HTTPError as e:
        return repr(e)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_standalone_forwarder_with_jobs_in_flight_sends_after_a_failover(
        stack: Stack, tmp_path: Path):
    # the primary is found down after 6 s (as `vestnik soak --sentinel`): meanwhile the
    # forwarder's poll fails and restarts again and again, each time cancelling its wake-up
    # listener, which is asking the sentinels for the primary
    with SentinelDeployment(tmp_path / "redis", down_after_ms=DOWN_AFTER_MS) as deployment:
        url = deployment.url
        r = connect(url, timeout=2.0)
        smtp = SmtpSink(delay=0.1).start()  # a slow server: jobs wait when the primary dies
        ops = free_port()
        env = {"VESTNIK_SMTP_URL": smtp.url, "VESTNIK_SMTP_FROM": "vestnik@example.org",
               "VESTNIK_SEND_BACKOFF": "0.2", "VESTNIK_SEND_ATTEMPTS": "20"}
        try:
            await add_users(r, "1")
            stack.proc(url, "center", "--no-forward", **env)
            fwd = stack.proc(url, "forwarder", "--metrics-port", str(ops), **env)
            titles = {f"fwd {i}" for i in range(N)}
            async with r.pipeline(transaction=False) as pipe:
                for i in range(N):
                    channels = {"email": {"users": ["1"]},
                                "forward_after": FIRST_DUE_S + i * SPREAD_S}
                    pipe.xadd(K.notices, {"id": ulid(), "alert": "disk", "title": f"fwd {i}",
                                          "recipients": "1", "channels": json.dumps(channels)})
                await pipe.execute()
            await eventually(lambda: drained(r), timeout=20, what="the center stored them")
            # every stored forward is on both replicas before the kill (replication is one
            # stream: a WAIT after a write of ours covers the center's writes before it)
            async with r.pipeline(transaction=False) as pipe:
                pipe.set("test:barrier", "1")
                pipe.execute_command("WAIT", 2, 5000)
                pipe.delete("test:barrier")
                assert (await pipe.execute())[1] == 2
            await eventually(lambda: _mailed_at_least(smtp, N // 6), timeout=30,
                             what="forwards being mailed")

            async def all_mailed() -> bool:
                return titles <= set(smtp.subjects())

            old = deployment.primary()
            old.kill()
            await asyncio.to_thread(deployment.wait_failover, old.port, 30.0)
            try:
                await eventually(all_mailed, timeout=60, interval=0.5,
                                 what="every forward mailed after the failover")
            except AssertionError as e:
                left = titles - set(smtp.subjects())
                raise AssertionError(
                    f"{len(left)} of {N} forwards never mailed; forwarder /readyz: "
                    f"{await _readyz(ops)}\n{fwd.output()[-3000:]}") from e
            assert fwd.proc is not None and fwd.proc.poll() is None, fwd.output()[-3000:]
        finally:
            smtp.stop()
            await r.aclose()
