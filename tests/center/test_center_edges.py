"""Issue 19, the center's edges: users it must see without an api, recipients without a
profile, one bounded dead letter per bad entry, dedup keys scoped by alert, caller ids that
collide, disabled settings. Real `vestnik center` (and `vestnik api`) processes."""

from __future__ import annotations

import json

import msgspec
import pytest
from center_support import K, add_users, dead, entry, feed, live_event_of, stored, xadd_many
from redis.asyncio import Redis

from support import Api, SmtpSink, eventually
from vestnik.streams.consumer import DEAD_RAW_MAX
from vestnik.streams.keys import USER_TOPIC, dedup_scope


def run_burst(start_proc, *args: str, **env: str) -> str:
    proc = start_proc("center", "--burst", "--no-forward", *args, **env)
    assert proc.proc.wait(60) == 0, proc.output()
    return proc.output()


async def publish_user(redis: Redis, uid: str, **data: object) -> None:
    """As a product does: a plain XADD to the `user` topic (no api materializes it)."""
    await redis.xadd(K.topic(USER_TOPIC), {"op": "create", "id": uid,
                                           "data": json.dumps({"id": uid, **data})})



# 1 ------------------------------------------------------------------------------------------


async def test_user_published_just_before_a_notice_is_seen_without_an_api(
        redis, start_proc, smtp: SmtpSink):
    await publish_user(redis, "7", name="Ann", email="ann@example.org", prefs={"mute": ["cpu"]})
    await publish_user(redis, "8", name="Bob", email="bob@example.org")
    ids = await xadd_many(redis, [
        {**entry("disk full", "7,8"), "forward_after": "0",
         "channels": json.dumps({"email": {}})},
        {**entry("cpu hot", "7,8"), "alert": "cpu"},
    ])
    proc = start_proc("center", VESTNIK_SMTP_URL=smtp.url,
                      VESTNIK_SMTP_FROM="Vestnik <vestnik@example.org>")

    async def mailed() -> list[list[str]] | None:
        got = sorted(m.rcpt_tos for m in list(smtp.mails))
        return got if len(got) == 2 else None

    # the addresses published on the topic are used, with no api running
    assert await eventually(mailed, timeout=20, what="two emails") == [
        ["ann@example.org"], ["bob@example.org"]]
    proc.stop()
    assert await dead(redis) == []
    titles7 = [(await stored(redis, n))["title"] for n in await feed(redis, "7")]
    titles8 = [(await stored(redis, n))["title"] for n in await feed(redis, "8")]
    assert titles7 == ["disk full"]  # Ann muted `cpu`
    assert titles8 == ["disk full", "cpu hot"]
    # the state is materialized as the hub would: position at the last user event
    assert json.loads(await redis.hget(K.state(USER_TOPIC), "7"))["name"] == "Ann"
    assert ids


async def test_a_deleted_user_is_dropped_and_their_inbox_purged(redis, start_proc):
    await publish_user(redis, "9", name="Gone soon")
    await publish_user(redis, "8", name="Stays")
    await xadd_many(redis, [entry("before", "9,8")])
    run_burst(start_proc)
    assert len(await feed(redis, "9")) == 1
    await redis.xadd(K.topic(USER_TOPIC), {"op": "delete", "id": "9"})
    await xadd_many(redis, [entry("after", "8")])
    run_burst(start_proc)
    assert await redis.hget(K.state(USER_TOPIC), "9") is None
    assert await redis.exists(K.feed("9"), K.user_seq("9")) == 0
    assert len(await feed(redis, "8")) == 2


async def test_with_an_api_materializing_too_a_delete_it_applied_is_purged(
        api: Api, redis, start_proc):
    """The api's hub applies the `user` events first (the common case): the center's
    records are current, and a user the hub deleted is still purged by the center."""
    center = start_proc("center", "--no-forward")
    await publish_user(redis, "9", name="Gone soon")
    await xadd_many(redis, [entry("before", "9")])
    await eventually(lambda: feed(redis, "9"), what="user 9's notice")
    await redis.xadd(K.topic(USER_TOPIC), {"op": "delete", "id": "9"})
    await publish_user(redis, "8", name="New", prefs={"mute": ["disk"]})

    async def applied() -> bool:  # by the api's hub, before the center sees a notice
        return await redis.hget(K.state(USER_TOPIC), "8") is not None

    await eventually(applied, what="the hub to apply the user events")
    await xadd_many(redis, [entry("muted", "8"), {**entry("heard", "8"), "alert": "cpu"}])
    await eventually(lambda: feed(redis, "8"), what="user 8's notice")
    center.stop()
    assert await redis.exists(K.feed("9"), K.user_seq("9")) == 0
    assert [(await stored(redis, n))["title"] for n in await feed(redis, "8")] == ["heard"]


async def test_a_delete_applied_while_no_center_ran_is_purged_when_one_starts(
        api: Api, redis, start_proc):
    """A center stops; the api's hub applies a user's delete meanwhile; the next center goes
    on from where the centers' purges stopped (not from the state's position) and purges it.
    A user deleted and created again meanwhile keeps their feed."""
    await publish_user(redis, "9", name="Gone soon")
    await publish_user(redis, "6", name="Back again")
    await xadd_many(redis, [entry("before", "9,6")])
    run_burst(start_proc)
    assert await feed(redis, "9") and await feed(redis, "6")
    await redis.xadd(K.topic(USER_TOPIC), {"op": "delete", "id": "9"})
    await redis.xadd(K.topic(USER_TOPIC), {"op": "delete", "id": "6"})
    await publish_user(redis, "6", name="Back again")

    async def applied() -> bool:  # by the api's hub, with no center running
        return (await redis.hget(K.state(USER_TOPIC), "9") is None
                and await redis.hget(K.state(USER_TOPIC), "6") is not None)

    await eventually(applied, what="the hub to apply the delete")
    await publish_user(redis, "5", name="Someone")
    await xadd_many(redis, [entry("after", "5")])
    run_burst(start_proc)
    assert await feed(redis, "5")
    assert await redis.exists(K.feed("9"), K.user_seq("9")) == 0
    assert len(await feed(redis, "6")) == 1


# 2 ------------------------------------------------------------------------------------------


async def test_recipient_without_a_profile_gets_the_feed_entry_and_the_live_push(
        redis, start_proc):
    await add_users(redis, "1")
    pubsub = redis.pubsub()
    await pubsub.subscribe(K.live("never-published"))
    await xadd_many(redis, [entry("to a JWT sub only", "1,never-published")])
    run_burst(start_proc)

    async def pushed() -> tuple[str, dict, int] | None:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        return live_event_of(msg["data"]) if msg else None

    event, data, _ = await eventually(pushed, what="the live push")
    await pubsub.aclose()
    assert event == "notice" and data["title"] == "to a JWT sub only"
    nid = data["id"]
    assert await feed(redis, "never-published") == [nid] == await feed(redis, "1")
    assert await dead(redis) == []


# 3 ------------------------------------------------------------------------------------------


async def test_an_oversized_recipient_list_is_one_bounded_dead_letter(redis, start_proc):
    await add_users(redis, "1")
    many = [str(i) for i in range(51)]
    big = json.dumps({"blob": "x" * 200_000})
    ids = await xadd_many(redis, [
        {**entry("too many"), "recipients": json.dumps(many), "data": big},
        {**entry("just enough"), "recipients": json.dumps(many[:50])},
    ])
    run_burst(start_proc, VESTNIK_MAX_RECIPIENTS="50")
    letters = await dead(redis)
    assert [(d["entry"], d["field"]) for d in letters] == [(ids[0], "$.recipients")]
    assert "50" in letters[0]["reason"]
    assert len(letters[0]["raw"]) <= DEAD_RAW_MAX and letters[0]["truncated"] == "1"
    assert int(letters[0]["size"]) > 200_000
    assert [(await stored(redis, n))["title"] for n in await feed(redis, "49")] == ["just enough"]


async def test_unreadable_profiles_make_one_dead_letter_per_entry(redis, start_proc):
    await redis.hset(K.state(USER_TOPIC), mapping={str(i): b"not json" for i in range(20)})
    [sid] = await xadd_many(redis, [entry("to broken profiles", ",".join(map(str, range(20))))])
    run_burst(start_proc)
    letters = await dead(redis)
    assert [(d["entry"], d["field"]) for d in letters] == [(sid, "$.recipients[0]")]
    assert "19 more" in letters[0]["reason"]
    # still served in-app: the profile only carries addresses and prefs
    assert len(await feed(redis, "19")) == 1


async def test_http_refuses_an_oversized_recipient_list_naming_it(api: Api, redis: Redis):
    async with api.client() as svc:
        r = await svc.post("/api/v1/notices", json={
            "alert": "disk", "title": "t", "recipients": [str(i) for i in range(10_001)]})
    assert r.status_code == 422 and r.json()["path"] == "$.recipients"
    assert await redis.xlen(K.notices) == 0


# 4 ------------------------------------------------------------------------------------------


async def test_the_same_dedup_key_in_two_alerts_never_folds_them(redis, start_proc):
    await add_users(redis, "1")
    await xadd_many(redis, [
        {**entry("disk on web-1"), "dedup_key": "web-1"},
        {**entry("cpu on web-1"), "alert": "cpu", "dedup_key": "web-1"},
        {**entry("disk of setting s2"), "dedup_key": "web-1", "setting_id": "s2",
         "channels": json.dumps({"ui": {}})},
        {**entry("disk on web-1 again"), "dedup_key": "web-1"},  # a repeat: folds
    ])
    run_burst(start_proc)
    notices = [await stored(redis, n) for n in await feed(redis, "1")]
    assert [(n["title"], n.get("repeat", 0)) for n in notices] == [
        ("disk on web-1", 1), ("cpu on web-1", 0), ("disk of setting s2", 0)]
    assert notices[0]["dedup_key"] == "web-1"  # as sent; the scope is in the claim's key
    for alert, setting in (("disk", None), ("cpu", None), ("disk", "s2")):
        assert await redis.exists(K.dedup(dedup_scope(alert, setting, "web-1")))


# 5 ------------------------------------------------------------------------------------------

NID = "01JCALLERCHOSEN00000000000"


async def test_a_caller_id_with_other_content_is_refused(api: Api, redis: Redis, start_proc):
    await add_users(redis, "1")
    first = {"id": NID, "alert": "disk", "title": "Disk 95%", "recipients": ["1"]}
    async with api.client() as svc:
        assert (await svc.post("/api/v1/notices", json=first)).status_code == 202
        run_burst(start_proc)
        again = await svc.post("/api/v1/notices", json=first)  # a retry: idempotent
        other = await svc.post("/api/v1/notices", json={**first, "title": "All is well"})
    assert again.status_code == 202 and again.json()["id"] == NID
    assert other.status_code == 409 and other.json()["path"] == "$.id"
    # straight onto the stream: one dead letter, the stored notice untouched
    [sid] = await xadd_many(redis, [{**entry("All is well"), "id": NID}])
    run_burst(start_proc)
    letters = await dead(redis)
    assert [(d["entry"], d["field"]) for d in letters] == [(sid, "$.id")]
    assert await feed(redis, "1") == [NID]
    assert (await stored(redis, NID))["title"] == "Disk 95%"


@pytest.mark.parametrize(("field", "value", "path"), [
    ("id", "x\r\nX-Injected: 1", "$.id"),
    ("id", "a/b", "$.id"),
    ("id", "x" * 129, "$.id"),
    ("recipients", ["1", "2\n"], "$.recipients[1]"),
    ("setting_id", "s\x00", "$.setting_id"),
    ("entity", {"topic": "vm", "id": "42\r"}, "$.entity.id"),
    # the channel map too, decoded where it comes in (it was a 202 and a dead letter)
    ("channels", {"email": {"users": [None]}}, "$.channels.email.users[0]"),
    ("channels", {"sms": "everyone"}, "$.channels.sms"),
    ("channels", {"forward_after": "soon"}, "$.channels.forward_after"),
])
async def test_ids_are_checked_at_the_edge(api: Api, redis: Redis, field, value, path):
    async with api.client() as svc:
        r = await svc.post("/api/v1/notices", json={"alert": "disk", "title": "t",
                                                    "recipients": ["1"], field: value})
    assert r.status_code == 422 and r.json()["path"] == path, r.text
    assert await redis.xlen(K.notices) == 0


async def test_stream_entries_with_bad_ids_are_dead_lettered(redis, start_proc):
    await add_users(redis, "1")
    ids = await xadd_many(redis, [
        {**entry("crlf"), "id": "a\r\nb"},
        {**entry("nul recipient"), "recipients": json.dumps(["1", "u\x00"])},
        {**entry("a ulid"), "id": "01HZZZZZZZZZZZZZZZZZZZZZZZ"},
        {**entry("bad channel map"), "channels": json.dumps({"email": {"users": [[]]}})},
    ])
    run_burst(start_proc)
    letters = await dead(redis)
    assert [(d["entry"], d["field"]) for d in letters] == [
        (ids[0], "$.id"), (ids[1], "$.recipients[1]"), (ids[3], "$.channels.email.users[0]")]
    assert await feed(redis, "1") == ["01HZZZZZZZZZZZZZZZZZZZZZZZ"]


# 6 ------------------------------------------------------------------------------------------


async def test_a_disabled_setting_is_not_used_even_by_id(redis, start_proc):
    await add_users(redis, "1")
    setting = {"id": "s1", "name": "disk", "channel": {"ui": {"users": ["1"]}},
               "enabled": False}
    await redis.hset(K.settings, "s1", msgspec.json.encode(setting))
    await redis.zadd(K.settings_by_name("disk"), {"s1": 0})
    ids = await xadd_many(redis, [
        {"alert": "disk", "title": "by id", "setting_id": "s1"},
        {"alert": "disk", "title": "by name"},
        # its own recipients and channels, as a wrapper sent it just before the switch
        {"alert": "disk", "title": "by id, complete", "setting_id": "s1", "recipients": "1",
         "channels": json.dumps({"ui": {"users": ["1"]}})},
    ])
    run_burst(start_proc)
    assert await feed(redis, "1") == []
    assert [(d["entry"], d["field"]) for d in await dead(redis)] == [
        (ids[0], "$.setting_id"), (ids[1], "$.recipients"), (ids[2], "$.setting_id")]
