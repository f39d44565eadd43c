"""Redis full (`maxmemory` with `noeviction`): ingest answers 503 with Retry-After, products
get the OOM error on XADD, nothing is half-written (no entry, no idempotency key, no topic
state, no feed entry), the center keeps what it read pending, and everything recovers by
itself when memory frees."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
from fault_support import K, Stack, add_users, stack, token
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from support import eventually, fill_redis
from vestnik.streams.keys import CENTER_GROUP

__all__ = ["stack"]

# prints a notice for each entity, but only once the test creates the file `release`
ALERT = """
import json, os, sys, time
for line in sys.stdin:
    m = json.loads(line)
    if m.get("type") == "entity":
        for _ in range(600):
            if os.path.exists("release"):
                break
            time.sleep(0.05)
        print(json.dumps({"type": "notice", "title": "wrapped " + m["id"],
                          "recipients": ["1"]}), flush=True)
"""

async def _state(r: Redis) -> dict[str, object]:
    return {"notices": await r.xlen(K.notices), "topic": await r.xlen(K.topic("x")),
            "state": await r.hgetall(K.state("x")), "idem": await r.keys("vn:idem:*"),
            "feed": await r.zcard(K.feed("1")), "seq": await r.get(K.user_seq("1")),
            "dead": await r.xlen(K.notices_dead)}


@pytest.mark.timeout(120)
async def test_full_redis_refuses_ingest_cleanly_and_recovers(stack: Stack, tmp_path: Path):
    server = stack.redis(appendonly=False)
    url = server.url
    r = Redis.from_url(url)
    await add_users(r, "1")
    api = stack.api(url)
    center = stack.proc(url, "center", "--no-forward", "--consumer", "c1")
    (tmp_path / "alert.py").write_text(ALERT)
    (tmp_path / "alert.toml").write_text(
        f'name = "held"\ncommand = ["{sys.executable}", "alert.py"]\n'
        f'topics = ["held"]\ncwd = "{tmp_path}"\n')
    wrap = stack.proc(url, "wrap", str(tmp_path / "alert.toml"))
    http = httpx.AsyncClient(base_url=api.base, timeout=10,
                             headers={"Authorization": f"Bearer {api.service_token}"})
    me = {"Authorization": f"Bearer {token(url, '1')}"}
    try:
        body = {"alert": "disk", "title": "before", "recipients": ["1"]}
        assert (await http.post("/api/v1/notices", json=body)).status_code == 202
        await eventually(lambda: _feed_size(r, 1), timeout=20, what="center up")
        # a notice the center reads while Redis is full: it must stay pending, not be lost
        center.stop()
        # an alert that will print its notice while Redis is full
        await r.xadd(K.topic("held"), {"op": "create", "id": "w1", "data": "{}"})
        await eventually(lambda: _logged(wrap, "following live"), timeout=20,
                         what="wrapper up")
        await r.xadd(K.notices, {"alert": "disk", "title": "queued", "recipients": "1"})

        filled = await fill_redis(r)
        before = await _state(r)

        # HTTP ingest: 503 + Retry-After, with and without an Idempotency-Key
        for path, payload, headers in (
            ("/api/v1/notices", body, {}),
            ("/api/v1/notices", body, {"Idempotency-Key": "k1"}),
            ("/api/v1/topics/x/events", {"op": "create", "id": "1", "data": {"a": 1}}, {}),
        ):
            resp = await http.post(path, json=payload, headers=headers)
            assert resp.status_code == 503, (path, resp.status_code, resp.text)
            assert resp.headers["retry-after"] == "1"
            assert resp.json()["error"] == "unavailable" and "maxmemory" in resp.json()["detail"]
        # a product's XADD gets Redis's OOM error
        with pytest.raises(OutOfMemoryError, match="maxmemory"):
            await r.xadd(K.notices, {"alert": "disk", "title": "raw", "recipients": "1"})
        # reads still work: the inbox answers
        resp = await http.get("/api/v1/me/notices", headers=me)
        assert resp.status_code == 200 and len(resp.json()["items"]) == 1

        # the wrapper's XADD is refused: it keeps the notice and retries
        (tmp_path / "release").touch()
        await eventually(lambda: _logged(wrap, "maxmemory"), timeout=20,
                         what="wrapper refused by a full Redis")
        # an api (re)started while Redis is full comes up and reads
        extra = stack.api(url)
        resp = await http.get(f"{extra.base}/api/v1/me/unread-count", headers=me)
        assert resp.status_code == 200 and resp.json()["count"] == 1

        # the center reads the queued entry but cannot store it: it stays pending
        center = stack.proc(url, "center", "--no-forward", "--consumer", "c2")
        await eventually(lambda: _pending_for(r, "c2"), timeout=20, what="entry read by c2")
        await eventually(lambda: _logged(center, "consumer c2: Redis"), timeout=20,
                         what="center backing off on OOM")
        # stays full a while: the center keeps retrying and never dead-letters the entry
        await asyncio.sleep(3)
        assert await _state(r) == before, "something was half-written while Redis was full"
        assert await _pending_for(r, "c2")

        # memory frees: everything flows again without a restart
        await r.delete(*[f"filler:{n}" for n in range(filled)])
        await eventually(lambda: _feed_size(r, 2), timeout=20, what="queued notice stored")
        resp = await http.post("/api/v1/notices", json={**body, "title": "after"},
                               headers={"Idempotency-Key": "k1"})
        assert resp.status_code == 202
        assert (await http.post("/api/v1/topics/x/events",
                                json={"op": "create", "id": "1", "data": {"a": 1}})
                ).status_code == 201
        await eventually(lambda: _feed_size(r, 3), timeout=20, what="new notice stored")
        await eventually(lambda: _feed_size(r, 4), timeout=20, what="wrapped notice stored")
        titles = [i["title"] for i in (await http.get("/api/v1/me/notices", headers=me)
                                       ).json()["items"]]
        assert sorted(titles) == ["after", "before", "queued", "wrapped w1"]
        assert int(await r.get(K.user_seq("1"))) == 4
        assert wrap.proc is not None and wrap.proc.poll() is None, wrap.output()
        assert "ended" not in wrap.output(), wrap.output()
        assert await r.xlen(K.notices_dead) == 0
        assert center.proc is not None and center.proc.poll() is None, center.output()
        assert api.proc.proc is not None and api.proc.proc.poll() is None
    finally:
        await http.aclose()
        await r.aclose()


async def _feed_size(r: Redis, n: int) -> bool:
    return await r.zcard(K.feed("1")) >= n


async def _pending_for(r: Redis, consumer: str) -> bool:
    return bool(await r.xpending_range(K.notices, CENTER_GROUP, "-", "+", 10,
                                       consumername=consumer))


async def _logged(proc, text: str) -> bool:
    return text in proc.output()
