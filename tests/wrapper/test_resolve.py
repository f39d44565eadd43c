"""A `resolve` line of a real alert under the real wrapper, through a real center: the alert's
incident (one notice per setting) becomes `resolved` in the feed, repeats before it folded
and the next notice of the key is a new incident."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from wrapping import alert_toml, publish, put_setting, setting

from support import eventually
from vestnik.streams.keys import Keys

ALERT = r"""
import json, sys
def say(m): print(json.dumps(m), flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "entity":
        if msg["data"]["state"] == "full":
            say({"type": "notice", "title": "disk-1 full", "dedup_key": "disk-1"})
        else:
            say({"type": "resolve", "dedup_key": "disk-1"})
"""


async def test_a_resolve_line_resolves_the_incident_of_every_setting(
        redis: Redis, keys: Keys, wrap, start_proc, tmp_path: Path):
    name = "disk-watch"
    for sid in ("s1", "s2"):
        await put_setting(redis, keys, setting(sid, name))
        await redis.zadd(keys.settings_by_name(name), {sid: 0})  # as the settings store
    (tmp_path / "alert.py").write_text(ALERT)
    w = wrap(alert_toml(tmp_path / "alert.toml", name, [sys.executable, "alert.py"],
                        topics=["disk"], cwd=str(tmp_path)))
    start_proc("center", "--no-forward")
    # one at a time, each once the wrapper wrote what it caused (entries per setting; a
    # resolve is one entry for the alert)
    for i, (state, entries) in enumerate([("full", 2), ("full", 4), ("ok", 5), ("full", 7)]):
        await publish(redis, keys, "disk", f"e{i}", {"state": state}, op="create")

        async def written(n: int = entries) -> bool:
            assert w.proc.proc.poll() is None, w.proc.output()
            return await redis.xlen(keys.notices) >= n

        await eventually(written, timeout=30, what=f"entries after event {i}")
    assert [f[b"op"] for _, f in await redis.xrange(keys.notices) if b"op" in f] == [
        b"resolve"]

    async def feed() -> list[dict[str, Any]] | None:
        assert w.proc.proc.poll() is None, w.proc.output()
        ids = [x.decode() for x in await redis.zrange(keys.feed("1"), 0, -1)]
        bodies = [msgspec.json.decode(b) for b in await redis.mget(
            [keys.notice(i) for i in ids])] if ids else []
        return bodies if len(bodies) == 4 and all(b["status"] for b in bodies) \
            and sum(b["status"] == "resolved" for b in bodies) == 2 else None

    got = await eventually(feed, timeout=40, what="two incidents per setting")
    assert sorted((b["setting_id"], b["status"], b.get("repeat", 0)) for b in got) == [
        ("s1", "firing", 0), ("s1", "resolved", 1), ("s2", "firing", 0), ("s2", "resolved", 1)]
    assert all(b["resolved_at"] >= b["created_at"] for b in got if b["status"] == "resolved")
