#!/usr/bin/env python3
"""Measure the alert wrapper's two hot paths on this machine, against a private Redis:

1. notices/s out: an alert (`cat` of a file of N notice lines) → `vestnik wrap` →
   `vn:notices`. The rate comes from the stream ids of the first and last entry, so
   process start-up is not counted.
2. entity events/s in: N events wait in a topic stream whose materialized state is
   empty at position 0-1, so the wrapper's snapshot is empty and it reads all N as live
   events (XREAD → decode → coalescing queue → stdin) as fast as it can; the alert
   counts the entity lines it reads and reports the time from the first to the last.

    .venv/bin/python scripts/bench_wrapper.py [--notices 200000] [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.redis_server import RedisServer  # noqa: E402

COUNTER = r"""
import json, os, sys, time
print(json.dumps({"type": "notice", "title": "started"}), flush=True)
n, first, last = 0, None, None
for line in sys.stdin:
    if line.startswith('{"type":"entity"'):
        n += 1
        now = time.monotonic()
        first = first or now
        last = now
        if '"id":"end"' in line:
            break
    elif line.startswith('{"type":"ready"'):
        print(json.dumps({"type": "notice", "title": "ready"}), flush=True)
print(json.dumps({"type": "notice", "title": "done",
                  "data": {"lines": n, "seconds": (last or 0) - (first or 0)}}), flush=True)
"""


def setting(r: redis.Redis, name: str) -> None:
    s = {"id": "s1", "name": name, "metric": {"limit": 10}, "channel": {"ui": {"users": ["1"]}},
         "enabled": True}
    r.hset("vn:settings", "s1", json.dumps(s))


def wrap(toml: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {"VESTNIK_REDIS_URL": url, "VESTNIK_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-m", "app.cli", "wrap", str(toml)], cwd=ROOT,
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def notices_out(r: redis.Redis, url: str, tmp: Path, n: int) -> float:
    lines = tmp / "notices.jsonl"
    with lines.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"type": "notice", "title": f"Balance low on acc-{i}",
                                "severity": "warning", "entity": {"topic": "account",
                                                                  "id": f"acc-{i}"},
                                "data": {"balance": i}}) + "\n")
    toml = tmp / "out.toml"
    toml.write_text(f'name = "bench-out"\ncommand = ["cat", "{lines}"]\n'
                    '[restart]\npolicy = "never"\n')
    setting(r, "bench-out")
    proc = wrap(toml, url, tmp / "out.log")
    assert proc.wait(300) == 0, (tmp / "out.log").read_text()
    assert r.xlen("vn:notices") == n, r.xlen("vn:notices")
    first = r.xrange("vn:notices", count=1)[0][0].decode()
    last = r.xrevrange("vn:notices", count=1)[0][0].decode()
    ms = int(last.split("-")[0]) - int(first.split("-")[0])
    return (n - 1) / max(ms / 1000, 0.001)


def events_in(r: redis.Redis, url: str, tmp: Path, n: int) -> tuple[float, float]:
    """(events/s into the alert, events/s the pipelined publisher managed beforehand)"""
    script = tmp / "counter.py"
    script.write_text(COUNTER)
    toml = tmp / "in.toml"
    toml.write_text(f'name = "bench-in"\ncommand = ["{sys.executable}", "{script}"]\n'
                    'topics = ["vm"]\nqueue_size = 100000\n[restart]\npolicy = "never"\n')
    setting(r, "bench-in")
    r.delete("vn:notices")
    t0 = time.monotonic()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        eid = "end" if i == n - 1 else str(i)
        pipe.xadd("vn:topic:vm", {"op": "update", "id": eid,
                                  "data": json.dumps({"id": eid, "name": f"vm-{i}",
                                                      "status": "running", "cpu": i % 100})})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    publish_rate = n / (time.monotonic() - t0)
    r.set("vn:state:vm:pos", "0-1")  # an (empty) materialized state from before the events
    proc = wrap(toml, url, tmp / "in.log")
    assert proc.wait(300) == 0, (tmp / "in.log").read_text()
    done = next(f for _, f in r.xrange("vn:notices") if f[b"title"] == b"done")
    data = json.loads(done[b"data"])
    return data["lines"] / data["seconds"], publish_rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--notices", type=int, default=200_000)
    p.add_argument("--events", type=int, default=200_000)
    args = p.parse_args()
    with (tempfile.TemporaryDirectory() as d,
          RedisServer(Path(d) / "redis", appendonly=False) as srv):
        r = redis.Redis.from_url(srv.url)
        out = notices_out(r, srv.url, Path(d), args.notices)
        print(f"notices out: {out:,.0f} notices/s ({args.notices:,} lines, stdout → vn:notices)")
        r.flushall()
        rate_in, published = events_in(r, srv.url, Path(d), args.events)
        print(f"events in:   {rate_in:,.0f} events/s ({args.events:,} events, topic → stdin; "
              f"the publisher managed {published:,.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
