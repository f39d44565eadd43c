"""Snoozes: the API (`/api/v1/me/snooze`: the caller's own only, hostile input named), the
stored layout (one key per user that expires at its last until, ended entries dropped),
the center filling `User.snooze` of every recipient from it (never from the record), and
a deleted user's snoozes purged."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from center_support import K, add_users, xadd_many

from vestnik.streams import snoozes
from vestnik.streams.center import inbox
from vestnik.streams.center import snooze as snooze_mod
from vestnik.streams.center.batch import Center
from vestnik.streams.center.plan import Plan
from vestnik.streams.center.snooze import Snoozes
from vestnik.streams.consumer import Entry
from vestnik.streams.errors import BadInput
from vestnik.streams.ids import now_ms
from vestnik.streams.keys import USER_TOPIC
from vestnik.streams.schemas import SnoozeIn, decode_notice_entry

HOUR = 3_600_000


async def test_snooze_one_alert_or_all_then_end_them(api, redis, user_token):
    until = now_ms() + HOUR
    async with api.client(user_token("1")) as me, api.client(user_token("2")) as other:
        r = await me.post("/api/v1/me/snooze", json={"until": until})
        assert r.status_code == 200, r.text
        assert r.json() == {"items": {"*": until}}
        r = await me.post("/api/v1/me/snooze", json={"until": until + HOUR, "alert": "disk"})
        assert r.json() == {"items": {"*": until, "disk": until + HOUR}}
        assert (await me.get("/api/v1/me/snooze")).json()["items"] == {
            "*": until, "disk": until + HOUR}
        # the key expires by itself with the last snooze
        assert await redis.pexpiretime(K.snooze("1")) == until + HOUR
        # another user sees and ends only their own
        assert (await other.get("/api/v1/me/snooze")).json() == {"items": {}}
        assert (await other.delete("/api/v1/me/snooze")).json() == {"items": {}}
        assert (await me.get("/api/v1/me/snooze")).json()["items"] == {
            "*": until, "disk": until + HOUR}
        # a shorter snooze replaces a longer one; ending one keeps the rest
        r = await me.post("/api/v1/me/snooze", json={"until": until, "alert": "disk"})
        assert r.json()["items"] == {"*": until, "disk": until}
        assert await redis.pexpiretime(K.snooze("1")) == until
        r = await me.delete("/api/v1/me/snooze", params={"alert": "*"})
        assert r.status_code == 200 and r.json() == {"items": {"disk": until}}
        r = await me.delete("/api/v1/me/snooze", params={"alert": "never-snoozed"})
        assert r.json() == {"items": {"disk": until}}
        assert (await me.delete("/api/v1/me/snooze")).json() == {"items": {}}
        assert not await redis.exists(K.snooze("1"))
    # a service token has no user: refused
    async with api.client() as svc:
        assert (await svc.get("/api/v1/me/snooze")).status_code == 401
        r = await svc.post("/api/v1/me/snooze", json={"until": until})
        assert r.status_code == 401


async def test_hostile_snooze_input_is_refused_naming_the_field(api, redis, user_token):
    now = now_ms()
    bad: list[tuple[Any, str]] = [
        ({"until": now - 1}, "$.until"),
        ({"until": 0}, "$.until"),
        ({"until": -5}, "$.until"),
        ({"until": now + 31 * 24 * HOUR}, "$.until"),
        ({"until": 2**70}, "$.until"),
        ({"until": "tomorrow"}, "$.until"),
        ({"until": 1.5e12}, "$.until"),
        ({}, "$.until"),
        ({"until": now + HOUR, "alert": ""}, "$.alert"),
        ({"until": now + HOUR, "alert": "disk\r\nX-Injected: 1"}, "$.alert"),
        ({"until": now + HOUR, "alert": "x" * 2000}, "$.alert"),
        ({"until": now + HOUR, "alert": ["disk"]}, "$.alert"),
        ({"until": now + HOUR, "uid": "2"}, "$.uid"),
        ([], "$"),
    ]
    async with api.client(user_token("1")) as me:
        for body, path in bad:
            r = await me.post("/api/v1/me/snooze", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["path"] == path, (body, r.json())
    assert not await redis.exists(K.snooze("1"))


async def test_stored_layout_drops_ended_entries_and_caps_the_alerts(redis, monkeypatch):
    store = Snoozes(redis, K)
    now = now_ms()
    await redis.set(K.snooze("1"), snoozes.encode({"old": now - 1, "disk": now + HOUR}))
    assert (await store.get("1")).items == {"disk": now + HOUR}
    await store.add("1", SnoozeIn(until=now + 2 * HOUR, alert="cpu"))
    stored = msgspec.json.decode(await redis.get(K.snooze("1")))
    assert stored == {"disk": now + HOUR, "cpu": now + 2 * HOUR}  # "old" is gone
    # a value not written by us (hand-edited) counts as none, and the next write replaces it
    await redis.set(K.snooze("2"), b"not json")
    assert (await store.get("2")).items == {}
    assert snoozes.decode([b'{"*": "soon"}']) == {}
    await store.add("2", SnoozeIn(until=now + HOUR))
    assert (await store.get("2")).items == {"*": now + HOUR}
    # at most MAX_ENTRIES alerts; changing one already snoozed is always allowed
    monkeypatch.setattr(snoozes, "MAX_ENTRIES", 2)
    with pytest.raises(BadInput) as e:
        await store.add("1", SnoozeIn(until=now + HOUR, alert="mem"))
    assert e.value.field == "$.alert"
    await store.add("1", SnoozeIn(until=now + 3 * HOUR, alert="disk"))
    assert (await store.get("1")).items == {"disk": now + 3 * HOUR, "cpu": now + 2 * HOUR}
    assert snooze_mod.CAS_ATTEMPTS > 1


def test_held_until_takes_the_later_of_the_alert_and_every_alert():
    s = {"*": 200, "disk": 500}
    assert snoozes.held_until(s, "disk", 100) == 500
    assert snoozes.held_until(s, "cpu", 100) == 200
    assert snoozes.held_until(s, "cpu", 200) is None
    assert snoozes.held_until({}, "disk", 100) is None


def spied_center(redis, settings, one_call: bool) -> tuple[Center, list[Plan]]:
    """A center in this process (real Redis) and the plans it hands to its store: their
    users are what the forward scheduling sees."""
    center = Center(redis, K, settings)
    center.users._one_call = one_call
    seen: list[Plan] = []
    build = center.store.build

    async def spy(plans: list[Plan]) -> Any:
        seen.extend(plans)
        return await build(plans)

    center.store.build = spy  # type: ignore[method-assign]
    return center, seen


async def handle_all(redis, center: Center) -> None:
    """The center handles what `vn:notices` holds, as its consumer would."""
    raw = await redis.xrange(K.notices)
    await redis.delete(K.notices)
    entries = [Entry(s.decode(), decode_notice_entry(f), f) for s, f in raw]
    assert await center.handle(entries) == []


@pytest.mark.parametrize("one_call", [True, False], ids=["single-redis", "per-user-reads"])
async def test_the_center_fills_user_snooze_from_the_snooze_key_only(
        api, redis, settings, user_token, one_call):
    await add_users(redis, "2", "3")
    # a product's records that carry their own `snooze`: never believed, even a bad one
    await redis.hset(K.state(USER_TOPIC), mapping={
        "1": msgspec.json.encode({"id": "1", "email": "u1@example.com",
                                  "snooze": {"*": now_ms() + 99 * HOUR}}),
        "5": msgspec.json.encode({"id": "5", "snooze": "forever"})})
    until = now_ms() + HOUR
    async with api.client(user_token("2")) as two, api.client(user_token("4")) as four:
        await two.post("/api/v1/me/snooze", json={"until": until, "alert": "disk"})
        await four.post("/api/v1/me/snooze", json={"until": until})  # no profile at all
    await redis.set(K.snooze("3"), snoozes.encode({"*": now_ms() - 1}))  # ended
    center, plans = spied_center(redis, settings, one_call)
    await xadd_many(redis, [{"alert": "disk", "title": "t", "recipients": "1,2,3,4,5"}])
    await handle_all(redis, center)
    assert {u.id: u.snooze for p in plans for u in p.users} == {
        "1": {}, "2": {"disk": until}, "3": {}, "4": {"*": until}, "5": {}}
    assert plans[0].missing == {"4"}  # 5 is readable: its bad `snooze` was dropped
    # the next batch, the snooze ended: no copy of it stays with the cached record
    async with api.client(user_token("2")) as two:
        await two.delete("/api/v1/me/snooze")
    plans.clear()
    await xadd_many(redis, [{"alert": "disk", "title": "t2", "recipients": "2"}])
    await handle_all(redis, center)
    assert [u.snooze for p in plans for u in p.users] == [{}]


async def test_a_deleted_users_snoozes_go_with_their_inbox(redis):
    await Snoozes(redis, K).add("7", SnoozeIn(until=now_ms() + HOUR))
    await Snoozes(redis, K).add("8", SnoozeIn(until=now_ms() + HOUR))
    assert await inbox.purge_users(redis, K, ["7"]) == 1
    assert not await redis.exists(K.snooze("7"))
    assert await redis.exists(K.snooze("8"))
