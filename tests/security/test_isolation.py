"""Per-user isolation on every /me route, against a real api and center: a user who knows
(or guesses, or crafts) another user's notice ids gets 404 and never a byte of the other
user's data, cannot change the other's read state, and never sees the other's notices in a
page or on the live stream. Forged user tokens (alg none, another secret, expired) are
refused on every /me route — tests/test_auth.py covers them on the topic routes."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest

from support import SSE, Api, eventually
from vestnik.streams.keys import USER_TOPIC

ALICE, BOB = "1", "2"
CRAFTED = ["*", "0", "-1", "..%2F..%2Fsettings", "x}:feed", "{u:1}", "%00", "a" * 5000,
           "01HZZZZZZZZZZZZZZZZZZZZZZZ", "' OR 1=1 --", "%E2%80%AE", "vn:notice:x"]


async def _setup(api: Api, redis, start_proc) -> tuple[list[str], list[str]]:
    await redis.hset(f"vn:state:{USER_TOPIC}", mapping={
        u: json.dumps({"id": u, "name": f"user {u}"}) for u in (ALICE, BOB)})
    start_proc("center", "--no-forward")
    async with api.client() as svc:
        for i in range(3):
            r = await svc.post("/api/v1/notices", json={
                "alert": "a", "title": f"alice-secret-{i}", "body": "alice only",
                "recipients": [ALICE]})
            assert r.status_code == 202
        for i in range(2):
            r = await svc.post("/api/v1/notices", json={
                "alert": "a", "title": f"bob-{i}", "recipients": [BOB]})
            assert r.status_code == 202

    async def stored() -> bool:
        return await redis.zcard(f"vn:{{u:{ALICE}}}:feed") == 3 and \
            await redis.zcard(f"vn:{{u:{BOB}}}:feed") == 2

    await eventually(stored, timeout=20, what="notices stored")
    ids = {}
    for uid in (ALICE, BOB):
        ids[uid] = [x.decode() for x in await redis.zrange(f"vn:{{u:{uid}}}:feed", 0, -1)]
    return ids[ALICE], ids[BOB]


async def test_no_user_reaches_another_users_notices(api: Api, redis, start_proc, user_token):
    alice_ids, bob_ids = await _setup(api, redis, start_proc)
    alice, bob = user_token(ALICE), user_token(BOB)
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        spec = (await http.get("/openapi.json")).json()
        by_id = [(m.upper(), p) for p, item in spec["paths"].items() for m in item
                 if p.startswith("/api/v1/me/") and "{id}" in p]
        assert {p for _, p in by_id} >= {"/api/v1/me/notices/{id}/read",
                                         "/api/v1/me/notices/{id}/unread",
                                         "/api/v1/me/notices/{id}/archive"}
        as_bob = {"Authorization": f"Bearer {bob}"}
        tried = 0
        for method, path in by_id:
            for nid in alice_ids + CRAFTED:
                r = await http.request(method, path.replace("{id}", nid), headers=as_bob)
                tried += 1
                assert r.status_code in (404, 400, 414, 422), (method, path, nid, r.status_code)
                if nid in alice_ids:
                    assert r.status_code == 404, (method, path, r.text)
                assert b"alice" not in r.content, (method, path, nid, r.text)
        assert tried >= 3 * 15
        # Bob's own ids work on the same routes (the 404s above are not a broken route)
        r = await http.post(f"/api/v1/me/notices/{bob_ids[0]}/read", headers=as_bob)
        assert r.status_code == 200 and r.json()["read"] is True
        # bulk and listing routes: only Bob's own
        r = await http.post("/api/v1/me/notices/read-all", headers=as_bob)
        assert r.status_code == 200 and r.json()["marked"] == 1
        for query in ("", "?unread=true", "?cursor=999999999", "?cursor=0", "?limit=200"):
            r = await http.get(f"/api/v1/me/notices{query}", headers=as_bob)
            assert r.status_code == 200, (query, r.text)
            assert b"alice" not in r.content, query
            assert {i["id"] for i in r.json()["items"]} <= set(bob_ids)
        # Alice's state is untouched by all of that
        as_alice = {"Authorization": f"Bearer {alice}"}
        r = await http.get("/api/v1/me/notices", headers=as_alice)
        assert [(i["read"], i["archived"]) for i in r.json()["items"]] == [(False, False)] * 3
        assert (await http.get("/api/v1/me/unread-count", headers=as_alice)).json() == \
            {"count": 3}
        # the delivery log of a notice is for services only
        r = await http.get(f"/api/v1/notices/{alice_ids[0]}/deliveries", headers=as_bob)
        assert r.status_code == 401

    # the live stream: Bob's backlog from 0 and his live events never carry Alice's notices
    sse = await SSE(f"{api.base}/api/v1/me/stream?token={bob}&last_event_id=0").connect()
    assert sse.status == 200
    got = await sse.take(2, event="notice")
    assert sorted(e.json()["title"] for e in got) == ["bob-0", "bob-1"]
    async with api.client() as svc:
        r = await svc.post("/api/v1/notices", json={"alert": "a", "title": "alice-secret-live",
                                                    "recipients": [ALICE]})
        assert r.status_code == 202
        await eventually(lambda: _feed_size(redis, ALICE, 4), what="Alice's live notice")
    assert await sse.nothing_for(1.0, event="notice")
    await sse.close()


async def _feed_size(redis, uid: str, n: int) -> bool:
    return await redis.zcard(f"vn:{{u:{uid}}}:feed") >= n


def _forged(secret: str, kind: str) -> str:
    now = int(time.time())
    claims = {"sub": ALICE, "exp": now + 600}
    if kind == "alg none":
        return jwt.encode(claims, None, algorithm="none")
    if kind == "wrong secret":
        return jwt.encode(claims, "not-the-secret-" + "x" * 32, algorithm="HS256")
    if kind == "expired":
        return jwt.encode({**claims, "exp": now - 60}, secret, algorithm="HS256")  # > leeway
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["alg none", "wrong secret", "expired"])
async def test_forged_user_tokens_are_refused_on_every_me_route(api: Api, kind: str):
    token = _forged(api.env["VESTNIK_SECRET"], kind)
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        spec = (await http.get("/openapi.json")).json()
        me = [(m.upper(), p) for p, item in spec["paths"].items() for m in item
              if p.startswith("/api/v1/me/")]
        assert len(me) >= 7
        for method, path in me:
            url = path.replace("{id}", "01HZZZZZZZZZZZZZZZZZZZZZZZ")
            if path.endswith("/stream"):
                for how in ({"url": f"{url}?token={token}"},
                            {"url": url, "headers": {"Cookie": f"vestnik_token={token}"}}):
                    sse = await SSE(api.base + how["url"], headers=how.get("headers", {})
                                    ).connect()
                    assert sse.status == 401, (kind, how)
                    await sse.close()
                continue
            for headers in ({"Authorization": f"Bearer {token}"},
                            {"Cookie": f"vestnik_token={token}"}):
                r = await http.request(method, url, headers=headers)
                assert r.status_code == 401, (kind, method, path, r.text)
