"""The three example alerts of wrapper/examples, each under the real wrapper with its own
alert.toml: an entity that crosses the setting's threshold becomes a notice carrying the
setting's metric and channel in vn:notices, and then in the recipients' feeds (the
notice center runs alongside)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from wrapping import metric, notices, put_setting, setting

from support import ROOT, eventually
from vestnik.streams.keys import CENTER_GROUP, USER_TOPIC, Keys

EXAMPLES = ROOT / "wrapper" / "examples"


@dataclass
class Case:
    example: str
    name: str
    topic: str
    metric: dict[str, Any]
    entity_id: str
    before: dict[str, Any]  # in the snapshot: fine
    after: dict[str, Any]  # published live: over the threshold
    tool: str
    others: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # stay fine


CASES = [
    Case("low_balance", "low-balance", "account", {"min_balance": 100}, "acc-1",
         {"id": "acc-1", "owner": "Ann", "balance": 500},
         {"id": "acc-1", "owner": "Ann", "balance": 20}, "python3",
         [("acc-2", {"id": "acc-2", "owner": "Bob", "balance": 150})]),
    Case("disk_usage", "disk-usage", "disk", {"max_used_pct": 90}, "web-1:/",
         {"host": "web-1", "mount": "/", "used_pct": 50},
         {"host": "web-1", "mount": "/", "used_pct": 95}, "jq",
         [("web-2:/", {"host": "web-2", "mount": "/", "used_pct": 70})]),
    Case("vm_state", "vm-state", "vm", {"bad_states": ["error", "stopped"]}, "42",
         {"id": 42, "name": "web-1", "status": "running"},
         {"id": 42, "name": "web-1", "status": "error"}, "node",
         [("43", {"id": 43, "name": "web-2", "status": "running"})]),
]


async def add_users(redis: Redis, keys: Keys, *uids: str) -> None:
    await redis.hset(keys.state(USER_TOPIC), mapping={
        uid: json.dumps({"id": uid, "name": f"user {uid}"}) for uid in uids})


@pytest.mark.parametrize("case", CASES, ids=[c.example for c in CASES])
async def test_example_alert_turns_a_crossing_into_a_notice(redis, keys, wrap, start_proc,
                                                            case: Case):
    if shutil.which(case.tool) is None:
        pytest.skip(f"{case.tool} is not installed (scripts/test.sh installs it)")
    channel = {"ui": {"users": ["1", "2"]}, "email": {"users": ["1"]}}
    await put_setting(redis, keys, setting("s1", case.name, case.metric, channel))
    await put_setting(redis, keys, setting("s0", "another-alert", case.metric, channel))
    await add_users(redis, keys, "1", "2")
    center = start_proc("center", "--no-forward")

    async def group_ready():
        assert center.proc.poll() is None, center.output()
        groups = await redis.xinfo_groups(keys.notices) if await redis.exists(
            keys.notices) else []
        return any(g["name"].decode() == CENTER_GROUP for g in groups)

    await eventually(group_ready, timeout=20, what="the notice center")
    await redis.xadd(keys.topic(case.topic), {"op": "create", "id": case.entity_id,
                                              "data": json.dumps(case.before)})
    w = wrap(EXAMPLES / case.example / "alert.toml")

    async def ready():
        assert w.proc.proc.poll() is None, w.proc.output()
        return metric(w.metrics_port, "vestnik_wrapper_lines_out_total", type="ready") >= 1

    await eventually(ready, timeout=20, what="snapshot")
    for eid, data in case.others:
        await redis.xadd(keys.topic(case.topic), {"op": "create", "id": eid,
                                                  "data": json.dumps(data)})
    await redis.xadd(keys.topic(case.topic), {"op": "update", "id": case.entity_id,
                                              "data": json.dumps(case.after)})

    async def notice():
        assert w.proc.proc.poll() is None, w.proc.output()
        found = await notices(redis, keys)
        return found[0] if found else None

    n = await eventually(notice, timeout=20, what="the notice")
    assert n["alert"] == case.name and n["setting_id"] == "s1"
    assert json.loads(n["metric"]) == case.metric
    assert json.loads(n["channels"]) == channel
    assert json.loads(n["entity"]) == {"topic": case.topic, "id": case.entity_id}
    assert n["severity"] in ("warning", "critical") and n["title"]

    async def in_feeds():
        return all([await redis.zscore(keys.feed(u), n["id"]) is not None for u in ("1", "2")])

    await eventually(in_feeds, timeout=20, what="the notice in both users' feeds")
    assert len(await notices(redis, keys)) == 1  # the others stayed under the threshold
    assert await redis.xlen(keys.notices_dead) == 0
    assert w.proc.stop() == 0  # each example ends when stdin closes
