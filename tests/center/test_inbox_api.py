"""The inbox over HTTP and SSE with a real api and a real center: live notices, exact resume,
read state across tabs, isolation between users, Idempotency-Key, pagination."""

from __future__ import annotations

from center_support import K, add_users, feed, unread_count

from support import SSE, Api, eventually

NOTICE = {"alert": "disk", "title": "Disk 95% on web-1", "severity": "warning"}


async def post(http, to: str, title: str, **extra) -> str:
    r = await http.post("/api/v1/notices", json={**NOTICE, "title": title, "recipients": [to],
                                                 **extra})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def stream_url(api: Api, token: str, last: str | None = None) -> str:
    url = f"{api.base}/api/v1/me/stream?token={token}"
    return url + (f"&last_event_id={last}" if last is not None else "")


async def test_live_notices_resume_without_gap_and_stay_private(api: Api, redis, start_proc,
                                                                user_token):
    await add_users(redis, "A", "B")
    start_proc("center", "--no-forward")
    ta, tb = user_token("A"), user_token("B")
    a = await SSE(stream_url(api, ta)).connect()
    b = await SSE(stream_url(api, tb)).connect()
    assert a.status == 200 and b.status == 200
    first = await a.next()
    assert first.event == "count" and first.json() == {"count": 0, "seq": 0}
    assert (await b.next()).event == "count"
    async with api.client() as svc:
        live = [await post(svc, "A", f"live {i}") for i in range(3)]
        got = await a.take(3, event="notice")
        assert [e.json()["id"] for e in got] == live
        assert [e.id for e in got] == ["1", "2", "3"]
        item = got[0].json()
        assert item["title"] == "live 0" and item["seq"] == 1
        assert item["read"] is False and item["archived"] is False
        await a.close()
        missed = [await post(svc, "A", f"missed {i}") for i in range(5)]
        await eventually(lambda: _feed_len(redis, "A", 8), what="stored while away")
        # reconnect with the last id seen: exactly the 5 missed, in order, then live again
        a = await SSE(stream_url(api, ta), headers={"Last-Event-ID": "3"}).connect()
        assert (await a.next()).json() == {"count": 8, "seq": 8}
        again = await a.take(5, event="notice")
        assert [e.json()["id"] for e in again] == missed
        assert [e.id for e in again] == ["4", "5", "6", "7", "8"]
        after = await post(svc, "A", "after")
        nxt = await a.next()
        assert nxt.event == "notice" and nxt.json()["id"] == after and nxt.id == "9"
        assert await a.nothing_for(0.5, event="notice")
    # B saw none of it and can touch none of it
    assert await b.nothing_for(0.3, event="notice")
    async with api.client(tb) as http:
        assert (await http.get("/api/v1/me/notices")).json() == {"items": [], "next": None}
        assert (await http.get("/api/v1/me/unread-count")).json() == {"count": 0}
        for action in ("read", "unread", "archive"):
            r = await http.post(f"/api/v1/me/notices/{live[0]}/{action}")
            assert r.status_code == 404 and r.json()["error"] == "not_found"
            assert live[0] not in r.text or "your feed" in r.text
        assert (await http.post("/api/v1/me/notices/read-all")).json() == {"marked": 0,
                                                                          "count": 0}
    b2 = await SSE(stream_url(api, tb, "0")).connect()
    assert (await b2.next()).json() == {"count": 0, "seq": 0}
    assert await b2.nothing_for(0.3, event="notice")
    assert await unread_count(redis, "A") == 9
    for s in (a, b, b2):
        await s.close()


async def _feed_len(redis, uid: str, n: int) -> bool:
    return len(await feed(redis, uid)) >= n


async def test_mark_read_in_one_tab_shows_in_the_other(api: Api, redis, start_proc,
                                                       user_token):
    await add_users(redis, "1")
    start_proc("center", "--no-forward")
    token = user_token("1")
    tab1 = await SSE(stream_url(api, token)).connect()
    tab2 = await SSE(stream_url(api, token)).connect()
    async with api.client() as svc:
        ids = [await post(svc, "1", f"n{i}") for i in range(3)]
    for tab in (tab1, tab2):
        assert len(await tab.take(3, event="notice")) == 3
    async with api.client(token) as http:
        assert (await http.get("/api/v1/me/unread-count")).json() == {"count": 3}
        r = await http.post(f"/api/v1/me/notices/{ids[0]}/read")
        assert r.json() == {"id": ids[0], "read": True, "count": 2, "archived": False}
        for tab in (tab1, tab2):
            ev = (await tab.take(1, event="read"))[0]
            assert ev.id is None
            assert ev.json() == {"ids": [ids[0]], "read": True, "count": 2}
        r = await http.post(f"/api/v1/me/notices/{ids[0]}/unread")
        assert r.json()["count"] == 3
        assert (await tab2.take(1, event="read"))[0].json() == {"ids": [ids[0]], "read": False,
                                                                "count": 3}
        r = await http.post(f"/api/v1/me/notices/{ids[1]}/archive")
        assert r.json() == {"id": ids[1], "read": True, "count": 2, "archived": True}
        assert (await tab1.take(2, event="read"))[1].json()["archived"] is True
        r = await http.post("/api/v1/me/notices/read-all")
        assert r.json() == {"marked": 2, "count": 0}
        ev = (await tab2.take(2, event="read"))[1].json()
        assert sorted(ev["ids"]) == sorted([ids[0], ids[2]]) and ev["count"] == 0
        assert (await http.get("/api/v1/me/unread-count")).json() == {"count": 0}
        items = (await http.get("/api/v1/me/notices")).json()["items"]
        assert [(i["id"], i["read"], i["archived"]) for i in items] == [
            (ids[2], True, False), (ids[1], True, True), (ids[0], True, False)]
    await tab1.close()
    await tab2.close()


async def test_idempotency_key_and_validation(api: Api, redis):
    async with api.client() as svc:
        h = {"Idempotency-Key": "order-42-disk"}
        r1 = await svc.post("/api/v1/notices", json={**NOTICE, "recipients": ["1"]}, headers=h)
        r2 = await svc.post("/api/v1/notices", json={**NOTICE, "recipients": ["1"]}, headers=h)
        assert r1.status_code == r2.status_code == 202
        assert r1.json()["id"] == r2.json()["id"]
        assert await redis.xlen(K.notices) == 1
        r3 = await svc.post("/api/v1/notices", json={**NOTICE, "recipients": ["1"]},
                            headers={"Idempotency-Key": "another"})
        assert r3.json()["id"] != r1.json()["id"] and await redis.xlen(K.notices) == 2
        assert await redis.ttl(K.idempotency("order-42-disk")) > 3600
        r = await svc.post("/api/v1/notices", json={**NOTICE, "severity": "urgent"})
        assert r.status_code == 422 and r.json()["path"] == "$.severity"
        r = await svc.post("/api/v1/notices", json={**NOTICE, "colour": "red"})
        assert r.status_code == 422 and "colour" in r.json()["detail"]
    async with api.client("not-a-token") as bad:
        assert (await bad.post("/api/v1/notices", json=NOTICE)).status_code == 401
    entry = (await redis.xrange(K.notices))[0][1]
    assert entry[b"id"] == r1.json()["id"].encode() and int(entry[b"created_at"]) > 0


async def test_feed_pages_with_a_cursor(api: Api, redis, start_proc, user_token):
    await add_users(redis, "1")
    start_proc("center", "--no-forward")
    async with api.client() as svc:
        ids = [await post(svc, "1", f"n{i}") for i in range(25)]
    await eventually(lambda: _feed_len(redis, "1", 25), what="stored")
    token = user_token("1")
    async with api.client(token) as http:
        seen, cursor = [], None
        for _ in range(5):
            params = {"limit": "10"} | ({"cursor": str(cursor)} if cursor else {})
            page = (await http.get("/api/v1/me/notices", params=params)).json()
            seen += [i["id"] for i in page["items"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == ids[::-1]  # newest first, each once
        for nid in ids[20:]:
            await http.post(f"/api/v1/me/notices/{nid}/read")
        page = (await http.get("/api/v1/me/notices",
                               params={"unread": "true", "limit": "3"})).json()
        assert [i["id"] for i in page["items"]] == ids[19:16:-1] and page["next"] is not None
        page = (await http.get("/api/v1/me/notices", params={"unread": "true",
                                                             "cursor": str(page["next"])})).json()
        assert [i["id"] for i in page["items"]] == ids[16::-1] and page["next"] is None
        r = await http.get("/api/v1/me/notices", params={"limit": "x"})
        assert r.status_code == 400 and r.json()["path"] == "limit"
        r = await http.get("/api/v1/me/stream", headers={"Last-Event-ID": "abc"})
        assert r.status_code == 400


async def test_up_runs_the_center(redis_url, redis, tmp_path, user_token):
    """`vestnik up` stores and pushes notices with no other process."""
    from support import SERVICE_TOKEN, Proc, base_env, vestnik_argv, wait_http
    from vestnik.streams.redis_server import free_port

    await add_users(redis, "1")
    port = free_port()
    proc = Proc(vestnik_argv("up", "--port", str(port)),
                base_env(redis_url, VESTNIK_DATA_DIR=str(tmp_path / "data")),
                tmp_path / "up.log").start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", timeout=30, proc=proc)
        up = Api(base, proc, SERVICE_TOKEN, {})
        token = user_token("1")
        sse = await SSE(stream_url(up, token)).connect()
        async with up.client() as svc:
            nid = await post(svc, "1", "via up")
        ev = (await sse.take(1, event="notice", timeout=20))[0]
        assert ev.json()["id"] == nid
        await sse.close()
    finally:
        assert proc.stop() == 0, proc.output()


async def test_dedup_repeat_is_pushed_as_notice_update(api: Api, redis, start_proc, user_token):
    await add_users(redis, "1")
    start_proc("center", "--no-forward")
    sse = await SSE(stream_url(api, user_token("1"))).connect()
    async with api.client() as svc:
        first = await post(svc, "1", "disk full", dedup_key="disk:web-1")
        assert (await sse.take(1, event="notice"))[0].json()["id"] == first
        again = await post(svc, "1", "disk full", dedup_key="disk:web-1")
        assert again != first
        upd = (await sse.take(1, event="notice-update"))[0]
        assert upd.id is None
        body = upd.json()
        assert body["id"] == first and body["repeat"] == 1 and body["last_seen"] > 0
    async with api.client(user_token("1")) as http:
        items = (await http.get("/api/v1/me/notices")).json()["items"]
    assert [(i["id"], i["repeat"]) for i in items] == [(first, 1)]
    await sse.close()
