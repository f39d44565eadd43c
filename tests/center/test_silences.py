"""Admin silences: the API (create, list with states, get, expire, hostile input), and the
center with a real api, Redis and SSE client: a silenced notice is in the feed but never
pushed live nor forwarded; pending and expired silences match nothing; the center reads
the silences again only when their version changed."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from center_support import K, add_users, delayed_forwards, feed, stored, xadd_many
from prometheus_client import REGISTRY

from support import SSE, eventually
from vestnik.streams.center import silences as silences_mod
from vestnik.streams.center.silences import SilenceMatcher, SilenceStore, matches
from vestnik.streams.errors import BadInput
from vestnik.streams.ids import now_ms
from vestnik.streams.schemas import EntityRef, Notice, Silence, SilenceIn, SilenceMatchers

HOUR = 3_600_000


def notice(alert: str = "disk", severity: str = "warning", topic: str | None = "vm",
           eid: str | None = "42") -> Notice:
    entity = EntityRef(topic, eid) if topic is not None and eid is not None else None
    return Notice(id="n", alert=alert, title="t", severity=severity,  # type: ignore[arg-type]
                  entity=entity)


def silence_in(ends_in: int = HOUR, **matchers: Any) -> SilenceIn:
    return SilenceIn(matchers=SilenceMatchers(**matchers), ends_at=now_ms() + ends_in)


# ------------------------------------------------------------------ the API


async def test_create_list_get_and_expire(api, user_token):
    async with api.client() as http:
        now = now_ms()
        r = await http.post("/api/v1/silences", json={
            "matchers": {"alert": "disk", "entity_topic": "vm", "entity_id": "42"},
            "ends_at": now + HOUR, "comment": "maintenance of web-1", "created_by": "ops"})
        assert r.status_code == 201, r.text
        active = r.json()
        assert len(active["id"]) == 26 and active["state"] == "active"
        assert now - 5_000 <= active["starts_at"] <= now_ms()  # default: now
        assert active["matchers"] == {"alert": "disk", "entity_topic": "vm", "entity_id": "42"}
        assert active["comment"] == "maintenance of web-1" and active["created_by"] == "ops"
        pending = (await http.post("/api/v1/silences", json={
            "matchers": {"severity": "info"}, "starts_at": now + HOUR,
            "ends_at": now + 2 * HOUR})).json()
        assert pending["state"] == "pending"
        ended = (await http.post("/api/v1/silences", json={
            "matchers": {"alert": "cpu"}, "ends_at": now + HOUR})).json()
        r = await http.delete(f"/api/v1/silences/{ended['id']}")
        assert r.status_code == 200 and r.json()["state"] == "expired"
        ended_at = r.json()["ends_at"]
        assert ended_at <= now_ms()
        # the list: active, then pending, then expired
        items = (await http.get("/api/v1/silences")).json()["items"]
        assert [(s["id"], s["state"]) for s in items] == [
            (active["id"], "active"), (pending["id"], "pending"), (ended["id"], "expired")]
        got = (await http.get(f"/api/v1/silences/{pending['id']}")).json()
        assert got == pending
        # expiring a pending one: it never starts
        r = await http.delete(f"/api/v1/silences/{pending['id']}")
        assert r.json()["state"] == "expired" and r.json()["starts_at"] <= r.json()["ends_at"]
        # expiring again changes nothing
        again = await http.delete(f"/api/v1/silences/{ended['id']}")
        assert again.status_code == 200 and again.json()["ends_at"] == ended_at
        for method in ("GET", "DELETE"):
            r = await http.request(method, "/api/v1/silences/01HZZZZZZZZZZZZZZZZZZZZZZZ")
            assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = await http.get("/api/v1/silences/" + "x" * 5000)
        assert r.status_code == 404
    # a user token is not enough, for reading or writing
    async with api.client(user_token("1")) as http:
        assert (await http.get("/api/v1/silences")).status_code == 401
        r = await http.post("/api/v1/silences", json={"matchers": {"alert": "disk"},
                                                       "ends_at": now_ms() + HOUR})
        assert r.status_code == 401


BAD = [
    ({"ends_at": "{soon}"}, "$.matchers"),
    ({"matchers": {}, "ends_at": "{soon}"}, "$.matchers"),
    ({"matchers": {"alert": None}, "ends_at": "{soon}"}, "$.matchers"),
    ({"matchers": {"alert": "disk"}}, "$.ends_at"),
    ({"matchers": {"alert": "disk"}, "ends_at": "{past}"}, "$.ends_at"),
    ({"matchers": {"alert": "disk"}, "ends_at": 0}, "$.ends_at"),
    ({"matchers": {"alert": "disk"}, "ends_at": "soon"}, "$.ends_at"),
    ({"matchers": {"alert": "disk"}, "ends_at": "{later}", "starts_at": "{later}"},
     "$.ends_at"),
    ({"matchers": {"alert": "disk"}, "ends_at": "{years}"}, "$.ends_at"),
    ({"matchers": {"alert": "disk"}, "ends_at": "{soon}", "starts_at": -1}, "$.starts_at"),
    ({"matchers": {"alert": "disk"}, "ends_at": 2**70}, "$.ends_at"),
    ({"matchers": {"alert": ""}, "ends_at": "{soon}"}, "$.matchers.alert"),
    ({"matchers": {"alert": "a\r\nb"}, "ends_at": "{soon}"}, "$.matchers.alert"),
    ({"matchers": {"alert": "x" * 2000}, "ends_at": "{soon}"}, "$.matchers.alert"),
    ({"matchers": {"entity_topic": "../etc"}, "ends_at": "{soon}"}, "$.matchers.entity_topic"),
    ({"matchers": {"entity_id": "a\x00"}, "ends_at": "{soon}"}, "$.matchers.entity_id"),
    ({"matchers": {"severity": "urgent"}, "ends_at": "{soon}"}, "$.matchers.severity"),
    ({"matchers": {"alert": "disk", "colour": "red"}, "ends_at": "{soon}"},
     "$.matchers.colour"),
    ({"matchers": {"alert": 7}, "ends_at": "{soon}"}, "$.matchers.alert"),
    ({"matchers": "disk", "ends_at": "{soon}"}, "$.matchers"),
    ({"matchers": {"alert": "disk"}, "ends_at": "{soon}", "comment": "x" * 1001}, "$.comment"),
    ({"matchers": {"alert": "disk"}, "ends_at": "{soon}", "created_by": "a\nb"},
     "$.created_by"),
    ({"matchers": {"alert": "disk"}, "ends_at": "{soon}", "id": "mine"}, "$.id"),
    ({"matchers": {"alert": "disk"}, "ends_at": "{soon}", "state": "expired"}, "$.state"),
    ([], "$"),
]


async def test_hostile_input_is_refused_naming_the_field(api, redis):
    now = now_ms()
    times = {"{soon}": now + HOUR, "{past}": now - 1, "{later}": now + 2 * HOUR,
             "{years}": now + 2 * 365 * 24 * HOUR}

    def fill(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return times.get(v, v) if isinstance(v, str) else v

    async with api.client() as http:
        for body, path in BAD:
            r = await http.post("/api/v1/silences", json=fill(body))
            assert r.status_code == 422, (body, r.text)
            assert r.json()["path"] == path, (body, r.json())
        r = await http.post("/api/v1/silences", content=b"{not json",
                            headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422)
        assert (await http.get("/api/v1/silences")).json()["items"] == []
    assert await redis.keys(K.silences + "*") == []  # nothing written, no version bumped


async def test_writes_prune_long_ended_silences_and_the_number_is_capped(redis, monkeypatch):
    store = SilenceStore(redis, K)
    now = now_ms()
    old = Silence(id="old", matchers=SilenceMatchers(alert="a"), starts_at=now - 10 * 24 * HOUR,
                  ends_at=now - 8 * 24 * HOUR)
    recent = msgspec.structs.replace(old, id="recent", ends_at=now - 6 * 24 * HOUR)
    await redis.hset(K.silences, mapping={s.id: msgspec.json.encode(s) for s in (old, recent)})
    first = await store.create(silence_in(alert="disk"))
    assert set(await redis.hkeys(K.silences)) == {b"recent", first.id.encode()}
    assert [s.id for s in (await store.list()).items] == [first.id, "recent"]
    v1 = int(await redis.get(K.silences_version))
    await store.expire(first.id)
    assert int(await redis.get(K.silences_version)) == v1 + 1
    # the cap counts what stays, expired ones included
    monkeypatch.setattr(silences_mod, "MAX_SILENCES", 3)
    await store.create(silence_in(alert="cpu"))
    with pytest.raises(BadInput) as e:
        await store.create(silence_in(alert="mem"))
    assert e.value.field == "$" and "at most 3" in e.value.detail
    assert await redis.hlen(K.silences) == 3


# ------------------------------------------------------------------ matching


@pytest.mark.parametrize(("matchers", "n", "hit"), [
    ({"alert": "disk"}, notice(), True),
    ({"alert": "cpu"}, notice(), False),
    ({"severity": "warning"}, notice(), True),
    ({"severity": "critical"}, notice(), False),
    ({"entity_topic": "vm"}, notice(), True),
    ({"entity_topic": "vm"}, notice(topic=None), False),
    ({"entity_id": "42"}, notice(), True),
    ({"entity_id": "42"}, notice(eid=None), False),
    ({"entity_topic": "db", "entity_id": "42"}, notice(), False),
    ({"alert": "disk", "entity_topic": "vm", "entity_id": "42", "severity": "warning"},
     notice(), True),
    ({"alert": "disk", "entity_topic": "vm", "entity_id": "43", "severity": "warning"},
     notice(), False),
    ({"alert": "disk", "severity": "critical"}, notice(), False),
    ({}, notice(), False),  # no matcher (written by hand): never everything
])
def test_every_given_matcher_must_equal_the_notice(matchers, n, hit):
    assert matches(SilenceMatchers(**matchers), n) is hit


async def test_the_center_reads_silences_again_only_when_their_version_changed(redis):
    store = SilenceStore(redis, K)
    matcher = SilenceMatcher(redis, K)

    async def batch(*ns: Notice, at: int | None = None) -> list[bool]:
        async with redis.pipeline(transaction=False) as pipe:
            matcher.read(pipe)
            (version,) = await pipe.execute()
        await matcher.refresh(version)
        fresh = [msgspec.structs.replace(n, silenced=False) for n in ns]
        matcher.mark(fresh, at)
        return [n.silenced for n in fresh]

    assert await batch(notice()) == [False]
    s = await store.create(silence_in(alert="disk"))
    counted = REGISTRY.get_sample_value("vestnik_notices_silenced_total") or 0
    assert await batch(notice(), notice(alert="cpu"), notice()) == [True, False, True]
    assert REGISTRY.get_sample_value("vestnik_notices_silenced_total") == counted + 2
    # a change that does not bump the version is not seen: nothing is read again
    hand = Silence(id="hand", matchers=SilenceMatchers(alert="cpu"), starts_at=0,
                   ends_at=now_ms() + HOUR)
    await redis.hset(K.silences, "hand", msgspec.json.encode(hand))
    assert await batch(notice(alert="cpu")) == [False]
    await redis.incr(K.silences_version)
    assert await batch(notice(alert="cpu")) == [True]
    # time alone ends (or starts) a silence: no write needed
    assert await batch(notice(), at=s.ends_at) == [False]
    assert await batch(notice(), at=s.starts_at - 1) == [False]
    await store.expire(s.id)
    assert await batch(notice()) == [False]
    # Redis emptied: no version, no silences
    await redis.flushall()
    assert await batch(notice(alert="cpu")) == [False]


# ------------------------------------------------------------------ the center


async def test_a_silenced_notice_is_stored_but_neither_pushed_nor_forwarded(
        redis, api, start_proc, user_token):
    await add_users(redis, "1")
    start_proc("center")
    sse = await SSE(f"{api.base}/api/v1/me/stream",
                    {"Authorization": f"Bearer {user_token('1')}"}).connect()
    assert (await sse.next()).event == "count"
    channels = msgspec.json.encode({"email": {"users": ["1"]}, "forward_after": 600}).decode()
    async with api.client() as http:
        r = await http.post("/api/v1/silences", json={
            "matchers": {"alert": "disk", "entity_topic": "vm", "entity_id": "web-1"},
            "ends_at": now_ms() + HOUR, "comment": "rebuilding web-1"})
        s = r.json()
        # a pending silence (starts later) silences nothing yet
        await http.post("/api/v1/silences", json={"matchers": {"alert": "cpu"},
                                                   "starts_at": now_ms() + HOUR,
                                                   "ends_at": now_ms() + 2 * HOUR})

    def on(alert: str, eid: str, title: str, **extra: str) -> dict[str, str]:
        return {"alert": alert, "title": title, "severity": "warning", "recipients": "1",
                "entity": f'{{"topic":"vm","id":"{eid}"}}', "channels": channels, **extra}

    await xadd_many(redis, [on("disk", "web-1", "silenced", dedup_key="d1"),
                            on("disk", "web-2", "other entity"),
                            on("cpu", "web-1", "pending silence")])
    got = await sse.take(2, event="notice")
    assert [e.json()["title"] for e in got] == ["other entity", "pending silence"]
    assert all("silenced" not in e.json() for e in got)
    ids = await feed(redis, "1")
    assert len(ids) == 3
    bodies = {(b := await stored(redis, n))["title"]: b for n in ids}
    assert bodies["silenced"]["silenced"] is True
    assert "silenced" not in bodies["other entity"]
    # forwards: the two others wait in the due set, the silenced one has none
    due = await delayed_forwards(redis)
    assert sorted(due) == sorted(n for n in ids if n != bodies["silenced"]["id"])
    # the inbox lists it (history) with `silenced`
    async with api.client(user_token("1")) as http:
        items = (await http.get("/api/v1/me/notices")).json()["items"]
    assert {i["title"]: i.get("silenced", False) for i in items} == {
        "silenced": True, "other entity": False, "pending silence": False}

    # a repeat folded into the silenced notice is counted but not pushed either
    await xadd_many(redis, [on("disk", "web-1", "silenced", dedup_key="d1"),
                            on("disk", "web-3", "after the repeat")])
    ev = await sse.next()
    assert (ev.event, ev.json()["title"]) == ("notice", "after the repeat")
    await eventually(lambda: _repeat(redis, bodies["silenced"]["id"]), what="the fold")
    await xadd_many(redis, [on("disk", "web-4", "marker")])
    ev = await sse.next()  # no notice-update came before it
    assert (ev.event, ev.json()["title"]) == ("notice", "marker")

    # expired: the same notice is pushed again
    async with api.client() as http:
        assert (await http.delete(f"/api/v1/silences/{s['id']}")).status_code == 200
    await xadd_many(redis, [on("disk", "web-1", "after expiry")])
    ev = await sse.next()
    assert (ev.event, ev.json()["title"]) == ("notice", "after expiry")
    await sse.close()


async def _repeat(redis, nid: str) -> bool:
    return (await stored(redis, nid)).get("repeat") == 1


_ONE_REDIS = pytest.mark.single_redis("the one-call store script spans slots")


@pytest.mark.parametrize("path", [pytest.param("one-call", marks=_ONE_REDIS),
                                  pytest.param("chunks", marks=_ONE_REDIS), "per-user"])
async def test_no_store_path_publishes_a_silenced_notice(redis, settings, monkeypatch, path):
    """The store's three ways (one call a batch; more calls for a broadcast's later
    recipients; one call per user on a cluster) all keep a silenced notice off the live
    channels, while its feed entries are made."""
    from center_support import live_event_of

    from vestnik.streams.center import store as store_mod
    from vestnik.streams.center.batch import Center
    from vestnik.streams.consumer import Entry
    from vestnik.streams.schemas import decode_notice_entry

    uids = [str(i) for i in range(1, 6)]
    await add_users(redis, *uids)
    await SilenceStore(redis, K).create(silence_in(severity="critical"))
    if path == "chunks":
        monkeypatch.setattr(store_mod, "STORE_CHUNK", 2)
    everyone = ",".join(uids)
    await xadd_many(redis, [
        {"alert": "a", "title": "quiet", "severity": "critical", "recipients": everyone},
        {"alert": "a", "title": "loud", "severity": "warning", "recipients": everyone},
        {"alert": "a", "title": "quiet too", "severity": "critical", "recipients": "3"}])
    center = Center(redis, K, settings)
    center.store.one_call = path != "per-user"
    pubsub = redis.pubsub()
    await pubsub.subscribe(*[K.live(u) for u in uids])
    for _ in uids:  # the confirmations
        await pubsub.get_message(timeout=5)
    raw = await redis.xrange(K.notices)
    assert await center.handle([Entry(s.decode(), decode_notice_entry(f), f)
                                for s, f in raw]) == []
    for u in uids:  # a marker after what the store published
        await redis.publish(K.live(u), b"end")
    got: dict[str, list[str]] = {u: [] for u in uids}
    ended = 0
    for _ in range(100):  # bounded: 5 notices and 5 markers are expected
        msg = await pubsub.get_message(timeout=5, ignore_subscribe_messages=True)
        assert msg is not None, got
        uid = msg["channel"].decode().split("{u:")[1].split("}")[0]
        if msg["data"] == b"end":
            ended += 1
            if ended == len(uids):
                break
            continue
        got[uid].append(live_event_of(msg["data"])[1]["title"])
    await pubsub.aclose()
    assert got == {u: ["loud"] for u in uids}
    assert [len(await feed(redis, u)) for u in uids] == [2, 2, 3, 2, 2]
