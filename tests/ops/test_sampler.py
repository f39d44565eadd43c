"""The sampled gauges show what is in Redis: a consumer group's lag and pending, the
dead letters kept, forwards due now and scheduled later."""

from __future__ import annotations

from prometheus_client import REGISTRY

from vestnik.streams.ids import now_ms
from vestnik.streams.sampler import backlog_probe, groups_probe, sample_once


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_group_lag_pending_and_dead_letters(redis, keys):
    for i in range(5):
        await redis.xadd(keys.notices, {"n": str(i)})
    await redis.xgroup_create(keys.notices, "center", id="0")
    await redis.xgroup_create(keys.notices, "audit", id="$")
    await redis.xreadgroup("center", "c1", {keys.notices: ">"}, count=2)  # 2 read, not acked
    await redis.xadd(keys.notices_dead, {"reason": "bad"})

    await sample_once(redis, [groups_probe(keys.notices, keys.notices_dead)])
    assert value("vestnik_consumer_group_lag", stream=keys.notices, group="center") == 3
    assert value("vestnik_consumer_group_pending", stream=keys.notices, group="center") == 2
    assert value("vestnik_consumer_group_lag", stream=keys.notices, group="audit") == 0
    assert value("vestnik_dead_letters", stream=keys.notices_dead) == 1


async def test_no_stream_yet_is_not_an_error(redis, keys):
    await sample_once(redis, [groups_probe(keys.notices, keys.notices_dead)])
    assert value("vestnik_dead_letters", stream=keys.notices_dead) == 0


async def test_forward_backlog_due_and_scheduled(redis, keys):
    now = now_ms()
    fk = keys.forward(0)
    await redis.zadd(fk.arq_queue, {"due-1": now - 1000, "due-2": now - 5, "later": now + 60_000})
    await redis.zadd(fk.forward_due, {"held": now + 3_600_000, "pump-me": now - 10})

    await sample_once(redis, [backlog_probe([fk])])
    assert value("vestnik_forward_backlog", state="due", partition="0") == 3
    assert value("vestnik_forward_backlog", state="scheduled", partition="0") == 2
