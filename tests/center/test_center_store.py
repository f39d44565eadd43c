"""The center as a process: validation and dead letters, idempotent store, dedup folding,
recipients from settings, mute, retention, the `send` command and a clean SIGTERM stop."""

from __future__ import annotations

import signal

import msgspec
import pytest
from center_support import (
    K,
    add_users,
    dead,
    entry,
    feed,
    live_event_of,
    mark_read,
    pending,
    stored,
    unread_count,
    xadd_many,
)

from support import eventually
from vestnik.streams.keys import Keys


def run_burst(start_proc, *args: str, **env: str) -> str:
    proc = start_proc("center", "--burst", "--no-forward", *args, **env)
    assert proc.proc.wait(60) == 0, proc.output()
    return proc.output()


async def test_invalid_entries_are_dead_lettered_and_the_rest_of_the_batch_stored(
        redis, start_proc):
    await add_users(redis, "1", "2")
    ids = await xadd_many(redis, [
        entry("ok 1", "1,2"),
        {"alert": "disk", "severity": "warning", "recipients": "1"},          # no title
        entry("bad severity", severity="urgent"),
        entry("bad data", data="{not json"),
        entry("no profile", "1,42"),                                  # 42 served in-app too
        entry("ok 2", "2"),
        {"alert": "disk", "title": "x", "recipients": "1", "colour": "red"},   # unknown field
        {"alert": "nobody-set-this", "title": "no recipients"},
    ])
    run_burst(start_proc)
    letters = {d["entry"]: d for d in await dead(redis)}
    assert set(letters) == {ids[1], ids[2], ids[3], ids[6], ids[7]}
    assert letters[ids[1]]["field"] == "$.title" and "title" in letters[ids[1]]["reason"]
    assert letters[ids[2]]["field"] == "$.severity"
    assert letters[ids[3]]["field"] == "$.data" and "JSON" in letters[ids[3]]["reason"]
    assert letters[ids[6]]["field"] == "$.colour"
    assert letters[ids[7]]["field"] == "$.recipients"
    raw = msgspec.json.decode(letters[ids[2]]["raw"])
    assert raw == {"alert": "disk", "title": "bad severity", "severity": "urgent",
                   "recipients": "1"}
    assert int(letters[ids[2]]["at"]) > 0 and letters[ids[2]]["source"] == "center"
    titles1 = [(await stored(redis, n))["title"] for n in await feed(redis, "1")]
    titles2 = [(await stored(redis, n))["title"] for n in await feed(redis, "2")]
    assert titles1 == ["ok 1", "no profile"]
    assert titles2 == ["ok 1", "ok 2"]
    assert [(await stored(redis, n))["title"] for n in await feed(redis, "42")] == ["no profile"]
    assert await pending(redis) == 0


async def test_redelivery_never_makes_a_second_copy(redis, start_proc):
    """Entries without an id get one derived from the stream id: handling them again
    (a crash before XACK) stores nothing new."""
    await add_users(redis, "1")
    await xadd_many(redis, [entry(f"n{i}") for i in range(20)]
                    + [entry("with id", id="01HZZZZZZZZZZZZZZZZZZZZZZZ")])
    run_burst(start_proc)
    first = await feed(redis, "1")
    assert len(first) == 21
    # rewind the group: every entry is delivered again, as after a crash before XACK
    await redis.xgroup_setid(K.notices, "center", "0")
    run_burst(start_proc)
    assert await feed(redis, "1") == first
    assert int(await redis.get(K.user_seq("1"))) == 21
    assert await unread_count(redis, "1") == 21


async def test_dedup_key_folds_repeats_into_the_first_notice(redis, start_proc):
    await add_users(redis, "1")
    await xadd_many(redis, [entry("disk full", dedup_key="disk:web-1") for _ in range(3)]
                    + [entry("other")])
    run_burst(start_proc)
    ids = await feed(redis, "1")
    assert len(ids) == 2
    first = await stored(redis, ids[0])
    assert first["repeat"] == 2 and first["last_seen"] >= first["created_at"]
    # more repeats later (another batch) and a re-delivery count once each
    await xadd_many(redis, [entry("disk full", dedup_key="disk:web-1")])
    run_burst(start_proc)
    await redis.xgroup_setid(K.notices, "center", "0")
    run_burst(start_proc)
    assert (await stored(redis, ids[0]))["repeat"] == 3
    assert len(await feed(redis, "1")) == 2


async def test_recipients_and_channels_come_from_the_setting(redis, start_proc):
    await add_users(redis, "1", "2", "3")
    setting = {"id": "s1", "name": "disk", "metric": {"threshold": 90},
               "channel": {"ui": {"users": ["1", "2"]}, "email": {"users": [3]},
                           "forward_after": 60}, "enabled": True}
    await redis.hset(K.settings, "s1", msgspec.json.encode(setting))
    await redis.zadd(K.settings_by_name("disk"), {"s1": 0})
    await xadd_many(redis, [{"alert": "disk", "title": "from setting"}])
    proc = start_proc("center", "--burst", "--consumer", "c1")
    await eventually(lambda: feed(redis, "3"), what="user 3's feed")
    nid = (await feed(redis, "1"))[0]
    assert await feed(redis, "2") == [nid] and await feed(redis, "3") == [nid]
    body = await stored(redis, nid)
    assert body["setting_id"] == "s1" and body["metric"] == {"threshold": 90}
    assert body["recipients"] == ["1", "2", "3"]
    # user 3 is named by the email channel: one forward, due after forward_after, waiting
    # in the due set (a cluster's center writes it as one Redis's does, per partition)
    due = await redis.zrange(K.forward(0).forward_due, 0, -1, withscores=True)
    assert [msgspec.msgpack.decode(m) for m, _ in due] == [[nid, "3"]]
    assert due[0][1] == body["created_at"] + 60_000
    proc.stop()


async def test_muted_alert_makes_no_feed_entry(redis, start_proc):
    await add_users(redis, "1", "2", prefs={"2": {"mute": ["disk"]}})
    await xadd_many(redis, [entry("disk", "1,2"), {**entry("cpu", "1,2"), "alert": "cpu"}])
    run_burst(start_proc)
    assert len(await feed(redis, "1")) == 2
    only = await feed(redis, "2")
    assert [(await stored(redis, n))["alert"] for n in only] == ["cpu"]
    assert await dead(redis) == []


async def test_retention_trims_the_oldest_read_ones_first(redis, start_proc):
    await add_users(redis, "1")
    await xadd_many(redis, [entry(f"n{i}") for i in range(5)])
    run_burst(start_proc, VESTNIK_FEED_MAX="5")
    ids = await feed(redis, "1")
    await mark_read(redis, "1", ids[1], ids[3])  # read: n1 and n3
    await xadd_many(redis, [entry("n5"), entry("n6")])
    run_burst(start_proc, VESTNIK_FEED_MAX="5")
    now = await feed(redis, "1")
    titles = [(await stored(redis, n))["title"] for n in now]
    assert titles == ["n0", "n2", "n4", "n5", "n6"]  # the read ones went, not the oldest
    await xadd_many(redis, [entry("n7")])
    run_burst(start_proc, VESTNIK_FEED_MAX="5")
    titles = [(await stored(redis, n))["title"] for n in await feed(redis, "1")]
    assert titles == ["n2", "n4", "n5", "n6", "n7"]  # none read: the oldest went
    assert await unread_count(redis, "1") == 5
    assert await redis.zcard(K.read("1")) == 0  # the read ones left the read set too


async def test_send_command_and_sigterm_stop(redis, start_proc):
    await add_users(redis, "1", "2")
    center = start_proc("center", "--consumer", "c1")
    send = start_proc("send", "--alert", "disk", "--title", "Disk 95% on web-1",
                      "--severity", "critical", "--recipients", "1,2",
                      "--data", '{"host": "web-1"}')
    assert send.proc.wait(20) == 0, send.output()
    nid = send.output().strip().splitlines()[-1]
    await eventually(lambda: feed(redis, "2"), what="stored")
    assert await feed(redis, "1") == [nid]
    body = await stored(redis, nid)
    assert body["severity"] == "critical" and body["data"] == {"host": "web-1"}
    bad = start_proc("send", "--alert", "disk", "--title", "x", "--severity", "meh")
    assert bad.proc.wait(20) == 2 and "severity" in bad.output()
    assert center.stop(signal.SIGTERM) == 0
    assert "stopped" in center.output()


async def test_metrics_and_acked_entries_are_trimmed(redis, start_proc):
    import httpx

    from vestnik.streams.redis_server import free_port

    await add_users(redis, "1")
    port = free_port()
    start_proc("center", "--no-forward", "--metrics-port", str(port))
    await xadd_many(redis, [entry(f"n{i}") for i in range(600)] + [entry("bad", severity="x")])

    async def metrics() -> str:
        try:
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.HTTPError:
            return ""
        return text if 'vestnik_notices_dead_total{reason="invalid"} 1.0' in text else ""

    text = await eventually(metrics, timeout=20, what="dead-letter metric")
    assert "vestnik_notices_stored_total 600.0" in text
    # acked entries leave the ingest stream (XTRIM MINID ~, every few seconds)

    async def trimmed() -> bool:
        return await redis.xlen(K.notices) < 601

    await eventually(trimmed, timeout=20, interval=0.2, what="ingest stream trimmed")
    assert await pending(redis) == 0


async def test_documented_xadd_line_is_stored(redis, redis_url, redis_server, start_proc):
    """The documented redis-cli line, run verbatim, reaches both users' feeds."""
    import subprocess

    from support import documented_line, master_ports

    await add_users(redis, "1", "2")
    line = documented_line("redis-cli XADD vn:notices")
    port = master_ports(redis_server)[0]
    # -c: on a cluster, follow the MOVED to the node of vn:notices (no-op on one Redis)
    subprocess.run(line.replace("redis-cli", f"redis-cli -c -p {port}", 1), shell=True,
                   check=True, capture_output=True)
    run_burst(start_proc)
    nid = (await feed(redis, "1"))[0]
    assert await feed(redis, "2") == [nid]
    body = await stored(redis, nid)
    assert (body["title"], body["severity"], body["alert"]) == ("Disk 95% on web-1", "warning",
                                                                "disk")


@pytest.mark.single_redis("counts PUBLISHes: a cluster always publishes (PUBSUB NUMSUB "
                         "counts one node's subscribers)")
async def test_live_messages_go_to_subscribed_users_and_to_pattern_subscribers(redis,
                                                                               start_proc):
    """The store publishes a user's notices while someone SUBSCRIBEs to their live channel
    (an open stream), and everyone's while any PSUBSCRIBE exists (it might match); a user
    nobody listens to gets no PUBLISH. Feeds are stored alike in every case."""
    await add_users(redis, "1", "2", "3")

    async def heard(ps, n: int) -> list[tuple[str, str]]:
        got: list[tuple[str, str]] = []
        for _ in range(100):  # at most ~10 s
            m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if m is not None:
                _, data, _ = live_event_of(m["data"])
                got.append((m["channel"].decode(), data["title"]))
            if len(got) >= n:
                return got
        return got

    async def publishes() -> int:
        return int((await redis.info("commandstats")).get("cmdstat_publish", {}).get("calls", 0))

    one = redis.pubsub()
    await one.subscribe(K.live("1"))
    await xadd_many(redis, [entry("to 1 and 2", recipients="1,2"), entry("to 3", recipients="3")])
    await redis.config_resetstat()
    run_burst(start_proc)
    assert await heard(one, 1) == [(K.live("1"), "to 1 and 2")]
    assert await publishes() == 1  # users 2 and 3: nobody listening

    anyone = redis.pubsub()
    await anyone.psubscribe("vn:{u:*}:live")
    await xadd_many(redis, [entry("to 2 and 3", recipients="2,3")])
    await redis.config_resetstat()
    run_burst(start_proc)
    assert sorted(await heard(anyone, 2)) == [(K.live("2"), "to 2 and 3"),
                                              (K.live("3"), "to 2 and 3")]
    assert await publishes() == 2
    assert [len(await feed(redis, u)) for u in ("1", "2", "3")] == [1, 2, 2]
    for ps in (one, anyone):
        await ps.aclose()


async def test_a_broadcast_beyond_one_store_call_reaches_every_recipient_once(
        redis, start_proc):
    """2,501 recipients: the store goes on in more calls than the first (STORE_CHUNK is
    1,000), each publishing as it ends. Every recipient gets one unread entry and one live
    message, the last chunk's as the first's; the same notice again (a re-delivery, its
    body already stored) adds nothing in any chunk."""
    from vestnik.streams.center.store import STORE_CHUNK

    uids = [str(i) for i in range(1, 2 * STORE_CHUNK + 502)]
    await add_users(redis, *uids)
    watched = [uids[0], uids[STORE_CHUNK], uids[-1]]  # first, second and third call
    ps = redis.pubsub()
    await ps.subscribe(*(K.live(u) for u in watched))
    nid = "01KB3ZQ5W3N7F4Z3Y0H8C2D6EA"
    await xadd_many(redis, [entry("to everyone", ",".join(uids), id=nid)])
    run_burst(start_proc)
    await xadd_many(redis, [entry("to everyone", ",".join(uids), id=nid)])
    run_burst(start_proc)

    async with redis.pipeline(transaction=False) as pipe:
        for u in uids:
            pipe.zrange(K.feed(u), 0, -1, withscores=True)
            pipe.get(K.user_seq(u))
        res = await pipe.execute()
    feeds, seqs = res[0::2], res[1::2]
    assert all(f == [(nid.encode(), 1.0)] for f in feeds), "one entry each, at seq 1"
    assert all(s == b"1" for s in seqs), "no second insert anywhere"
    assert await unread_count(redis, uids[-1]) == 1
    live: dict[str, list[int]] = {u: [] for u in watched}
    quiet = 0
    for _ in range(100):  # at most ~10 s: until three messages, then 0.3 s of nothing more
        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is None:
            quiet += sum(map(len, live.values())) >= len(watched)
            if quiet >= 3:
                break
            continue
        event, data, seq = live_event_of(msg["data"])
        assert event == "notice" and data["id"] == nid
        live[next(u for u in watched if K.live(u) == msg["channel"].decode())].append(seq)
    assert live == {u: [1] for u in watched}
    await ps.aclose()


async def test_a_script_flush_mid_run_stores_the_next_batch_once(redis, start_proc):
    """SCRIPT FLUSH on every master while a center runs (what a restarted node or a replica
    promoted in a failover looks like to it): its next batch loads its scripts again and
    stores each notice once, with one forward per recipient, in every forward partition
    (on a cluster its pipeline sends EVALSHA and a NOSCRIPT command is sent again once)."""
    keys = Keys(K.prefix, K.cluster, forward_partitions=3)
    await add_users(redis, "1", "2")
    email = {"channels": '{"email": {}}', "forward_after": "3600"}
    proc = start_proc("center", "--no-forward", "--consumer", "c1",
                      VESTNIK_FORWARD_PARTITIONS="3")

    async def in_feeds(n: int) -> bool:
        return all([len(await feed(redis, uid)) >= n for uid in ("1", "2")])

    await xadd_many(redis, [entry(f"a{i}", "1,2", **email) for i in range(30)])
    await eventually(lambda: in_feeds(30), what="the first batch stored")
    await redis.script_flush()  # on a cluster: every master
    await xadd_many(redis, [entry(f"b{i}", "1,2", **email) for i in range(30)])
    await eventually(lambda: in_feeds(60), what="the batch after the flush stored")
    await eventually(lambda: _no_pending(redis), what="every entry acked")
    for uid in ("1", "2"):
        titles = sorted([(await stored(redis, n))["title"] for n in await feed(redis, uid)])
        assert titles == sorted([f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)])
        assert int(await redis.get(K.user_seq(uid))) == 60
    due = [[msgspec.msgpack.decode(m) for m in
            await redis.zrange(keys.forward(p).forward_due, 0, -1)] for p in range(3)]
    assert all(due)  # every partition got some
    every = [tuple(d) for part in due for d in part]
    assert len(every) == 120 and len(set(every)) == 120
    proc.stop()


async def _no_pending(redis) -> bool:
    return await pending(redis) == 0
