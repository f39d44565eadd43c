"""The soak's load against a real stack: a short run, with the api SIGKILLed and restarted in
the middle (HTTP sends retried with the same Idempotency-Key, SSE clients resuming by
Last-Event-ID), accounts every acknowledged notice: none missing or duplicated in a feed, no
SSE gap or duplicate, every due forward mailed, the bad burst dead-lettered."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from vestnik.app.soak import ledger
from vestnik.app.soak.load import Load, Rates
from vestnik.app.soak.stack import Stack

pytestmark = pytest.mark.timeout(420)

FAST = Rates(xadd=4, http=4, wrap=2, bridge=1, topic=1, settings=0.5, reads=2, read_all=0.3)


async def _until(check: Callable[[], bool], seconds: float) -> None:
    for _ in range(int(seconds / 0.2)):
        if check():
            return
        await asyncio.sleep(0.2)


async def test_a_short_load_with_an_api_kill_accounts_every_notice() -> None:
    async with Stack(users=4) as stack:
        load = Load(stack, random.Random(7), users=10, sse_clients=20, rates=FAST)
        stop = asyncio.Event()
        run = asyncio.create_task(load.run(stop))
        try:
            await _until(lambda: load.counts["acknowledged"] >= 30 or run.done(), 60)
            await stack.kill("api")
            await asyncio.sleep(1)  # sends and SSE clients meet a dead api
            await stack.restart("api")
            await load.bad_burst(3)
            connects = load.stats()["sse_connects"]
            await _until(lambda: load.counts["acknowledged"] >= 80 or run.done(), 60)
            stop.set()
            await run
            out = await ledger.account(stack, load, drain_s=60)
        finally:
            stop.set()
            await load.close()

    assert out["acknowledged"] >= 80, out
    assert set(out["acknowledged_by_path"]) == {"xadd", "http", "wrap", "bridge"}, out
    assert load.stats()["sse_connects"] > connects  # the clients came back after the kill
    assert sum(len(r.events) for r in load.sse) >= out["acknowledged"]  # and saw notices
    assert (out["missing"], out["duplicated_in_feeds"]) == (0, 0), out
    assert (out["sse_gaps"], out["sse_duplicates"], out["sse_never_connected"]) == (0, 0, 0), out
    assert out["forwards_due"] > 0 and out["forwards_missing"] == 0, out
    assert all(d["inside_window"] for d in out["forward_duplicates"]), out
    assert (out["dead_letters_expected"], out["dead_letters_found"]) == (3, 3), out
