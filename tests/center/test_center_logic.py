"""Pure logic of the center with plain objects: recipient and channel resolution, mute and
prefs, derived ids, retention choice (and the Lua store agreeing with it)."""

from __future__ import annotations

import random

import pytest
from center_support import K

from vestnik.streams import lua
from vestnik.streams.center.ingest import prepare
from vestnik.streams.center.plan import derived_id, merge_channels
from vestnik.streams.center.store import choose_trim
from vestnik.streams.errors import BadInput
from vestnik.streams.forward import user_routes, wants_job
from vestnik.streams.ids import encode_ulid
from vestnik.streams.schemas import (
    AlertSetting,
    ChannelMap,
    Notice,
    NoticeIn,
    SettingIn,
    User,
    convert,
    decode_notice_entry,
    decode_user,
)


def channels(wire: dict) -> ChannelMap:
    return convert(wire, ChannelMap)


def setting(sid: str, channel: dict, enabled: bool = True) -> AlertSetting:
    return AlertSetting(id=sid, name="disk", channel=channels(channel), enabled=enabled)


def test_channel_users_in_order_once_ints_as_strings():
    assert channels({"ui": {"users": ["1", "2"]}, "email": {"users": [2, 3]},
                     "telegram": {"chat_ids": [7]}, "forward_after": 60}).users() == ["1", "2", "3"]
    assert channels({}).users() == []
    with pytest.raises(BadInput) as e:
        convert({"name": "disk", "channel": {"email": "everyone"}}, SettingIn)
    assert e.value.field == "$.channel.email"


def test_merge_channels_of_several_settings():
    merged = merge_channels([
        setting("a", {"ui": {"users": ["1"]}, "telegram": {"chat_ids": [5]},
                      "forward_after": 300}),
        setting("b", {"ui": {"users": ["1", "2"]}, "webhook": {"url": "http://x"},
                      "forward_after": 60}),
    ])
    assert merged == {"ui": {"users": ["1", "2"]}, "telegram": {"chat_ids": [5]},
                      "webhook": {"url": "http://x"}, "forward_after": 60}
    # an entry naming nobody names every recipient: united with a list, it still does
    merged = merge_channels([setting("a", {"email": {}}), setting("b", {"email": {"users": [1]}})])
    assert merged == {"email": {}}
    one = setting("a", {"email": {}})
    assert merge_channels([one, setting("b", {})]) is one.channel
    assert not merge_channels([])


def wants(n: Notice, user: User, addresses: dict | None = None) -> bool:
    return wants_job(user_routes(n, user, addresses or {}))


def test_mute_and_channel_prefs():
    user = User(id="1", prefs={"mute": ["disk"], "email": False})
    assert user.mutes("disk") and not user.mutes("cpu")
    assert not User(id="2", prefs={"mute": "disk"}).mutes("disk")  # not a list: ignored
    n = Notice(id="n", alert="cpu", title="t",
               channels=channels({"ui": {}, "email": {}, "forward_after": 5}))
    assert not wants(n, user)  # email switched off, ui is not external
    assert wants(n, User(id="2"))
    n.channels = channels({"ui": {}, "email": {}, "slack": {"users": ["3"]}})
    assert not wants(n, user)  # slack names someone else
    n.channels = channels({"ui": {}, "email": {}, "slack": {"users": [1]}})
    assert wants(n, user)
    n.alert = "disk"
    assert not wants(n, user)  # muted: no channel
    # with the channels' user fields: a user without an address still gets a job (it reads
    # the profile when it sends); a channel with shared targets only makes none per user
    addresses = {"email": "email", "slack": "slack_user", "webhook": None}
    assert wants(n, User(id="2"), addresses)
    assert wants(n, User(id="2", email="b@example.org"), addresses)
    hook = Notice(id="n", alert="cpu", title="t",
                  channels=channels({"webhook": {"url": "http://x"}}))
    assert not wants(hook, User(id="2", email="b@example.org"), addresses)


def test_derived_id_is_a_stable_ulid_of_the_entry():
    a = derived_id("1700000000000-0")
    assert a == derived_id("1700000000000-0") != derived_id("1700000000000-1")
    assert len(a) == 26 and a < derived_id("1700000000001-0")  # time-sortable


def test_ulid_text_is_crockford_base32_as_other_ulid_libraries_write_it():
    # two JavaScript libraries' README examples: alizain/ulid's ulid(1469918176385) and
    # @evokegroup/ulid's ulid(1698075890563), time parts 01ARYZ6S41 and 01HDEKBMW3
    assert encode_ulid(1469918176385, 0) == "01ARYZ6S41" + "0" * 16
    assert encode_ulid(1698075890563, 0)[:10] == "01HDEKBMW3"
    assert encode_ulid(0, 2**80 - 1) == "0" * 10 + "Z" * 16
    assert encode_ulid(2**48 - 1, 0b11111_00000_10101 << 65) == "7ZZZZZZZZZ" + "Z0N" + "0" * 13


def test_decode_entry_and_user_records():
    with pytest.raises(BadInput) as e:
        decode_notice_entry({b"alert": b"disk"})
    assert e.value.field == "$.title"
    assert decode_user("7", b'{"id": 7, "name": "x"}') == User(id="7", name="x")
    assert decode_user("7", b"[1]").startswith("unreadable record of user 7")
    assert "unreadable" in decode_user("7", b'{"prefs": 3}')


def test_prepare_assigns_id_and_time_only_when_absent():
    got = prepare(NoticeIn(alert="a", title="t"))
    assert got.id and len(got.id) == 26 and got.created_at
    kept = prepare(NoticeIn(alert="a", title="t", id="mine", created_at=5))
    assert (kept.id, kept.created_at) == ("mine", 5)


def test_choose_trim_prefers_the_oldest_read():
    feed = [f"n{i}" for i in range(10)]
    assert choose_trim(feed, set(), 2) == ["n0", "n1"]  # none read: the oldest
    assert choose_trim(feed, {"n3", "n7"}, 2) == ["n3", "n7"]
    assert choose_trim(feed, {"n3"}, 2) == ["n3", "n0"]
    assert choose_trim(feed, {"n9", "n1", "n5"}, 2) == ["n1", "n5"]  # the oldest read ones
    assert choose_trim(feed, set(), 0) == []


async def test_store_script_trims_like_choose_trim(redis):
    rnd = random.Random(7)
    script = lua.script("center/store.lua")
    uid = "u"
    keys = [K.feed(uid), K.read(uid), K.user_seq(uid), K.live(uid), K.archived(uid)]
    model: list[str] = []
    read: set[str] = set()
    for step in range(60):
        batch = [f"s{step}-{i}" for i in range(rnd.randint(1, 4))]
        args: list[str] = []
        for nid in batch:
            args += [nid, f'{{"id":"{nid}"}}']  # the view
        await script(keys=keys, args=[10, "0" * len(batch), *args], client=redis)  # none silenced
        model += batch
        for victim in choose_trim(model, read, len(model) - 10):
            model.remove(victim)
            read.discard(victim)
        for nid in rnd.sample(model, k=min(len(model), rnd.randint(0, 3))):  # read some
            await redis.zadd(K.read(uid), {nid: await redis.zscore(K.feed(uid), nid)})
            read.add(nid)
        assert [x.decode() for x in await redis.zrange(K.feed(uid), 0, -1)] == model
        assert {x.decode() for x in await redis.zrange(K.read(uid), 0, -1)} == read


async def test_per_user_path_stores_like_the_batch_path(redis, settings):
    """The per-user calls (used on a Redis Cluster) give the same feeds as one batch call."""
    from center_support import add_users, entry, feed, xadd_many

    from vestnik.streams.center.batch import Center
    from vestnik.streams.consumer import Entry

    await add_users(redis, "1", "2")
    sids = await xadd_many(redis, [entry(f"n{i}", "1,2") for i in range(5)])
    raw = await redis.xrange(K.notices)
    entries = [Entry(s.decode(), decode_notice_entry(f), f) for s, f in raw]
    center = Center(redis, K, settings)
    center.store.one_call = False  # as on a Redis Cluster
    assert await center.handle(entries) == []
    assert await center.handle(entries) == []  # again: nothing new
    ids = [derived_id(s) for s in sids]
    assert await feed(redis, "1") == ids and await feed(redis, "2") == ids
    assert int(await redis.get(K.user_seq("2"))) == 5
