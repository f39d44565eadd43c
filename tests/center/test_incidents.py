"""Issue 21 §1, incidents that resolve: a notice with a `dedup_key` fires until a resolve
(stream entry, HTTP, wrapper line, `resolve_after`) marks it resolved in every feed, live,
without touching the unread count; a repeat while firing folds, a repeat after the resolve
opens a new incident; resolves apply in stream order; hostile resolves are refused naming
the field; `send_resolved` schedules the `resolved` forward jobs. Real `vestnik center`,
`vestnik api` and `vestnik wrap` processes against the suite's redis-server."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from center_support import (
    K,
    add_users,
    dead,
    entry,
    feed,
    lag,
    pending,
    stored,
    unread_count,
    xadd_many,
)
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from support import SSE, Api, Proc, eventually, vestnik_argv, wait_http
from vestnik.streams.center.incidents import due_member
from vestnik.streams.config import Config
from vestnik.streams.forward import arq_keys
from vestnik.streams.keys import dedup_scope
from vestnik.streams.redis_server import free_port
from vestnik.streams.schemas import (
    Notice,
    NoticeIn,
    ResolveIn,
    decode_center_entry,
    json_encode,
    resolve_fields,
)


def run_burst(start_proc, **env: str) -> str:
    proc = start_proc("center", "--burst", "--no-forward", **env)
    assert proc.proc.wait(60) == 0, proc.output()
    return proc.output()


def resolve(key: str, alert: str = "disk", **extra: str) -> dict[str, str]:
    return {"op": "resolve", "alert": alert, "dedup_key": key, **extra}


async def put_setting(redis: Redis, sid: str, name: str = "disk", **fields: Any) -> None:
    """A setting as the settings store keeps it (the record and the name index)."""
    setting = {"id": sid, "name": name, "channel": {"ui": {"users": ["1"]}}, **fields}
    await redis.hset(K.settings, sid, msgspec.json.encode(setting))
    await redis.zadd(K.settings_by_name(name), {sid: 0})


async def incidents(redis: Redis, uid: str) -> list[tuple[str, str | None, int]]:
    """The user's feed, oldest first: (title, status, repeat) of each notice."""
    out = []
    for nid in await feed(redis, uid):
        n = await stored(redis, nid)
        out.append((n["title"], n.get("status"), n.get("repeat", 0)))
    return out


# stream entries -------------------------------------------------------------------------


async def test_resolve_entries_apply_in_stream_order(redis: Redis, start_proc):
    """One batch: a repeat while firing folds, the resolve marks the incident resolved for
    every recipient (their unread counts unchanged), the repeat after it is a new incident;
    a resolve of a key before its first notice resolves nothing."""
    await add_users(redis, "1", "2")
    sids = await xadd_many(redis, [
        {**entry("web-1 full", "1,2"), "dedup_key": "web-1"},
        {**entry("web-1 still full", "1,2"), "dedup_key": "web-1"},  # folds
        resolve("web-2"),  # before web-2's first notice: nothing to resolve
        {**entry("web-2 full", "1,2"), "dedup_key": "web-2"},
        resolve("web-1", at="2000000000000"),
        {**entry("web-1 full again", "1,2"), "dedup_key": "web-1"},  # a new incident
    ])
    run_burst(start_proc)
    assert await dead(redis) == []
    for uid in ("1", "2"):
        assert await incidents(redis, uid) == [
            ("web-1 full", "resolved", 1), ("web-2 full", "firing", 0),
            ("web-1 full again", "firing", 0)]
        assert await unread_count(redis, uid) == 3  # a resolve reads nothing
    first = await stored(redis, (await feed(redis, "1"))[0])
    assert first["resolved_at"] == 2000000000000  # `at` as sent
    claim = K.dedup(dedup_scope("disk", None, "web-1"))
    assert (await redis.get(claim)).decode() == (await feed(redis, "1"))[2]
    assert len(sids) == 6


def counted(port: int, outcome: str) -> float:
    """`vestnik_incidents_resolved_total` of a center's metrics (entry resolves)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.ConnectError:
        return -1
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "vestnik_incidents_resolved_total"
               and s.labels == {"via": "entry", "outcome": outcome})


async def test_stream_order_holds_across_small_batches_in_flight(redis: Redis, start_proc):
    """Full batches of 7 (a backlog: several in flight at once): every resolve still comes
    after its incident's notice and before the key's next one, wherever the batches cut."""
    await add_users(redis, "1")
    keys = [f"vm-{i}" for i in range(40)]
    await xadd_many(redis, [
        *({**entry(f"{k} full"), "dedup_key": k} for k in keys),
        *(resolve(k) for k in keys),
        *({**entry(f"{k} full again"), "dedup_key": k} for k in keys[::2]),
        *(resolve(k) for k in keys[::4]),
    ])
    # each resolve in the batch after its notice's, which may still be storing
    for i in range(30):
        await xadd_many(redis, [{**entry(f"near-{i} full"), "dedup_key": f"near-{i}"},
                                *(entry(f"filler {i}.{j}") for j in range(6)),
                                resolve(f"near-{i}")])
    run_burst(start_proc, VESTNIK_CENTER_BATCH="7")
    got = await incidents(redis, "1")
    assert got[:60] == [*((f"{k} full", "resolved", 0) for k in keys),
                        *((f"{k} full again", "resolved" if i % 4 == 0 else "firing", 0)
                          for i, k in enumerate(keys) if i % 2 == 0)]
    assert [s for t, s, _ in got[60:] if t.startswith("near-")] == ["resolved"] * 30
    assert await dead(redis) == []


async def test_a_resolve_in_a_later_batch_and_twice_is_harmless(redis: Redis, start_proc):
    await add_users(redis, "1")
    await xadd_many(redis, [{**entry("web-1 full"), "dedup_key": "web-1"},
                            {**entry("plain notice")}])
    run_burst(start_proc)
    port = free_port()
    start_proc("center", "--no-forward", "--metrics-port", str(port))
    # unknown keys, an unknown alert, a notice without an incident, twice the same
    await xadd_many(redis, [resolve("web-1"), resolve("web-1"), resolve("nope"),
                            resolve("web-1", alert="other"), resolve("plain notice")])

    async def done() -> bool:
        return await lag(redis) == 0 and await pending(redis) == 0 \
            and counted(port, "resolved") == 1
    await eventually(done, timeout=30, what="the resolves handled")
    assert await incidents(redis, "1") == [("web-1 full", "resolved", 0),
                                           ("plain notice", None, 0)]
    assert await dead(redis) == []
    # the three unknown ones count as no-ops (and the second web-1 too, if it came alone)
    assert counted(port, "noop") in (3, 4)


async def test_a_resolve_names_the_scope_of_a_setting(redis: Redis, start_proc):
    """Without setting_id a resolve reaches every setting's scope of the alert (as a
    wrapper's notices are sent per setting); with one, only that setting's."""
    await add_users(redis, "1")
    await put_setting(redis, "s1")
    await put_setting(redis, "s2")
    await xadd_many(redis, [
        {**entry("s1 web-1"), "dedup_key": "web-1", "setting_id": "s1"},
        {**entry("s2 web-1"), "dedup_key": "web-1", "setting_id": "s2"},
        {**entry("s1 web-2"), "dedup_key": "web-2", "setting_id": "s1"},
        {**entry("s2 web-2"), "dedup_key": "web-2", "setting_id": "s2"},
        resolve("web-1"),
        resolve("web-2", setting_id="s2"),
    ])
    run_burst(start_proc)
    assert [(t, s) for t, s, _ in await incidents(redis, "1")] == [
        ("s1 web-1", "resolved"), ("s2 web-1", "resolved"),
        ("s1 web-2", "firing"), ("s2 web-2", "resolved")]


@pytest.mark.parametrize(("fields", "path"), [
    ({"op": "explode", "alert": "disk", "dedup_key": "k"}, "$.op"),
    ({"op": "resolve", "alert": "disk"}, "$.dedup_key"),
    ({"op": "resolve", "dedup_key": "k"}, "$.alert"),
    ({"op": "resolve", "alert": "disk", "dedup_key": "k", "title": "x"}, "$.title"),
    ({"op": "resolve", "alert": "disk", "dedup_key": "web-1\r\nX: 1"}, "$.dedup_key"),
    ({"op": "resolve", "alert": "disk", "dedup_key": "k" * 5000}, "$.dedup_key"),
    ({"op": "resolve", "alert": "disk", "dedup_key": ""}, "$.dedup_key"),
    ({"op": "resolve", "alert": "disk\x00", "dedup_key": "k"}, "$.alert"),
    ({"op": "resolve", "alert": "disk", "dedup_key": "k", "at": "soon"}, "$.at"),
    ({"op": "resolve", "alert": "disk", "dedup_key": "k", "at": "-5"}, "$.at"),
    ({"op": "resolve", "alert": "disk", "dedup_key": "k", "setting_id": "s\n"},
     "$.setting_id"),
])
async def test_bad_resolve_entries_are_dead_lettered_naming_the_field(
        redis: Redis, start_proc, fields: dict[str, str], path: str):
    await add_users(redis, "1")
    await xadd_many(redis, [{**entry("web-1 full"), "dedup_key": "k"}])
    run_burst(start_proc)
    [sid] = await xadd_many(redis, [fields])
    await xadd_many(redis, [{**entry("after it")}])  # the stream goes on
    run_burst(start_proc)
    assert [(d["entry"], d["field"]) for d in await dead(redis)] == [(sid, path)]
    assert await incidents(redis, "1") == [("web-1 full", "firing", 0), ("after it", None, 0)]


# HTTP and live --------------------------------------------------------------------------


async def test_resolve_over_http_updates_the_feed_live(redis: Redis, api: Api, start_proc,
                                                       user_token):
    await add_users(redis, "1")
    start_proc("center", "--no-forward")
    sse = await SSE(f"{api.base}/api/v1/me/stream?token={user_token('1')}").connect()
    try:
        assert (await sse.next()).event == "count"
        async with api.client() as svc:
            r = await svc.post("/api/v1/notices", json={
                "alert": "disk", "title": "Disk 95% on web-1", "recipients": ["1"],
                "dedup_key": "web-1"})
            assert r.status_code == 202
            nid = r.json()["id"]
            [ev] = await sse.take(1, timeout=20, event="notice")
            assert (ev.json()["id"], ev.json()["status"]) == (nid, "firing")
            r = await svc.post("/api/v1/notices/resolve",
                               json={"alert": "disk", "dedup_key": "web-1"})
            assert r.status_code == 202, r.text
            sid = r.json()["sid"]
            assert (await redis.xrange(K.notices, sid, sid))[0][1][b"op"] == b"resolve"
            [ev] = await sse.take(1, timeout=20, event="notice-update")
        update = ev.json()
        assert (update["id"], update["status"]) == (nid, "resolved")
        assert update["resolved_at"] >= update["created_at"]
        assert "recipients" not in update and "channels" not in update
        async with api.client(user_token("1")) as me:
            assert (await me.get("/api/v1/me/unread-count")).json()["count"] == 1
            [item] = (await me.get("/api/v1/me/notices")).json()["items"]
        assert (item["id"], item["status"], item["read"]) == (nid, "resolved", False)
    finally:
        await sse.close()


@pytest.mark.parametrize(("body", "path"), [
    ({"alert": "disk"}, "$.dedup_key"),
    ({"dedup_key": "web-1"}, "$.alert"),
    ({"alert": "disk", "dedup_key": "web-1", "title": "x"}, "$.title"),
    ({"alert": "disk", "dedup_key": "web-1\r\nX-Injected: 1"}, "$.dedup_key"),
    ({"alert": "disk", "dedup_key": "k" * 1025}, "$.dedup_key"),
    ({"alert": "disk", "dedup_key": ""}, "$.dedup_key"),
    ({"alert": "disk", "dedup_key": "web-1", "at": -1}, "$.at"),
    ({"alert": "disk", "dedup_key": "web-1", "at": "soon"}, "$.at"),
    ({"alert": "disk", "dedup_key": "web-1", "setting_id": "s\x00"}, "$.setting_id"),
    ({"alert": "x" * 1025, "dedup_key": "web-1"}, "$.alert"),
])
async def test_http_refuses_bad_resolves_naming_the_field(api: Api, redis: Redis, body, path):
    async with api.client() as svc:
        r = await svc.post("/api/v1/notices/resolve", json=body)
    assert r.status_code == 422 and r.json()["path"] == path, r.text
    assert await redis.xlen(K.notices) == 0


async def test_http_resolve_needs_a_service_token(api: Api, redis: Redis, user_token):
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as anon:
        r = await anon.post("/api/v1/notices/resolve", json={"alert": "d", "dedup_key": "k"})
    async with api.client(user_token("1")) as me:
        r2 = await me.post("/api/v1/notices/resolve", json={"alert": "d", "dedup_key": "k"})
    assert (r.status_code, r2.status_code) == (401, 401)
    assert await redis.xlen(K.notices) == 0


# send_resolved ----------------------------------------------------------------------------


async def test_send_resolved_schedules_the_resolved_jobs(redis: Redis, start_proc):
    await add_users(redis, "1", "2")
    await put_setting(redis, "s1", channel={"ui": {"users": ["1", "2"]}, "email": {},
                                            "webhook": {"url": "https://hooks.example/x"}},
                      send_resolved=True)
    await put_setting(redis, "s9", name="cpu", channel={"ui": {"users": ["1"]}, "email": {}})
    await xadd_many(redis, [
        {"alert": "disk", "title": "web-1 full", "dedup_key": "web-1"},
        {"alert": "cpu", "title": "web-1 hot", "dedup_key": "web-1"},
        resolve("web-1"), resolve("web-1", alert="cpu"),
    ])
    run_burst(start_proc)
    disk, cpu = await feed(redis, "1")
    assert (await stored(redis, disk))["status"] == "resolved"
    for uid in ("1", "2", "*"):  # each recipient, and the shared targets
        assert await redis.exists(arq_keys(K.forward_job(disk, uid, "resolved")).job), uid
    # a setting without send_resolved: resolved quietly
    assert (await stored(redis, cpu))["status"] == "resolved"
    assert not await redis.exists(arq_keys(K.forward_job(cpu, "1", "resolved")).job)


# resolve_after and the claim's life -------------------------------------------------------


async def test_resolve_after_resolves_an_incident_left_alone(redis: Redis, start_proc):
    await add_users(redis, "1")
    await put_setting(redis, "s1", resolve_after=0.5)
    [sid] = await xadd_many(redis, [{"alert": "disk", "title": "web-1 full",
                                     "dedup_key": "web-1"}])
    start_proc("center", "--no-forward")

    async def resolved() -> dict[str, Any] | None:
        ids = await feed(redis, "1")
        n = await stored(redis, ids[0]) if ids else None
        return n if n and n.get("status") == "resolved" else None

    n = await eventually(resolved, timeout=30, what="resolved by resolve_after")
    assert n["resolved_at"] == n["created_at"] + 500  # when it fell due
    assert await redis.zcard(K.incidents_due) == 0
    assert not await redis.exists(K.dedup(dedup_scope("disk", None, "web-1")))
    assert await unread_count(redis, "1") == 1 and sid


async def test_a_timer_taken_after_a_repeat_is_put_back_in_time(redis: Redis, start_proc):
    """The timer checks the body before it resolves: a member due too early (a repeat came
    after it was set) moves to the repeat's time plus resolve_after instead."""
    await add_users(redis, "1")
    await put_setting(redis, "s1", resolve_after=3600)
    await xadd_many(redis, [{"alert": "disk", "title": "web-1 full", "dedup_key": "web-1"}])
    run_burst(start_proc)
    [nid] = await feed(redis, "1")
    member = due_member(nid, dedup_scope("disk", None, "web-1"))
    n = await stored(redis, nid)
    assert await redis.zscore(K.incidents_due, member) == n["created_at"] + 3_600_000
    await redis.zadd(K.incidents_due, {member: 1})  # due long ago
    run_burst(start_proc)
    assert await redis.zscore(K.incidents_due, member) == n["created_at"] + 3_600_000
    assert (await stored(redis, nid))["status"] == "firing"


async def test_a_repeat_keeps_the_claim_alive(redis: Redis, start_proc):
    await add_users(redis, "1")
    claim = K.dedup(dedup_scope("disk", None, "web-1"))
    await xadd_many(redis, [{**entry("web-1 full"), "dedup_key": "web-1"}])
    run_burst(start_proc, VESTNIK_DEDUP_WINDOW="1000")
    assert 990 <= await redis.ttl(claim) <= 1000
    await redis.expire(claim, 5)  # near its end...
    await xadd_many(redis, [{**entry("web-1 still full"), "dedup_key": "web-1"}])
    run_burst(start_proc, VESTNIK_DEDUP_WINDOW="1000")
    assert 990 <= await redis.ttl(claim) <= 1000  # ... and kept as long again by the repeat
    assert await incidents(redis, "1") == [("web-1 full", "firing", 1)]


# the demo ---------------------------------------------------------------------------------


async def test_the_demo_alert_resolves_its_notice_when_the_disk_drops(
        redis: Redis, settings: Config, api: Api, start_proc, user_token, tmp_path: Path):
    """The demo's own alert program under the real wrapper: a disk over the threshold is a
    firing notice in the inbox, the same disk back under it resolves that notice."""
    from vestnik.app.demo import ALERT, alert_config, seed
    from vestnik.streams.notifier.topics import publish
    from vestnik.streams.schemas import TopicEvent

    config = msgspec.structs.replace(settings, data_dir=str(tmp_path))
    await seed(redis, K, config, forward_after=300)
    start_proc("center", "--no-forward")
    start_proc("wrap", str(alert_config(config)))

    async def vm(disk: float) -> None:
        await publish(redis, K, "vm", TopicEvent(op="update", id="2", data={
            "id": "2", "name": "web-2", "status": "running", "disk": disk}), maxlen=1000,
            via="test")

    async def inbox() -> list[dict[str, Any]]:
        async with api.client(user_token("1")) as me:
            return [n for n in (await me.get("/api/v1/me/notices")).json()["items"]
                    if n["alert"] == ALERT]

    async def firing() -> list[dict[str, Any]] | None:
        await vm(95)  # again until the alert has its settings and sees it
        got = await inbox()
        return got or None

    [n] = await eventually(firing, timeout=40, interval=1, what="the disk notice")
    assert (n["title"], n["status"], n["dedup_key"]) == ("Disk 95% full on web-2", "firing",
                                                         "vm:2")
    await vm(40)

    async def resolved() -> list[dict[str, Any]] | None:
        got = await inbox()
        return got if got and got[0]["status"] == "resolved" else None

    [n] = await eventually(resolved, timeout=30, what="the notice resolved")
    assert n["resolved_at"] >= n["created_at"]
    async with api.client(user_token("1")) as me:
        assert (await me.get("/api/v1/me/unread-count")).json()["count"] == 1


async def test_vestnik_resolve_on_the_command_line(redis: Redis, start_proc):
    await add_users(redis, "1")
    await xadd_many(redis, [{**entry("web-1 full"), "dedup_key": "web-1"}])
    bad = start_proc("resolve", "--alert", "disk", "--dedup-key", "web-1\nX")
    assert bad.proc.wait(30) == 2 and "dedup_key" in bad.output()
    ok = start_proc("resolve", "--alert", "disk", "--dedup-key", "web-1")
    assert ok.proc.wait(30) == 0, ok.output()
    sid = ok.output().strip().splitlines()[-1]
    assert (await redis.xrange(K.notices, sid, sid))[0][1][b"op"] == b"resolve"
    run_burst(start_proc)
    assert await incidents(redis, "1") == [("web-1 full", "resolved", 0)]


async def test_a_repeat_never_folds_into_a_resolved_incident(redis: Redis):
    """fold.lua, against the stored tail only: a repeat loaded before the resolve (-1: it
    opens a new incident), never fooled by an alert's `data` holding the same words."""
    from vestnik.streams import lua

    fold = lua.script("center/fold.lua")
    trap = {"status": "resolved", "resolved_at": 1, "created_at": 2}
    for nid, status, data in (("A", "firing", {"x": trap}), ("B", "resolved", {}),
                              ("C", "firing", trap)):
        n = Notice(id=nid, alert="disk", title="t", data=data, dedup_key="k", status=status,
                   resolved_at=5 if status == "resolved" else 0, created_at=3)
        await redis.set(K.notice(nid), json_encode(n))
    scope = K.dedup(dedup_scope("disk", None, "k"))
    claim = [] if K.cluster else [scope]  # on a cluster the claim is in another slot
    got = [await fold(keys=[K.notice(nid), K.folded(nid), *claim], args=["R", 9, 60],
                      client=redis) for nid in ("A", "B", "C")]
    assert got[1] == -1 and not await redis.exists(K.folded("B"))
    for raw in (got[0], got[2]):
        n = msgspec.json.decode(raw)
        assert (n["status"], n["repeat"], n["last_seen"]) == ("firing", 1, 9)


async def test_a_resolve_handled_again_after_a_crash_still_frees_the_key(redis: Redis,
                                                                           start_proc):
    """A center that died after writing the resolved body but before taking the claim: the
    entry, handled again, finds the incident resolved and takes the claim (the key's next
    notice is a new incident, not a repeat folded into a resolved one)."""
    await add_users(redis, "1")
    await xadd_many(redis, [{**entry("web-1 full"), "dedup_key": "web-1"}])
    run_burst(start_proc)
    [nid] = await feed(redis, "1")
    n = msgspec.json.decode(await redis.get(K.notice(nid)), type=Notice)
    await redis.set(K.notice(nid), json_encode(msgspec.structs.replace(
        n, status="resolved", resolved_at=n.created_at)))  # what the dead center wrote
    claim = K.dedup(dedup_scope("disk", None, "web-1"))
    assert (await redis.get(claim)).decode() == nid
    await xadd_many(redis, [resolve("web-1"), {**entry("web-1 full again"), "dedup_key": "web-1"}])
    run_burst(start_proc)
    assert await incidents(redis, "1") == [("web-1 full", "resolved", 0),
                                           ("web-1 full again", "firing", 0)]


@pytest.mark.parametrize("r", [
    ResolveIn(alert="disk", dedup_key="web-1"),
    ResolveIn(alert="disk:eu", dedup_key="vm:7 / ü", setting_id="s:1", at=1796000000000),
])
def test_resolve_fields_round_trip(r: ResolveIn):
    """What `POST /notices/resolve`, `vestnik resolve` and the wrapper XADD is what the center
    decodes; a notice entry (no `op`) still decodes as a notice."""
    assert decode_center_entry({k.encode(): v.encode() for k, v in resolve_fields(r).items()}
                               ) == r
    assert isinstance(decode_center_entry({b"alert": b"disk", b"title": b"t"}), NoticeIn)


async def test_up_demo_resolves_the_notices_of_disks_cleaned_up(tmp_path: Path):
    """`vestnik up --demo` as a user runs it: its simulator fills one disk past 90%, keeps
    it nearly full for longer than forward_after (the notice is emailed) and cleans it up,
    its alert says `resolve`, and Alice's inbox shows that notice resolved."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VESTNIK_")}
    proc = Proc(vestnik_argv("up", "--demo", "--port", str(port)), env, tmp_path / "up.log",
                cwd=tmp_path).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/readyz", timeout=40, proc=proc)

        async def token() -> str | None:
            m = re.search(r"inbox \(Alice\)\s+\S+\?token=(\S+)", proc.output())
            return m.group(1) if m else None

        alice = await eventually(token, timeout=20, what="the demo's URLs")

        async def resolved() -> dict[str, Any] | None:
            async with httpx.AsyncClient(base_url=base, timeout=10,
                                         headers={"Authorization": f"Bearer {alice}"}) as me:
                items = (await me.get("/api/v1/me/notices")).json()["items"]
            return next((n for n in items if n.get("status") == "resolved"), None)

        n = await eventually(resolved, timeout=120, interval=1, what="a resolved notice")
        assert n["alert"] == "disk-usage" and n["dedup_key"].startswith("vm:")
        assert n["resolved_at"] >= n["created_at"]
    finally:
        assert proc.stop(signal.SIGTERM, timeout=20) == 0, proc.output()
