"""Redis memory per stored item, as Vestnik stores it: the figures the 30-day simulation in
docs/reliability.md starts from. Starts a private redis-server (no AOF), writes many items
of each kind and prints `used_memory` growth per item.

    .venv/bin/python scripts/memory_costs.py [-n 50000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vestnik.streams.ids import encode_ulid  # noqa: E402
from vestnik.streams.keys import REFS_BUCKET, Keys  # noqa: E402
from vestnik.streams.redis_server import RedisServer  # noqa: E402
from vestnik.streams.schemas import Notice, json_encode  # noqa: E402

K = Keys("vn:")
BODY = ("Usage on /dev/vda1 crossed the warning threshold; the largest directories are "
        "/var/log and /var/lib/docker. Free space or grow the volume.")


def nid(i: int) -> str:
    """Ids as ingest makes them: ULIDs 100 ms apart (10 notices/s)."""
    return encode_ulid(1_760_000_000_000 + i * 100, i * 7919)


def per_item(r: redis.Redis, n: int, write: Callable[[redis.client.Pipeline, int], None]
             ) -> float:
    r.flushall()
    before = int(r.info("memory")["used_memory"])
    for start in range(0, n, 5000):
        with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 5000)):
                write(pipe, i)
            pipe.execute()
    return (int(r.info("memory")["used_memory"]) - before) / n


DELIVERY = ('{"uid":"u%d","channel":"email","attempt":1,"status":"sent",'
            '"detail":"250 2.0.0 Ok: queued","at":1760000000000}')


def _user_keys(pipe: redis.client.Pipeline, i: int) -> None:
    uid = f"u{i}"
    pipe.zadd(K.feed(uid), {nid(i): 1})
    pipe.zadd(K.read(uid), {nid(i): 1})
    pipe.set(K.user_seq(uid), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=50_000)
    n = p.parse_args().n
    body = json_encode(Notice(id=nid(0), alert="disk", title="Disk 95% on web-1 (/dev/vda1)",
                              severity="warning", body=BODY, recipients=["u1"],
                              channels={"email": {}}, created_at=1_760_000_000_000))
    users = max(1, n // 1000)
    rows: list[tuple[str, Callable[[redis.client.Pipeline, int], None]]] = [
        (f"notice body ({len(body)} B of JSON)", lambda pipe, i: pipe.set(K.notice(nid(i)), body)),
        ("feed entry (feeds of 1,000: skiplist)",
         lambda pipe, i: pipe.zadd(K.feed(f"u{i % users}"), {nid(i): i})),
        ("feed entry (feeds of 100: listpack)",
         lambda pipe, i: pipe.zadd(K.feed(f"u{i % (n // 100)}"), {nid(i): i})),
        ("refs field, bucket hash (a body in 2+ feeds)",
         lambda pipe, i: pipe.hset(K.refs(nid(i)), nid(i)[REFS_BUCKET:], 1)),
        ("refs as a key of its own (not used)",
         lambda pipe, i: pipe.set(K.notice(nid(i)) + ":n", 1)),
        ("topic stream entry (entity of ~80 B)",
         lambda pipe, i: pipe.xadd(K.topic("vm"), {"op": "update", "id": str(i % 5000),
                                                   "data": f'{{"id":{i},"name":"web-{i}",'
                                                   '"status":"running","cpu":0.42}',
                                                   "ts": "1760000000000", "src": "api"})),
        ("sent marker, 1 day TTL", lambda pipe, i: pipe.set(
            f"{K.forward(0).sent}{nid(i)}:u{i}:email", 1, ex=86_400)),
        ("user: seq counter", lambda pipe, i: pipe.set(K.user_seq(f"u{i}"), 123_456)),
        ("user: keys of a feed, read set and seq of one entry each", _user_keys),
        ("attempt log of a forwarded notice (one record, 7 day TTL)",
         lambda pipe, i: (pipe.rpush(K.deliveries(nid(i)), DELIVERY % i),
                          pipe.expire(K.deliveries(nid(i)), 7 * 86_400))),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, appendonly=False)
        server.start()
        r = redis.Redis.from_url(server.url)
        try:
            for _ in range(100):  # bounded wait for the server
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            for what, write in rows:
                print(f"{per_item(r, n, write):8.1f} B  {what}")
            print(f"(redis-server {r.info('server')['redis_version']}, {n:,} items each)")
        finally:
            r.close()
            server.stop()


if __name__ == "__main__":
    main()
