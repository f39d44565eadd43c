"""Issue 23, ingest partitions (VESTNIK_INGEST_PARTITIONS): notices from every writer (HTTP
with and without Idempotency-Key, `vestnik send`, the wrapper, a product's plain XADD to
`vn:notices`) spread over the streams and reach the feeds once; an incident's notices and
its resolve share a stream, so resolves apply in order; a bad entry of a partition is
dead-lettered beside it; two centers share the partitions; a center configured with fewer
partitions than the streams in Redis says so and is not ready. Real `vestnik api`,
`center`, `send` and `wrap` processes; 4 partitions on a single Redis, 3 on the cluster
(`--redis-cluster`), where the streams live on more than one master."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from center_support import add_users, stored
from redis.asyncio import Redis

from support import eventually
from vestnik.streams.center import Ingest
from vestnik.streams.keys import CENTER_GROUP, Keys
from vestnik.streams.redis_server import free_port
from vestnik.streams.schemas import NoticeIn

NOTICE = {"alert": "disk", "severity": "warning", "recipients": ["1"]}

# an alert program: 8 plain notices, then an incident on "w-1" that fires and resolves
ALERT = """
import json, sys
def say(m): print(json.dumps(m), flush=True)
for i in range(8):
    say({"type": "notice", "title": f"wrap {i}", "recipients": ["1"]})
say({"type": "notice", "title": "wrap incident", "recipients": ["1"], "dedup_key": "w-1"})
say({"type": "resolve", "dedup_key": "w-1"})
for line in sys.stdin: pass
"""


@pytest.fixture
def parts(on_cluster: bool) -> int:
    return 3 if on_cluster else 4


@pytest.fixture
def pkeys(on_cluster: bool, parts: int) -> Keys:
    return Keys("vn:", on_cluster, ingest_partitions=parts)


@pytest.fixture
def env(parts: int) -> dict[str, str]:
    return {"VESTNIK_INGEST_PARTITIONS": str(parts)}


async def feed_titles(redis: Redis, keys: Keys, uid: str) -> list[str]:
    ids = [x.decode() for x in await redis.zrange(keys.feed(uid), 0, -1)]
    return [(await stored(redis, nid))["title"] for nid in ids]


async def lengths(redis: Redis, keys: Keys) -> list[int]:
    return [await redis.xlen(s) for s in keys.ingest_streams]


async def settled(redis: Redis, keys: Keys) -> bool:
    """Every partition read and acked by the center group."""
    for stream in keys.ingest_streams:
        info = await redis.xpending(stream, CENTER_GROUP)
        if int(info["pending"]):
            return False
        for g in await redis.xinfo_groups(stream):
            if g["name"] in (b"center", "center") and int(g.get("lag") or 0):
                return False
    return True


async def test_every_writer_spreads_and_each_notice_reaches_the_feed_once(
        redis: Redis, pkeys: Keys, parts: int, env, start_api, start_proc, tmp_path: Path):
    await add_users(redis, "1")
    api = start_api(**env)
    async with api.client() as svc:
        for i in range(4 * parts):  # no key: round robin
            r = await svc.post("/api/v1/notices", json={**NOTICE, "title": f"http {i}"})
            assert r.status_code == 202, r.text
        for i in range(4):  # a retry under one Idempotency-Key is stored once
            body = {**NOTICE, "title": f"idem {i}"}
            first, again = [await svc.post("/api/v1/notices", json=body,
                                           headers={"Idempotency-Key": f"order-{i}"})
                            for _ in range(2)]
            assert first.status_code == again.status_code == 202, again.text
            assert first.json()["id"] == again.json()["id"]
    for i in range(2):
        send = start_proc("send", "--alert", "disk", "--title", f"cli {i}",
                          "--recipients", "1", **env)
        assert send.proc.wait(60) == 0, send.output()
    await redis.xadd(pkeys.notices, {"alert": "disk", "title": "plain xadd", "recipients": "1"})
    spread = await lengths(redis, pkeys)
    assert all(spread), spread  # every stream took some (the api's round robin alone does)
    assert sum(spread) == 4 * parts + 4 + 2 + 1
    (tmp_path / "alert.py").write_text(ALERT)
    w = start_proc("wrap", str(_alert_toml(tmp_path, "deploy", [sys.executable, "alert.py"])),
                   **env)
    start_proc("center", "--no-forward", **env)
    want = Counter([*(f"http {i}" for i in range(4 * parts)), *(f"idem {i}" for i in range(4)),
                    "cli 0", "cli 1", "plain xadd", *(f"wrap {i}" for i in range(8)),
                    "wrap incident"])

    async def all_in() -> list[str] | None:
        assert w.proc is not None and w.proc.poll() is None, w.output()
        titles = await feed_titles(redis, pkeys, "1")
        return titles if len(titles) >= sum(want.values()) else None

    titles = await eventually(all_in, timeout=60, what="every notice in the feed")
    await eventually(lambda: settled(redis, pkeys), timeout=30, what="every partition acked")
    assert Counter(await feed_titles(redis, pkeys, "1")) == want  # once each
    assert Counter(titles) == want
    incident = [nid for nid in [x.decode() for x in await redis.zrange(pkeys.feed("1"), 0, -1)]
                if (await stored(redis, nid))["title"] == "wrap incident"]
    assert (await stored(redis, incident[0]))["status"] == "resolved"
    for p in range(parts):
        assert await redis.xlen(pkeys.ingest_dead(p)) == 0


async def test_an_incident_and_its_resolve_share_a_stream_and_resolve_in_order(
        redis: Redis, pkeys: Keys, parts: int, env, start_api, start_proc):
    await add_users(redis, "1")
    api = start_api(**env)
    incidents = [f"web-{i}" for i in range(4 * parts)]
    async with api.client() as svc:
        for key in incidents:  # fire, resolve, fire again (a new incident) for every other
            r = await svc.post("/api/v1/notices",
                               json={**NOTICE, "title": f"{key} full", "dedup_key": key})
            assert r.status_code == 202, r.text
            r = await svc.post("/api/v1/notices/resolve", json={"alert": "disk",
                                                                 "dedup_key": key})
            assert r.status_code == 202, r.text
        for key in incidents[::2]:
            r = await svc.post("/api/v1/notices",
                               json={**NOTICE, "title": f"{key} again", "dedup_key": key})
            assert r.status_code == 202, r.text
    where: dict[str, set[int]] = {}
    for p, stream in enumerate(pkeys.ingest_streams):
        for _, fields in await redis.xrange(stream):
            where.setdefault(fields[b"dedup_key"].decode(), set()).add(p)
    assert all(len(ps) == 1 for ps in where.values()), where  # one stream per incident
    assert len(set().union(*where.values())) > 1  # and the incidents spread
    start_proc("center", "--no-forward", **env)
    await eventually(lambda: settled(redis, pkeys), timeout=60, what="every partition acked")
    ids = [x.decode() for x in await redis.zrange(pkeys.feed("1"), 0, -1)]
    got = {(n := await stored(redis, nid))["title"]: n["status"] for nid in ids}
    assert got == {**{f"{k} full": "resolved" for k in incidents},
                   **{f"{k} again": "firing" for k in incidents[::2]}}


async def test_a_bad_entry_in_a_partition_is_dead_lettered_beside_it(
        redis: Redis, pkeys: Keys, env, start_proc):
    await add_users(redis, "1")
    bad = await redis.xadd(pkeys.ingest_stream(2), {"title": "no alert", "recipients": "1"})
    await redis.xadd(pkeys.ingest_stream(2), {"alert": "disk", "title": "good",
                                              "recipients": "1"})
    proc = start_proc("center", "--burst", "--no-forward", **env)
    assert proc.proc.wait(60) == 0, proc.output()
    letters = await redis.xrange(pkeys.ingest_dead(2))
    assert [f[b"entry"] for _, f in letters] == [bad]
    assert b"alert" in letters[0][1][b"reason"] and letters[0][1][b"field"] == b"$.alert"
    assert await redis.xlen(pkeys.notices_dead) == 0
    assert await feed_titles(redis, pkeys, "1") == ["good"]


async def test_the_same_entry_id_in_two_partitions_is_two_notices(
        redis: Redis, pkeys: Keys, parts: int, env, start_proc):
    """Entries sent without `id` get one derived from their entry id; streams reuse entry
    ids (same ms, same sequence), so two partitions' `<ms>-0` must still be two notices,
    each in its own recipient's feed (not one body shared by both users)."""
    uids = [str(p) for p in range(1, parts + 1)]
    await add_users(redis, *uids)
    for p, uid in enumerate(uids):
        await redis.xadd(pkeys.ingest_stream(p), {"alert": "disk", "title": f"for {uid}",
                                                  "recipients": uid}, id="1700000000000-0")
    proc = start_proc("center", "--burst", "--no-forward", **env)
    assert proc.proc.wait(60) == 0, proc.output()
    ids = set()
    for uid in uids:
        assert await feed_titles(redis, pkeys, uid) == [f"for {uid}"]
        ids |= {x.decode() for x in await redis.zrange(pkeys.feed(uid), 0, -1)}
    assert len(ids) == parts


async def test_two_centers_share_the_partitions_without_duplicates(
        redis: Redis, pkeys: Keys, env, start_proc):
    await add_users(redis, "1", "2")
    for _ in range(2):
        start_proc("center", "--no-forward", **env)
    ingest = Ingest(redis, pkeys)
    n = 300
    for first in range(0, n, 50):  # in rounds while both centers read
        await asyncio.gather(*(ingest.send(NoticeIn(alert="load", title=f"n{i}",
                                                    recipients=["1", "2"]), via="http")
                               for i in range(first, first + 50)))

    async def done() -> bool:
        return all([len(await redis.zrange(pkeys.feed(u), 0, -1)) >= n for u in ("1", "2")])

    await eventually(done, timeout=60, what="every notice in both feeds")
    await eventually(lambda: settled(redis, pkeys), timeout=30, what="every partition acked")
    for uid in ("1", "2"):
        titles = await feed_titles(redis, pkeys, uid)
        assert sorted(titles) == sorted(f"n{i}" for i in range(n))  # none twice


async def test_streams_beyond_the_count_fail_readiness_and_are_logged(
        redis: Redis, pkeys: Keys, parts: int, start_proc):
    fewer = parts - 1
    await redis.xadd(pkeys.ingest_stream(fewer), {"alert": "disk", "title": "stranded",
                                                  "recipients": "1"})
    port = free_port()
    proc = start_proc("center", "--no-forward", VESTNIK_METRICS_PORT=str(port),
                      VESTNIK_INGEST_PARTITIONS=str(fewer))

    async def answer() -> dict | None:
        assert proc.proc is not None and proc.proc.poll() is None, proc.output()
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.get(f"http://127.0.0.1:{port}/readyz")
        except httpx.TransportError:  # not listening yet
            return None
        checks = r.json()["checks"]
        return r.json() if checks.get("consumer") == "ok" else None

    got = await eventually(answer, timeout=30, what="the center's readiness")
    assert got["status"] == "unavailable"
    assert "VESTNIK_INGEST_PARTITIONS" in got["checks"]["partitions"]
    assert pkeys.ingest_stream(fewer) in got["checks"]["partitions"]
    assert got["checks"]["group:center"] == "ok"

    async def logged() -> bool:
        out = proc.output()
        return "ERROR" in out and f"VESTNIK_INGEST_PARTITIONS={fewer}" in out

    await eventually(logged, timeout=10, what="the ERROR line")


async def test_on_a_cluster_the_partitions_live_on_more_than_one_master(
        redis, pkeys: Keys, on_cluster: bool):
    if not on_cluster:
        pytest.skip("--redis-cluster only")
    await redis.initialize()  # the slots, before the first command
    nodes = {redis.get_node_from_key(s).port for s in pkeys.ingest_streams}
    assert len(nodes) > 1, nodes
    for p, s in enumerate(pkeys.ingest_streams):  # each partition's keys in its slot
        same = redis.get_node_from_key(s).port
        assert redis.get_node_from_key(pkeys.ingest_dead(p)).port == same
        assert redis.get_node_from_key(pkeys.idempotency("k", p)).port == same


def _alert_toml(folder: Path, name: str, command: list[str]) -> Path:
    path = folder / "alert.toml"
    path.write_text(f"name = {json.dumps(name)}\ncommand = {json.dumps(command)}\n"
                    f"cwd = {json.dumps(str(folder))}\n")
    return path


def test_partition_names_stay_put_and_cluster_slots_spread():
    """Partition 0 is `vn:notices` whatever the count; a partition's name never depends on
    the count (raising it renames nothing); on a cluster each partition's keys share its
    slot, the 64 slots differ, and partitions 0 and 1 are about half the slots apart."""
    from redis.crc import key_slot

    for cluster in (False, True):
        one, many = Keys("vn:", cluster), Keys("vn:", cluster, ingest_partitions=64)
        assert one.ingest_streams == ["vn:notices"] == many.ingest_streams[:1]
        assert many.ingest_streams[:3] == Keys("vn:", cluster, ingest_partitions=3).ingest_streams
    plain = Keys("vn:", ingest_partitions=4)
    assert plain.ingest_streams == ["vn:notices", "vn:notices:1", "vn:notices:2", "vn:notices:3"]
    # partition p's Idempotency-Key records can never meet partition 0's, whatever the key
    assert plain.idempotency("3:x") != plain.idempotency("x", 3)
    tagged = Keys("vn:", True, ingest_partitions=64)
    slots = [key_slot(s.encode()) for s in tagged.ingest_streams]
    assert len(set(slots)) == 64
    assert 8192 - 128 <= (slots[1] - slots[0]) % 16384 <= 8192 + 128
    for p in range(64):
        assert key_slot(tagged.ingest_dead(p).encode()) == slots[p]
        assert key_slot(tagged.idempotency("k", p).encode()) == slots[p]


def test_a_writer_picks_the_partition_of_the_dedup_key_then_the_idempotency_key():
    keys = Keys("vn:", ingest_partitions=4)
    # an incident's notices (of any setting) and its resolve: one partition
    assert len({keys.ingest_partition("disk", "web-1", idem) for idem in
                (None, "a", "b", "c")}) == 1
    assert len({keys.ingest_partition("disk", f"web-{i}") for i in range(40)}) == 4
    # a retry under one Idempotency-Key: where the first try went
    assert {keys.ingest_partition("disk", None, "order-7") for _ in range(8)} == {
        keys.ingest_partition("disk", None, "order-7")}
    # neither: round robin over every partition
    assert {keys.ingest_partition("disk") for _ in range(4)} == {0, 1, 2, 3}
    assert {Keys("vn:").ingest_partition("disk", None, "x") for _ in range(4)} == {0}


async def test_on_a_cluster_each_streams_master_is_asked_to_wait(
        redis, pkeys: Keys, on_cluster: bool, redis_server):
    """VESTNIK_REDIS_WAIT_REPLICAS with partitions on two masters: WAIT counts only its own
    connection's writes, so the coalesced XADDs get one WAIT on each stream's master; with
    no replica there, each write is refused as not replicated."""
    if not on_cluster:
        pytest.skip("--redis-cluster only")
    import redis as sync_redis

    from vestnik.streams.coalesce import Appends, Replication
    from vestnik.streams.errors import NotReplicated

    await redis.initialize()
    by_port: dict[int, str] = {}
    for s in pkeys.ingest_streams:
        by_port.setdefault(redis.get_node_from_key(s).port, s)
    assert len(by_port) > 1
    masters = {port: sync_redis.Redis(port=port, socket_timeout=5) for port in by_port}
    try:
        for m in masters.values():
            m.config_resetstat()
        appends = Appends(redis, Replication(1, 50))
        got = await asyncio.gather(*(appends.xadd(s, {"alert": "disk", "title": "t"},
                                                  durable=True) for s in by_port.values()),
                                   return_exceptions=True)
        assert all(isinstance(e, NotReplicated) for e in got), got
        waits = {port: int(m.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
                 for port, m in masters.items()}
        assert waits == dict.fromkeys(masters, 1)
    finally:
        for m in masters.values():
            m.close()


@pytest.mark.parametrize("toml, env, named", [
    ("ingest_partitions = 0\n", {}, "ingest_partitions"),
    ("ingest_partitions = 65\n", {}, "ingest_partitions"),
    ("", {"VESTNIK_INGEST_PARTITIONS": "many"}, "VESTNIK_INGEST_PARTITIONS='many'"),
    ("", {"VESTNIK_INGEST_PARTITIONS": "65"}, "VESTNIK_INGEST_PARTITIONS='65'"),
])
def test_a_bad_partition_count_stops_the_wrapper_naming_it(tmp_path: Path, toml, env, named):
    from vestnik.wrapper.config import ConfigError, parse

    text = f'name = "a"\ncommand = ["x"]\n{toml}'
    with pytest.raises(ConfigError) as e:
        parse(text, env={"VESTNIK_REDIS_URL": "redis://127.0.0.1:1/0", **env}, base=tmp_path)
    assert "alert.toml" in str(e.value) and named in str(e.value)
    good = parse('name = "a"\ncommand = ["x"]\n', base=tmp_path, env={
        "VESTNIK_REDIS_URL": "redis://127.0.0.1:1/0", "VESTNIK_INGEST_PARTITIONS": "4"})
    assert Keys.of(good).ingest_streams[3] == "vn:notices:3"
