"""Issue 23, forward partitions (VESTNIK_FORWARD_PARTITIONS, VESTNIK_FORWARD_WORK): a real
`vestnik center` and two real `vestnik forwarder` processes, one working partition 0 and
one partitions 1 and 2, an SMTP sink (aiosmtpd). Every notice is emailed once, delayed ones
too, each process sends only its partitions' mail, an incident's `resolved` mail replies to
its firing mail, and nothing is left queued. With `--redis-cluster` the same chain runs on
a 3-master cluster, where the partitions' queues live on more than one master. A forwarder
started with another partition count than the jobs in Redis says so (ERROR, /readyz)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from fwd_support import SmtpSink, store_notice
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from support import Proc, eventually
from vestnik.streams.center.inbox import purge_users
from vestnik.streams.forward import ForwardJob, add_forward_jobs
from vestnik.streams.forward.worker import check_layouts
from vestnik.streams.ids import now_ms, ulid
from vestnik.streams.keys import USER_TOPIC, Keys
from vestnik.streams.redis_server import free_port
from vestnik.streams.schemas import Notice

PARTS = 3
USERS = [str(i) for i in range(1, 25)]
INCIDENTS = ["web-1", "web-2", "web-3", "web-4"]
ONCALL = ["r1", "r2"]  # the recipients of the incidents


@pytest.fixture
def k3(on_cluster: bool) -> Keys:
    return Keys("vn:", cluster=on_cluster, forward_partitions=PARTS)


def user(uid: str) -> bytes:
    return msgspec.json.encode({"id": uid, "name": f"user {uid}",
                                "email": f"u{uid}@example.org"})


def mail_to(uid: str, title: str, after: str) -> dict[str, Any]:
    return {"id": ulid(), "alert": "ping", "title": title, "severity": "warning",
            "recipients": uid, "channels": msgspec.json.encode({"email": {"users": [uid]}}),
            "forward_after": after}


@dataclass
class Forwarder:
    """A `vestnik forwarder` process and its ops port (VESTNIK_METRICS_PORT)."""

    proc: Proc
    port: int

    @classmethod
    def start(cls, start_proc: Any, **env: str) -> Forwarder:
        port = free_port()
        return cls(start_proc("forwarder", VESTNIK_METRICS_PORT=str(port), **env), port)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)

    async def ready(self) -> None:
        async def check() -> bool:
            assert self.proc.proc is not None and self.proc.proc.poll() is None, \
                self.proc.output()
            try:
                return self.get("/readyz").status_code == 200
            except httpx.TransportError:  # not listening yet
                return False

        await eventually(check, timeout=30, interval=0.1, what="forwarder ready")


def sent_count(ops: Forwarder) -> float:
    """The process's `vestnik_forward_attempts_total{status="sent"}` (0 before the first)."""
    total = 0.0
    for fam in text_string_to_metric_families(ops.get("/metrics").text):
        for s in fam.samples:
            if s.name == "vestnik_forward_attempts_total" and s.labels["status"] == "sent":
                total += s.value
    return total


async def test_two_forwarders_share_three_partitions_each_mail_once(
        redis: Redis, k3: Keys, start_proc, smtp: SmtpSink, on_cluster: bool):
    await redis.hset(k3.state(USER_TOPIC), mapping={u: user(u) for u in USERS + ONCALL})
    setting = {"id": "s1", "name": "disk", "send_resolved": True,
               "channel": {"ui": {"users": ONCALL}, "email": {}}}
    await redis.hset(k3.settings, "s1", msgspec.json.encode(setting))
    await redis.zadd(k3.settings_by_name("disk"), {"s1": 0})
    env = {"VESTNIK_FORWARD_PARTITIONS": str(PARTS), "VESTNIK_SMTP_URL": smtp.url,
           "VESTNIK_SMTP_FROM": "Vestnik <vestnik@example.org>", "VESTNIK_SEND_BACKOFF": "0.2"}
    start_proc("center", "--no-forward", **env)
    first = Forwarder.start(start_proc, VESTNIK_FORWARD_WORK="0", **env)
    rest = Forwarder.start(start_proc, VESTNIK_FORWARD_WORK="1,2", **env)
    await first.ready()
    await rest.ready()

    now = [mail_to(u, f"now {u}", "0") for u in USERS]
    later = [mail_to(u, f"later {u}", "2") for u in USERS]  # through the due sets
    fire = [{"alert": "disk", "title": f"disk {key}", "dedup_key": key, "forward_after": "0"}
            for key in INCIDENTS]
    async with redis.pipeline(transaction=False) as pipe:
        for e in now + later + fire:
            pipe.xadd(k3.notices, e)
        await pipe.execute()
    firing = len(USERS) * 2 + len(INCIDENTS) * len(ONCALL)

    async def mailed(n: int) -> Any:
        return len(smtp.mails) >= n

    await eventually(lambda: mailed(firing), timeout=60, what=f"{firing} mails")
    async with redis.pipeline(transaction=False) as pipe:
        for key in INCIDENTS:
            pipe.xadd(k3.notices, {"op": "resolve", "alert": "disk", "dedup_key": key})
        await pipe.execute()
    total = firing + len(INCIDENTS) * len(ONCALL)
    await eventually(lambda: mailed(total), timeout=60, what="the resolved mails")

    # each mail once, to its user
    got = sorted((m.msg["Subject"], m.msg["To"]) for m in smtp.mails)
    assert got == sorted([(f"{w} {u}", f"user {u} <u{u}@example.org>")
                          for u in USERS for w in ("now", "later")]
                         + [(f"{s}disk {key}", f"user {r} <u{r}@example.org>")
                            for key in INCIDENTS for r in ONCALL for s in ("", "Resolved: ")])
    # a resolved mail replies to the firing mail of its incident to the same user
    ids = {(m.msg["Subject"], m.msg["To"]): m.msg["Message-ID"] for m in smtp.mails}
    for key in INCIDENTS:
        for r in ONCALL:
            to = f"user {r} <u{r}@example.org>"
            reply = next(m.msg for m in smtp.mails
                         if (m.msg["Subject"], m.msg["To"]) == (f"Resolved: disk {key}", to))
            assert reply["In-Reply-To"] == ids[(f"disk {key}", to)]

    # the notices spread over every partition, their records in their partition's keys
    nids = [e["id"] for e in now + later]
    incidents = [x.decode() for x in await redis.zrange(k3.feed(ONCALL[0]), 0, -1)]
    assert len(incidents) == len(INCIDENTS)
    parts = [k3.forward_partition(n) for n in nids + incidents]
    assert set(parts) == set(range(PARTS))
    for nid in nids:
        [rec] = await redis.lrange(k3.deliveries(nid), 0, -1)
        assert msgspec.json.decode(rec)["status"] == "sent"
        assert k3.deliveries(nid).startswith(f"vn:{{fwd-{k3.forward_partition(nid)}}}:")
    # each process sent exactly its partitions' mails (a notice's sends: 1, an incident's
    # 2 firing + 2 resolved)
    per_part = [0] * PARTS
    for n in nids:
        per_part[k3.forward_partition(n)] += 1
    for n in incidents:
        per_part[k3.forward_partition(n)] += 2 * len(ONCALL)
    assert (sent_count(first), sent_count(rest)) == (per_part[0], per_part[1] + per_part[2])

    async def drained() -> bool:
        async with redis.pipeline(transaction=False) as pipe:
            for p in range(PARTS):
                pipe.zcard(k3.forward(p).arq_queue)
                pipe.zcard(k3.forward(p).forward_due)
            return not any(await pipe.execute())

    await eventually(drained, timeout=15, what="every queue and due set empty")
    # nothing under the one-partition names
    one = Keys("vn:", cluster=on_cluster)
    assert await redis.zcard(one.forward(0).arq_queue) == 0
    if on_cluster:  # the partitions' queues are on more than one master
        masters = {redis.get_node_from_key(k3.forward(p).arq_queue).name
                   for p in range(PARTS)}
        assert len(masters) > 1


async def test_jobs_of_another_partition_count_are_reported(
        redis: Redis, keys: Keys, start_proc):
    """Jobs queued under one partition (the default) and a forwarder started with three:
    it says which keys hold them and which setting, and is not ready."""
    async with redis.pipeline(transaction=False) as pipe:  # due in an hour: never run here
        add_forward_jobs(pipe, keys, [ForwardJob(ulid(), "1", now_ms() + 3_600_000)])
        await pipe.execute()
    ops = Forwarder.start(start_proc, VESTNIK_FORWARD_PARTITIONS=str(PARTS))

    async def reported() -> Any:
        r = ops.get("/readyz") if "VESTNIK_FORWARD_PARTITIONS" in ops.proc.output() else None
        return r if r is not None and r.status_code == 503 else None

    r = await eventually(reported, timeout=30, what="the stranded jobs reported")
    assert r.json()["checks"]["partitions"] != "ok"
    assert r.json()["checks"]["worker"] == "ok"
    out = ops.proc.output()
    assert "ERROR" in out and keys.forward(0).arq_queue in out


async def test_layout_check_sees_every_other_count(redis: Redis, on_cluster: bool):
    """The check looks at the one-partition names from N > 1, at `{fwd-p}` for p from N on
    (and from 0 with N = 1), and at nothing of its own layout."""
    k1, k3 = Keys("vn:", on_cluster), Keys("vn:", on_cluster, forward_partitions=PARTS)
    assert await check_layouts(redis, k1) == {} and await check_layouts(redis, k3) == {}
    await redis.zadd(k3.forward(1).forward_due, {b"x": 1})
    assert await check_layouts(redis, k1) == {k3.forward(1).forward_due: 1}
    assert await check_layouts(redis, k3) == {}  # its own
    await redis.zadd(k1.forward(0).arq_queue, {"y": 1})
    k5 = Keys("vn:", on_cluster, forward_partitions=5)
    assert await check_layouts(redis, k3) == {k1.forward(0).arq_queue: 1}
    assert await check_layouts(redis, k5) == {k1.forward(0).arq_queue: 1}
    await redis.zadd(k5.forward(4).arq_queue, {"z": 1})  # a count lowered from 5 to 3
    assert await check_layouts(redis, k3) == {k1.forward(0).arq_queue: 1,
                                              k5.forward(4).arq_queue: 1}


def test_partition_of_a_notice_is_stable_and_one_keeps_the_names():
    k = Keys("vn:", forward_partitions=PARTS)
    # crc32 of the id: the same in every process and version
    nid = "01J0000000000000000000000A"
    assert [k.forward_partition(n) for n in ("N1", nid, "")] == \
        [zlib.crc32(n.encode()) % PARTS for n in ("N1", nid, "")]
    tag = f"vn:{{fwd-{k.forward_partition(nid)}}}:"
    assert {k.forward_job(nid, "1"), k.deliveries(nid), k.threads(nid),
            k.sent_marker(nid, "1", "email"), k.digested(nid, "1", "email"),
            k.forward_of(nid).arq_queue} == {
        f"{tag}fwd:{nid}:1", f"{tag}notice:{nid}:deliveries", f"{tag}notice:{nid}:threads",
        f"{tag}sent:{nid}:1:email", f"{tag}sent:{nid}:1:email:digested", f"{tag}arq:queue"}
    one, cluster = Keys("vn:"), Keys("vn:", cluster=True)
    assert (one.forward_job(nid, "1"), one.forward(0).arq_queue, one.forward(0).forward_own("a"),
            cluster.forward(0).arq_queue) == (
        f"vn:fwd:{nid}:1", "vn:arq:queue", "a", "vn:{fwd}:arq:queue")
    with pytest.raises(ValueError, match="forward partition 3"):
        k.forward(3)


@pytest.mark.single_redis("a cluster never releases bodies by feed counts: they expire")
async def test_a_released_body_takes_its_records_and_threads_in_its_partition(redis: Redis):
    """The last feed holding a notice goes (a purged user): its deliveries and threads go
    too, found in its partition by the script (crc32 in Lua, as Keys.forward_partition)."""
    k3 = Keys("vn:", forward_partitions=PARTS)
    await redis.hset(k3.state(USER_TOPIC), "1", user("1"))
    nids = [ulid() for _ in range(30)]
    assert {k3.forward_partition(n) for n in nids} == set(range(PARTS))
    for nid in nids:
        await store_notice(redis, k3, Notice(id=nid, alert="a", title=nid, recipients=["1"],
                                             created_at=now_ms()))
        await redis.rpush(k3.deliveries(nid), "{}")
        await redis.hset(k3.threads(nid), "1:email", "<m@x>")
    assert await purge_users(redis, k3, ["1"]) == 1
    left = [k for n in nids for k in (k3.notice(n), k3.deliveries(n), k3.threads(n))]
    assert await redis.exists(*left) == 0
