"""Alert settings API against a real `vestnik api`: CRUD, validation naming the field,
ETag / If-Match, the `settings` topic event of every change, paging by name, races."""

from __future__ import annotations

import asyncio

import msgspec

from support import SSE, Api

SETTING = {
    "name": "disk",
    "metric": {"path": "/", "above": 90},
    "channel": {"ui": {"users": ["1", "2"]}, "email": {"users": ["1"]}, "forward_after": 300},
    "enabled": True,
}


async def test_crud_round_trip(api: Api):
    async with api.client() as http:
        r = await http.post("/api/v1/settings", json=SETTING)
        assert r.status_code == 201, r.text
        created = r.json()
        sid = created["id"]
        assert len(sid) == 26
        assert {k: created[k] for k in SETTING} == SETTING
        assert created["version"] == 1 and r.headers["etag"] == '"1"'
        assert created["created_at"] == created["updated_at"] > 0

        r = await http.get(f"/api/v1/settings/{sid}")
        assert r.status_code == 200 and r.json() == created and r.headers["etag"] == '"1"'

        # user ids may be sent as numbers; they are stored as the strings they stand for
        r = await http.post("/api/v1/settings", json={
            "name": "cpu", "channel": {"ui": {"users": [1, "2"]}, "tg": {"chat_ids": [5]}}})
        assert r.status_code == 201
        assert r.json()["channel"] == {"ui": {"users": ["1", "2"]}, "tg": {"chat_ids": [5]}}
        assert (await http.delete(f"/api/v1/settings/{r.json()['id']}")).status_code == 204

        replaced = {**SETTING, "metric": {"path": "/var", "above": 95}, "enabled": False}
        r = await http.put(f"/api/v1/settings/{sid}", json=replaced)
        assert r.status_code == 200, r.text
        assert r.json()["metric"] == {"path": "/var", "above": 95}
        assert r.json()["version"] == 2 and r.headers["etag"] == '"2"'
        assert r.json()["created_at"] == created["created_at"]

        r = await http.patch(f"/api/v1/settings/{sid}", json={"enabled": True})
        assert r.status_code == 200, r.text
        patched = r.json()
        assert patched["enabled"] is True and patched["metric"] == {"path": "/var", "above": 95}
        assert patched["version"] == 3 and patched["updated_at"] >= created["updated_at"]

        r = await http.get("/api/v1/settings")
        assert r.json() == {"items": [patched], "next": None}

        r = await http.delete(f"/api/v1/settings/{sid}")
        assert r.status_code == 204 and r.content == b""
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            body = SETTING if method == "PUT" else ({} if method == "PATCH" else None)
            r = await http.request(method, f"/api/v1/settings/{sid}", json=body)
            assert r.status_code == 404, (method, r.text)
            assert r.json()["error"] == "not_found"
        assert (await http.get("/api/v1/settings")).json() == {"items": [], "next": None}


async def test_invalid_bodies_name_the_field(api: Api):
    async with api.client() as http:
        cases = [
            ({**SETTING, "channel": {"email": {"users": "1"}}}, "$.channel.email.users"),
            ({**SETTING, "channel": {"email": {"users": [None]}}}, "$.channel.email.users[0]"),
            ({**SETTING, "channel": {"email": ["1"]}}, "$.channel.email"),
            ({**SETTING, "channel": {"forward_after": -1}}, "$.channel.forward_after"),
            ({**SETTING, "color": "red"}, "$.color"),
            ({**SETTING, "enabled": "yes"}, "$.enabled"),
            ({**SETTING, "name": "bad name!"}, "$.name"),
            ({"metric": {}}, "$.name"),
        ]
        for body, path in cases:
            r = await http.post("/api/v1/settings", json=body)
            assert r.status_code == 422, (body, r.text)
            err = r.json()
            assert err["error"] == "invalid" and err["path"] == path, (body, err)
        r = await http.post("/api/v1/settings", json={**SETTING, "color": "red"})
        assert "color" in r.json()["detail"]
        r = await http.post("/api/v1/settings", json={"metric": {}})
        assert "name" in r.json()["detail"]

        sid = (await http.post("/api/v1/settings", json=SETTING)).json()["id"]
        r = await http.patch(f"/api/v1/settings/{sid}", json={"enabled": 1})
        assert r.status_code == 422 and r.json()["path"] == "$.enabled"
        r = await http.patch(f"/api/v1/settings/{sid}", json={"channel": {"tg": {"chat_ids": {}}}})
        assert r.status_code == 422 and r.json()["path"] == "$.channel.tg.chat_ids"
        r = await http.patch(f"/api/v1/settings/{sid}", json={"nmae": "x"})
        assert r.status_code == 422 and "nmae" in r.json()["detail"]
        r = await http.put(f"/api/v1/settings/{sid}", json={**SETTING, "enabled": None})
        assert r.status_code == 422 and r.json()["path"] == "$.enabled"
        # nothing of the above changed the stored setting
        assert (await http.get(f"/api/v1/settings/{sid}")).json()["version"] == 1

        for query, field in (("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"),
                             ("cursor=nope", "cursor"), ("name=a%20b", "name")):
            r = await http.get(f"/api/v1/settings?{query}")
            assert r.status_code == 400, (query, r.text)
            assert r.json()["path"] == field


async def test_if_match(api: Api):
    async with api.client() as http:
        r = await http.post("/api/v1/settings", json=SETTING)
        sid, v1 = r.json()["id"], r.headers["etag"]
        r = await http.patch(f"/api/v1/settings/{sid}", json={"enabled": False},
                             headers={"If-Match": v1})
        assert r.status_code == 200 and r.headers["etag"] == '"2"'
        v2 = r.headers["etag"]
        # the first ETag is stale now: every conditional write fails and changes nothing
        for method, body in (("PATCH", {"enabled": True}), ("PUT", SETTING), ("DELETE", None)):
            r = await http.request(method, f"/api/v1/settings/{sid}", json=body,
                                   headers={"If-Match": v1})
            assert r.status_code == 412, (method, r.text)
            assert r.json()["error"] == "precondition_failed"
        for tag in ('"not-ours"', "W/" + v2, v2.strip('"'), ""):
            r = await http.patch(f"/api/v1/settings/{sid}", json={"enabled": True},
                                 headers={"If-Match": tag})
            assert r.status_code == 412, tag
        got = await http.get(f"/api/v1/settings/{sid}")
        assert got.json()["version"] == 2 and got.json()["enabled"] is False
        # the fresh one works; `*` and no If-Match are unconditional
        r = await http.put(f"/api/v1/settings/{sid}", json=SETTING,
                           headers={"If-Match": f'"41", {v2}'})  # any listed tag may match
        assert r.status_code == 200 and r.headers["etag"] == '"3"'
        r = await http.patch(f"/api/v1/settings/{sid}", json={"metric": {}},
                             headers={"If-Match": "*"})
        assert r.status_code == 200 and r.headers["etag"] == '"4"'
        r = await http.delete(f"/api/v1/settings/{sid}", headers={"If-Match": '"4"'})
        assert r.status_code == 204


async def test_every_change_is_a_settings_topic_event(api: Api, redis, keys, user_token):
    # settings name other users (ids, chat ids): a plain user token may not follow them
    denied = await SSE(f"{api.base}/api/v1/topics/settings/stream?token={user_token('1')}"
                       ).connect()
    assert denied.status == 403 and b"VESTNIK_TOPIC_ACL" in denied.body
    await denied.close()
    sse = await SSE(f"{api.base}/api/v1/topics/settings/stream?token={api.service_token}"
                    ).connect()
    assert sse.status == 200
    async with api.client() as http:
        created = (await http.post("/api/v1/settings", json=SETTING)).json()
        sid = created["id"]
        updated = (await http.patch(f"/api/v1/settings/{sid}", json={"name": "cpu"})).json()
        assert (await http.delete(f"/api/v1/settings/{sid}")).status_code == 204

    entries = await redis.xrange(keys.topic("settings"))
    assert len(entries) == 3
    decoded = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
    assert [e["op"] for e in decoded] == ["create", "update", "delete"]
    assert all(e["id"] == sid and int(e["ts"]) > 0 for e in decoded)
    datas = [msgspec.json.decode(e["data"]) for e in decoded]
    assert datas == [created, updated, updated]  # delete carries the last state

    events = await sse.take(3)
    await sse.close()
    assert [e.id for e in events] == [sid_.decode() for sid_, _ in entries]
    bodies = [e.json() for e in events]
    assert [b["op"] for b in bodies] == ["create", "update", "delete"]
    assert [b["data"] for b in bodies] == [created, updated, updated]
    assert all(b["topic"] == "settings" and b["id"] == sid for b in bodies)

    async with api.client() as http:
        metrics = (await http.get("/metrics")).text
    assert 'vestnik_events_published_total{topic="settings",via="api"} 3.0' in metrics

    # the store agrees with the topic: no hash entry, no index entry left
    assert await redis.hlen(keys.settings) == 0
    assert await redis.zcard(keys.settings_ids) == 0
    assert await redis.zcard(keys.settings_by_name("disk")) == 0
    assert await redis.zcard(keys.settings_by_name("cpu")) == 0


async def test_list_by_name_pages(api: Api, redis, keys):
    async with api.client() as http:
        ids = {"disk": [], "cpu": []}
        for i in range(7):
            for name in ("disk", "cpu"):
                r = await http.post("/api/v1/settings",
                                    json={**SETTING, "name": name, "metric": {"i": i}})
                ids[name].append(r.json()["id"])

        async def pages(query: str) -> tuple[list[str], int]:
            got, cursor, n = [], None, 0
            while True:
                url = f"/api/v1/settings?{query}" + (f"&cursor={cursor}" if cursor else "")
                r = await http.get(url)
                assert r.status_code == 200, r.text
                page = r.json()
                got += [s["id"] for s in page["items"]]
                n += 1
                cursor = page["next"]
                if cursor is None:
                    return got, n

        got, n = await pages("name=disk&limit=3")
        assert got == sorted(ids["disk"]) and n == 3
        got, n = await pages("name=&limit=5")
        assert got == sorted(ids["disk"] + ids["cpu"]) and n == 3
        got, n = await pages("name=cpu&limit=7")
        assert got == sorted(ids["cpu"]) and n == 1
        assert (await http.get("/api/v1/settings?name=none")).json() == {"items": [], "next": None}
        # renaming moves the setting between the name indexes
        moved = ids["cpu"][0]
        r = await http.patch(f"/api/v1/settings/{moved}", json={"name": "disk"})
        assert r.status_code == 200
        got, _ = await pages("name=disk&limit=500")
        assert got == sorted([*ids["disk"], moved])
        got, _ = await pages("name=cpu")
        assert moved not in got and len(got) == 6
    assert await redis.zrange(keys.settings_by_name("cpu"), 0, -1) == sorted(
        i.encode() for i in ids["cpu"][1:])


async def test_concurrent_patches_with_same_if_match_one_wins(api: Api, redis, keys):
    async with api.client() as http:
        r = await http.post("/api/v1/settings", json=SETTING)
        sid, tag = r.json()["id"], r.headers["etag"]
        n = 8
        results = await asyncio.gather(*(
            http.patch(f"/api/v1/settings/{sid}", json={"metric": {"writer": i}},
                       headers={"If-Match": tag})
            for i in range(n)))
        codes = sorted(r.status_code for r in results)
        assert codes == [200] + [412] * (n - 1), [r.text for r in results]
        winner = next(r.json() for r in results if r.status_code == 200)
        stored = (await http.get(f"/api/v1/settings/{sid}")).json()
        assert stored == winner and stored["version"] == 2

        # without If-Match every concurrent PATCH applies: none is lost
        results = await asyncio.gather(*(
            http.patch(f"/api/v1/settings/{sid}", json={"enabled": i % 2 == 0})
            for i in range(n)))
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        assert sorted(r.json()["version"] for r in results) == list(range(3, 3 + n))
    entries = await redis.xrange(keys.topic("settings"))
    assert len(entries) == 2 + n  # create, the one winner, then n unconditional updates


async def test_a_plugin_channels_entry_is_checked_and_kept_as_given(api: Api):
    """A channel no Vestnik part knows (a plugin's, `vestnik.channels`): its `users`,
    `chat_ids` and `url` are checked like any channel's, its own fields kept as sent."""
    channel = {"sms": {"users": [7, "8"], "template": "short", "sender": {"id": 7}},
               "forward_after": 60}
    async with api.client() as http:
        r = await http.post("/api/v1/settings", json={"name": "disk", "channel": channel})
        assert r.status_code == 201, r.text
        kept = {"sms": {"users": ["7", "8"], "template": "short", "sender": {"id": 7}},
                "forward_after": 60}
        assert r.json()["channel"] == kept
        assert (await http.get(f"/api/v1/settings/{r.json()['id']}")).json()["channel"] == kept
        for bad, path in [({"sms": {"users": [{}]}}, "$.channel.sms.users[0]"),
                          ({"sms": {"template": "short", "url": 5}}, "$.channel.sms.url"),
                          ({"sms": {"chat_ids": [1.5]}}, "$.channel.sms.chat_ids[0]")]:
            r = await http.post("/api/v1/settings", json={"name": "disk", "channel": bad})
            assert r.status_code == 422 and r.json()["path"] == path, (bad, r.text)


async def test_deeply_nested_metric_round_trips(api: Api):
    """Whatever the body decoder accepts can be stored, changed and deleted (the Lua CAS
    compares digests and never parses the JSON)."""
    deep: object = 1
    for _ in range(400):
        deep = {"d": deep}
    async with api.client() as http:
        r = await http.post("/api/v1/settings", json={**SETTING, "metric": deep})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        r = await http.patch(f"/api/v1/settings/{sid}", json={"enabled": False},
                             headers={"If-Match": '"1"'})
        assert r.status_code == 200 and r.json()["metric"] == deep
        assert (await http.delete(f"/api/v1/settings/{sid}")).status_code == 204
        # deeper than the decoder goes: a 422, not a 500
        body = b'{"name": "disk", "metric": ' + b'{"d":' * 3000 + b"1" + b"}" * 3001
        r = await http.post("/api/v1/settings", content=body)
        assert r.status_code == 422 and "nested too deeply" in r.json()["detail"], r.text
